"""Charge voltage in own-limits mode (pure): periodic balancing, dynamic CVL, PV feed-in request.

Balancing (when the balancing voltage is above the month's normal charge voltage):
- IDLE: target = normal voltage; becomes ACTIVE when at least ``balancing_repetition_days``
  calendar days have passed since the last balancing (real dates: leap years and gaps of
  more than a year count correctly; no saved date means "due");
- ACTIVE: target = balancing voltage; becomes HOLD when the mean cell voltage has reached the
  balancing voltage (within ``balancing_tolerance_v``) and the cell spread is below
  ``cell_diff_max_v``;
- HOLD: target stays at the balancing voltage (stay full while the sun lasts); back to IDLE,
  recording today as the last balancing, once the mean cell voltage has sunk to the normal
  voltage.
When the normal voltage already reaches the balancing voltage, balancing happens by itself:
the date is recorded whenever the bank is at the balancing voltage and balanced.
A saved date in the future (wall clock stepped back) is replaced by today.

Dynamic CVL, ``cvl_control: regulate`` (the default): a regulator holds the highest cell at
``max_cell_voltage_v``.  It engages when the highest cell comes within ``REGULATE_ENGAGE_V`` of
the maximum and releases when it has fallen ``REGULATE_RELEASE_V`` below it.  While engaged,
with n cells per pack, e = max_cell_voltage_v - highest cell and V the bank voltage:
  CVL = min(target, V + REGULATE_GAIN * n * (e - REGULATE_LOOKAHEAD_S * rise) + bias)
where rise is the highest cell's smoothed rate of rise (only a rise counts): the charger
follows a new CVL only after the DVCC period and its own lag, so the regulator acts on where
the cell will be.
A proportional law on the measured voltage: it cannot wind up, because it is anchored to what
the bus does now (a charger that is current-limited keeps V low and so the CVL too).  The
bias integrates REGULATE_KI * n * e per second, clamped to +-n * REGULATE_BIAS_V, to remove
the steady error a charger's voltage-measurement offset would leave; it only integrates while
the CVL is below the target (anti-windup).  The gain is below 1 because the charger answers
with a lag and the DVCC update period: a gain of 1 would chase its own delay and oscillate.

Dynamic CVL, ``cvl_control: upstream`` (the original program's law): while any cell is at or
above ``max_cell_voltage_v``, CVL = the lowest, over packs, of sum(min(cell,
max_cell_voltage_v)) over the pack's cells, never above the target.  It snaps back to the
target as soon as the cell is below the maximum, which makes it oscillate (README, control
benchmark).

Feed-in: on entering such a high-cell episode, request DC-coupled PV feed-in off (ESS ignores
CCL while it is on) and remember the owner's value; once the episode is over and the cells
are balanced again, request the remembered value back.  It is an output, never a side effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from enum import Enum
from typing import cast

from dbus_aggregate_batteries.config import OwnLimitsConfig
from dbus_aggregate_batteries.core.model import Event, PackSnapshot, Severity


class BalancePhase(Enum):
    """Where the periodic balancing state machine is."""

    IDLE = "idle"
    ACTIVE = "active"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class BalancingState:
    """Persisted balancing state."""

    phase: BalancePhase = BalancePhase.IDLE
    last_balanced: date | None = None


@dataclass(frozen=True, slots=True)
class FeedInState:
    """The owner's feed-in value while we hold it off (None: we are not holding it)."""

    saved_value: int | None = None


