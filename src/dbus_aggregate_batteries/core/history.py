"""Bank history as a Victron battery monitor (BMV, SmartShunt) keeps it under /History/* (pure).

Definitions, following Victron's SmartShunt and BMV manuals ("history data"):
- ChargedEnergy / DischargedEnergy (kWh, both >= 0): bank voltage x bank current integrated
  over time, split by the sign of the current (+ = into the battery);
- TotalAhDrawn (Ah, <= 0): every Ah taken out of the bank (discharge current only);
- DeepestDischarge (Ah, <= 0): the lowest /ConsumedAmphours ever seen;
- LastDischarge (Ah, <= 0): the lowest /ConsumedAmphours since the last full charge
  (a BMV's "synchronisation");
- AverageDischarge (Ah, <= 0): TotalAhDrawn / ChargeCycles (invalid while no cycle was counted);
- ChargeCycles: counted each time the SoC, after falling below 65 %, rises above 90 %;
- FullDischarges: counted each time the SoC reaches 0 % (again only after it rose above 10 %:
  the manuals do not say when the next one may count; this keeps noise at 0 % from counting);
- AutomaticSyncs: full charges that follow a fall of the SoC below 90 % (a BMV counts a
  synchronisation "every time the state of charge drops below 90 % before a synchronisation");
- TimeSinceLastFullCharge (s): time since the SoC last was 100 %; 0 while it is; invalid until
  the first full charge; only time this service ran is counted (a BMV counts its own uptime);
- Minimum/MaximumVoltage, Minimum/MaximumCellVoltage, Minimum/MaximumTemperature: extremes of
  the bank voltage, the cells and the cell (or bank) temperatures;
- LowVoltageAlarms / HighVoltageAlarms: rising edges of /Alarms/LowVoltage and
  /Alarms/HighVoltage to level 2 (alarm; warnings are not counted).

"Full charge" is the published SoC reaching 100 %: with the own counter that is its reset at
the full cell voltage, with the BMS SoC the packs' own.  Nothing is integrated or recorded from
missing or stale data: without a healthy pack, without a current, or across a step longer
than ``max_gap_s`` (the counter's bound) the step only moves the clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from dbus_aggregate_batteries.core.model import Event, Severity
from dbus_aggregate_batteries.core.venus import Value

# SoC thresholds of the Victron definitions (percent).
CYCLE_LOW_PCT = 65.0
CYCLE_HIGH_PCT = 90.0
SYNC_ARM_PCT = 90.0
# The published SoC has one decimal: these are "shown as 100.0" and "shown as 0.0".
FULL_PCT = 99.95
EMPTY_PCT = 0.05
EMPTY_REARM_PCT = 10.0
# An alarm counts when it reaches this level (0 ok, 1 warning, 2 alarm).
ALARM_LEVEL = 2


@dataclass(frozen=True, slots=True)
class HistoryState:
    """Records and counters (persisted) plus the trackers that detect events."""

    charged_kwh: float = 0.0
    discharged_kwh: float = 0.0
    total_ah_drawn: float = 0.0  # <= 0
    deepest_discharge_ah: float | None = None
    last_discharge_ah: float | None = None
    charge_cycles: int = 0
    full_discharges: int = 0
    automatic_syncs: int = 0
    low_voltage_alarms: int = 0
    high_voltage_alarms: int = 0
    min_voltage_v: float | None = None
    max_voltage_v: float | None = None
    min_cell_v: float | None = None
    max_cell_v: float | None = None
    min_temperature_c: float | None = None
    max_temperature_c: float | None = None
    since_full_s: float | None = None
    # Trackers: where the bank is, not history; kept by a clear.
    cycle_armed: bool = False  # SoC fell below 65 % since the last counted cycle
    sync_armed: bool = False  # SoC fell below 90 % since the last full charge
    empty_armed: bool = True  # SoC rose above 10 % since the last full discharge
    at_full: bool = False
    low_alarm_active: bool = False
    high_alarm_active: bool = False
    last_s: float | None = None  # monotonic; never persisted


# Fields cleared by /History/Clear (everything a BMV shows); the trackers stay.
RECORD_FIELDS: tuple[str, ...] = (
    "charged_kwh", "discharged_kwh", "total_ah_drawn", "deepest_discharge_ah",
    "last_discharge_ah", "charge_cycles", "full_discharges", "automatic_syncs",
    "low_voltage_alarms", "high_voltage_alarms", "min_voltage_v", "max_voltage_v",
    "min_cell_v", "max_cell_v", "min_temperature_c", "max_temperature_c", "since_full_s",
)
COUNT_FIELDS: tuple[str, ...] = (
    "charge_cycles", "full_discharges", "automatic_syncs", "low_voltage_alarms",
    "high_voltage_alarms",
)
_TRACKER_FIELDS: tuple[str, ...] = (
    "cycle_armed", "sync_armed", "empty_armed", "at_full", "low_alarm_active",
    "high_alarm_active",
)
# Signs fixed by the Victron convention (Ah <= 0), and the counters that cannot be negative.
_NON_POSITIVE = frozenset({"total_ah_drawn", "deepest_discharge_ah", "last_discharge_ah"})
_NON_NEGATIVE = frozenset({"charged_kwh", "discharged_kwh", "since_full_s"})
_OPTIONAL = frozenset(f.name for f in fields(HistoryState) if f.default is None)
# Every number only has to be finite (the file is ours, checksummed); the time since the last
# full charge must also fit the integer it is published as.
_MAX_SINCE_S = 1e12
_MAX_COUNT = 2**31 - 1


@dataclass(frozen=True, slots=True)
class HistoryInput:
    """One tick's bank values as published (None = unknown)."""

    healthy: bool
    voltage_v: float | None
    current_a: float | None
    soc_pct: float | None
    consumed_ah: float | None
    min_cell_v: float | None
    max_cell_v: float | None
    min_temperature_c: float | None
    max_temperature_c: float | None
    low_voltage_alarm: int | None
    high_voltage_alarm: int | None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _low(old: float | None, new: float | None) -> float | None:
    if new is None:
        return old
    return new if old is None else min(old, new)


