"""Own Coulomb counter (pure).

Policy:
- charge (Ah) integrates the bank current over monotonic time; the charge efficiency applies
  to positive (charging) current only;
- dt is bounded: a negative step or a gap longer than ``max_gap_s`` integrates nothing and is
  reported (a suspended process or a clock problem must not inject a huge step);
- the charge is clamped to [0, installed capacity];
- full reset when the highest cell reaches ``full_cell_voltage_v`` while the charge current
  is at most ``full_reset_max_current_c`` x installed capacity (a tail current, as a shunt's
  "charged" detection: at the first touch of the voltage under a high current the bank is
  not full yet, by 2 % at 0.5 C in the closed-loop benchmark); an unknown current does not
  hold the reset back; empty reset (only when ``reset_to_zero_at_empty``) when the lowest
  cell falls to ``empty_cell_voltage_v`` and no cell is at the full voltage;
- without saved state the counter starts from the capacity-weighted BMS SoC;
- ConsumedAmphours follows Victron's convention (<= 0); TimeToGo is to empty while
  discharging; time-to-full while charging is a separate value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dbus_aggregate_batteries.config import SocConfig
from dbus_aggregate_batteries.core.model import Event, Severity

# Victron caps time-to-go at 10 days; beyond that the number means nothing to anyone.
MAX_TIME_S = 864_000.0


@dataclass(frozen=True, slots=True)
class CounterState:
    """The counter's memory: charge in Ah (None = not initialised) and the last step time."""

    charge_ah: float | None = None
    last_s: float | None = None


@dataclass(frozen=True, slots=True)
class SocOutput:
    """What the counter publishes."""

    soc_pct: float | None = None
    capacity_ah: float | None = None
    consumed_ah: float | None = None
    time_to_go_s: float | None = None
    time_to_full_s: float | None = None


def step_counter(
    state: CounterState,
    cfg: SocConfig,
    *,
    now_s: float,
    current_a: float | None,
    installed_ah: float | None,
    bms_soc_pct: float | None,
    max_cell_v: float | None,
    min_cell_v: float | None,
) -> tuple[CounterState, SocOutput, tuple[Event, ...]]:
    """Advance the counter to ``now_s`` (monotonic seconds) and compute its outputs."""
    events: list[Event] = []
    if installed_ah is None or installed_ah <= 0.0:
        # Without a capacity there is nothing to count against; do not integrate the gap later.
        return replace(state, last_s=now_s), SocOutput(), ()

    charge = state.charge_ah
    if charge is None:
        if bms_soc_pct is None:
            return replace(state, last_s=now_s), SocOutput(), ()
        charge = bms_soc_pct / 100.0 * installed_ah
        events.append(
            Event(Severity.INFO, "soc-init", f"counter initialised from BMS SoC {bms_soc_pct:.1f}%")
        )
    elif state.last_s is not None and current_a is not None:
        dt = now_s - state.last_s
        if dt < 0.0 or dt > cfg.max_gap_s:
            events.append(
                Event(
                    Severity.WARNING,
                    "soc-gap",
                    f"{dt:.1f} s since the last step is outside 0..{cfg.max_gap_s:g} s;"
                    " nothing integrated",
                )
            )
        else:
            factor = cfg.battery_efficiency if current_a > 0.0 else 1.0
            charge += current_a * dt / 3600.0 * factor

    high = max_cell_v is not None and max_cell_v >= cfg.full_cell_voltage_v
    tail_a = cfg.full_reset_max_current_c * installed_ah
    full = high and (current_a is None or current_a <= tail_a)
    if full and charge < installed_ah:
        events.append(
            Event(Severity.INFO, "soc-full", f"highest cell {max_cell_v:.3f} V: counter at 100%")
        )
        charge = installed_ah
    elif (
        cfg.reset_to_zero_at_empty
        and not high  # one cell full and another empty: contradictory, reset nothing
        and min_cell_v is not None
        and min_cell_v <= cfg.empty_cell_voltage_v
        and charge > 0.0
    ):
        events.append(
            Event(Severity.INFO, "soc-empty", f"lowest cell {min_cell_v:.3f} V: counter set to 0%")
        )
        charge = 0.0

    charge = min(installed_ah, max(0.0, charge))
    out = SocOutput(
        soc_pct=min(100.0, 100.0 * charge / installed_ah),
        capacity_ah=charge,
        consumed_ah=charge - installed_ah,
        time_to_go_s=_time_to_go(charge, current_a, cfg),
        time_to_full_s=_time_to_full(charge, installed_ah, current_a, cfg),
    )
    return CounterState(charge, now_s), out, tuple(events)


def _time_to_go(charge: float, current_a: float | None, cfg: SocConfig) -> float | None:
    if current_a is None or current_a >= -cfg.time_to_go_min_current_a or current_a >= 0.0:
        return None
    return min(MAX_TIME_S, charge / -current_a * 3600.0)


def _time_to_full(
    charge: float, installed_ah: float, current_a: float | None, cfg: SocConfig
) -> float | None:
    if current_a is None or current_a <= cfg.time_to_go_min_current_a or current_a <= 0.0:
        return None
    return min(MAX_TIME_S, (installed_ah - charge) / (current_a * cfg.battery_efficiency) * 3600.0)

