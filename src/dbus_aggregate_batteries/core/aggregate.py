"""Merge N pack snapshots into one bank (pure).

Rules (the original program's, corrected):
- voltages and temperatures: mean over the packs that have the value, never divided by a
  configured pack count;
- current, power, capacities, module counts: sums over the packs that have them;
- SoC: weighted by installed capacity; a zero total capacity falls back to the plain mean;
- extreme cells and temperatures: global max/min, the id labelled "<pack label>: <cell id>";
- alarms: the worst value; /Io/AllowTo*: the minimum (one pack saying no is a no);
- a missing value never raises: the result is computed from what is there, and ``missing``
  names every path that some pack lacked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter

from dbus_aggregate_batteries.core.model import PackSnapshot
from dbus_aggregate_batteries.core.venus import ALARM_PATHS


@dataclass(frozen=True, slots=True)
class Merged:
    """The bank as the packs describe it (before our own SoC and limits)."""

    count: int
    voltage_v: float | None
    current_a: float | None
    power_w: float | None
    temperature_c: float | None
    soc_pct: float | None
    capacity_ah: float | None
    installed_capacity_ah: float | None
    consumed_ah: float | None
    time_to_go_s: float | None
    max_cell_v: float | None
    max_cell_id: str | None
    min_cell_v: float | None
    min_cell_id: str | None
    max_cell_temp_c: float | None
    max_temp_id: str | None
    min_cell_temp_c: float | None
    min_temp_id: str | None
    voltages_sum_v: float | None
    cell_diff_v: float | None
    cells_per_battery: int | None
    modules_online: int | None
    modules_offline: int | None
    blocking_charge: int | None
    blocking_discharge: int | None
    alarms: tuple[int | None, ...]
    allow_to_charge: int | None
    allow_to_discharge: int | None
    allow_to_balance: int | None
    balancing: int | None
    missing: tuple[str, ...]


def _labelled(pack: PackSnapshot, cell_id: str | None) -> str:
    return f"{pack.label}: {cell_id}" if cell_id else pack.label


_CHECKED: tuple[tuple[str, str], ...] = (
    ("/Dc/0/Voltage", "voltage_v"),
    ("/Dc/0/Current", "current_a"),
    ("/Soc", "soc_pct"),
    ("/InstalledCapacity", "installed_capacity_ah"),
    ("/System/MaxCellVoltage", "max_cell_v"),
    ("/System/MinCellVoltage", "min_cell_v"),
    ("/Info/MaxChargeVoltage", "cvl_v"),
    ("/Info/MaxChargeCurrent", "ccl_a"),
    ("/Info/MaxDischargeCurrent", "dcl_a"),
)
_checked_values = attrgetter(*(name for _, name in _CHECKED))


def _missing(packs: Sequence[PackSnapshot]) -> tuple[str, ...]:
    """The checked paths that some pack lacks (one C-level getter per pack: usually none)."""
    rows = [_checked_values(p) for p in packs]
    if None not in chain.from_iterable(rows):
        return ()
    return tuple(
        path for i, (path, _) in enumerate(_CHECKED) if any(row[i] is None for row in rows)
    )


def _alarms(packs: Sequence[PackSnapshot]) -> tuple[int | None, ...]:
    """The worst level of every alarm (None where no pack reports it)."""
    if not packs:
        return tuple(None for _ in ALARM_PATHS)
    first = packs[0].alarms
    if all(p.alarms == first for p in packs):
        # Usually every pack reports the same levels (all 0): each column's max is the value.
        return first
    return tuple(
        max([a for a in column if a is not None], default=None)
        for column in zip(*[p.alarms for p in packs], strict=True)
    )


def merge_packs(packs: Sequence[PackSnapshot]) -> Merged:
    """Merge the packs' snapshots into the bank's values."""
    # Runs once a second on cold caches, where the cost is the distinct code and data a tick
    # touches: one loop over the packs reads each snapshot once, instead of a comprehension
    # (its own code object) per field.  The sums are still ``sum`` over the same lists in
    # the same order, and the extremes keep the first of equal packs (strict comparisons),
    # so every result is bit for bit what the per-field definitions give.
    voltages: list[float] = []
    currents: list[float] = []
    powers: list[float] = []
    temperatures: list[float] = []
    capacities: list[float] = []
    installed: list[float] = []
    consumed: list[float] = []
    sums: list[float] = []
    counts: list[int] = []
    online: list[int] = []
    offline: list[int] = []
    blocking_c: list[int] = []
    blocking_d: list[int] = []
    allow_c: list[int] = []
    allow_d: list[int] = []
    allow_b: list[int] = []
    balancing: list[int] = []
    socs: list[float] = []  # SoC of every pack reporting one
    weights: list[float] = []  # their capacities, where usable
    ttgs: list[float] = []  # time-to-go of packs with a usable capacity
    ttg_weights: list[float] = []
    hi = lo = hi_t = lo_t = None  # the packs with the extreme cells and temperatures
    alarms = packs[0].alarms if packs else None
    equal_alarms = True  # usually every pack reports the same levels (all 0)
    lacking = False  # some pack lacks one of the checked paths (usually none does)
    for p in packs:
        v = p.max_cell_v
        if v is None:
            lacking = True
        elif hi is None or v > hi.max_cell_v:  # type: ignore[operator]
            hi = p
        v = p.min_cell_v
        if v is None:
            lacking = True
        elif lo is None or v < lo.min_cell_v:  # type: ignore[operator]
            lo = p
        v = p.max_cell_temp_c
        if v is not None and (hi_t is None or v > hi_t.max_cell_temp_c):  # type: ignore[operator]
            hi_t = p
        v = p.min_cell_temp_c
        if v is not None and (lo_t is None or v < lo_t.min_cell_temp_c):  # type: ignore[operator]
            lo_t = p
        if p.voltage_v is not None:
            voltages.append(p.voltage_v)
        else:
            lacking = True
        if p.current_a is not None:
            currents.append(p.current_a)
        else:
            lacking = True
        if p.power_w is not None:
            powers.append(p.power_w)
        if p.temperature_c is not None:
            temperatures.append(p.temperature_c)
        if p.capacity_ah is not None:
            capacities.append(p.capacity_ah)
        cap = p.installed_capacity_ah
        if cap is not None:
            installed.append(cap)
        else:
            lacking = True
        if p.soc_pct is not None:
            socs.append(p.soc_pct)
            if cap is not None and cap > 0:
                weights.append(cap)
        else:
            lacking = True
        if p.cvl_v is None or p.ccl_a is None or p.dcl_a is None:
            lacking = True
        if p.alarms != alarms:
            equal_alarms = False
        if p.time_to_go_s is not None and cap is not None and cap > 0:
            ttgs.append(p.time_to_go_s)
            ttg_weights.append(cap)
        if p.consumed_ah is not None:
            # Victron's convention is <= 0; serialbattery up to v1.6 publishes it positive.
            consumed.append(abs(p.consumed_ah))
        if p.voltages_sum_v is not None:
            sums.append(p.voltages_sum_v)
        if p.cells_per_battery is not None:
            counts.append(p.cells_per_battery)
        if p.modules_online is not None:
            online.append(p.modules_online)
        if p.modules_offline is not None:
            offline.append(p.modules_offline)
        if p.blocking_charge is not None:
            blocking_c.append(p.blocking_charge)
        if p.blocking_discharge is not None:
            blocking_d.append(p.blocking_discharge)
        if p.allow_to_charge is not None:
            allow_c.append(p.allow_to_charge)
        if p.allow_to_discharge is not None:
            allow_d.append(p.allow_to_discharge)
        if p.allow_to_balance is not None:
            allow_b.append(p.allow_to_balance)
        if p.balancing is not None:
            balancing.append(p.balancing)
    max_cell = None if hi is None else hi.max_cell_v
    min_cell = None if lo is None else lo.min_cell_v
    soc: float | None = None
    if socs:
        if len(weights) == len(socs):
            # Weighted by installed capacity; the same products as the pairs' definition.
            soc = sum([s * c for s, c in zip(socs, weights, strict=True)]) / sum(weights)
        else:
            # A pack without a usable capacity: weighting would be a guess; the plain mean
            # is not.
            soc = sum(socs) / len(socs)
        soc = min(100.0, max(0.0, soc))
    time_to_go: float | None = None
    # The bank lasts as long as the capacity-weighted mean; any unknown pack makes it unknown.
    if ttgs and len(ttgs) == len(packs):
        time_to_go = sum([t * c for t, c in zip(ttgs, ttg_weights, strict=True)]) / sum(
            ttg_weights
        )
    if not counts:
        # Parallel packs must have equal counts; if they differ the lowest gives the lower CVL.
        counts = [len(p.cells) for p in packs if p.cells]
    return Merged(
        count=len(packs),
        voltage_v=sum(voltages) / len(voltages) if voltages else None,
        current_a=sum(currents) if currents else None,
        power_w=sum(powers) if packs and len(powers) == len(packs) else None,
        temperature_c=sum(temperatures) / len(temperatures) if temperatures else None,
        soc_pct=soc,
        capacity_ah=sum(capacities) if capacities else None,
        installed_capacity_ah=sum(installed) if installed else None,
        consumed_ah=-sum(consumed) if consumed else None,
        time_to_go_s=time_to_go,
        max_cell_v=max_cell,
        max_cell_id=None if hi is None else _labelled(hi, hi.max_cell_id),
        min_cell_v=min_cell,
        min_cell_id=None if lo is None else _labelled(lo, lo.min_cell_id),
        max_cell_temp_c=None if hi_t is None else hi_t.max_cell_temp_c,
        max_temp_id=None if hi_t is None else _labelled(hi_t, hi_t.max_temp_id),
        min_cell_temp_c=None if lo_t is None else lo_t.min_cell_temp_c,
        min_temp_id=None if lo_t is None else _labelled(lo_t, lo_t.min_temp_id),
        voltages_sum_v=sum(sums) / len(sums) if sums else None,
        cell_diff_v=None if max_cell is None or min_cell is None else max_cell - min_cell,
        cells_per_battery=min(counts) if counts else None,
        modules_online=sum(online) if online else None,
        modules_offline=sum(offline) if offline else None,
        blocking_charge=sum(blocking_c) if blocking_c else None,
        blocking_discharge=sum(blocking_d) if blocking_d else None,
        # Equal levels: each column's max is the value (the first pack's tuple, as _alarms).
        alarms=alarms if equal_alarms and alarms is not None else _alarms(packs),
        allow_to_charge=min(allow_c, default=None),
        allow_to_discharge=min(allow_d, default=None),
        allow_to_balance=min(allow_b, default=None),
        balancing=max(balancing, default=None),
        missing=_missing(packs) if lacking else (),
    )
