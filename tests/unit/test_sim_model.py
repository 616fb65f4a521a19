"""The simulator's pure models: physics, the driver's path layouts, fault injection."""

from __future__ import annotations

import math

import pytest

from dbus_aggregate_batteries.sim.model import (
    CHEMISTRIES,
    SERIALBATTERY_PRODUCT_ID,
    Bank,
    PackModel,
    PackSpec,
    ShuntModel,
    constant_profile,
    default_pack_specs,
    ocv_v,
    sine_profile,
)

# Paths every layout publishes (venus-dbus.md §5.2, "all").
COMMON_PATHS = {
    "/Mgmt/ProcessName",
    "/Mgmt/ProcessVersion",
    "/Mgmt/Connection",
    "/DeviceInstance",
    "/ProductId",
    "/ProductName",
    "/FirmwareVersion",
    "/HardwareVersion",
    "/Connected",
    "/CustomName",
    "/Dc/0/Voltage",
    "/Dc/0/Current",
    "/Dc/0/Power",
    "/Dc/0/Temperature",
    "/Soc",
    "/Capacity",
    "/InstalledCapacity",
    "/ConsumedAmphours",
    "/Info/BatteryLowVoltage",
    "/Info/MaxChargeVoltage",
    "/Info/MaxChargeCurrent",
    "/Info/MaxDischargeCurrent",
    "/Io/AllowToCharge",
    "/Io/AllowToDischarge",
    "/System/NrOfCellsPerBattery",
    "/System/MinCellVoltage",
    "/System/MaxCellVoltage",
    "/System/MinVoltageCellId",
    "/System/MaxVoltageCellId",
    "/Balancing",
    "/Voltages/Sum",
    "/Voltages/Diff",
}
V2_ONLY = {
    "/Serial",
    "/TimeToGo",
    "/Soh",
    "/Info/ChargeMode",
    "/Info/MaxChargeCellVoltage",
    "/Io/AllowToBalance",
    "/Alarms/BmsCable",
    "/State",
    "/ErrorCode",
}


def pack(**kwargs: object) -> PackModel:
    return PackModel(PackSpec(name="ttyUSB0", **kwargs))  # type: ignore[arg-type]


def test_soc_integrates_current_over_time() -> None:
    model = pack(capacity_ah=100.0, soc_pct=50.0)
    for _ in range(60):
        model.step(60.0, 10.0)  # one hour at 10 A into 100 Ah
    assert model.soc_pct == pytest.approx(60.0)
    model.step(1800.0, -20.0)
    assert model.soc_pct == pytest.approx(50.0)
    assert model.values()["/Capacity"] == pytest.approx(50.0)


@pytest.mark.parametrize(("current_a", "expected"), [(500.0, 100.0), (-500.0, 0.0)])
def test_soc_clamps_at_full_and_empty(current_a: float, expected: float) -> None:
    model = pack(capacity_ah=100.0, soc_pct=50.0)
    model.step(3600.0, current_a)
    assert model.soc_pct == expected
    assert model.values()["/Soc"] == expected


def test_step_rejects_negative_time() -> None:
    with pytest.raises(ValueError):
        pack().step(-1.0, 0.0)


@pytest.mark.parametrize("chemistry", ["lfp", "lto"])
def test_cell_voltages_rise_with_soc(chemistry: str) -> None:
    previous = [-math.inf] * 16
    for soc in range(0, 101, 5):
        cells = pack(chemistry=chemistry, soc_pct=float(soc)).cells
        assert all(now > before for now, before in zip(cells, previous, strict=True))
        previous = list(cells)
    low, high = (2.85, 3.65) if chemistry == "lfp" else (1.85, 2.75)
    for end_soc in (0.0, 100.0):
        assert all(low < c < high for c in pack(chemistry=chemistry, soc_pct=end_soc).cells)


def test_ocv_curve_interpolates_and_clamps() -> None:
    curve = CHEMISTRIES["lfp"].ocv_curve
    assert ocv_v(curve, -5.0) == curve[0][1]
    assert ocv_v(curve, 200.0) == curve[-1][1]
    assert ocv_v(curve, 45.0) == pytest.approx((3.285 + 3.295) / 2)


