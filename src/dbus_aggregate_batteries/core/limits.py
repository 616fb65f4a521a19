"""Charge and discharge current limits, and the BMS-mode charge voltage (pure).

Own mode:
- CCL = max_charge_current_a x f(charge table, highest cell); DCL = max_discharge_current_a x
  f(discharge table, lowest cell), f piecewise-linear and flat beyond the table's ends;
- any pack that blocks charge (AllowToCharge 0, a module blocking, or its own CCL 0) makes
  CCL 0; likewise DCL;
- DCL latch: set when the lowest cell is at or below ``min_cell_voltage_v``, cleared only above
  ``min_cell_voltage_v + min_cell_hysteresis_v``; while set, DCL is 0;
- an unknown highest (lowest) cell gives CCL (DCL) 0: no cell data, no permission.

BMS mode:
- CVL ``min``: the lowest of the packs' CVLs.
- CVL ``float_aware`` (fixes the original's KEEP_MAX_CVL, issues #94/#169): the lowest CVL
  among the packs that are NOT in float; only when every pack reports float does the bank
  follow the lowest float CVL.  So one pack dropping to float does not pull the bank down
  while the others still absorb, and once all are in float the bank is at float voltage.
  It never exceeds the highest pack CVL and never uses a floating pack's CVL while another
  pack absorbs.
- CCL/DCL ``min_times_n``: min over the packs that report one, times their number (equal
  sharing, what owners of the original expect); ``sum``: the sum.
- Any pack blocking charge (discharge) makes CCL (DCL) 0: DVCC ignores /Io/*, so a limit of 0
  is the only way the block reaches the chargers.  No pack reporting a limit gives 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dbus_aggregate_batteries.config import BmsLimitsConfig, OwnLimitsConfig, Table
from dbus_aggregate_batteries.core.model import Event, PackSnapshot, Severity


@dataclass(frozen=True, slots=True)
class CurrentLimits:
    """Charge and discharge current limits in A (never None, never negative)."""

    ccl_a: float
    dcl_a: float


def interpolate(table: Table, x: float) -> float:
    """The cell-voltage table's factor at ``x``."""
    return piecewise(table.cell_voltage_v, table.factor, x)


def piecewise(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear lookup, flat beyond the first and last points (every factor table)."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def update_discharge_latch(
    latched: bool, min_cell_v: float | None, cfg: OwnLimitsConfig
) -> bool:
    """The 'fully discharged' latch with hysteresis."""
    if min_cell_v is None:
        return latched
    if min_cell_v <= cfg.min_cell_voltage_v:
        return True
    if latched and min_cell_v > cfg.min_cell_voltage_v + cfg.min_cell_hysteresis_v:
        return False
    return latched


def own_current_limits(
    cfg: OwnLimitsConfig,
    packs: Sequence[PackSnapshot],
    *,
    max_cell_v: float | None,
    min_cell_v: float | None,
    discharge_latched: bool,
) -> tuple[CurrentLimits, tuple[Event, ...]]:
    """CCL and DCL from the cell-voltage tables, blocks and the discharge latch."""
    events: list[Event] = []
    if any(p.blocks_charge for p in packs):
        ccl = 0.0
    elif max_cell_v is None:
        ccl = 0.0
        events.append(Event(Severity.WARNING, "no-max-cell", "no cell voltages: CCL 0"))
    else:
        ccl = cfg.max_charge_current_a * interpolate(cfg.charge_table, max_cell_v)
    if any(p.blocks_discharge for p in packs) or discharge_latched:
        dcl = 0.0
    elif min_cell_v is None:
        dcl = 0.0
        events.append(Event(Severity.WARNING, "no-min-cell", "no cell voltages: DCL 0"))
    else:
        dcl = cfg.max_discharge_current_a * interpolate(cfg.discharge_table, min_cell_v)
    return CurrentLimits(max(0.0, ccl), max(0.0, dcl)), tuple(events)


def bms_cvl(cfg: BmsLimitsConfig, packs: Sequence[PackSnapshot]) -> float | None:
    """The bank CVL from the packs' CVLs (see the module docstring for the float rule)."""
    # One plain loop (it runs every tick); strict comparisons keep the first of equal values,
    # as min() does.
    float_aware = cfg.cvl == "float_aware"
    lowest: float | None = None  # over every pack that reports a CVL
    absorbing: float | None = None  # over those not in float
    for p in packs:
        cvl = p.cvl_v
        if cvl is None:
            continue
        if lowest is None or cvl < lowest:
            lowest = cvl
        if float_aware and not p.in_float and (absorbing is None or cvl < absorbing):
            absorbing = cvl
    return absorbing if absorbing is not None else lowest


def _combine(values: list[float], how: str) -> float:
    if not values:
        return 0.0
    return min(values) * len(values) if how == "min_times_n" else sum(values)


def bms_current_limits(
    cfg: BmsLimitsConfig, packs: Sequence[PackSnapshot]
) -> tuple[CurrentLimits, tuple[Event, ...]]:
    """CCL and DCL merged from the packs' own limits."""
    events: list[Event] = []
    ccls = [p.ccl_a for p in packs if p.ccl_a is not None]
    dcls = [p.dcl_a for p in packs if p.dcl_a is not None]
    if packs and not ccls:
        events.append(Event(Severity.WARNING, "no-ccl", "no pack reports a CCL: CCL 0"))
    if packs and not dcls:
        events.append(Event(Severity.WARNING, "no-dcl", "no pack reports a DCL: DCL 0"))
    ccl = 0.0 if any(p.blocks_charge for p in packs) else _combine(ccls, cfg.currents)
    dcl = 0.0 if any(p.blocks_discharge for p in packs) else _combine(dcls, cfg.currents)
    return CurrentLimits(max(0.0, ccl), max(0.0, dcl)), tuple(events)
