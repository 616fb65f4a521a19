"""The service with its tick replaced: what everything but the tick costs (issue 12's budget).

Runs the real command (``dbus-aggregate-batteries run ...``: the same discovery, model, export,
dispatcher and event loop, on the same bus and load) with ``Application.tick`` replaced once the
service is up and has published its first result:

* ``--tick none``: the tick does no work (the packs' changed sets are cleared, the counters and
  the watchdog's time kept): the cost of receiving, decoding and storing the packs' signals,
  plus the event loop and its timer, without the tick.
* ``--tick minimal``: the least an aggregator built like this one does per tick: read every
  pack's voltage, current, SoC and cells from the model, sum, average, min and max them, and
  publish the 9 results through the real export (one ``ItemsChanged`` of those that changed;
  the export rounds them and publishes a non-finite one as invalid). No validation, roster,
  limits, SoC counter, share rule or history.

The summary line that ``bench_service.py`` reads (missed ticks, tick failures) is still logged at
the configured interval, with the last real result's figures. Started by ``bench_service.py``
as the variants ``no-tick`` and ``min-tick``; not part of the service.

Usage: ``python benchmarks/tick_probe.py --tick none|minimal run --config ... --bus ...``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence

from dbus_aggregate_batteries import cli

CELLS = tuple(f"/Voltages/Cell{i}" for i in range(1, 33))


def _install(mode: str) -> None:
    from dbus_aggregate_batteries.core.engine import StepResult
    from dbus_aggregate_batteries.shell.app import Application
    from dbus_aggregate_batteries.shell.state import Kind

    real_tick: Callable[[Application], StepResult] = Application.tick

    def minimal(app: Application) -> None:
        volts = amps = soc = 0.0
        low, high = math.inf, -math.inf  # no cells: published as invalid, never inverted
        n = 0
        for svc in app.state.of_kind(Kind.PACK):
            values = svc.values
            v, a, s = values.get("/Dc/0/Voltage"), values.get("/Dc/0/Current"), values.get("/Soc")
            volts += v if type(v) is float else 0.0
            amps += a if type(a) is float else 0.0
            soc += s if type(s) is float else 0.0
            for path in CELLS:
                cell = values.get(path)
                if type(cell) is float:
                    low = min(low, cell)
                    high = max(high, cell)
            svc.changed.clear()
            n += 1
        if n and app.registered:
            volts /= n
            app.service.publish({
                "/Dc/0/Voltage": volts,
                "/Dc/0/Current": amps,
                "/Dc/0/Power": volts * amps,
                "/Soc": soc / n,
                "/System/MinCellVoltage": low,
                "/System/MaxCellVoltage": high,
                "/Info/MaxChargeCurrent": 100.0 * n,
                "/Info/MaxDischargeCurrent": 100.0 * n,
                "/Info/MaxChargeVoltage": 55.2,
            })

    def none(app: Application) -> None:
        for svc in app.state.of_kind(Kind.PACK):
            svc.changed.clear()

    work = minimal if mode == "minimal" else none

    def tick(app: Application) -> StepResult:
        result = app.last_result
        if result is None or not app.registered:
            return real_tick(app)  # until the service is up and has a result to log
        now = app.clock()
        work(app)
        app.counters.ticks += 1
        packs = len(app.state.of_kind(Kind.PACK))
        app._summary_if_due(now, result, packs, packs)
        app._last_tick_done = app.clock()
        return result

    Application.tick = tick  # type: ignore[method-assign,assignment]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tick", choices=("none", "minimal"), required=True)
    args, rest = p.parse_known_args(argv)
    # As the command does before importing anything heavy, so that the process is the same.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    cli._lean_process()
    _install(args.tick)
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main())