def test_current_raises_cell_voltage_through_resistance() -> None:
    model = pack(soc_pct=50.0)
    at_rest = model.values()["/Dc/0/Voltage"]
    model.step(0.0, 100.0)
    charging = model.values()["/Dc/0/Voltage"]
    model.step(0.0, -100.0)
    discharging = model.values()["/Dc/0/Voltage"]
    assert isinstance(at_rest, float) and isinstance(charging, float)
    assert isinstance(discharging, float)
    assert discharging < at_rest < charging
    assert charging - at_rest == pytest.approx(16 * 100.0 * 0.0004)


def test_cell_spread_matches_spec() -> None:
    values = pack(cell_spread_v=0.010).values()
    assert values["/Voltages/Diff"] == pytest.approx(0.010)
    cells = [values[f"/Voltages/Cell{k}"] for k in range(1, 17)]
    assert values["/Voltages/Sum"] == pytest.approx(sum(cells))  # type: ignore[arg-type]
    assert values["/Dc/0/Voltage"] == values["/Voltages/Sum"]


def test_high_cell_offset_shows_in_max_cell_and_its_id() -> None:
    normal = pack().values()
    high = pack(high_cell_offset_v=0.1, high_cell=7).values()
    assert high["/System/MaxVoltageCellId"] == "C7"
    assert high["/System/MaxCellVoltage"] == pytest.approx(
        normal["/Voltages/Cell7"] + 0.1  # type: ignore[operator]
    )
    assert high["/Voltages/Diff"] == pytest.approx(
        0.1 + normal["/Voltages/Cell7"] - normal["/System/MinCellVoltage"]  # type: ignore[operator]
    )


def test_v2_layout_paths_and_identity() -> None:
    values = pack(layout="v2", cells=16).values()
    assert values.keys() >= COMMON_PATHS | V2_ONLY
    assert {f"/Voltages/Cell{k}" for k in range(1, 17)} <= values.keys()
    assert "/Voltages/Cell17" not in values
    assert values["/ProductName"] == "SerialBattery(Jkbms)"
    assert values["/ProductId"] == SERIALBATTERY_PRODUCT_ID == 0xBA77
    assert values["/Connected"] == 1
    assert isinstance(values["/FirmwareVersion"], str)
    assert values["/Serial"] == "SIM-ttyUSB0"
    assert values["/Info/ChargeMode"] in ("Bulk", "Absorption", "Float")
    assert values["/Info/MaxChargeVoltage"] == pytest.approx(16 * 3.45)


def test_v014_layout_lacks_v2_paths() -> None:
    values = pack(layout="v014", cells=24).values()
    assert values.keys() >= COMMON_PATHS
    assert not (V2_ONLY & values.keys())
    assert values["/ProductId"] == 0x0
    assert values["/ProductName"] == "SerialBattery(Jkbms)"
    assert values["/CustomName"] == "SerialBattery(Jkbms)"
    assert values["/System/NrOfCellsPerBattery"] == 24
    assert "/Voltages/Cell24" in values


def test_consumed_amphours_sign_per_layout() -> None:
    v2 = pack(layout="v2", capacity_ah=200.0, soc_pct=75.0).values()
    v014 = pack(layout="v014", capacity_ah=200.0, soc_pct=75.0).values()
    assert v2["/ConsumedAmphours"] == pytest.approx(-50.0)
    assert v014["/ConsumedAmphours"] == pytest.approx(50.0)


def test_time_to_go_invalid_at_rest_and_counts_down_when_discharging() -> None:
    model = pack(capacity_ah=100.0, soc_pct=50.0)
    assert model.values()["/TimeToGo"] is None
    model.step(0.0, -10.0)
    assert model.values()["/TimeToGo"] == 5 * 3600


def test_ccl_reduced_near_full_and_dcl_near_empty() -> None:
    assert pack(soc_pct=50.0).ccl_a == 140.0
    assert pack(soc_pct=99.0).ccl_a < 140.0
    assert pack(soc_pct=50.0).dcl_a == 200.0
    assert 0.0 < pack(soc_pct=3.0).dcl_a < 200.0


