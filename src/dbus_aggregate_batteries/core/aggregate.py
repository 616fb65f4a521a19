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
    with_value = [p for p in packs if value(p) is not None]
    if not with_value:
        return None, None
    # max/min return the first of equal packs, as a strict comparison in a loop would.
    best = max(with_value, key=value) if highest else min(with_value, key=value)  # type: ignore[arg-type]
    return value(best), _labelled(best, ident(best))


def _weighted_soc(packs: Sequence[PackSnapshot]) -> float | None:
    pairs = [(p.soc_pct, p.installed_capacity_ah) for p in packs if p.soc_pct is not None]
    if not pairs:
        return None
    weights = [c for _, c in pairs if c is not None and c > 0]
    if len(weights) == len(pairs):
        total = sum(weights)
        # Every pair has its capacity in ``weights`` (same order): the same products.
        soc = sum([s * c for (s, _), c in zip(pairs, weights, strict=True)]) / total
    else:
        # A pack without a usable capacity: weighting would be a guess; the plain mean is not.
        soc = sum(s for s, _ in pairs) / len(pairs)
    return min(100.0, max(0.0, soc))


def _time_to_go(packs: Sequence[PackSnapshot]) -> float | None:
    # The bank lasts as long as the capacity-weighted mean; any unknown pack makes it unknown.
    pairs = [
        (p.time_to_go_s, p.installed_capacity_ah) for p in packs
        if p.time_to_go_s is not None
        and p.installed_capacity_ah is not None
        and p.installed_capacity_ah > 0
    ]
    if not pairs or len(pairs) != len(packs):
        return None
    total = sum([c for _, c in pairs])
    return sum([(t or 0.0) * c for t, c in pairs]) / total


def _consumed_ah(packs: Sequence[PackSnapshot]) -> float | None:
    # Victron's convention is <= 0; serialbattery up to v1.6 publishes it positive.
    values = [abs(p.consumed_ah) for p in packs if p.consumed_ah is not None]
    return -sum(values) if values else None


def _cells_per_battery(packs: Sequence[PackSnapshot]) -> int | None:
    # Parallel packs must have equal counts; if they differ the lowest gives the lower CVL.
    counts = [p.cells_per_battery for p in packs if p.cells_per_battery is not None]
    if not counts:
        counts = [len(p.cells) for p in packs if p.cells]
    return min(counts) if counts else None


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


# Getters built once (attrgetter runs in C; a lambda per call and per pack did not).
_MAX_CELL, _MAX_CELL_ID = attrgetter("max_cell_v"), attrgetter("max_cell_id")
_MIN_CELL, _MIN_CELL_ID = attrgetter("min_cell_v"), attrgetter("min_cell_id")
_MAX_TEMP, _MAX_TEMP_ID = attrgetter("max_cell_temp_c"), attrgetter("max_temp_id")
_MIN_TEMP, _MIN_TEMP_ID = attrgetter("min_cell_temp_c"), attrgetter("min_temp_id")


def merge_packs(packs: Sequence[PackSnapshot]) -> Merged:
    """Merge the packs' snapshots into the bank's values."""
    # Runs every tick: plain comprehensions over the packs, not getter lambdas (a third of
    # the step's cost went into calling them).  The sums are the same ``sum`` over the same
    # lists in the same order, so every result is bit-for-bit what it was.
    max_cell, max_cell_id = _extreme(packs, _MAX_CELL, _MAX_CELL_ID, True)
    min_cell, min_cell_id = _extreme(packs, _MIN_CELL, _MIN_CELL_ID, False)
    max_t, max_t_id = _extreme(packs, _MAX_TEMP, _MAX_TEMP_ID, True)
    min_t, min_t_id = _extreme(packs, _MIN_TEMP, _MIN_TEMP_ID, False)
    power_values = [p.power_w for p in packs if p.power_w is not None]
    installed = [p.installed_capacity_ah for p in packs if p.installed_capacity_ah is not None]
    return Merged(
        count=len(packs),
        voltage_v=_mean([p.voltage_v for p in packs if p.voltage_v is not None]),
        current_a=_sum_f([p.current_a for p in packs if p.current_a is not None]),
        power_w=sum(power_values) if packs and len(power_values) == len(packs) else None,
        temperature_c=_mean([p.temperature_c for p in packs if p.temperature_c is not None]),
        soc_pct=_weighted_soc(packs),
        capacity_ah=_sum_f([p.capacity_ah for p in packs if p.capacity_ah is not None]),
        installed_capacity_ah=_sum_f(installed),
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
        voltages_sum_v=_mean([p.voltages_sum_v for p in packs if p.voltages_sum_v is not None]),
        cell_diff_v=None if max_cell is None or min_cell is None else max_cell - min_cell,
        cells_per_battery=_cells_per_battery(packs),
        modules_online=_sum_i([p.modules_online for p in packs if p.modules_online is not None]),
        modules_offline=_sum_i(
            [p.modules_offline for p in packs if p.modules_offline is not None]
        ),
        blocking_charge=_sum_i(
            [p.blocking_charge for p in packs if p.blocking_charge is not None]
        ),
        blocking_discharge=_sum_i(
            [p.blocking_discharge for p in packs if p.blocking_discharge is not None]
        ),
        alarms=_alarms(packs),
        allow_to_charge=min(
            [p.allow_to_charge for p in packs if p.allow_to_charge is not None], default=None
        ),
        allow_to_discharge=min(
            [p.allow_to_discharge for p in packs if p.allow_to_discharge is not None],
            default=None,
        ),
        allow_to_balance=min(
            [p.allow_to_balance for p in packs if p.allow_to_balance is not None], default=None
        ),
        balancing=max([p.balancing for p in packs if p.balancing is not None], default=None),
        missing=_missing(packs),
    )
