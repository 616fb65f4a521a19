"""Closed-loop physics against hand-worked values: cells, parallel split, BMS trips, charger."""

from __future__ import annotations

import math

import pytest

from dbus_aggregate_batteries.config import ConfigError
from dbus_aggregate_batteries.sim.physics import (
    OCV_LFP,
    Bank,
    BmsParams,
    Cell,
    Charger,
    ChargerParams,
    DvccLimits,
    Pack,
    interp,
    pack_paths,
)
from dbus_aggregate_batteries.sim.scenario import (
    load_scenario,
    parse_scenario,
    shipped_scenarios,
    signal_at,
)

FLAT = ((0.0, 3.0), (100.0, 3.0))  # an OCV that does not move: EMF = cells x 3.0 V


def pack(
    name: str = "p",
    *,
    cells: int = 4,
    r0: float = 0.001,
    extra: float = 0.0,
    ocv: tuple[tuple[float, float], ...] = FLAT,
    soc: float = 50.0,
    bms: BmsParams | None = None,
) -> Pack:
    return Pack(
        name,
        [Cell(100.0, soc, r0_ohm=r0, r1_ohm=0.0) for _ in range(cells)],
        ocv,
        bms=bms or BmsParams(balancer="none"),
        extra_r_ohm=extra,
    )


def test_interp_is_linear_and_flat_beyond_the_ends() -> None:
    pts = ((0.0, 1.0), (10.0, 2.0), (20.0, 4.0))
    assert interp(pts, -5.0) == 1.0
    assert interp(pts, 5.0) == pytest.approx(1.5)
    assert interp(pts, 15.0) == pytest.approx(3.0)
    assert interp(pts, 25.0) == 4.0


def test_lfp_knee_is_steep() -> None:
    assert interp(OCV_LFP, 50.0) == pytest.approx(3.295)
    assert interp(OCV_LFP, 100.0) - interp(OCV_LFP, 97.0) >= 0.2


def test_cell_integrates_current_over_its_capacity() -> None:
    cell = Cell(100.0, 50.0, r0_ohm=0.001, r1_ohm=0.0)
    cell.step(3600.0, 10.0)  # 10 Ah into 100 Ah
    assert cell.soc_pct == pytest.approx(60.0)


def test_rc_pair_relaxes_with_its_time_constant() -> None:
    cell = Cell(100.0, 50.0, r0_ohm=0.0, r1_ohm=0.002, tau_s=10.0)
    cell.step(10.0, 100.0)  # one time constant at 100 A: V_rc = 0.2 V x (1 - 1/e)
    assert cell.v_rc == pytest.approx(0.2 * (1.0 - math.exp(-1.0)))


def test_parallel_split_follows_resistance() -> None:
    # Equal EMF (12 V), resistances 4 mOhm and 8 mOhm: 30 A splits 20 / 10 A and the bus is
    # 12 V + 20 A x 4 mOhm = 12.08 V.
    a = pack("a", r0=0.001)
    b = pack("b", r0=0.002)
    bus_v, currents = Bank([a, b]).solve(30.0)
    assert currents == pytest.approx([20.0, 10.0])
    assert bus_v == pytest.approx(12.08)


def test_parallel_split_with_different_emf_circulates() -> None:
    # EMF 12 V and 12.4 V, 4 mOhm each, no bank current: 50 A flows from b into a.
    a = pack("a", r0=0.001)
    b = pack("b", r0=0.001, ocv=((0.0, 3.1), (100.0, 3.1)))
    bus_v, currents = Bank([a, b]).solve(0.0)
    assert currents == pytest.approx([50.0, -50.0])
    assert bus_v == pytest.approx(12.2)


def test_tripped_pack_takes_no_charge() -> None:
    a = pack("a")
    b = pack("b")
    b.charge_tripped = True
    _, currents = Bank([a, b]).solve(30.0)
    assert currents == pytest.approx([30.0, 0.0])
    # ... but may still give current (body diode / discharge FET on).
    _, currents = Bank([a, b]).solve(-30.0)
    assert currents == pytest.approx([-15.0, -15.0])


