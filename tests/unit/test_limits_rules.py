"""Worked values of the share rule, temperature derating, limit reasons and shadow mode."""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import pytest
from factories import config, pack
from hypothesis import given, settings
from hypothesis import strategies as st

from dbus_aggregate_batteries.config import ConfigError, parse_config
from dbus_aggregate_batteries.core.engine import EngineState, step
from dbus_aggregate_batteries.core.model import AuxSnapshot, PackSnapshot
from dbus_aggregate_batteries.core.reasons import (
    REASON_SETTLE_S,
    Reason,
    ReasonLog,
    Reasons,
    reason_events,
)
from dbus_aggregate_batteries.core.share import ShareState, fall_rate, step_share
from dbus_aggregate_batteries.core.temperature import bank_temperatures, derate, factor_at

TODAY = date(2026, 6, 15)
SHARE = config(
    limits={"share": {"headroom": 0.0, "anticipate_s": 0.0, "rise_s": 0.0}}
).limits.share
# Own mode with the packs' own limits ignored and a fixed charge table (the default table
# may change; these worked values must not).
OWN: dict[str, Any] = {
    "mode": "own",
    "own": {
        "pack_limits": "ignore",
        "charge_table": {
            "cell_voltage_v": [2.9, 2.95, 3.3, 3.4, 3.45], "factor": [0.2, 1.0, 1.0, 0.1, 0.0]
        },
    },
}
MIN_N: dict[str, Any] = {"bms": {"currents": "min_times_n"}}


def three(currents: tuple[float | None, ...], **kw: Any) -> list[PackSnapshot]:
    return [
        pack(name, current_a=c, ccl_a=100.0, dcl_a=100.0, **kw)
        for name, c in zip("ABC", currents, strict=True)
    ]


# ---------------------------------------------------------------- share rule


def test_share_limit_is_the_largest_current_no_pack_exceeds() -> None:
    # shares 40/35/25 %: 100/0.40 = 250 A, 100/0.35 = 285.7 A, 100/0.25 = 400 A -> 250 A
    _, lim = step_share(ShareState(), SHARE, three((40.0, 35.0, 25.0)), now_s=0.0)
    assert lim.ccl_a == pytest.approx(250.0)
    assert lim.ccl_reason.text == "A CCL 100 A at 40 % share"


def test_share_headroom_takes_its_fraction_off() -> None:
    cfg = config(limits={"share": {"anticipate_s": 0.0}}).limits.share
    _, lim = step_share(ShareState(), cfg, three((40.0, 35.0, 25.0)), now_s=0.0)
    assert lim.ccl_a == pytest.approx(250.0 * 0.9)  # default headroom 10 %


def test_share_with_equal_split_equals_min_times_n() -> None:
    packs = [pack("A", current_a=30.0, ccl_a=80.0), pack("B", current_a=30.0, ccl_a=120.0)]
    _, lim = step_share(ShareState(), SHARE, packs, now_s=0.0)
    assert lim.ccl_a == pytest.approx(160.0)  # 80 A x 2


def test_share_below_min_current_assumes_a_conservative_share() -> None:
    # 3 A in total < 5 A: not measured; assumed (1 + 0.5) / 3 = 50 % -> 100 / 0.5 = 200 A
    _, lim = step_share(ShareState(), SHARE, three((1.0, 1.0, 1.0)), now_s=0.0)
    assert lim.ccl_a == pytest.approx(200.0)
    assert "assumed" in lim.ccl_reason.text
    assert "50 % share" in lim.ccl_reason.text


def test_share_pack_without_current_means_nothing_is_measured() -> None:
    _, lim = step_share(ShareState(), SHARE, three((60.0, None, 40.0)), now_s=0.0)
    assert lim.ccl_a == pytest.approx(200.0)
    assert "assumed" in lim.ccl_reason.text