def step_balancing(
    state: BalancingState,
    cfg: OwnLimitsConfig,
    *,
    today: date,
    mean_cell_v: float | None,
    cell_diff_v: float | None,
) -> tuple[BalancingState, float, tuple[Event, ...]]:
    """Advance the balancing machine for ``today``; return the new state and the cell target."""
    events: list[Event] = []
    normal = cfg.charge_cell_voltage_for_month(today.month)
    bal = cfg.balancing_voltage_v
    last = state.last_balanced
    if last is not None and last > today:
        events.append(
            Event(
                Severity.WARNING,
                "balancing-date",
                f"last balancing {last.isoformat()} is in the future; using today",
            )
        )
        last = today
        state = replace(state, last_balanced=today)
    due = last is None or (today - last).days >= cfg.balancing_repetition_days
    reached = (
        mean_cell_v is not None
        and cell_diff_v is not None
        and mean_cell_v >= bal - cfg.balancing_tolerance_v
        and cell_diff_v < cfg.cell_diff_max_v
    )

    if bal <= normal:
        if state.phase is not BalancePhase.IDLE:
            state = replace(state, phase=BalancePhase.IDLE)
        if reached and (last is None or (today - last).days > 0):
            state = replace(state, last_balanced=today)
            events.append(Event(Severity.INFO, "balancing-done", "bank balanced at charge voltage"))
        return state, normal, tuple(events)

    phase = state.phase
    if phase is BalancePhase.IDLE and due:
        phase = BalancePhase.ACTIVE
        events.append(
            Event(Severity.INFO, "balancing-start", f"balancing due: charging to {bal:.3f} V/cell")
        )
    if phase is BalancePhase.ACTIVE and reached:
        phase = BalancePhase.HOLD
        events.append(Event(Severity.INFO, "balancing-reached", "balancing goal reached"))
    elif phase is BalancePhase.HOLD and mean_cell_v is not None and mean_cell_v <= normal:
        events.append(Event(Severity.INFO, "balancing-end", "balancing finished"))
        return BalancingState(BalancePhase.IDLE, today), normal, tuple(events)
    target = bal if phase is not BalancePhase.IDLE else normal
    return replace(state, phase=phase), target, tuple(events)


def pack_dynamic_cvl(pack: PackSnapshot, max_cell_v: float, n_cells: int | None) -> float | None:
    """sum(min(cell, max_cell_v)) over the pack's cells, or a conservative estimate.

    Without every cell voltage only the highest cell's overshoot is known, so the estimate
    (pack voltage minus that overshoot) is also capped at cells x max_cell_v; with no usable
    data at all the cap alone is used.  A result <= 0 is nonsense input and is not used.
    """
    cells = pack.cells
    if cells and None not in cells:
        # min(c, max) without a call per cell (this runs per pack at every tick of a high
        # cell); the same sum over the same values in the same order.
        known = cast("tuple[float, ...]", cells)
        exact = sum([max_cell_v if max_cell_v < c else c for c in known])
        return exact if exact > 0.0 else None
    count = pack.cells_per_battery or n_cells
    cap = count * max_cell_v if count else None
    base = pack.voltages_sum_v if pack.voltages_sum_v is not None else pack.voltage_v
    estimate = None
    if base is not None and pack.max_cell_v is not None:
        estimate = base - max(0.0, pack.max_cell_v - max_cell_v)
        if estimate <= 0.0:
            estimate = None
    if estimate is None:
        return cap
    return min(estimate, cap) if cap is not None else estimate


def dynamic_cvl(
    packs: Sequence[PackSnapshot],
    cfg: OwnLimitsConfig,
    target_v: float,
    n_cells: int | None = None,
) -> tuple[float, bool]:
    """Reduce the pack-level target while a cell is high; returns (cvl, episode active)."""
    high = any(p.max_cell_v is not None and p.max_cell_v >= cfg.max_cell_voltage_v for p in packs)
    if not high:
        return target_v, False
    per_pack = [
        v
        for v in (pack_dynamic_cvl(p, cfg.max_cell_voltage_v, n_cells) for p in packs)
        if v is not None
    ]
    return (min([target_v, *per_pack]), True)


REGULATE_ENGAGE_V = 0.03
REGULATE_RELEASE_V = 0.06
REGULATE_GAIN = 0.5
REGULATE_KI = 0.02  # 1/s
REGULATE_BIAS_V = 0.005  # per cell
REGULATE_MAX_DT_S = 5.0
REGULATE_LOOKAHEAD_S = 15.0
REGULATE_RATE_TAU_S = 10.0


