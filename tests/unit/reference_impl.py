"""A second, deliberately naive implementation of the pure core's rules, for agreement tests.

Written from the module docstrings of ``aggregate``, ``soc``, ``limits`` and ``charge`` and
from upstream.md section 5, not from the production code.  Everything here favours being
obviously right over being fast or general: plain loops, no shared helpers with ``src``.

Packs are read through their public ``PackSnapshot`` fields only; the block rules and the
float rule are restated here rather than taken from the snapshot's properties.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from dbus_aggregate_batteries.core.model import PackSnapshot

# Victron shows at most 10 days of time-to-go (soc.py docstring and Venus convention).
TEN_DAYS_S = 10 * 24 * 3600.0

IDLE, ACTIVE, HOLD = "idle", "active", "hold"


# --------------------------------------------------------------------------- blocks / float


def blocks_charge(pack: PackSnapshot) -> bool:
    """AllowToCharge 0, a module blocking charge, or the pack's own CCL at (or below) 0."""
    if pack.allow_to_charge == 0:
        return True
    if pack.blocking_charge is not None and pack.blocking_charge > 0:
        return True
    return pack.ccl_a is not None and pack.ccl_a <= 0.0


def blocks_discharge(pack: PackSnapshot) -> bool:
    """AllowToDischarge 0, a module blocking discharge, or the pack's own DCL at (or below) 0."""
    if pack.allow_to_discharge == 0:
        return True
    if pack.blocking_discharge is not None and pack.blocking_discharge > 0:
        return True
    return pack.dcl_a is not None and pack.dcl_a <= 0.0


def in_float(pack: PackSnapshot) -> bool:
    """The BMS says float somewhere in /Info/ChargeMode (any case)."""
    if pack.charge_mode is None:
        return False
    return "float" in pack.charge_mode.lower()


# --------------------------------------------------------------------------- merge


def weighted_soc(packs: Sequence[PackSnapshot]) -> float | None:
    """SoC weighted by installed capacity over the packs that report a SoC.

    If any of those packs lacks a positive installed capacity, the weighting would be a guess,
    so the plain mean is used instead.  The result is kept within 0..100.
    """
    socs: list[float] = []
    caps: list[float | None] = []
    for p in packs:
        if p.soc_pct is None:
            continue
        socs.append(p.soc_pct)
        caps.append(p.installed_capacity_ah)
    if not socs:
        return None
    if all(c is not None and c > 0.0 for c in caps):
        total_cap = 0.0
        total_charge = 0.0
        for s, c in zip(socs, caps, strict=True):
            assert c is not None
            total_cap += c
            total_charge += s * c
        soc = total_charge / total_cap
    else:
        soc = sum(socs) / len(socs)
    if soc < 0.0:
        return 0.0
    if soc > 100.0:
        return 100.0
    return soc


def _label(pack: PackSnapshot, cell_id: str | None) -> str:
    if cell_id:
        return pack.label + ": " + cell_id
    return pack.label


def cell_extremes(
    packs: Sequence[PackSnapshot],
) -> tuple[float | None, str | None, float | None, str | None]:
    """(max cell, its labelled id, min cell, its labelled id); the first pack wins a tie."""
    max_v: float | None = None
    max_id: str | None = None
    min_v: float | None = None
    min_id: str | None = None
    for p in packs:
        if p.max_cell_v is not None and (max_v is None or p.max_cell_v > max_v):
            max_v = p.max_cell_v
            max_id = _label(p, p.max_cell_id)
        if p.min_cell_v is not None and (min_v is None or p.min_cell_v < min_v):
            min_v = p.min_cell_v
            min_id = _label(p, p.min_cell_id)
    return max_v, max_id, min_v, min_id


# --------------------------------------------------------------------------- Coulomb counter


@dataclass(frozen=True)
class CounterResult:
    """The reference counter's state after a step and what it publishes."""

    charge_ah: float | None
    last_s: float | None
    soc_pct: float | None = None
    capacity_ah: float | None = None
    consumed_ah: float | None = None
    time_to_go_s: float | None = None
    time_to_full_s: float | None = None