def test_share_carried_while_current_is_small() -> None:
    state, _ = step_share(ShareState(), SHARE, three((40.0, 35.0, 25.0)), now_s=0.0)
    _, lim = step_share(state, SHARE, three((0.5, 0.2, 0.1)), now_s=1.0)
    assert lim.ccl_a == pytest.approx(250.0)


def test_share_rises_at_once_and_falls_smoothed() -> None:
    state, _ = step_share(ShareState(), SHARE, three((40.0, 35.0, 25.0)), now_s=0.0)
    # A falls to 30 %: 0.40 + (0.30 - 0.40) x (1 - e^(-1/30)) = 0.39672
    state, lim = step_share(state, SHARE, three((30.0, 40.0, 30.0)), now_s=1.0)
    a = state.packs["com.victronenergy.battery.A"].charge
    assert a == pytest.approx(0.4 - 0.1 * (1 - math.exp(-1 / 30)))
    # B rose to 40 % at once, so B binds: 100 / 0.40
    assert lim.ccl_a == pytest.approx(250.0)
    assert lim.ccl_reason.text.startswith("B CCL")


def test_share_discharge_measured_separately() -> None:
    state, lim = step_share(ShareState(), SHARE, three((-50.0, -30.0, -20.0)), now_s=0.0)
    assert lim.dcl_a == pytest.approx(200.0)  # 100 / 0.5
    assert lim.ccl_a == pytest.approx(200.0)  # charge shares not measured: assumed 50 %
    assert state.packs["com.victronenergy.battery.A"].discharge == pytest.approx(0.5)


def test_share_pack_leaving_raises_the_others_share_at_once() -> None:
    state, _ = step_share(ShareState(), SHARE, three((40.0, 35.0, 25.0)), now_s=0.0)
    a, b, _c = three((40.0, 35.0, 25.0))
    # C is gone: A takes 0.40 / 0.75 = 53.3 % -> 100 / 0.5333 = 187.5 A, in the same tick
    _, lim = step_share(state, SHARE, [a, b], now_s=1.0)
    assert lim.ccl_a == pytest.approx(187.5)


def test_share_missing_pack_keeps_its_own_constraint() -> None:
    state, _ = step_share(ShareState(), SHARE, three((40.0, 35.0, 25.0)), now_s=0.0)
    a, b, c = three((40.0, 35.0, 25.0))
    c = pack("C", current_a=25.0, ccl_a=20.0)  # last known: its CCL had fallen to 20 A
    # C (last share 25 %, may still be connected): 20 / 0.25 = 80 A binds
    _, lim = step_share(state, SHARE, [a, b], [c], now_s=1.0)
    assert lim.ccl_a == pytest.approx(80.0)
    assert "missing" in lim.ccl_reason.text


def test_share_joining_pack_is_assumed() -> None:
    state, _ = step_share(ShareState(), SHARE, three((50.0, 50.0, 0.0))[:2], now_s=0.0)
    packs = [*three((1.0, 1.0, 1.0))[:2], pack("C", current_a=1.0, ccl_a=80.0)]
    # A and B keep their 50 %; C is new and unmeasured (current below the threshold):
    # assumed (1 + 0.5) / 3 = 50 % -> 80 / 0.5 = 160 A
    _, lim = step_share(state, SHARE, packs, now_s=1.0)
    assert lim.ccl_a == pytest.approx(160.0)
    assert lim.ccl_reason.text == "C CCL 80 A at 50 % share (assumed)"


def test_share_anticipates_a_steadily_falling_pack_limit() -> None:
    cfg = config(
        limits={"share": {"headroom": 0.0, "anticipate_s": 5.0, "rise_s": 0.0}}
    ).limits.share
    state = ShareState()
    # A's CCL falls 2 A/s: 100, 98, 96, 94, 92 A at t = 0..4 s
    for t in range(5):
        packs = [pack("A", current_a=50.0, ccl_a=100.0 - 2.0 * t),
                 pack("B", current_a=50.0, ccl_a=100.0)]
        state, lim = step_share(state, cfg, packs, now_s=float(t))
    # window 0..4 s: both halves fall 2 A/s -> 92 - 2 x 5 = 82 A expected; / 0.5 = 164 A
    assert lim.ccl_a == pytest.approx(164.0)
    assert lim.ccl_reason.text == "A CCL 92 A at 50 % share (falling, 82 A expected)"