def test_no_pack_accepting_means_no_current() -> None:
    a = pack("a")
    a.charge_tripped = True
    bank = Bank([a])
    assert not bank.accepts(10.0)
    assert bank.solve(10.0)[1] == [0.0]


def test_over_voltage_trip_after_delay_and_release_with_hysteresis() -> None:
    bms = BmsParams(ovp_v=3.65, ovp_release_v=3.50, trip_delay_s=2.0, balancer="none")
    p = pack(bms=bms, r0=0.001)
    p.step(1.0, 700.0, 25.0)  # cells 3.0 + 0.7 V = 3.70 V: over, 1 s of 2
    assert not p.charge_tripped
    p.step(1.0, 700.0, 25.0)
    assert p.charge_tripped and p.charge_trips == 1
    assert pack_paths(p)["/Io/AllowToCharge"] == 0
    assert pack_paths(p)["/Alarms/HighCellVoltage"] == 2
    assert p.ccl_a() == 0.0
    p.step(1.0, 600.0, 25.0)  # 3.60 V: above the release voltage, stays tripped
    assert p.charge_tripped
    p.step(1.0, 0.0, 25.0)  # 3.00 V: released, still one trip counted
    assert not p.charge_tripped and p.charge_trips == 1


def test_under_voltage_trip() -> None:
    bms = BmsParams(uvp_v=2.80, uvp_release_v=3.0, trip_delay_s=1.0, balancer="none")
    p = pack(bms=bms, r0=0.001)
    p.step(1.0, -300.0, 25.0)  # 3.0 - 0.3 = 2.70 V
    assert p.discharge_tripped and p.discharge_trips == 1
    assert pack_paths(p)["/Info/MaxDischargeCurrent"] == 0.0


def test_driver_limits_fall_with_cell_voltage_and_temperature() -> None:
    bms = BmsParams(ccl_a=100.0, balancer="none")
    p = pack(bms=bms, r0=0.0, ocv=((0.0, 3.475), (100.0, 3.475)))
    # Cell 3.475 V: halfway between 3.45 (0.5) and 3.50 (0.05) -> 0.275; 25 °C -> 1.
    assert p.ccl_a() == pytest.approx(27.5)
    p.temperature_c = 37.5  # halfway between 35 (1.0) and 40 (0.4) -> 0.7
    assert p.ccl_a() == pytest.approx(27.5 * 0.7)
    # Driver CVL: 4 x 3.45 minus the overshoot 4 x 0.025.
    assert p.cvl_v() == pytest.approx(4 * 3.45 - 4 * 0.025)


def test_active_balancer_moves_charge_from_high_to_low() -> None:
    bms = BmsParams(balancer="active", balance_current_a=1.0, balance_start_v=3.0)
    p = Pack(
        "p",
        [Cell(100.0, 99.0, r1_ohm=0.0), Cell(100.0, 95.0, r1_ohm=0.0)],
        OCV_LFP,
        bms=bms,
    )
    p.step(3600.0, 0.0, 25.0)  # 1 Ah = 1 % of 100 Ah moved
    assert p.cells[0].soc_pct == pytest.approx(98.0)
    assert p.cells[1].soc_pct == pytest.approx(96.0)


def test_thermal_model_reaches_steady_state() -> None:
    p = pack(r0=0.001, extra=0.006)  # 10 mOhm: 50 A -> 25 W -> +7.5 °C at 0.3 °C/W
    for _ in range(200):
        p.step(60.0, 50.0, 20.0)
        p.cells[0].soc_pct = p.cells[1].soc_pct = 50.0
    assert p.temperature_c == pytest.approx(27.5, abs=0.05)


def charger(tau: float = 0.0, offset: float = 0.0) -> Charger:
    return Charger(ChargerParams(tau_s=tau, offset_v=offset, dvcc_period_s=0.0))


