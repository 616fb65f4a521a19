"""``python -m dbus_aggregate_batteries.sim``: run a simulated bank until SIGTERM or SIGINT.

Once every service is on the bus it prints one line ``READY <name> <name> ...`` to stdout, so a
parent process can wait for it instead of polling the bus. Exit status: 0 after a signal, 1 when
the bus or a name cannot be had, 2 for bad arguments.

``--closed-loop SCENARIO`` runs the closed loop instead (``sim.closedloop_bus``): the scenario's
packs, a Multi and an MPPT obey the limits of com.victronenergy.battery.aggregate; at the end
of the scenario (or on a signal) it prints ``RESULT <figures as JSON>`` and exits 0.
``--record FILE.jsonl`` writes the truth (cells, currents, limits, trips) as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence

from dbus_aggregate_batteries.sim.model import default_pack_specs, sine_profile
from dbus_aggregate_batteries.sim.services import SimBank

log = logging.getLogger("dbus_aggregate_batteries.sim")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m dbus_aggregate_batteries.sim",
        description="Simulated dbus-serialbattery packs (and Victron devices) on D-Bus.",
    )
    p.add_argument("--bus", default="session", help="system, session or a D-Bus address")
    p.add_argument("--batteries", type=int, default=2, help="number of packs (default 2)")
    p.add_argument(
        "--layout",
        choices=("v2", "v014", "mixed"),
        default="v2",
        help="driver version to imitate; mixed alternates v2 and v014 (default v2)",
    )
    p.add_argument("--cells", type=int, default=16, help="cells in series per pack")
    p.add_argument("--capacity", type=_positive, default=280.0, help="Ah per pack")
    p.add_argument("--chemistry", choices=("lfp", "lto"), default="lfp")
    p.add_argument("--soc", type=float, default=50.0, help="initial SoC of the first pack, %%")
    p.add_argument("--tick", type=_positive, default=1.0, help="seconds between updates")
    p.add_argument("--speed", type=_positive, default=1.0, help="simulated seconds per real second")
    p.add_argument("--amplitude", type=float, default=50.0, help="bank current sine amplitude, A")
    p.add_argument("--period", type=_positive, default=600.0, help="sine period, s")
    p.add_argument(
        "--all-cells-change",
        action="store_true",
        help="every cell voltage changes every tick (load benchmark)",
    )
    p.add_argument(
        "--quantized",
        action="store_true",
        help="publish at a real BMS's resolution (with --amplitude 0: a bank at rest that"
        " changes nothing at all)",
    )
    p.add_argument(
        "--victron",
        action="store_true",
        help="also publish a Multi, a solar charger and SmartShunts (battery and dcload)",
    )
    p.add_argument(
        "--closed-loop",
        metavar="SCENARIO",
        help="run a closed-loop scenario (shipped name or YAML file) against the aggregate",
    )
    p.add_argument("--record", metavar="FILE", help="closed loop: write the truth as JSON lines")
    p.add_argument(
        "--record-every", type=_positive, default=1.0, help="closed loop: simulated s per record"
    )
    p.add_argument("--log-level", default="WARNING")
    return p


async def run_closed_loop(args: argparse.Namespace) -> int:
    """Run a closed-loop scenario on the bus until it is over or a signal arrives."""
    # Imported here: the open-loop simulator does not need pydantic scenarios.
    from dbus_aggregate_batteries.config import ConfigError
    from dbus_aggregate_batteries.sim.closedloop_bus import BusClosedLoop, figures_json
    from dbus_aggregate_batteries.sim.scenario import load_scenario

    try:
        scn = load_scenario(args.closed_loop)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    record = open(args.record, "w", encoding="utf-8") if args.record else None  # noqa: SIM115
    loop_ = BusClosedLoop(scn, speed=args.speed, record=record, record_every_s=args.record_every)
    stop = asyncio.Event()
    aio = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        aio.add_signal_handler(signum, stop.set)
    try:
        try:
            await loop_.start(args.bus)
        except Exception as exc:
            log.error("cannot start the closed loop on %s: %s", args.bus, exc)
            await loop_.stop()
            return 1
        print("READY " + " ".join(loop_.service_names), flush=True)
        try:
            figures = await loop_.run(stop)
        finally:
            await loop_.stop()
        print("RESULT " + figures_json(figures), flush=True)
    finally:
        if record is not None:
            record.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            aio.remove_signal_handler(signum)
    return 0


async def run(args: argparse.Namespace) -> int:
    """Start the bank, tick until a signal arrives, then leave the bus."""
    specs = default_pack_specs(
        args.batteries,
        layout=args.layout,
        cells=args.cells,
        capacity_ah=args.capacity,
        chemistry=args.chemistry,
        soc_pct=args.soc,
        all_cells_change=args.all_cells_change,
    )
    if args.quantized:
        specs = [dataclasses.replace(spec, quantized=True) for spec in specs]
    sim = SimBank(
        specs,
        victron=args.victron,
        profile=sine_profile(amplitude_a=args.amplitude, period_s=args.period),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await sim.start(args.bus)
    except Exception as exc:
        log.error("cannot start the simulator on %s: %s", args.bus, exc)
        return 1
    print("READY " + " ".join(sim.service_names), flush=True)
    try:
        await sim.run(args.tick, stop, speed=args.speed)
    finally:
        await sim.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.batteries < 0 or not 1 <= args.cells <= 64:
        print("--batteries must be >= 0 and --cells 1..64", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_closed_loop(args) if args.closed_loop else run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