def test_share_does_not_project_a_single_step() -> None:
    cfg = config(
        limits={"share": {"headroom": 0.0, "anticipate_s": 15.0, "rise_s": 0.0}}
    ).limits.share
    state = ShareState()
    for t, dcl in enumerate((100.0, 100.0, 100.0, 40.0, 40.0, 40.0)):
        packs = [pack("A", current_a=-50.0, dcl_a=dcl), pack("B", current_a=-50.0, dcl_a=100.0)]
        state, lim = step_share(state, cfg, packs, now_s=float(t))
        # a step down is followed at once, but never projected to 0 (DCL 0 stops inverters)
        assert lim.dcl_a == pytest.approx(dcl / 0.5)


def test_fall_rate_of_ramp_step_and_wobble() -> None:
    assert fall_rate(((0.0, 10.0), (1.0, 8.0), (2.0, 6.0))) == pytest.approx(2.0)
    assert fall_rate(((0.0, 10.0), (1.0, 10.0), (2.0, 4.0))) == 0.0
    assert fall_rate(((0.0, 10.0), (1.0, 6.0), (2.0, 9.0))) == 0.0
    assert fall_rate(((0.0, 10.0), (1.0, 12.0), (2.0, 14.0))) == 0.0
    assert fall_rate(((0.0, 10.0), (1.0, 8.0))) == 0.0  # too short to tell


def test_share_bank_limit_falls_at_once_and_rises_smoothed() -> None:
    cfg = config(
        limits={"share": {"headroom": 0.0, "anticipate_s": 0.0, "rise_s": 5.0}}
    ).limits.share
    packs = [pack("A", current_a=50.0, ccl_a=100.0), pack("B", current_a=50.0, ccl_a=100.0)]
    state, lim = step_share(ShareState(), cfg, packs, now_s=0.0)
    assert lim.ccl_a == pytest.approx(200.0)
    packs[0] = pack("A", current_a=50.0, ccl_a=50.0)
    state, lim = step_share(state, cfg, packs, now_s=1.0)
    assert lim.ccl_a == pytest.approx(100.0)  # at once
    packs[0] = pack("A", current_a=50.0, ccl_a=100.0)
    state, lim = step_share(state, cfg, packs, now_s=2.0)
    assert lim.ccl_a == pytest.approx(100.0 + 100.0 * (1.0 - math.exp(-1.0 / 5.0)))


def test_share_floor_for_a_pack_taking_nothing() -> None:
    packs = [pack("A", current_a=100.0, ccl_a=100.0), pack("B", current_a=0.0, ccl_a=10.0)]
    _, lim = step_share(ShareState(), SHARE, packs, now_s=0.0)
    # B is taken at no less than 0.25 / 2 = 12.5 %: 10 / 0.125 = 80 A, below A's 100 / 1.0
    assert lim.ccl_a == pytest.approx(80.0)


def test_engine_share_keeps_the_largest_taker_inside_its_limit_where_min_times_n_does_not() -> None:
    packs = [pack("A", current_a=60.0, ccl_a=100.0), pack("B", current_a=40.0, ccl_a=100.0)]
    minn = step(config(limits=MIN_N), EngineState(), packs, AuxSnapshot(), now_s=0.0,
                today=TODAY)
    share = step(config(), EngineState(), packs, AuxSnapshot(), now_s=0.0, today=TODAY)
    assert minn.limits.ccl_a == pytest.approx(200.0)  # A would carry 0.6 x 200 = 120 A
    assert share.limits.ccl_a == pytest.approx(100.0 / 0.6 * 0.9)  # A carries 90 A
    assert share.values["/Info/ChargeLimitation"] == "A CCL 100 A at 60 % share"