@dataclass(frozen=True, slots=True)
class CvlRegulator:
    """The regulator's memory: engaged or not, its bias (V, pack level) and its last time."""

    engaged: bool = False
    bias_v: float = 0.0
    last_s: float | None = None
    last_cell_v: float | None = None
    rise_v_per_s: float = 0.0


def regulate_cvl(
    state: CvlRegulator,
    cfg: OwnLimitsConfig,
    *,
    target_v: float,
    n_cells: int,
    max_cell_v: float | None,
    bank_v: float | None,
    now_s: float,
) -> tuple[CvlRegulator, float | None]:
    """One step of the high-cell CVL regulator (module docstring); returns (state, CVL).

    Without a highest cell or a plausible bank voltage there is nothing to regulate on: it
    returns None and resets, and the caller falls back to the upstream law, which has
    conservative estimates for missing data.  The CVL never goes below n x min cell voltage.
    """
    vmax = cfg.max_cell_voltage_v
    vmin = cfg.min_cell_voltage_v
    if (
        max_cell_v is None
        or bank_v is None
        or n_cells <= 0
        or not vmin - 0.5 <= bank_v / n_cells <= vmax + 0.5
    ):
        # No data, or a bank voltage that does not fit the cell count: nothing to regulate on.
        return CvlRegulator(), None
    dt = 0.0
    if state.last_s is not None:
        dt = min(max(0.0, now_s - state.last_s), REGULATE_MAX_DT_S)
    # How fast the highest cell rises (smoothed): the charger needs seconds to follow a new
    # CVL, so the regulator acts on where the cell will be, not where it is.
    rise = state.rise_v_per_s
    if state.last_cell_v is not None and dt > 0.0:
        alpha = dt / (REGULATE_RATE_TAU_S + dt)
        rise += alpha * ((max_cell_v - state.last_cell_v) / dt - rise)
    engaged = state.engaged
    if not engaged and max_cell_v >= vmax - REGULATE_ENGAGE_V:
        engaged = True
    elif engaged and max_cell_v < vmax - REGULATE_RELEASE_V:
        engaged = False
    if not engaged:
        return CvlRegulator(False, 0.0, now_s, max_cell_v, rise), target_v
    error = vmax - max_cell_v - REGULATE_LOOKAHEAD_S * max(0.0, rise)
    proportional = bank_v + REGULATE_GAIN * n_cells * error
    bias = state.bias_v if state.engaged else 0.0
    if proportional + bias < target_v:
        limit = REGULATE_BIAS_V * n_cells
        bias = min(limit, max(-limit, bias + REGULATE_KI * n_cells * error * dt))
    # Never below the empty bank: a CVL there means nothing more than "stop charging".
    cvl = min(target_v, max(n_cells * vmin, proportional + bias))
    return CvlRegulator(True, bias, now_s, max_cell_v, rise), cvl


def step_feed_in(
    state: FeedInState,
    *,
    enabled: bool,
    high_cell: bool,
    cell_diff_v: float | None,
    cell_diff_max_v: float,
    current_setting: int | None,
) -> tuple[FeedInState, int | None, tuple[Event, ...]]:
    """Decide whether to switch DC-coupled feed-in off or back; returns (state, request, events)."""
    if state.saved_value is None:
        if enabled and high_cell and current_setting is not None and current_setting != 0:
            event = Event(
                Severity.INFO, "feed-in-off", "high cell: DC-coupled PV feed-in switched off"
            )
            return FeedInState(current_setting), 0, (event,)
        return state, None, ()
    if not high_cell and cell_diff_v is not None and cell_diff_v < cell_diff_max_v:
        event = Event(
            Severity.INFO,
            "feed-in-restore",
            f"cells balanced: DC-coupled PV feed-in restored to {state.saved_value}",
        )
        return FeedInState(None), state.saved_value, (event,)
    return state, None, ()