def test_charge_mode_goes_bulk_absorption_float_and_back() -> None:
    model = pack(capacity_ah=100.0, soc_pct=97.0, float_cell_v=3.375)
    assert model.values()["/Info/ChargeMode"] == "Bulk"
    model.step(3600.0 * 0.025, 100.0)  # to 99.5 %
    assert model.values()["/Info/ChargeMode"] == "Absorption"
    model.step(3600.0, 100.0)
    assert model.values()["/Info/ChargeMode"] == "Float"
    assert model.values()["/Info/MaxChargeVoltage"] == pytest.approx(16 * 3.375)
    model.step(3600.0 * 0.1, -100.0)  # to 90 %
    assert model.values()["/Info/ChargeMode"] == "Bulk"
    assert model.values()["/Info/MaxChargeVoltage"] == pytest.approx(16 * 3.45)


def test_override_wins_and_can_be_anything() -> None:
    model = pack()
    model.set_override("/Dc/0/Voltage", None)
    model.set_override("/Soc", math.nan)
    model.set_override("/Dc/0/Current", "garbage")
    model.set_override("/Brand/New", 7)
    values = model.values()
    assert values["/Dc/0/Voltage"] is None
    assert math.isnan(values["/Soc"])  # type: ignore[arg-type]
    assert values["/Dc/0/Current"] == "garbage"
    assert values["/Brand/New"] == 7
    model.clear_override("/Dc/0/Voltage")
    assert isinstance(model.values()["/Dc/0/Voltage"], float)
    model.clear_overrides()
    assert "/Brand/New" not in model.values()


def test_freeze_holds_values_while_the_pack_moves_on() -> None:
    model = pack(capacity_ah=100.0, soc_pct=50.0)
    model.freeze()
    before = model.values()
    model.step(3600.0, 10.0)
    assert model.values() == before
    assert model.soc_pct == pytest.approx(60.0)
    model.set_override("/Soc", 1.0)
    assert model.values()["/Soc"] == 1.0  # overrides still apply on top
    model.unfreeze()
    model.clear_overrides()
    assert model.values()["/Soc"] == pytest.approx(60.0)


def test_block_charge_and_discharge() -> None:
    model = pack()
    model.block_charge(True)
    values = model.values()
    assert values["/Io/AllowToCharge"] == 0
    assert values["/Info/MaxChargeCurrent"] == 0.0
    assert values["/System/NrOfModulesBlockingCharge"] == 1
    assert values["/Info/MaxDischargeCurrent"] == 200.0
    model.block_discharge(True)
    model.block_charge(False)
    values = model.values()
    assert values["/Io/AllowToCharge"] == 1
    assert values["/Info/MaxChargeCurrent"] == 140.0
    assert values["/Io/AllowToDischarge"] == 0
    assert values["/Info/MaxDischargeCurrent"] == 0.0
    assert values["/System/NrOfModulesBlockingDischarge"] == 1


def test_all_cells_change_changes_every_cell_every_step() -> None:
    model = pack(all_cells_change=True)
    previous = [round(c, 3) for c in model.cells]
    for _ in range(5):
        model.step(1.0, 0.0)  # no current: only the nudge can change anything
        now = [round(c, 3) for c in model.cells]
        assert all(a != b for a, b in zip(previous, now, strict=True))
        previous = now


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        PackSpec(name="x", cells=0)
    with pytest.raises(ValueError):
        PackSpec(name="x", soc_pct=101.0)
    with pytest.raises(ValueError):
        PackSpec(name="x", cells=4, high_cell=5)


def test_default_specs_mixed_layout_and_unique_identity() -> None:
    specs = default_pack_specs(4, layout="mixed", cells=24)
    assert [s.layout for s in specs] == ["v2", "v014", "v2", "v014"]
    assert len({s.service_name for s in specs}) == 4
    assert [s.device_instance for s in specs] == [1, 2, 3, 4]
    assert specs[0].service_name == "com.victronenergy.battery.ttyUSB0"