def test_engine_share_block_still_gives_zero() -> None:
    packs = [pack("A", current_a=60.0), pack("B", current_a=40.0, allow_to_charge=0)]
    res = step(config(), EngineState(), packs, AuxSnapshot(), now_s=0.0, today=TODAY)
    assert res.limits.ccl_a == 0.0
    assert res.values["/Info/ChargeLimitation"] == "B blocks charge"


def test_engine_own_mode_pack_limits_share() -> None:
    cfg = config(limits={"mode": "own"})  # pack_limits: share is the default
    packs = [pack("A", current_a=60.0, ccl_a=50.0), pack("B", current_a=40.0, ccl_a=50.0)]
    res = step(cfg, EngineState(), packs, AuxSnapshot(), now_s=0.0, today=TODAY)
    # own table: 200 A at 3.30 V; pack A: 50 / 0.6 x 0.9 = 75 A binds
    assert res.limits.ccl_a == pytest.approx(50.0 / 0.6 * 0.9)
    assert res.reasons.ccl.text == "A CCL 50 A at 60 % share"


# ---------------------------------------------------------------- temperature


LFP = config().limits.temperature


def test_lfp_charge_table_worked_values() -> None:
    t = LFP.charge_table
    assert factor_at(t, -5.0) == 0.0
    assert factor_at(t, 0.0) == 0.0
    assert factor_at(t, 0.5) == pytest.approx(0.1)
    assert factor_at(t, 5.5) == pytest.approx(0.2 + 0.8 * 4.5 / 9.0)
    assert factor_at(t, 30.0) == 1.0
    assert factor_at(t, 50.0) == pytest.approx(0.5)
    assert factor_at(t, 55.0) == 0.0


def test_lfp_discharge_table_worked_values() -> None:
    t = LFP.discharge_table
    assert factor_at(t, -25.0) == 0.0
    assert factor_at(t, -15.0) == pytest.approx(0.15)
    assert factor_at(t, 20.0) == 1.0
    assert factor_at(t, 60.0) == 0.0


def test_lto_charges_colder() -> None:
    lto = config(chemistry="lto").limits.temperature
    assert factor_at(lto.charge_table, -10.0) == 1.0
    assert factor_at(lto.charge_table, -25.0) == pytest.approx(0.5)
    assert factor_at(LFP.charge_table, -10.0) == 0.0


def test_derate_takes_the_worse_end_of_the_span() -> None:
    d = derate(LFP.charge_table, (3.0, 48.0), "charge table")
    assert d.factor == pytest.approx(0.2 + 0.8 * 2.0 / 9.0)
    assert d.reason.text == "temperature 3.0 °C (charge table)"
    hot = derate(LFP.charge_table, (20.0, 50.0), "charge table")
    assert hot.factor == pytest.approx(0.5)
    assert hot.reason.text == "temperature 50.0 °C (charge table)"


def test_derate_finds_a_dip_between_the_ends() -> None:
    table = parse_config(
        {"limits": {"temperature": {"charge_table": {
            "temperature_c": [0.0, 20.0, 40.0], "factor": [1.0, 0.3, 1.0]}}}}
    ).limits.temperature.charge_table
    assert derate(table, (5.0, 35.0), "charge table").factor == pytest.approx(0.3)


def test_bank_temperatures_use_every_reading() -> None:
    packs = [
        pack("A", temperature_c=20.0, min_cell_temp_c=18.0, max_cell_temp_c=22.0),
        pack("B", temperature_c=None, min_cell_temp_c=None, max_cell_temp_c=31.0),
    ]
    assert bank_temperatures(packs) == (18.0, 31.0)
    nothing = [pack("A", temperature_c=None, min_cell_temp_c=None, max_cell_temp_c=None)]
    assert bank_temperatures(nothing) is None


def _temp(t: float | None, name: str = "A", **kw: Any) -> PackSnapshot:
    return pack(name, temperature_c=t, min_cell_temp_c=t, max_cell_temp_c=t, **kw)