def test_charger_obeys_ccl() -> None:
    bank = Bank([pack()])
    c = charger()
    amps = c.step(1.0, DvccLimits(20.0, 10.0, 50.0), bank, charge_w=1200.0, load_w=0.0)
    assert amps == pytest.approx(10.0)


def test_charger_regulates_to_cvl() -> None:
    # EMF 12 V, 4 mOhm: holding 12.04 V takes 10 A, below the 100 A the power would give.
    bank = Bank([pack()])
    c = charger()
    amps = c.step(1.0, DvccLimits(12.04, 200.0, 50.0), bank, charge_w=1200.0, load_w=0.0)
    assert amps == pytest.approx(10.0)


def test_charger_measurement_offset_moves_the_regulated_voltage() -> None:
    # Reading 20 mV high, it holds the bus at 12.02 V: 5 A.
    bank = Bank([pack()])
    c = charger(offset=0.02)
    amps = c.step(1.0, DvccLimits(12.04, 200.0, 50.0), bank, charge_w=1200.0, load_w=0.0)
    assert amps == pytest.approx(5.0)


def test_charger_lag_is_first_order() -> None:
    bank = Bank([pack()])
    c = charger(tau=2.0)
    amps = c.step(2.0, DvccLimits(20.0, 10.0, 50.0), bank, charge_w=1200.0, load_w=0.0)
    assert amps == pytest.approx(10.0 * (1.0 - math.exp(-1.0)))


def test_charger_obeys_dcl_and_stops_without_limits() -> None:
    bank = Bank([pack()])
    c = charger()
    amps = c.step(1.0, DvccLimits(20.0, 10.0, 30.0), bank, charge_w=0.0, load_w=1200.0)
    assert amps == pytest.approx(-30.0)
    c = Charger(ChargerParams(tau_s=0.0, dvcc_period_s=0.0, bms_lost_timeout_s=10.0))
    lost = DvccLimits(None, None, None)
    assert c.step(1.0, lost, bank, charge_w=1200.0, load_w=0.0) == 0.0  # no charging
    assert c.step(1.0, lost, bank, charge_w=0.0, load_w=1200.0) < 0.0  # still discharges
    assert c.step(10.0, lost, bank, charge_w=0.0, load_w=1200.0) == 0.0  # after the timeout


def test_charger_sees_new_limits_only_every_dvcc_period() -> None:
    bank = Bank([pack()])
    c = Charger(ChargerParams(tau_s=0.0, dvcc_period_s=3.0))
    c.step(1.0, DvccLimits(20.0, 10.0, 30.0), bank, charge_w=1200.0, load_w=0.0)
    amps = c.step(1.0, DvccLimits(20.0, 5.0, 30.0), bank, charge_w=1200.0, load_w=0.0)
    assert amps == pytest.approx(10.0)  # still the old CCL
    c.step(1.0, DvccLimits(20.0, 5.0, 30.0), bank, charge_w=1200.0, load_w=0.0)
    amps = c.step(1.0, DvccLimits(20.0, 5.0, 30.0), bank, charge_w=1200.0, load_w=0.0)
    assert amps == pytest.approx(5.0)


def test_shipped_scenarios_load() -> None:
    names = shipped_scenarios()
    assert {"charge_weak_cell", "charge_healthy", "charge_hot_pack", "pack_vanish", "cycles10",
            "lto_charge"} <= set(names)
    for name in names:
        scn = load_scenario(name)
        assert len(scn.build_packs()) == len(scn.packs)


def test_bad_scenario_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as err:
        parse_scenario({"name": "x", "packs": [{"soc_pct": 120}], "bogus": 1})
    text = str(err.value)
    assert "packs[0].soc_pct" in text and "bogus" in text
    with pytest.raises(ConfigError, match="ascending"):
        parse_scenario({"name": "x", "packs": [{}], "charge_w": [[10, 1], [5, 2]]})


def test_signal_is_linear_between_points() -> None:
    assert signal_at([(0.0, 0.0), (10.0, 100.0)], 2.5) == pytest.approx(25.0)
    assert signal_at([(0.0, 0.0), (10.0, 100.0)], 50.0) == 100.0
