"""Cost of the parts of one service tick, without a bus: where the service's own CPU goes.

    python benchmarks/bench_tick.py [--packs 2,8,16] [--cells 24,32] [--change 0.1]
                                    [--mode bms|own] [--ticks 300] [--gap 0] [--compare]

Simulated packs (the simulator's full v2 path set, about 130 + one per cell) go through the
same code the service runs per tick, each part timed separately:

* ``apply_one``: the per-signal model update (one call per changed path, as discovery does);
* ``snapshot``: ``ServiceState.snapshot`` for every pack (incremental: only changed paths
  are checked again);
* ``assess``: the pure roster (``core.roster.assess``) on every pack's snapshot, as the
  service runs it before the step (building its inputs included);
* ``step``: the pure engine step;
* ``publish``: ``BusItemService.publish`` on a fake connection that marshals every message
  (the library's own work before the socket write) but sends nothing.

Load: ``--change 0.1`` changes a random 10 % of each pack's values every tick (float paths,
cells included, to a value within ~0.3 % of its starting one, rounded as published);
``--change 0`` with ``--all-cells-change`` is the simulator's own physics with every cell
changing.
``--compare`` also runs the previous implementation on the same load: a full
``pack_from_values`` per changed pack and ItemsChanged plus a PropertiesChanged per changed
path. ``--gap 1`` sleeps a second between ticks as the service does: caches are then cold at
every tick, which is what the service really pays (typically 2-3x the back-to-back figure).
``DAB_DBUS_LIBRARY`` picks the library whose marshalling is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from dbus_aggregate_batteries.config import parse_config
from dbus_aggregate_batteries.core.engine import EngineState, step
from dbus_aggregate_batteries.core.model import AuxSnapshot, PackSnapshot, pack_from_values
from dbus_aggregate_batteries.core.roster import PackInput, RosterState, assess
from dbus_aggregate_batteries.core.venus import Value, round_for_path
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.export import BusItemService, Signals
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


class Load:
    """Per tick, the (path, value) changes of every pack."""

    def __init__(self, packs: int, cells: int, fraction: float, seed: int = 1) -> None:
        self.fraction = fraction
        specs = default_pack_specs(packs, cells=cells, all_cells_change=fraction <= 0)
        self.bank = Bank([PackModel(s) for s in specs], profile=sine_profile())
        self.last = [published(p.values()) for p in self.bank.packs]
        self.start = [dict(values) for values in self.last]
        self.rng = random.Random(seed)
        # Paths that may change under --change: the numbers a pack measures (not flags).
        self.floats = [
            [p for p, v in values.items() if type(v) is float] for values in self.last
        ]

    def tick(self) -> list[list[tuple[str, Value]]]:
        if self.fraction <= 0:
            return self._physics()
        out = []
        for values, start, floats in zip(self.last, self.start, self.floats, strict=True):
            k = max(1, round(self.fraction * len(values)))
            changes: list[tuple[str, Value]] = []
            for path in self.rng.sample(floats, min(k, len(floats))):
                origin = start[path]
                assert isinstance(origin, float)
                # Around the starting value, never a walk: a walk drifts the extreme cells apart
                # until the pack fails its checks and the tick times the missing-pack path.
                jitter = self.rng.uniform(-0.003, 0.003)
                new = round_for_path(path, origin * (1.0 + jitter) + self.rng.uniform(-0.01, 0.01))
                values[path] = new
                changes.append((path, new))
            out.append(changes)
        return out

    def _physics(self) -> list[list[tuple[str, Value]]]:
        self.bank.step(1.0)
        out = []
        for i, model in enumerate(self.bank.packs):
            new = published(model.values())
            old = self.last[i]
            out.append(
                [
                    (p, v)
                    for p, v in new.items()
                    if p not in old or old[p] != v or type(old[p]) is not type(v)
                ]
            )
            self.last[i] = new
        return out


@dataclass
class Times:
    apply: float = 0.0
    snapshot: float = 0.0
    assess: float = 0.0
    step: float = 0.0
    publish: float = 0.0
    signals: int = 0
    changed: int = 0
    messages: int = 0

    @property
    def tick(self) -> float:
        return self.snapshot + self.assess + self.step + self.publish


def full_snapshots(packs: list[ServiceState], name_path: str, with_cells: bool) -> Callable[
    [], list[PackSnapshot]
]:
    """The previous implementation: pack_from_values again whenever any value changed."""
    cache: dict[str, PackSnapshot] = {}

    def snaps() -> list[PackSnapshot]:
        out = []
        for svc in packs:
            got = cache.get(svc.name)
            if got is None or svc.changed:
                got, _ = pack_from_values(
                    svc.name, svc.label(name_path), svc.values, with_cells=with_cells
                )
                cache[svc.name] = got
                svc.changed.clear()  # these states feed only this function
            out.append(got)
        return out

    return snaps


async def run_one(
    n_packs: int, cells: int, args: argparse.Namespace, *, previous: bool
) -> Times:
    cfg = parse_config({"service": {"summary_interval_s": 0}, "limits": {"mode": args.mode}})
    with_cells = args.mode == "own"
    load = Load(n_packs, cells, args.change)
    packs = []
    for i, values in enumerate(load.last):
        svc = ServiceState(name=f"com.victronenergy.battery.ttyUSB{i}", owner=f":1.{i + 1}",
                           kind=Kind.PACK)
        svc.apply_scan(values, 0.0)
        packs.append(svc)
    name_path = cfg.discovery.name_path
    if previous:
        snapshots = full_snapshots(packs, name_path, with_cells)
    else:
        def snapshots() -> list[PackSnapshot]:
            return [s.snapshot(name_path, with_cells=with_cells)[0] for s in packs]
    engine = EngineState()
    roster = RosterState()
    first = step(cfg, engine, snapshots(), AuxSnapshot(), now_s=0.0, today=date.today())
    bus = MarshalOnlyBus()
    signals: Signals = "both" if previous else "items"
    out = BusItemService(bus, "com.victronenergy.battery.aggregate", signals=signals)
    for path, value in first.values.items():
        out.add_path(path, value)
    await out.register()

    t = Times()
    now = 0.0
    for _ in range(args.ticks):
        if args.gap:
            time.sleep(args.gap)
        changes = load.tick()
        now += 1.0
        t0 = time.perf_counter()
        for svc, pack_changes in zip(packs, changes, strict=True):
            for path, value in pack_changes:
                svc.apply_one(path, value, now)
            t.signals += len(pack_changes)
        t1 = time.perf_counter()
        snaps = snapshots()
        t2 = time.perf_counter()
        inputs = [
            PackInput(svc.name, svc.identity, snap, svc.alive_s, svc.probe_failed,
                      svc.values.get("/Connected", 1))
            for svc, snap in zip(packs, snaps, strict=True)
        ]
        verdict = assess(cfg, roster, inputs, now_s=now)
        roster = verdict.state
        t3 = time.perf_counter()
        result = step(cfg, engine, verdict.healthy, AuxSnapshot(), now_s=now,
                      today=date.today(), missing=verdict.missing)
        engine = result.state
        t4 = time.perf_counter()
        t.changed += out.publish(result.values)
        t5 = time.perf_counter()
        t.apply += t1 - t0
        t.snapshot += t2 - t1
        t.assess += t3 - t2
        t.step += t4 - t3
        t.publish += t5 - t4
    t.messages = bus.sent
    return t


def _csv(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


async def run(args: argparse.Namespace) -> int:
    load = f"{args.change:.0%} of values" if args.change > 0 else "every cell (physics)"
    print(
        f"{_dbus.LIBRARY}, limits.mode {args.mode}, {load} changing per tick, "
        f"{args.ticks} ticks, gap {args.gap:g} s; per tick, median of {args.repeat} runs "
        f"(min..max), us"
    )
    header = (
        "| packs x cells | signals | apply_one | snapshot | assess | step | publish | tick "
        "| messages |"
    )
    if args.compare:
        header += " previous tick | previous messages |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    us = 1e6 / args.ticks
    for n in args.packs:
        for cells in args.cells:
            runs = [await run_one(n, cells, args, previous=False) for _ in range(args.repeat)]
            old = (
                [await run_one(n, cells, args, previous=True) for _ in range(args.repeat)]
                if args.compare
                else []
            )

            def fmt(values: list[float]) -> str:
                med = statistics.median(values)
                return f"{med:.0f} ({min(values):.0f}..{max(values):.0f})"

            r = runs[0]
            row = (
                f"| {n} x {cells} | {r.signals / args.ticks:.0f} "
                f"| {fmt([x.apply * us for x in runs])} "
                f"| {fmt([x.snapshot * us for x in runs])} "
                f"| {fmt([x.assess * us for x in runs])} "
                f"| {fmt([x.step * us for x in runs])} "
                f"| {fmt([x.publish * us for x in runs])} "
                f"| **{fmt([x.tick * us for x in runs])}** "
                f"| {r.messages / args.ticks:.1f} |"
            )
            if old:
                row += (
                    f" {fmt([x.tick * us for x in old])} "
                    f"| {old[0].messages / args.ticks:.1f} |"
                )
            print(row, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--packs", type=_csv, default=[8], help="pack counts, e.g. 2,8,16")
    p.add_argument("--cells", type=_csv, default=[24], help="cells per pack, e.g. 24,32")
    p.add_argument("--change", type=float, default=0.1,
                   help="fraction of each pack's values changing per tick (0: simulator physics)")
    p.add_argument("--mode", choices=("bms", "own"), default="bms", help="limits.mode")
    p.add_argument("--ticks", type=int, default=300)
    p.add_argument("--repeat", type=int, default=3, help="runs per size (median reported)")
    p.add_argument("--gap", type=float, default=0.0, help="s to sleep between ticks")
    p.add_argument("--compare", action="store_true",
                   help="also time the previous implementation (full snapshot, both signals)")
    args = p.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
