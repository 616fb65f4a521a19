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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from dbus_aggregate_batteries.core.model import PackSnapshot
from dbus_aggregate_batteries.core.venus import ALARM_PATHS

T = TypeVar("T")


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


def _values(packs: Sequence[PackSnapshot], get: Callable[[PackSnapshot], T | None]) -> list[T]:
    return [v for v in (get(p) for p in packs) if v is not None]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _sum_f(values: list[float]) -> float | None:
    return sum(values) if values else None


def _sum_i(values: list[int]) -> int | None:
    return sum(values) if values else None


def _labelled(pack: PackSnapshot, cell_id: str | None) -> str:
    return f"{pack.label}: {cell_id}" if cell_id else pack.label


def _extreme(
    packs: Sequence[PackSnapshot],
    value: Callable[[PackSnapshot], float | None],
    ident: Callable[[PackSnapshot], str | None],
    highest: bool,
) -> tuple[float | None, str | None]:
    best: PackSnapshot | None = None
    best_v: float | None = None
    for pack in packs:
        v = value(pack)
        if v is None:
            continue
        if best_v is None or (v > best_v if highest else v < best_v):
            best, best_v = pack, v
    if best is None:
        return None, None
    return best_v, _labelled(best, ident(best))


def _weighted_soc(packs: Sequence[PackSnapshot]) -> float | None:
    pairs = [(p.soc_pct, p.installed_capacity_ah) for p in packs if p.soc_pct is not None]
    if not pairs:
        return None
    weights = [c for _, c in pairs if c is not None and c > 0]
    if len(weights) == len(pairs):
        total = sum(weights)
        soc = sum(s * (c or 0.0) for s, c in pairs) / total
    else:
        # A pack without a usable capacity: weighting would be a guess; the plain mean is not.
        soc = sum(s for s, _ in pairs) / len(pairs)
    return min(100.0, max(0.0, soc))


def _time_to_go(packs: Sequence[PackSnapshot]) -> float | None:
    # The bank lasts as long as the capacity-weighted mean; any unknown pack makes it unknown.
    pairs = [(p.time_to_go_s, p.installed_capacity_ah) for p in packs]
    if not pairs or any(t is None or c is None or c <= 0 for t, c in pairs):
        return None
    total = sum(c for _, c in pairs if c is not None)
    return sum((t or 0.0) * (c or 0.0) for t, c in pairs) / total


def _consumed_ah(packs: Sequence[PackSnapshot]) -> float | None:
    # Victron's convention is <= 0; serialbattery up to v1.6 publishes it positive.
    values = _values(packs, lambda p: p.consumed_ah)
    return -sum(abs(v) for v in values) if values else None


def _cells_per_battery(packs: Sequence[PackSnapshot]) -> int | None:
    # Parallel packs must have equal counts; if they differ the lowest gives the lower CVL.
    counts = _values(packs, lambda p: p.cells_per_battery)
    if not counts:
        counts = [len(p.cells) for p in packs if p.cells]
    return min(counts) if counts else None


_CHECKED: tuple[tuple[str, Callable[[PackSnapshot], object]], ...] = (
    ("/Dc/0/Voltage", lambda p: p.voltage_v),
    ("/Dc/0/Current", lambda p: p.current_a),
    ("/Soc", lambda p: p.soc_pct),
    ("/InstalledCapacity", lambda p: p.installed_capacity_ah),
    ("/System/MaxCellVoltage", lambda p: p.max_cell_v),
    ("/System/MinCellVoltage", lambda p: p.min_cell_v),
    ("/Info/MaxChargeVoltage", lambda p: p.cvl_v),
    ("/Info/MaxChargeCurrent", lambda p: p.ccl_a),
    ("/Info/MaxDischargeCurrent", lambda p: p.dcl_a),
)


def merge_packs(packs: Sequence[PackSnapshot]) -> Merged:
    """Merge the packs' snapshots into the bank's values."""
    max_cell, max_cell_id = _extreme(packs, lambda p: p.max_cell_v, lambda p: p.max_cell_id, True)
    min_cell, min_cell_id = _extreme(packs, lambda p: p.min_cell_v, lambda p: p.min_cell_id, False)
    max_t, max_t_id = _extreme(packs, lambda p: p.max_cell_temp_c, lambda p: p.max_temp_id, True)
    min_t, min_t_id = _extreme(packs, lambda p: p.min_cell_temp_c, lambda p: p.min_temp_id, False)
    alarms = tuple(
        max((a for a in (p.alarms[i] for p in packs) if a is not None), default=None)
        for i in range(len(ALARM_PATHS))
    )
    power_values = _values(packs, lambda p: p.power_w)
    missing = tuple(
        path for path, get in _CHECKED if packs and any(get(p) is None for p in packs)
    )
    return Merged(
        count=len(packs),
        voltage_v=_mean(_values(packs, lambda p: p.voltage_v)),
        current_a=_sum_f(_values(packs, lambda p: p.current_a)),
        power_w=sum(power_values) if packs and len(power_values) == len(packs) else None,
        temperature_c=_mean(_values(packs, lambda p: p.temperature_c)),
        soc_pct=_weighted_soc(packs),
        capacity_ah=_sum_f(_values(packs, lambda p: p.capacity_ah)),
        installed_capacity_ah=_sum_f(_values(packs, lambda p: p.installed_capacity_ah)),
        consumed_ah=_consumed_ah(packs),
        time_to_go_s=_time_to_go(packs),
        max_cell_v=max_cell,
        max_cell_id=max_cell_id,
        min_cell_v=min_cell,
        min_cell_id=min_cell_id,
        max_cell_temp_c=max_t,
        max_temp_id=max_t_id,
        min_cell_temp_c=min_t,
        min_temp_id=min_t_id,
        voltages_sum_v=_mean(_values(packs, lambda p: p.voltages_sum_v)),
        cell_diff_v=None if max_cell is None or min_cell is None else max_cell - min_cell,
        cells_per_battery=_cells_per_battery(packs),
        modules_online=_sum_i(_values(packs, lambda p: p.modules_online)),
        modules_offline=_sum_i(_values(packs, lambda p: p.modules_offline)),
        blocking_charge=_sum_i(_values(packs, lambda p: p.blocking_charge)),
        blocking_discharge=_sum_i(_values(packs, lambda p: p.blocking_discharge)),
        alarms=alarms,
        allow_to_charge=min(_values(packs, lambda p: p.allow_to_charge), default=None),
        allow_to_discharge=min(_values(packs, lambda p: p.allow_to_discharge), default=None),
        allow_to_balance=min(_values(packs, lambda p: p.allow_to_balance), default=None),
        balancing=max(_values(packs, lambda p: p.balancing), default=None),
        missing=missing,
    )