def counter_step(
    charge_ah: float | None,
    last_s: float | None,
    *,
    efficiency: float,
    max_gap_s: float,
    full_cell_v: float,
    empty_cell_v: float,
    reset_to_zero_at_empty: bool,
    min_current_a: float,
    now_s: float,
    current_a: float | None,
    installed_ah: float | None,
    bms_soc_pct: float | None,
    max_cell_v: float | None,
    min_cell_v: float | None,
    full_max_current_c: float | None = None,
) -> CounterResult:
    """One step of the own Coulomb counter (soc.py docstring, upstream 5.3).

    ``full_max_current_c``: the full reset also needs the current (if known) at or below
    this many A per Ah installed (closed-loop issue: a tail current); None = no condition.

    Order: initialise or integrate, then the full/empty resets, then clamp to 0..C.
    """
    if installed_ah is None or installed_ah <= 0.0:
        # nothing to count against: remember the time so the gap is not integrated later
        return CounterResult(charge_ah, now_s)
    if charge_ah is None:
        if bms_soc_pct is None:
            return CounterResult(None, now_s)
        q = installed_ah * bms_soc_pct / 100.0
    else:
        q = charge_ah
        if last_s is not None and current_a is not None:
            dt = now_s - last_s
            if 0.0 <= dt <= max_gap_s:
                if current_a > 0.0:
                    q = q + current_a * dt / 3600.0 * efficiency
                else:
                    q = q + current_a * dt / 3600.0
    at_full_voltage = max_cell_v is not None and max_cell_v >= full_cell_v
    tail_ok = (
        full_max_current_c is None
        or current_a is None
        or current_a <= full_max_current_c * installed_ah
    )
    if at_full_voltage and tail_ok:
        q = installed_ah
    elif at_full_voltage:
        pass  # at the voltage but still taking current: not full yet, and not empty either
    elif reset_to_zero_at_empty and min_cell_v is not None and min_cell_v <= empty_cell_v:
        q = 0.0
    q = max(0.0, min(q, installed_ah))

    ttg: float | None = None
    ttf: float | None = None
    if current_a is not None and current_a < 0.0 and -current_a > min_current_a:
        ttg = min(TEN_DAYS_S, 3600.0 * q / -current_a)
    if current_a is not None and current_a > 0.0 and current_a > min_current_a:
        ttf = min(TEN_DAYS_S, 3600.0 * (installed_ah - q) / (current_a * efficiency))
    return CounterResult(
        charge_ah=q,
        last_s=now_s,
        soc_pct=100.0 * q / installed_ah,
        capacity_ah=q,
        consumed_ah=q - installed_ah,
        time_to_go_s=ttg,
        time_to_full_s=ttf,
    )


# --------------------------------------------------------------------------- own limits


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through (xs, ys), xs strictly ascending, flat outside."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_left(xs, x)  # xs[i-1] < x <= xs[i]
    x0, x1 = xs[i - 1], xs[i]
    y0, y1 = ys[i - 1], ys[i]
    t = (x - x0) / (x1 - x0)
    return y0 + t * (y1 - y0)


def discharge_latch(
    latched: bool, min_cell_v: float | None, min_v: float, hysteresis_v: float
) -> bool:
    """Set at or below min_v, cleared only strictly above min_v + hysteresis; unknown: keep."""
    if min_cell_v is None:
        return latched
    if min_cell_v <= min_v:
        return True
    if min_cell_v > min_v + hysteresis_v:
        return False
    return latched


def own_limits(
    *,
    max_charge_a: float,
    max_discharge_a: float,
    charge_xs: Sequence[float],
    charge_ys: Sequence[float],
    discharge_xs: Sequence[float],
    discharge_ys: Sequence[float],
    packs: Sequence[PackSnapshot],
    max_cell_v: float | None,
    min_cell_v: float | None,
    latched: bool,
) -> tuple[float, float]:
    """(CCL, DCL) in own mode."""
    if any(blocks_charge(p) for p in packs) or max_cell_v is None:
        ccl = 0.0
    else:
        ccl = max_charge_a * interpolate(charge_xs, charge_ys, max_cell_v)
    if any(blocks_discharge(p) for p in packs) or latched or min_cell_v is None:
        dcl = 0.0
    else:
        dcl = max_discharge_a * interpolate(discharge_xs, discharge_ys, min_cell_v)
    return max(ccl, 0.0), max(dcl, 0.0)


