"""Bank history (/History/*): worked numbers for every record, counter, clear and persistence."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from factories import config, pack
from hypothesis import given, settings
from hypothesis import strategies as st

from dbus_aggregate_batteries.core.engine import EngineState, restore_state, step
from dbus_aggregate_batteries.core.history import (
    HistoryInput,
    HistoryState,
    clear_history,
    history_from_dict,
    history_to_dict,
    history_values,
    step_history,
)
from dbus_aggregate_batteries.core.model import AuxSnapshot
from dbus_aggregate_batteries.core.venus import ALARM_PATHS, round_for_path
from dbus_aggregate_batteries.shell.persist import SavedState, StateFile, decode, encode

TODAY = date(2026, 6, 15)
LOW = ALARM_PATHS.index("/Alarms/LowVoltage")


def inp(**kw: Any) -> HistoryInput:
    """A healthy tick at rest: 52 V, 0 A, SoC 50 %, nothing else known unless given."""
    base: dict[str, Any] = {
        "healthy": True, "voltage_v": 52.0, "current_a": 0.0, "soc_pct": 50.0,
        "consumed_ah": None, "min_cell_v": None, "max_cell_v": None,
        "min_temperature_c": None, "max_temperature_c": None,
        "low_voltage_alarm": None, "high_voltage_alarm": None,
    }
    base.update(kw)
    return HistoryInput(**base)


def run(
    ticks: list[tuple[float, HistoryInput]], state: HistoryState | None = None,
    max_gap_s: float = 30.0,
) -> HistoryState:
    s = state if state is not None else HistoryState()
    for now, tick in ticks:
        s, _ = step_history(s, tick, now_s=now, max_gap_s=max_gap_s)
    return s


def socs(values: list[float], **kw: Any) -> list[tuple[float, HistoryInput]]:
    """One tick per second with these SoC values."""
    return [(float(i), inp(soc_pct=v, **kw)) for i, v in enumerate(values)]


# ---------------------------------------------------------------- energy and Ah


def test_energy_and_ah_drawn_worked_example() -> None:
    # The current of a tick is held over the step that ends at it (as in the Coulomb counter).
    # 1 h at -100 A and 52 V: 100 Ah drawn, 5.2 kWh out; 1 h at +50 A and 54 V: 2.7 kWh in.
    s = run(
        [
            (0.0, inp(current_a=0.0)),
            (3600.0, inp(voltage_v=52.0, current_a=-100.0)),
            (7200.0, inp(voltage_v=54.0, current_a=50.0)),
        ],
        max_gap_s=3600.0,
    )
    assert s.total_ah_drawn == pytest.approx(-100.0)
    assert s.discharged_kwh == pytest.approx(5.2)
    assert s.charged_kwh == pytest.approx(2.7)
    v = history_values(s)
    assert v["/History/TotalAhDrawn"] == pytest.approx(-100.0)
    assert v["/History/DischargedEnergy"] == pytest.approx(5.2)
    assert v["/History/ChargedEnergy"] == pytest.approx(2.7)


def test_one_second_ticks_add_up() -> None:
    # 600 ticks of 1 s at -36 A, 50 V: 6 Ah, 0.3 kWh.
    ticks = [(float(t), inp(voltage_v=50.0, current_a=-36.0)) for t in range(601)]
    s = run(ticks)
    assert s.total_ah_drawn == pytest.approx(-6.0)
    assert s.discharged_kwh == pytest.approx(0.3)
    assert s.charged_kwh == 0.0


@pytest.mark.parametrize(
    ("second", "why"),
    [
        ((31.0, inp(current_a=-100.0)), "a gap longer than max_gap_s"),
        ((-5.0, inp(current_a=-100.0)), "time going backwards"),
        ((10.0, inp(current_a=None)), "no bank current"),
        ((10.0, inp(current_a=float("nan"))), "a NaN current"),
        ((10.0, inp(current_a=-100.0, healthy=False)), "no healthy pack"),
    ],
)
def test_nothing_integrated_from_missing_or_stale_data(
    second: tuple[float, HistoryInput], why: str
) -> None:
    s = run([(0.0, inp()), second])
    assert (s.total_ah_drawn, s.discharged_kwh, s.charged_kwh) == (0.0, 0.0, 0.0), why


def test_energy_needs_the_voltage_but_ah_do_not() -> None:
    s = run([(0.0, inp()), (10.0, inp(voltage_v=None, current_a=-360.0))])
    assert s.total_ah_drawn == pytest.approx(-1.0)
    assert s.discharged_kwh == 0.0


def test_no_healthy_pack_records_nothing() -> None:
    s = run([
        (0.0, inp(healthy=False, voltage_v=40.0, soc_pct=0.0, consumed_ah=-300.0,
                  low_voltage_alarm=2)),
    ])
    assert s == HistoryState(last_s=0.0)


# ---------------------------------------------------------------- SoC events


def test_charge_cycles_follow_the_65_90_rule() -> None:
    # Below 65 then above 90 is one cycle; a dip to 70 is not; 64.9 arms, 90.0 is not "above".
    s = run(socs([95, 70, 91, 64.9, 80, 90.0, 90.1, 60, 95, 89, 91]))
    assert s.charge_cycles == 2


def test_average_discharge_is_total_drawn_over_cycles() -> None:
    s = replace(HistoryState(), total_ah_drawn=-450.0, charge_cycles=3)
    assert history_values(s)["/History/AverageDischarge"] == pytest.approx(-150.0)
    # No cycle yet: undefined, so invalid (the GUI hides the row).
    assert history_values(replace(s, charge_cycles=0))["/History/AverageDischarge"] is None


def test_full_discharges_count_each_time_soc_reaches_zero() -> None:
    # 0.04 shows as 0.0 %; noise around 0 does not count again until the SoC rose above 10 %.
    s = run(socs([5, 0.04, 0.1, 0.0, 9.9, 0.0, 10.1, 0.0]))
    assert s.full_discharges == 2


def test_syncs_last_discharge_and_time_since_full() -> None:
    ticks = [
        (0.0, inp(soc_pct=100.0, consumed_ah=0.0)),  # full, not armed: no sync
        (100.0, inp(soc_pct=85.0, consumed_ah=-42.0)),
        (200.0, inp(soc_pct=88.0, consumed_ah=-33.6)),
    ]
    s = run(ticks)
    assert s.automatic_syncs == 0
    assert s.last_discharge_ah == -42.0 and s.deepest_discharge_ah == -42.0
    assert s.since_full_s == 200.0
    s = run([(300.0, inp(soc_pct=100.0, consumed_ah=0.0))], s)
    assert s.automatic_syncs == 1  # fell below 90 % before this full charge
    assert s.since_full_s == 0.0
    assert s.last_discharge_ah == 0.0  # a new cycle: only what was consumed since
    assert s.deepest_discharge_ah == -42.0
    s = run([(400.0, inp(soc_pct=95.0, consumed_ah=-14.0)),
             (500.0, inp(soc_pct=100.0, consumed_ah=0.0)),
             (600.0, inp(soc_pct=100.0, consumed_ah=0.0))], s)
    assert s.automatic_syncs == 1  # never below 90 %: not a synchronisation
    assert s.since_full_s == 0.0  # held at 0 while full
    s = run([(700.0, inp(soc_pct=99.9, consumed_ah=-0.3)),
             (4300.0, inp(healthy=False))], s)
    # The clock runs without data too: 3 700 s since it left 100 %, shown in whole minutes.
    assert s.since_full_s == 3700.0
    assert history_values(s)["/History/TimeSinceLastFullCharge"] == 3660


def test_time_since_full_is_invalid_until_a_full_charge() -> None:
    s = run(socs([50.0, 60.0, 70.0]))
    assert history_values(s)["/History/TimeSinceLastFullCharge"] is None


def test_positive_consumed_ah_counts_as_zero() -> None:
    s = run([(0.0, inp(consumed_ah=3.0))])
    assert s.deepest_discharge_ah == 0.0


# ---------------------------------------------------------------- extremes and alarms


def test_voltage_cell_and_temperature_extremes() -> None:
    s = run([
        (0.0, inp(voltage_v=52.1, min_cell_v=3.2, max_cell_v=3.31, min_temperature_c=18.0,
                  max_temperature_c=22.0)),
        (1.0, inp(voltage_v=55.2, min_cell_v=3.4, max_cell_v=3.47, min_temperature_c=None,
                  max_temperature_c=None)),
        (2.0, inp(voltage_v=None, min_cell_v=2.95, max_cell_v=3.0, min_temperature_c=-4.5,
                  max_temperature_c=31.0)),
    ])
    v = history_values(s)
    assert (v["/History/MinimumVoltage"], v["/History/MaximumVoltage"]) == (52.1, 55.2)
    assert (v["/History/MinimumCellVoltage"], v["/History/MaximumCellVoltage"]) == (2.95, 3.47)
    assert (v["/History/MinimumTemperature"], v["/History/MaximumTemperature"]) == (-4.5, 31.0)
    assert v["/Settings/HasTemperature"] == 1


def test_has_temperature_only_with_a_temperature() -> None:
    v = history_values(run([(0.0, inp())]))
    assert v["/History/MinimumTemperature"] is None
    assert v["/Settings/HasTemperature"] == 0
    assert v["/Settings/HasStarterVoltage"] == 0 and v["/Settings/HasMidVoltage"] == 0
    assert v["/History/CanBeCleared"] == 1 and v["/History/Clear"] == 0


def test_voltage_alarms_count_rising_edges_to_alarm_level() -> None:
    # 1 (warning) does not count; an unknown level (no pack says) is no new edge.
    levels = [0, 1, 2, 2, None, 2, 1, 2, 0, 0, 2]
    s = run([(float(i), inp(low_voltage_alarm=lv, high_voltage_alarm=0))
             for i, lv in enumerate(levels)])
    assert s.low_voltage_alarms == 3
    assert s.high_voltage_alarms == 0


# ---------------------------------------------------------------- clear


def _busy_state() -> HistoryState:
    s = run(socs([100, 60, 0.0, 95, 100], consumed_ah=-10.0, voltage_v=50.0, current_a=-5.0,
                 min_cell_v=3.0, max_cell_v=3.5, min_temperature_c=10.0,
                 max_temperature_c=30.0, low_voltage_alarm=2, high_voltage_alarm=2))
    assert s.charge_cycles == 1 and s.full_discharges == 1 and s.automatic_syncs == 1
    return s


def test_clear_resets_every_record_and_keeps_the_trackers() -> None:
    s = _busy_state()
    s = run([(5.0, inp(soc_pct=60.0, low_voltage_alarm=2, high_voltage_alarm=2))], s)
    cleared = clear_history(s)
    v = history_values(cleared)
    assert v["/History/ChargeCycles"] == 0 and v["/History/AutomaticSyncs"] == 0
    assert v["/History/FullDischarges"] == 0 and v["/History/LowVoltageAlarms"] == 0
    assert v["/History/ChargedEnergy"] == 0.0 and v["/History/TotalAhDrawn"] == 0.0
    for path in ("/History/MinimumVoltage", "/History/MaximumCellVoltage",
                 "/History/DeepestDischarge", "/History/LastDischarge",
                 "/History/AverageDischarge", "/History/TimeSinceLastFullCharge",
                 "/History/MinimumTemperature"):
        assert v[path] is None, path
    # Where the bank is stays known: the alarm still active is not counted again, and the
    # cycle armed at 60 % before the clear counts when the SoC passes 90 %.
    assert cleared.low_alarm_active and cleared.cycle_armed and cleared.last_s == 5.0
    after = run([(6.0, inp(soc_pct=91.0, low_voltage_alarm=2))], cleared)
    assert after.charge_cycles == 1 and after.low_voltage_alarms == 0


# ---------------------------------------------------------------- persistence


def test_dict_round_trip_drops_only_the_step_time() -> None:
    s = _busy_state()
    back = history_from_dict(json.loads(json.dumps(history_to_dict(s))))
    assert back == replace(s, last_s=None)


def test_dict_missing_keys_default_and_unknown_keys_are_ignored() -> None:
    back = history_from_dict({"charge_cycles": 7, "added_by_a_later_version": 1})
    assert back == replace(HistoryState(), charge_cycles=7)


@pytest.mark.parametrize(
    "bad",
    [
        {"charge_cycles": -1}, {"charge_cycles": 1.5}, {"charge_cycles": True},
        {"total_ah_drawn": 5.0}, {"charged_kwh": -1.0}, {"min_voltage_v": "52"},
        {"max_cell_v": float("nan")}, {"since_full_s": 1e300}, {"charged_kwh": float("inf")},
        {"cycle_armed": 1}, {"charged_kwh": None},
    ],
)
def test_dict_bad_values_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="history"):
        history_from_dict(bad)


def test_state_file_round_trip_with_history(tmp_path: Path) -> None:
    saved = SavedState(charge_ah=10.0, history=replace(_busy_state(), last_s=None))
    sf = StateFile(tmp_path)
    sf.save(saved)
    assert sf.load() == saved


def _old_format_file(payload: dict[str, Any]) -> bytes:
    # Written the way the version without history wrote it (same format version 1).
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    doc = {**payload, "checksum": hashlib.sha256(canonical.encode()).hexdigest()}
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def test_state_file_without_history_still_loads(tmp_path: Path) -> None:
    old = {"version": 1, "charge_ah": 123.5, "last_balanced": "2026-06-01",
           "balancing_phase": "idle", "feed_in_saved": None}
    sf = StateFile(tmp_path)
    sf.path.write_bytes(_old_format_file(old))
    loaded = sf.load()
    assert loaded is not None
    assert loaded.charge_ah == 123.5 and loaded.history is None
    engine = restore_state(loaded.charge_ah, loaded.last_balanced, history=loaded.history)
    assert engine.history == HistoryState()
    assert engine.counter.charge_ah == 123.5


def test_state_file_with_bad_history_is_refused() -> None:
    doc = json.loads(encode(SavedState(history=HistoryState())))
    del doc["checksum"]
    doc["history"]["charge_cycles"] = -3
    with pytest.raises(ValueError, match="charge_cycles"):
        decode(_old_format_file(doc))
    doc["history"] = [1, 2]
    with pytest.raises(ValueError, match="bad history"):
        decode(_old_format_file(doc))


# ---------------------------------------------------------------- in the engine


def test_engine_publishes_history_from_the_merged_bank() -> None:
    cfg = config()
    # Two packs of 16 x 3.30 V at +10 A each: 52.8 V, 20 A into the bank.
    packs = [pack("A"), pack("B")]
    state = EngineState()
    for now in (0.0, 10.0, 20.0):
        result = step(cfg, state, packs, AuxSnapshot(), now_s=now, today=TODAY)
        state = result.state
    v = result.values
    # 20 s x 20 A x 52.8 V = 21 120 J = 0.005867 kWh; nothing discharged.
    assert state.history.charged_kwh == pytest.approx(52.8 * 20.0 * 20.0 / 3.6e6)
    assert v["/History/ChargedEnergy"] == state.history.charged_kwh
    assert round_for_path("/History/ChargedEnergy", v["/History/ChargedEnergy"]) == 0.01
    assert v["/History/TotalAhDrawn"] == 0.0
    assert v["/History/MinimumVoltage"] == pytest.approx(52.8)
    assert v["/History/MinimumCellVoltage"] == pytest.approx(3.30)
    # Cell temperatures of the factory packs: 18..22 °C.
    assert (v["/History/MinimumTemperature"], v["/History/MaximumTemperature"]) == (18.0, 22.0)
    # BMS SoC 50 %, consumed -140 Ah per pack: the bank's -280 Ah is the deepest so far.
    assert v["/History/DeepestDischarge"] == pytest.approx(-280.0)
    assert v["/History/CanBeCleared"] == 1


def test_engine_counts_the_merged_low_voltage_alarm() -> None:
    cfg = config()
    alarms = [0] * len(ALARM_PATHS)
    alarms[LOW] = 2
    low = pack("A", alarms=tuple(alarms))
    state = EngineState()
    for now, packs in ((0.0, [pack("A")]), (1.0, [low]), (2.0, [low]), (3.0, []),
                       (4.0, [low]), (5.0, [pack("A")]), (6.0, [low])):
        state = step(cfg, state, packs, AuxSnapshot(), now_s=now, today=TODAY).state
    # Rising edges at 1 s and 6 s; the gap without any pack at 3 s is not a new alarm.
    assert state.history.low_voltage_alarms == 2
    assert state.history.high_voltage_alarms == 0


def test_engine_without_packs_keeps_the_history() -> None:
    cfg = config()
    state = step(cfg, EngineState(), [pack("A")], AuxSnapshot(), now_s=0.0, today=TODAY).state
    before = state.history
    after = step(cfg, state, [], AuxSnapshot(), now_s=1.0, today=TODAY).state.history
    assert replace(after, last_s=None) == replace(before, last_s=None)


# ---------------------------------------------------------------- invariants


_maybe = st.none() | st.floats(allow_nan=True, allow_infinity=True, width=32)
_tick = st.builds(
    HistoryInput,
    healthy=st.booleans(),
    voltage_v=st.none() | st.floats(0.1, 100.0),
    current_a=_maybe,
    soc_pct=st.none() | st.floats(0.0, 100.0),
    consumed_ah=st.none() | st.floats(-1000.0, 10.0),
    min_cell_v=st.none() | st.floats(2.0, 3.6),
    max_cell_v=st.none() | st.floats(2.0, 3.6),
    min_temperature_c=st.none() | st.floats(-20.0, 60.0),
    max_temperature_c=st.none() | st.floats(-20.0, 60.0),
    low_voltage_alarm=st.none() | st.integers(0, 2),
    high_voltage_alarm=st.none() | st.integers(0, 2),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-5.0, 60.0), _tick), min_size=1, max_size=30))
def test_history_invariants(ticks: list[tuple[float, HistoryInput]]) -> None:
    # Any sequence, garbage included: signs hold, counts never fall, nothing is NaN, the state
    # survives the state file, and the published values are what the GUI can show.
    s = HistoryState()
    now = 0.0
    for gap, tick in ticks:
        now += gap
        before = s
        s, _ = step_history(s, tick, now_s=now, max_gap_s=30.0)
        for name in ("charge_cycles", "full_discharges", "automatic_syncs",
                     "low_voltage_alarms", "high_voltage_alarms"):
            assert getattr(s, name) >= getattr(before, name)
        assert s.total_ah_drawn <= 0.0 and s.charged_kwh >= 0.0 and s.discharged_kwh >= 0.0
        assert s.total_ah_drawn <= before.total_ah_drawn
        assert s.charged_kwh >= before.charged_kwh
        if s.deepest_discharge_ah is not None:
            assert s.deepest_discharge_ah <= 0.0
            assert s.last_discharge_ah is None or s.deepest_discharge_ah <= s.last_discharge_ah
        assert (s.min_voltage_v is None) == (s.max_voltage_v is None)
        assert s.min_voltage_v is None or s.min_voltage_v <= (s.max_voltage_v or 0.0)
    for path, value in history_values(s).items():
        assert not (isinstance(value, float) and not math.isfinite(value)), path
    assert history_from_dict(json.loads(json.dumps(history_to_dict(s)))) == replace(s, last_s=None)