def _high(old: float | None, new: float | None) -> float | None:
    if new is None:
        return old
    return new if old is None else max(old, new)


def step_history(
    state: HistoryState, inp: HistoryInput, *, now_s: float, max_gap_s: float
) -> tuple[HistoryState, tuple[Event, ...]]:
    """Advance the history to ``now_s`` (monotonic seconds) with this tick's bank values."""
    return advance_history(
        state, inp.healthy, inp.voltage_v, inp.current_a, inp.soc_pct, inp.consumed_ah,
        inp.min_cell_v, inp.max_cell_v, inp.min_temperature_c, inp.max_temperature_c,
        inp.low_voltage_alarm, inp.high_voltage_alarm, now_s=now_s, max_gap_s=max_gap_s,
    )


def advance_history(
    state: HistoryState,
    healthy: bool,
    voltage_v: float | None,
    current_a: float | None,
    soc_pct: float | None,
    consumed_ah: float | None,
    min_cell_v: float | None,
    max_cell_v: float | None,
    min_temperature_c: float | None,
    max_temperature_c: float | None,
    low_voltage_alarm: int | None,
    high_voltage_alarm: int | None,
    *,
    now_s: float,
    max_gap_s: float,
) -> tuple[HistoryState, tuple[Event, ...]]:
    """:func:`step_history` with the values of a :class:`HistoryInput` as arguments.

    The engine calls this one: on the once-a-second tick, caches are cold, and building the
    input object costs a generic attribute store per field.
    """
    dt = None if state.last_s is None else now_s - state.last_s
    since_full = state.since_full_s
    if since_full is not None and dt is not None and dt > 0.0:
        # Time passes whatever the data: the clock alone moves this one.
        since_full += dt
    if not healthy:
        return replace(state, last_s=now_s, since_full_s=since_full), ()

    # Locals and one construction at the end: this runs every tick.
    voltage = _finite(voltage_v)
    current = _finite(current_a)
    soc = _finite(soc_pct)
    consumed = _finite(consumed_ah)
    events: list[Event] = []
    drawn = state.total_ah_drawn
    charged = state.charged_kwh
    discharged = state.discharged_kwh

    # Integrate only over a plausible step of live data (like the Coulomb counter).
    if current is not None and dt is not None and 0.0 <= dt <= max_gap_s:
        ah = current * dt / 3600.0
        if current < 0.0:
            drawn += ah
        if voltage is not None:
            kwh = voltage * ah / 1000.0
            if kwh > 0.0:
                charged += kwh
            elif kwh < 0.0:
                discharged -= kwh

    cycles = state.charge_cycles
    syncs = state.automatic_syncs
    empties = state.full_discharges
    cycle_armed = state.cycle_armed
    sync_armed = state.sync_armed
    empty_armed = state.empty_armed
    at_full = state.at_full
    last_discharge = state.last_discharge_ah
    if soc is not None:
        if soc < CYCLE_LOW_PCT:
            cycle_armed = True
        if soc < SYNC_ARM_PCT:
            sync_armed = True
        if cycle_armed and soc > CYCLE_HIGH_PCT:
            cycle_armed = False
            cycles += 1
            events.append(Event(Severity.INFO, "history-cycle", f"charge cycle {cycles} counted"))
        full = soc >= FULL_PCT
        if full:
            if not at_full:
                # A new full charge: the "current cycle" of LastDischarge starts again.
                last_discharge = None
                if sync_armed:
                    sync_armed = False
                    syncs += 1
                    events.append(
                        Event(Severity.INFO, "history-sync",
                              f"full charge: synchronisation {syncs} counted")
                    )
            since_full = 0.0
        at_full = full
        if soc > EMPTY_REARM_PCT:
            empty_armed = True
        elif soc < EMPTY_PCT and empty_armed:
            empty_armed = False
            empties += 1
            events.append(
                Event(Severity.WARNING, "history-full-discharge",
                      f"SoC at 0 %: full discharge {empties} counted")
            )

    deepest = state.deepest_discharge_ah
    if consumed is not None:
        consumed = min(0.0, consumed)
        deepest = _low(deepest, consumed)
        last_discharge = _low(last_discharge, consumed)

    # An unknown alarm level keeps the last known state: a dropout is not a new alarm.
    low_alarms = state.low_voltage_alarms
    low_active = state.low_alarm_active
    if low_voltage_alarm is not None:
        active = low_voltage_alarm >= ALARM_LEVEL
        if active and not low_active:
            low_alarms += 1
        low_active = active
    high_alarms = state.high_voltage_alarms
    high_active = state.high_alarm_active
    if high_voltage_alarm is not None:
        active = high_voltage_alarm >= ALARM_LEVEL
        if active and not high_active:
            high_alarms += 1
        high_active = active

    return HistoryState(
        charged_kwh=charged,
        discharged_kwh=discharged,
        total_ah_drawn=drawn,
        deepest_discharge_ah=deepest,
        last_discharge_ah=last_discharge,
        charge_cycles=cycles,
        full_discharges=empties,
        automatic_syncs=syncs,
        low_voltage_alarms=low_alarms,
        high_voltage_alarms=high_alarms,
        min_voltage_v=_low(state.min_voltage_v, voltage),
        max_voltage_v=_high(state.max_voltage_v, voltage),
        min_cell_v=_low(state.min_cell_v, _finite(min_cell_v)),
        max_cell_v=_high(state.max_cell_v, _finite(max_cell_v)),
        min_temperature_c=_low(state.min_temperature_c, _finite(min_temperature_c)),
        max_temperature_c=_high(state.max_temperature_c, _finite(max_temperature_c)),
        since_full_s=since_full,
        cycle_armed=cycle_armed,
        sync_armed=sync_armed,
        empty_armed=empty_armed,
        at_full=at_full,
        low_alarm_active=low_active,
        high_alarm_active=high_active,
        last_s=now_s,
    ), tuple(events)