def test_engine_own_mode_cold_cuts_charge_at_the_configured_points() -> None:
    cfg = config(limits=OWN)
    ccl = {
        t: step(cfg, EngineState(), [_temp(t)], AuxSnapshot(), now_s=0.0, today=TODAY)
        for t in (-5.0, 0.0, 1.0, 10.0, 45.0, 55.0)
    }
    assert [r.limits.ccl_a for r in ccl.values()] == pytest.approx(
        [0.0, 0.0, 40.0, 200.0, 200.0, 0.0]
    )
    assert ccl[1.0].reasons.ccl.text == "temperature 1.0 °C (charge table)"
    assert ccl[-5.0].limits.dcl_a == pytest.approx(130.0)  # 200 A x (0.3 + 0.7 x 5/10)


def test_engine_own_mode_temperature_and_cell_table_take_the_lower() -> None:
    cfg = config(limits=OWN)
    # cell 3.40 V: charge table factor 0.1 -> 20 A; 5.5 °C: factor 0.6 -> 120 A
    p = _temp(5.5, cell_v=3.40)
    res = step(cfg, EngineState(), [p], AuxSnapshot(), now_s=0.0, today=TODAY)
    assert res.limits.ccl_a == pytest.approx(20.0)
    assert res.reasons.ccl.text == "cell A: C1 3.400 V (table)"


def test_engine_missing_temperature_is_conservative_only_if_every_pack_lacks_it() -> None:
    cfg = config(limits=OWN)
    one = step(cfg, EngineState(), [_temp(None), _temp(25.0, "B")], AuxSnapshot(), now_s=0.0,
               today=TODAY)
    assert one.limits.ccl_a == pytest.approx(200.0)
    assert one.values["/Alarms/BatteryTemperatureSensor"] == 0
    none = step(cfg, EngineState(), [_temp(None), _temp(None, "B")], AuxSnapshot(), now_s=0.0,
                today=TODAY)
    # No charge into cells that may be freezing, but discharge goes on: DCL 0 would stop an
    # island inverter on a bank that merely lacks sensors.
    assert none.limits.ccl_a == 0.0 and none.limits.dcl_a == pytest.approx(one.limits.dcl_a)
    assert none.limits.dcl_a > 0.0
    assert none.values["/Alarms/BatteryTemperatureSensor"] == 1
    assert none.reasons.ccl.text.startswith("no temperature from any pack")


def test_engine_own_mode_temperature_can_be_switched_off() -> None:
    cfg = config(limits={**OWN, "temperature": {"own": False}})
    res = step(cfg, EngineState(), [_temp(-5.0)], AuxSnapshot(), now_s=0.0, today=TODAY)
    assert res.limits.ccl_a == pytest.approx(200.0)
    assert res.values["/Alarms/BatteryTemperatureSensor"] is None


def test_engine_bms_mode_temperature_cap_is_off_by_default() -> None:
    packs = [_temp(50.0), _temp(50.0, "B")]
    off = step(config(limits=MIN_N), EngineState(), packs, AuxSnapshot(), now_s=0.0,
               today=TODAY)
    assert off.limits.ccl_a == pytest.approx(200.0)
    on = step(config(limits={**MIN_N, "temperature": {"bms_cap": True}}), EngineState(), packs,
              AuxSnapshot(), now_s=0.0, today=TODAY)
    assert on.limits.ccl_a == pytest.approx(100.0)  # 200 A x f(50 °C) = 0.5
    assert on.reasons.ccl.text == "temperature 50.0 °C (charge table)"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"temperature_c": [10.0, 5.0], "factor": [1.0, 0.0]}, "strictly ascending"),
        ({"temperature_c": [0.0, 10.0], "factor": [1.0, 0.5, 0.0]}, "must match"),
        ({"temperature_c": [0.0, 200.0], "factor": [1.0, 0.0]}, "-50..120"),
        ({"temperature_c": [0.0, 10.0], "factor": [1.0, 1.5]}, "0..1"),
    ],
)
def test_temperature_tables_are_validated(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"limits": {"temperature": {"charge_table": table}}})
    assert any("limits.temperature.charge_table" in p and message in p
               for p in err.value.problems), err.value.problems


