"""Bank current and power (pure).

Sources:
- ``bms``: the sum of the packs' currents;
- ``victron``: Multi/Quattro DC current (when in use and connected) + solar chargers + the
  selected SmartShunts (battery-mode shunts add, DC-meter shunts subtract);
- ``smartshunt``: the battery-mode SmartShunts alone are the authoritative bank current.

``invert_smartshunts`` flips the shunt contribution in *every* branch (the original program
ignored it in the shunt-only branch).  If the chosen source cannot be computed, the BMS sum is
used when ``fallback_to_bms`` is set, otherwise the current is invalid.  Power is measured
(sum of the packs') in ``bms`` mode when every pack reports it, and V x I otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbus_aggregate_batteries.config import CurrentConfig
from dbus_aggregate_batteries.core.aggregate import Merged
from dbus_aggregate_batteries.core.model import AuxSnapshot, Event, Severity


@dataclass(frozen=True, slots=True)
class BankCurrent:
    """The bank's current (+ charging) and power, and where the current came from."""

    current_a: float | None
    power_w: float | None
    source: str


def _victron_current(cfg: CurrentConfig, aux: AuxSnapshot) -> tuple[float | None, str]:
    total = 0.0
    if cfg.use_multi:
        if aux.multi is None:
            return None, "no Multi/Quattro service found"
        if aux.multi.connected:
            if aux.multi.current_a is None:
                return None, "the Multi/Quattro current is missing"
            total += aux.multi.current_a
    for charger in aux.solar_chargers:
        if charger.current_a is None:
            return None, f"solar charger {charger.service} has no current"
        total += charger.current_a
    shunt = _shunt_sum(aux, include_dcload=True)
    if shunt is None:
        return None, "a selected SmartShunt has no current"
    sign = -1.0 if cfg.invert_smartshunts else 1.0
    return total + sign * shunt, ""


def _shunt_sum(aux: AuxSnapshot, *, include_dcload: bool) -> float | None:
    total = 0.0
    for shunt in aux.battery_shunts:
        if shunt.current_a is None:
            return None
        total += shunt.current_a
    if include_dcload:
        for shunt in aux.dcload_shunts:
            if shunt.current_a is None:
                return None
            total -= shunt.current_a
    return total


def bank_current(
    cfg: CurrentConfig, merged: Merged, aux: AuxSnapshot
) -> tuple[BankCurrent, tuple[Event, ...]]:
    """Compute the bank current and power from the configured source."""
    voltage = merged.voltage_v
    if cfg.source == "bms":
        power = merged.power_w
        if power is None and voltage is not None and merged.current_a is not None:
            power = voltage * merged.current_a
        return BankCurrent(merged.current_a, power, "bms"), ()

    if cfg.source == "victron":
        current, why = _victron_current(cfg, aux)
    else:
        if not aux.battery_shunts:
            current, why = None, "no battery-mode SmartShunt selected"
        else:
            shunt = _shunt_sum(aux, include_dcload=False)
            why = "a battery-mode SmartShunt has no current" if shunt is None else ""
            sign = -1.0 if cfg.invert_smartshunts else 1.0
            current = None if shunt is None else sign * shunt

    if current is not None:
        power = voltage * current if voltage is not None else None
        return BankCurrent(current, power, cfg.source), ()

    if cfg.fallback_to_bms:
        event = Event(
            Severity.WARNING,
            "current-fallback",
            f"{cfg.source} current unavailable ({why}); using the packs' summed current",
        )
        power = merged.power_w
        if power is None and voltage is not None and merged.current_a is not None:
            power = voltage * merged.current_a
        return BankCurrent(merged.current_a, power, "bms-fallback"), (event,)
    event = Event(Severity.WARNING, "current-missing", f"{cfg.source} current unavailable ({why})")
    return BankCurrent(None, None, cfg.source), (event,)


def measured_current(cfg: CurrentConfig, aux: AuxSnapshot) -> float | None:
    """The bank current (+ charging) measured outside the packs; None without such a source.

    The roster uses it to tell a frozen pack from a quiet one, so it never falls back to the
    packs' own sum: that would let stale pack values vouch for themselves.
    """
    if cfg.source == "victron":
        return _victron_current(cfg, aux)[0]
    if cfg.source == "smartshunt" and aux.battery_shunts:
        shunt = _shunt_sum(aux, include_dcload=False)
        if shunt is None:
            return None
        return -shunt if cfg.invert_smartshunts else shunt
    return None