def test_bank_splits_current_by_capacity() -> None:
    bank = Bank(
        [PackModel(PackSpec("a", capacity_ah=100.0)), PackModel(PackSpec("b", capacity_ah=300.0))],
        profile=constant_profile(40.0),
    )
    bank.step(1.0)
    assert [p.current_a for p in bank.packs] == pytest.approx([10.0, 30.0])
    assert bank.current_a == pytest.approx(40.0)


def test_bank_skips_packs_that_block_the_direction() -> None:
    bank = Bank(
        [PackModel(PackSpec("a")), PackModel(PackSpec("b"))], profile=constant_profile(40.0)
    )
    bank.packs[0].block_charge(True)
    bank.step(1.0)
    assert [p.current_a for p in bank.packs] == pytest.approx([0.0, 40.0])
    bank.profile = constant_profile(-40.0)
    bank.step(1.0)
    assert [p.current_a for p in bank.packs] == pytest.approx([-20.0, -20.0])


def test_bank_respects_limits_when_asked() -> None:
    bank = Bank(
        [PackModel(PackSpec("a", ccl_a=10.0)), PackModel(PackSpec("b", ccl_a=10.0))],
        profile=constant_profile(100.0),
        respect_limits=True,
    )
    bank.step(1.0)
    assert bank.current_a == pytest.approx(20.0)


@pytest.mark.parametrize("t_steps", [1, 37, 150, 301])
def test_bank_devices_balance(t_steps: int) -> None:
    bank = Bank(
        [PackModel(s) for s in default_pack_specs(3)],
        profile=sine_profile(amplitude_a=60.0, period_s=600.0),
        loads=constant_profile(7.0),
    )
    for _ in range(t_steps):
        bank.step(1.0)
    solar = bank.solar_charger.values()["/Dc/0/Current"]
    multi = bank.multi.values()["/Dc/0/Current"]
    assert isinstance(solar, float) and isinstance(multi, float)
    assert solar >= 0.0
    assert solar + multi == pytest.approx(bank.current_a + 7.0)
    assert bank.dcload_shunt.values()["/Dc/0/Current"] == 7.0
    shunt = bank.battery_shunt.values()
    assert shunt["/Dc/0/Current"] == pytest.approx(bank.current_a)
    assert shunt["/Dc/0/Voltage"] == pytest.approx(bank.voltage_v)


def test_bank_solar_profile_drives_the_multi_to_the_rest() -> None:
    bank = Bank(
        [PackModel(PackSpec("a"))],
        profile=constant_profile(-20.0),
        loads=constant_profile(5.0),
        solar=constant_profile(50.0),
    )
    bank.step(1.0)
    assert bank.solar_charger.current_a == 50.0
    assert bank.multi.current_a == pytest.approx(-20.0 + 5.0 - 50.0)
    assert bank.multi.values()["/State"] == 9


def test_bank_shunt_counts_soc_of_the_whole_bank() -> None:
    bank = Bank(
        [PackModel(PackSpec("a", capacity_ah=100.0)), PackModel(PackSpec("b", capacity_ah=100.0))],
        profile=constant_profile(20.0),
    )
    assert bank.battery_shunt.soc_pct == pytest.approx(50.0)
    bank.step(3600.0)
    assert bank.battery_shunt.soc_pct == pytest.approx(60.0)
    assert bank.battery_shunt.values()["/ConsumedAmphours"] == pytest.approx(-80.0)


def test_bank_add_and_remove_pack() -> None:
    bank = Bank([PackModel(PackSpec("a"))], profile=constant_profile(30.0))
    added = bank.add_pack(PackSpec("b"))
    bank.step(1.0)
    assert added.current_a == pytest.approx(15.0)
    removed = bank.remove_pack(0)
    assert removed.spec.name == "a"
    bank.step(1.0)
    assert added.current_a == pytest.approx(30.0)


