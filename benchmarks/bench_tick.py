"""Cost of the parts of one service tick, without a bus: where the service's own CPU goes.

    python benchmarks/bench_tick.py [--packs 8] [--cells 24] [--ticks 300] [--gap 0]

Feeds simulated packs (``--all-cells-change`` load: every cell and the current change every
tick) through the same code the service runs per tick, timing each part separately:

* ``apply_one``: the per-signal model update (one call per changed path, as discovery does);
* ``snapshot``: ``ServiceState.snapshot`` (``pack_from_values``) for every pack;
* ``step``: the pure engine step;
* ``publish``: ``BusItemService.publish`` on a fake connection that marshals every message
  (the library's own work before the socket write) but sends nothing.

``--gap 1`` sleeps a second between ticks as the service does: caches are then cold at every
tick, which is what the service really pays (typically 2-3x the back-to-back figure).
``DAB_DBUS_LIBRARY`` picks the library whose marshalling is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import date
from typing import Any

from dbus_aggregate_batteries.config import parse_config
from dbus_aggregate_batteries.core.engine import EngineState, step
from dbus_aggregate_batteries.core.model import AuxSnapshot
from dbus_aggregate_batteries.core.venus import Value, round_for_path
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.export import BusItemService
from dbus_aggregate_batteries.shell.state import Kind, ServiceState
from dbus_aggregate_batteries.sim.model import Bank, PackModel, default_pack_specs, sine_profile


def published(values: dict[str, Value]) -> dict[str, Value]:
    """Values as a pack publishes them (rounded to the shown precision, flags as int)."""
    out: dict[str, Value] = {}
    for path, value in values.items():
        v = round_for_path(path, value)
        out[path] = int(v) if type(v) is bool else v
    return out


class MarshalOnlyBus:
    """Just enough of a MessageBus for BusItemService: marshals what it is given to send."""

    unique_name = ":1.0"
    connected = True

    def __init__(self) -> None:
        self.sent = 0

    def add_message_handler(self, handler: Any) -> None:
        pass

    def remove_message_handler(self, handler: Any) -> None:
        pass

    async def request_name(self, name: str, flags: Any) -> Any:
        return _dbus.RequestNameReply.PRIMARY_OWNER

    def send(self, msg: Any) -> None:
        msg._marshall(False)  # both libraries: the bytes that would be written
        self.sent += 1


async def run(args: argparse.Namespace) -> int:
    cfg = parse_config({"service": {"summary_interval_s": 0}})
    specs = default_pack_specs(args.packs, cells=args.cells, all_cells_change=True)
    bank = Bank([PackModel(s) for s in specs], profile=sine_profile())
    last = [published(p.values()) for p in bank.packs]
    packs = []
    for i, model in enumerate(bank.packs):
        svc = ServiceState(name=model.service_name, owner=f":1.{i + 1}", kind=Kind.PACK)
        svc.apply_scan(last[i], 0.0)
        packs.append(svc)
    name_path = cfg.discovery.name_path
    engine = EngineState()
    first = step(
        cfg,
        engine,
        [s.snapshot(name_path, with_cells=False)[0] for s in packs],
        AuxSnapshot(),
        now_s=0.0,
        today=date.today(),
    )
    bus = MarshalOnlyBus()
    out = BusItemService(bus, "com.victronenergy.battery.aggregate", signals="both")
    for path, value in first.values.items():
        out.add_path(path, value)
    await out.register()

    t_apply = t_snap = t_step = t_pub = 0.0
    signals = changed = 0
    now = 0.0
    for _ in range(args.ticks):
        if args.gap:
            time.sleep(args.gap)
        bank.step(1.0)
        changes = []
        for i, model in enumerate(bank.packs):
            new = published(model.values())
            old = last[i]
            changes.append(
                [
                    (p, v)
                    for p, v in new.items()
                    if p not in old or old[p] != v or type(old[p]) is not type(v)
                ]
            )
            last[i] = new
        now += 1.0
        t0 = time.perf_counter()
        for svc, pack_changes in zip(packs, changes, strict=True):
            for path, value in pack_changes:
                svc.apply_one(path, value, now)
            signals += len(pack_changes)
        t1 = time.perf_counter()
        snaps = [svc.snapshot(name_path, with_cells=False)[0] for svc in packs]
        t2 = time.perf_counter()
        result = step(cfg, engine, snaps, AuxSnapshot(), now_s=now, today=date.today())
        engine = result.state
        t3 = time.perf_counter()
        changed += out.publish(result.values)
        t4 = time.perf_counter()
        t_apply += t1 - t0
        t_snap += t2 - t1
        t_step += t3 - t2
        t_pub += t4 - t3

    n = args.ticks
    us = 1e6 / n
    tick = (t_snap + t_step + t_pub) * us
    print(
        f"{_dbus.LIBRARY}, {args.packs} packs x {args.cells} cells, {n} ticks, "
        f"gap {args.gap:g} s (per tick, mean)"
    )
    print(
        f"  apply_one  {t_apply * us:8.0f} us  ({signals / n:.0f} signals, "
        f"{t_apply * 1e6 / max(1, signals):.2f} us each)"
    )
    print(f"  snapshot   {t_snap * us:8.0f} us  ({t_snap * us / args.packs:.0f} us per pack)")
    print(f"  step       {t_step * us:8.0f} us")
    print(
        f"  publish    {t_pub * us:8.0f} us  ({changed / n:.1f} changed paths, "
        f"{bus.sent / n:.1f} messages)"
    )
    print(f"  tick       {tick:8.0f} us  = {tick / 1e4:.3f} % of one core at 1 tick/s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--packs", type=int, default=8)
    p.add_argument("--cells", type=int, default=24)
    p.add_argument("--ticks", type=int, default=300)
    p.add_argument("--gap", type=float, default=0.0, help="s to sleep between ticks")
    args = p.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