# ---------------------------------------------------------------- reasons


def test_bms_reasons_name_the_binding_pack() -> None:
    packs = [pack("A", ccl_a=100.0, cvl_v=55.2), pack("B", ccl_a=50.0, dcl_a=80.0, cvl_v=54.0)]
    res = step(config(limits=MIN_N), EngineState(), packs, AuxSnapshot(), now_s=0.0,
               today=TODAY)
    assert res.values["/Info/ChargeLimitation"] == "B CCL 50 A x 2 packs (min x N)"
    assert res.values["/Info/DischargeLimitation"] == "B DCL 80 A x 2 packs (min x N)"
    assert res.values["/Info/ChargeModeDebug"] == "B CVL 54.00 V"


def test_own_reasons_cell_table_latch_and_cap() -> None:
    cfg = config(limits={**OWN, "max_discharge_current_a": 50.0})
    p = _temp(25.0, cell_list=[3.42] + [3.3] * 14 + [2.85])
    res = step(cfg, EngineState(), [p], AuxSnapshot(), now_s=0.0, today=TODAY)
    assert res.reasons.ccl.text == "cell A: C1 3.420 V (table)"
    assert res.reasons.dcl.text.startswith("discharged: latched until the lowest cell is above")
    full = step(cfg, EngineState(), [_temp(25.0)], AuxSnapshot(), now_s=0.0, today=TODAY)
    assert full.reasons.ccl.text == "limits.own.max_charge_current_a 200 A"
    assert full.reasons.dcl.text == "limits.max_discharge_current_a 50 A"
    assert full.reasons.cvl.text.startswith(("charge voltage", "balancing"))


def test_reason_of_a_missing_pack() -> None:
    res = step(config(), EngineState(), [pack("A")], AuxSnapshot(), now_s=0.0, today=TODAY,
               missing=[pack("B", allow_to_charge=0)])
    assert res.values["/Info/ChargeLimitation"] == "B blocks charge (last known, missing)"


def test_reason_change_is_logged_once_after_it_held() -> None:
    old = Reasons(Reason("cvl", "x"), Reason("cell", "cell A: C1 3.40 V"), Reason("m", "m"))
    log = ReasonLog(logged=old, since_s=(0.0, 0.0, 0.0))
    same_key = Reasons(old.cvl, Reason("cell", "cell A: C1 3.41 V"), old.dcl)
    log, events = reason_events(log, old, same_key, 10.0)
    assert events == ()
    other = Reasons(old.cvl, Reason("temperature", "temperature 2.0 °C"), old.dcl)
    log, events = reason_events(log, same_key, other, 11.0)
    assert events == ()  # not yet: it must hold for REASON_SETTLE_S
    log, events = reason_events(log, other, other, 11.0 + REASON_SETTLE_S)
    assert [e.message for e in events] == ["CCL now set by: temperature 2.0 °C"]
    log, events = reason_events(log, other, other, 30.0)
    assert events == ()


def test_engine_logs_a_reason_change_once_over_ticks() -> None:
    state = EngineState()
    messages = []
    # A binds at 30 A; B at 60 A; then A and B take turns every tick (never logged).
    for t, ccl in enumerate([100.0] * 8 + [30.0] * 8 + [59.0, 61.0] * 5):
        packs = [pack("A", ccl_a=ccl), pack("B", ccl_a=60.0)]
        res = step(config(limits=MIN_N), state, packs, AuxSnapshot(), now_s=float(t),
                   today=TODAY)
        state = res.state
        messages += [e.message for e in res.events if e.code == "reason-ccl"]
    assert messages == ["CCL now set by: B CCL 60 A x 2 packs (min x N)",
                        "CCL now set by: A CCL 30 A x 2 packs (min x N)"]