# --------------------------------------------------------------------------- BMS limits


def bms_cvl(mode: str, packs: Sequence[PackSnapshot]) -> float | None:
    """``min``: lowest CVL.  ``float_aware``: lowest CVL of the packs not in float, or the
    lowest CVL of all when no pack with a CVL is absorbing."""
    all_cvls = [p.cvl_v for p in packs if p.cvl_v is not None]
    if not all_cvls:
        return None
    if mode == "float_aware":
        absorbing = [p.cvl_v for p in packs if p.cvl_v is not None and not in_float(p)]
        if absorbing:
            return min(absorbing)
    return min(all_cvls)


def bms_currents(how: str, packs: Sequence[PackSnapshot]) -> tuple[float, float]:
    """(CCL, DCL): ``min_times_n`` = min over reporting packs x their number, ``sum`` = sum.

    Any blocking pack forces 0; no reporting pack gives 0.
    """

    def combine(values: list[float]) -> float:
        if not values:
            return 0.0
        if how == "min_times_n":
            return min(values) * len(values)
        total = 0.0
        for v in values:
            total += v
        return total

    ccl = combine([p.ccl_a for p in packs if p.ccl_a is not None])
    dcl = combine([p.dcl_a for p in packs if p.dcl_a is not None])
    if any(blocks_charge(p) for p in packs):
        ccl = 0.0
    if any(blocks_discharge(p) for p in packs):
        dcl = 0.0
    return max(ccl, 0.0), max(dcl, 0.0)


# --------------------------------------------------------------------------- dynamic CVL


def dynamic_cvl_full_cells(
    packs: Sequence[PackSnapshot], max_cell_v: float, target_v: float
) -> float:
    """Dynamic CVL for packs whose every cell voltage is known (charge.py docstring)."""
    high = any(p.max_cell_v is not None and p.max_cell_v >= max_cell_v for p in packs)
    if not high:
        return target_v
    best = target_v
    for p in packs:
        total = 0.0
        for c in p.cells:
            assert c is not None
            total += c if c < max_cell_v else max_cell_v
        best = min(best, total)
    return best


# --------------------------------------------------------------------------- balancing


def days_between(earlier: date, later: date) -> int:
    """Calendar days from ``earlier`` to ``later`` (proleptic Gregorian day numbers)."""
    return later.toordinal() - earlier.toordinal()


def balancing_step(
    phase: str,
    last: date | None,
    *,
    today: date,
    normal_v: float,
    balancing_v: float,
    repetition_days: int,
    tolerance_v: float,
    cell_diff_max_v: float,
    mean_cell_v: float | None,
    cell_diff_v: float | None,
) -> tuple[str, date | None, float]:
    """One step of the periodic balancing machine; returns (phase, last balanced, target/cell).

    A step may go IDLE -> ACTIVE -> HOLD at once (the goal can already be reached when the
    balancing becomes due); HOLD ends only on a later step.
    """
    if last is not None and last > today:
        last = today
    reached = (
        mean_cell_v is not None
        and cell_diff_v is not None
        and mean_cell_v >= balancing_v - tolerance_v
        and cell_diff_v < cell_diff_max_v
    )
    if balancing_v <= normal_v:
        # balancing happens by itself at the normal voltage: only the date is kept
        if reached:
            last = today
        return IDLE, last, normal_v

    due = last is None or days_between(last, today) >= repetition_days
    if phase == HOLD:
        if mean_cell_v is not None and mean_cell_v <= normal_v:
            return IDLE, today, normal_v
        return HOLD, last, balancing_v
    if phase == IDLE and due:
        phase = ACTIVE
    if phase == ACTIVE and reached:
        phase = HOLD
    return phase, last, balancing_v if phase != IDLE else normal_v