def test_shunt_modes_publish_their_own_path_sets() -> None:
    battery = ShuntModel(mode="battery").values()
    dcload = ShuntModel(mode="dcload", name="ttyS7").values()
    for values in (battery, dcload):
        assert values["/ProductName"] == "SmartShunt 500A/50mV"
        assert {"/Dc/0/Current", "/Dc/0/Voltage", "/Dc/0/Power"} <= values.keys()
        assert not any(p.startswith("/Info/") for p in values)
    assert {"/Soc", "/ConsumedAmphours", "/TimeToGo"} <= battery.keys()
    assert "/Soc" not in dcload
    assert ShuntModel(mode="dcload", name="ttyS7").service_name == (
        "com.victronenergy.dcload.ttyS7"
    )


def test_victron_device_names_and_products() -> None:
    bank = Bank([PackModel(PackSpec("a"))])
    names = [d.service_name for d in bank.devices]
    assert names == [
        "com.victronenergy.vebus.ttyS4",
        "com.victronenergy.solarcharger.ttyS5",
        "com.victronenergy.battery.ttyS6",
        "com.victronenergy.dcload.ttyS7",
    ]
    assert bank.multi.values()["/ProductName"] == "MultiPlus-II 48/5000/70-50"
    solar = bank.solar_charger.values()
    assert solar["/ProductName"] == "SmartSolar MPPT VE.Can 250/100"
    assert "/Yield/Power" in solar


MEASURED = ("/Dc/0/Voltage", "/Dc/0/Current", "/Soc", "/System/MaxCellVoltage",
            "/System/MinCellVoltage", "/Voltages/Cell1", "/Voltages/Cell2", "/Capacity")


@pytest.mark.parametrize("layout", ["v2", "v014"])
def test_quantized_pack_at_rest_holds_every_measured_value(layout: str) -> None:
    model = PackModel(PackSpec(name="ttyUSB0", layout=layout, quantized=True))  # type: ignore[arg-type]
    first = model.values()
    assert first["/Dc/0/Voltage"] == round(first["/Dc/0/Voltage"], 2)  # type: ignore[arg-type]
    assert first["/Voltages/Cell1"] == round(first["/Voltages/Cell1"], 3)  # type: ignore[arg-type]
    for _ in range(1800):  # 30 minutes at rest
        model.step(1.0, 0.0)
    last = model.values()
    assert {p: last[p] for p in MEASURED} == {p: first[p] for p in MEASURED}
    if layout == "v014":
        assert last == first  # nothing at all to signal: only a probe shows it is alive


def test_quantized_pack_under_load_changes() -> None:
    model = PackModel(PackSpec(name="ttyUSB0", quantized=True, soc_pct=30.0))
    before = model.values()
    model.step(1.0, -20.0)
    after = model.values()
    assert before["/Dc/0/Current"] == 0.0
    assert after["/Voltages/Cell1"] != before["/Voltages/Cell1"]  # the IR drop, 8 mV
    readings = []
    for _ in range(3):  # the reading flickers by one digit around the true current
        readings.append(model.values()["/Dc/0/Current"])
        model.step(1.0, -20.0)
    assert sorted(readings) == [-20.1, -20.0, -19.9]
    model.step(1.0, 0.15)  # inside the dead band: exactly 0
    assert model.values()["/Dc/0/Current"] == 0.0


def test_cell_jitter_flickers_one_cell_by_one_digit() -> None:
    model = PackModel(PackSpec(name="ttyUSB0", quantized=True, cell_jitter_v=0.001))
    seen = []
    for _ in range(4):
        model.step(1.0, 0.0)
        seen.append(model.values()["/Voltages/Cell1"])
    assert seen[0] == seen[2] and seen[1] == seen[3]
    assert abs(seen[0] - seen[1]) == pytest.approx(0.001)  # type: ignore[operator]
    assert model.values()["/Voltages/Cell2"] == PackModel(
        PackSpec(name="ttyUSB0", quantized=True)).values()["/Voltages/Cell2"]


def test_initial_charge_mode_can_be_float() -> None:
    model = PackModel(PackSpec(name="ttyUSB0", soc_pct=97.0, charge_mode="Float",
                               float_cell_v=3.40))
    model.step(1.0, 0.1)
    assert model.values()["/Info/ChargeMode"] == "Float"
    assert model.cvl_v == pytest.approx(16 * 3.40)