# ---------------------------------------------------------------- shadow mode


def test_shadow_mode_offers_no_dvcc_limits_and_shows_the_would_be_ones() -> None:
    packs = [pack("A"), pack("B", ccl_a=50.0)]
    control = step(config(), EngineState(), packs, AuxSnapshot(), now_s=0.0, today=TODAY)
    shadow = step(config(publish={"mode": "shadow"}), EngineState(), packs, AuxSnapshot(),
                  now_s=0.0, today=TODAY)
    for path in ("/Info/MaxChargeVoltage", "/Info/MaxChargeCurrent",
                 "/Info/MaxDischargeCurrent", "/Info/BatteryLowVoltage"):
        assert control.values[path] is not None
        assert shadow.values[path] is None
    assert shadow.values["/Shadow/MaxChargeVoltage"] == control.values["/Info/MaxChargeVoltage"]
    assert shadow.values["/Shadow/MaxChargeCurrent"] == control.values["/Info/MaxChargeCurrent"]
    assert (shadow.values["/Shadow/MaxDischargeCurrent"]
            == control.values["/Info/MaxDischargeCurrent"])
    assert shadow.limits == control.limits
    assert shadow.values["/Soc"] == control.values["/Soc"]
    assert "/Shadow/MaxChargeCurrent" not in control.values


def test_shadow_mode_never_writes_the_feed_in_setting() -> None:
    high = pack("A", cell_list=[3.50] + [3.3] * 15, temperature_c=25.0)
    aux = AuxSnapshot(feed_in_setting=1)
    control = step(config(limits={"mode": "own"}), EngineState(), [high], aux, now_s=0.0,
                   today=TODAY)
    shadow = step(config(limits={"mode": "own"}, publish={"mode": "shadow"}), EngineState(),
                  [high], aux, now_s=0.0, today=TODAY)
    assert control.feed_in_request == 0
    assert shadow.feed_in_request is None
    assert shadow.state.feed_in.saved_value is None


def test_publish_mode_is_validated() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"publish": {"mode": "watch"}})
    assert any(p.startswith("publish.mode") for p in err.value.problems)


# ---------------------------------------------------------------- share properties


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.floats(0.2, 5.0), min_size=1, max_size=6),
    ccls=st.lists(st.floats(1.0, 500.0), min_size=6, max_size=6),
    total=st.floats(5.5, 1000.0),
)
def test_share_keeps_every_measured_pack_inside_its_limit(
    weights: list[float], ccls: list[float], total: float
) -> None:
    """With measured shares, every pack's share of the bank limit is within its own CCL."""
    cfg = config().limits.share
    shares = [w / sum(weights) for w in weights]
    packs = [
        pack(f"P{i}", current_a=total * s, ccl_a=c)
        for i, (s, c) in enumerate(zip(shares, ccls, strict=False))
    ]
    _, lim = step_share(ShareState(), cfg, packs, now_s=0.0)
    assert lim.ccl_a is not None
    for p, s in zip(packs, shares, strict=False):
        assert p.ccl_a is not None
        assert lim.ccl_a * s <= p.ccl_a * (1.0 - cfg.headroom) + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    ccls=st.lists(st.floats(1.0, 500.0), min_size=1, max_size=6),
    current=st.floats(-300.0, 300.0),
)
def test_share_with_equal_split_never_exceeds_min_times_n(
    ccls: list[float], current: float
) -> None:
    """Equal currents (or none measurable): never more than lowest CCL x N."""
    packs = [pack(f"P{i}", current_a=current, ccl_a=c, dcl_a=c) for i, c in enumerate(ccls)]
    _, lim = step_share(ShareState(), config().limits.share, packs, now_s=0.0)
    assert lim.ccl_a is not None and lim.dcl_a is not None
    assert lim.ccl_a <= min(ccls) * len(ccls) + 1e-6
    assert lim.dcl_a <= min(ccls) * len(ccls) + 1e-6