def clear_history(state: HistoryState) -> HistoryState:
    """/History/Clear: every record and counter back to its initial value; trackers stay."""
    fresh = HistoryState()
    return replace(state, **{name: getattr(fresh, name) for name in RECORD_FIELDS})


def history_values(state: HistoryState) -> dict[str, Value]:
    """The /History/* paths and the /Settings/Has* flags the GUI needs to show them."""
    cycles = state.charge_cycles
    average = state.total_ah_drawn / cycles if cycles > 0 else None
    since = state.since_full_s
    has_temperature = state.min_temperature_c is not None or state.max_temperature_c is not None
    return {
        "/History/ChargedEnergy": state.charged_kwh,
        "/History/DischargedEnergy": state.discharged_kwh,
        "/History/TotalAhDrawn": state.total_ah_drawn,
        "/History/DeepestDischarge": state.deepest_discharge_ah,
        "/History/LastDischarge": state.last_discharge_ah,
        "/History/AverageDischarge": average,
        "/History/ChargeCycles": cycles,
        "/History/FullDischarges": state.full_discharges,
        "/History/AutomaticSyncs": state.automatic_syncs,
        "/History/LowVoltageAlarms": state.low_voltage_alarms,
        "/History/HighVoltageAlarms": state.high_voltage_alarms,
        "/History/MinimumVoltage": state.min_voltage_v,
        "/History/MaximumVoltage": state.max_voltage_v,
        "/History/MinimumCellVoltage": state.min_cell_v,
        "/History/MaximumCellVoltage": state.max_cell_v,
        "/History/MinimumTemperature": state.min_temperature_c,
        "/History/MaximumTemperature": state.max_temperature_c,
        # Whole minutes: a one-second change would signal every tick for nothing shown.
        "/History/TimeSinceLastFullCharge": None if since is None else int(since // 60) * 60,
        "/History/Clear": 0,
        "/History/CanBeCleared": 1,
        "/Settings/HasTemperature": int(has_temperature),
        "/Settings/HasStarterVoltage": 0,
        "/Settings/HasMidVoltage": 0,
    }


def history_to_dict(state: HistoryState) -> dict[str, float | int | bool | None]:
    """The persisted part of ``state`` (the monotonic step time is meaningless after a restart)."""
    return {name: getattr(state, name) for name in (*RECORD_FIELDS, *_TRACKER_FIELDS)}


def history_from_dict(doc: Mapping[str, object]) -> HistoryState:
    """Rebuild a state from :func:`history_to_dict` output; ValueError names a bad field.

    Missing keys take their initial value and unknown keys are ignored, so files written by an
    older or newer version load.
    """
    out: dict[str, object] = {}
    for name in (*RECORD_FIELDS, *_TRACKER_FIELDS):
        if name not in doc:
            continue
        value = doc[name]
        if name in _TRACKER_FIELDS:
            if not isinstance(value, bool):
                raise ValueError(f"bad history.{name} {value!r}")
        elif name in COUNT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"bad history.{name} {value!r}")
            if not 0 <= value <= _MAX_COUNT:
                raise ValueError(f"bad history.{name} {value!r}")
        else:
            if value is None and name in _OPTIONAL:
                out[name] = None
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or (name == "since_full_s" and value > _MAX_SINCE_S)
                or (name in _NON_POSITIVE and value > 0)
                or (name in _NON_NEGATIVE and value < 0)
            ):
                raise ValueError(f"bad history.{name} {value!r}")
            value = float(value)
        out[name] = value
    return replace(HistoryState(), **out)  # type: ignore[arg-type]
