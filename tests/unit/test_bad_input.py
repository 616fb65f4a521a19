"""Bad input in the pure core: pack voltage ranges from the cell count, the no-data CVL, names."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from factories import config, pack

from dbus_aggregate_batteries.core.engine import NO_DATA_CVL_V, EngineState, step
from dbus_aggregate_batteries.core.model import AuxSnapshot, pack_from_values
from dbus_aggregate_batteries.core.venus import CUSTOM_NAME_MAX_CHARS, custom_name_problem
from dbus_aggregate_batteries.shell.state import ServiceState

TODAY = date(2026, 6, 1)


def raw_pack(
    cells: int, cell_v: float, *, count: int | None = None, **extra: Any
) -> dict[str, Any]:
    """What a serialbattery driver publishes for a pack of ``cells`` cells at ``cell_v``."""
    values: dict[str, Any] = {
        "/Dc/0/Voltage": round(cells * cell_v, 2),
        "/Dc/0/Current": 10.0,
        "/Soc": 60.0,
        "/System/NrOfCellsPerBattery": cells if count is None else count,
        "/System/MaxCellVoltage": cell_v + 0.01,
        "/System/MinCellVoltage": cell_v - 0.01,
        "/Voltages/Sum": round(cells * cell_v, 2),
        "/Info/MaxChargeVoltage": round(cells * 3.45, 2),
        "/Info/BatteryLowVoltage": round(cells * 2.9, 2),
        "/Info/MaxChargeCurrent": 100.0,
        "/Info/MaxDischargeCurrent": 150.0,
    }
    for i in range(1, cells + 1):
        values[f"/Voltages/Cell{i}"] = cell_v
    values.update(extra)
    return values


@pytest.mark.parametrize(
    ("cells", "cell_v"),
    [(16, 3.30), (32, 3.30), (48, 2.30), (64, 3.30), (4, 3.30)],
    ids=["16s-lfp", "32s-lfp-105V", "48s-lto", "64s-lfp", "4s-lfp"],
)
def test_pack_voltage_range_follows_the_cell_count(cells: int, cell_v: float) -> None:
    snap, bad = pack_from_values("svc", "A", raw_pack(cells, cell_v))
    assert bad == ()
    assert snap.voltage_v == pytest.approx(cells * cell_v, abs=0.01)
    assert snap.cvl_v == pytest.approx(cells * 3.45, abs=0.01)
    assert snap.battery_low_voltage_v == pytest.approx(cells * 2.9, abs=0.01)
    assert snap.voltages_sum_v is not None and snap.cells_per_battery == cells


def test_32_cell_packs_give_a_normal_bank() -> None:
    """The issue's case: 32 LFP cells (~105 V) were rejected and CVL became None."""
    packs = [pack_from_values(f"svc{i}", f"P{i}", raw_pack(32, 3.30))[0] for i in range(3)]
    cfg = config(limits={"bms": {"currents": "min_times_n"}})  # lowest x N: 100 A x 3
    res = step(cfg, EngineState(), packs, AuxSnapshot(), now_s=1.0, today=TODAY)
    assert res.limits.cvl_v == pytest.approx(32 * 3.45, abs=0.01)
    assert res.limits.ccl_a == pytest.approx(300.0) and res.limits.dcl_a == pytest.approx(450.0)
    assert not res.state.degraded and res.values["/System/NrOfModulesOnline"] == 3
    assert res.values["/Dc/0/Voltage"] == pytest.approx(105.6, abs=0.01)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("/Dc/0/Voltage", 200.0),  # 12.5 V per cell
        ("/Info/MaxChargeVoltage", 81.0),  # 5.06 V per cell
        ("/Info/BatteryLowVoltage", 1e6),
        ("/Voltages/Sum", 80.5),
    ],
)
def test_a_16_cell_pack_claiming_more_than_5_v_per_cell_is_rejected(
    path: str, value: float
) -> None:
    snap, bad = pack_from_values("svc", "A", raw_pack(16, 3.30, **{path: value}))
    assert path in [b.path for b in bad]
    assert "16 cells x 5 V" in next(b.reason for b in bad if b.path == path)
    field = {"/Dc/0/Voltage": "voltage_v", "/Info/MaxChargeVoltage": "cvl_v",
             "/Info/BatteryLowVoltage": "battery_low_voltage_v",
             "/Voltages/Sum": "voltages_sum_v"}[path]
    assert getattr(snap, field) is None


def test_without_any_cell_count_the_fixed_range_holds() -> None:
    """No count and no cell voltages: nothing to scale by, so 0..100 V as before."""
    values = {"/Dc/0/Voltage": 105.6, "/Info/MaxChargeVoltage": 110.4, "/Soc": 50.0}
    snap, bad = pack_from_values("svc", "A", values)
    assert snap.voltage_v is None and snap.cvl_v is None
    assert {b.path for b in bad} == {"/Dc/0/Voltage", "/Info/MaxChargeVoltage"}
    ok, bad = pack_from_values("svc", "A", {**values, "/Dc/0/Voltage": 52.8,
                                            "/Info/MaxChargeVoltage": 55.2})
    assert bad == () and ok.voltage_v == 52.8


def test_published_cells_stand_in_for_a_missing_count() -> None:
    values = raw_pack(32, 3.30)
    del values["/System/NrOfCellsPerBattery"]
    snap, bad = pack_from_values("svc", "A", values)
    assert bad == () and snap.voltage_v == pytest.approx(105.6)


def test_a_count_that_does_not_match_is_not_used_to_widen_the_range() -> None:
    """64 claimed cells would allow 320 V; the cells say 16 at 3.3 V, so 150 V is nonsense."""
    values = raw_pack(16, 3.30, count=64, **{"/Dc/0/Voltage": 150.0})
    snap, bad = pack_from_values("svc", "A", values)
    assert snap.cells_per_battery is None and snap.voltage_v is None
    assert {"/System/NrOfCellsPerBattery", "/Dc/0/Voltage"} <= {b.path for b in bad}


@pytest.mark.parametrize("mode", ["bms", "own"])
def test_no_pack_ever_valid_publishes_the_no_data_cvl(mode: str) -> None:
    """Never None: 0 V keeps the service the BMS and no charger charges towards it."""
    cfg = config(limits={"mode": mode})
    state = EngineState()
    for now in (1.0, 2.0, 100.0):
        res = step(cfg, state, [], AuxSnapshot(), now_s=now, today=TODAY)
        state = res.state
        assert res.limits.cvl_v == NO_DATA_CVL_V == 0.0
        assert res.values["/Info/MaxChargeVoltage"] == 0.0
        assert res.limits.ccl_a == 0.0 and res.limits.dcl_a == 0.0
        assert res.values["/Alarms/BmsCable"] == 2
    # The first valid pack replaces it at once; losing the pack again holds the real CVL.
    res = step(cfg, state, [pack()], AuxSnapshot(), now_s=101.0, today=TODAY)
    assert res.limits.cvl_v > 50.0 and res.limits.ccl_a > 0.0
    held = step(cfg, res.state, [], AuxSnapshot(), now_s=102.0, today=TODAY,
                missing=[pack()])
    assert held.limits.cvl_v == pytest.approx(res.limits.cvl_v)
    assert held.limits.ccl_a == 0.0


def test_invalid_packs_only_still_give_a_number() -> None:
    """Packs whose every value was rejected (the 105 V case before the fix) are not healthy."""
    snap, _ = pack_from_values("svc", "A", {"/Dc/0/Voltage": "x", "/Soc": float("nan")})
    res = step(config(), EngineState(), [], AuxSnapshot(), now_s=1.0, today=TODAY,
               missing=[snap])
    assert res.limits.cvl_v == NO_DATA_CVL_V and res.limits.ccl_a == 0.0


@pytest.mark.parametrize(
    "name",
    ["", "House bank", "Bank Süd 48 V", "x" * CUSTOM_NAME_MAX_CHARS, "Batterie ⚡ 1", "a-b_c.(d)"],
)
def test_custom_name_accepted(name: str) -> None:
    assert custom_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("x" * (CUSTOM_NAME_MAX_CHARS + 1), "33 characters, at most 32"),
        ("x" * 10_000_000, "10000000 characters, at most 32"),
        ("\x01\x07\x1b[2J", "U+0001"),
        ("bank\n2", "U+000A"),
        ("tab\there", "U+0009"),
        ("rtl\u202eknab", "U+202E"),  # a bidi override is a format character, not printable
        ("nul\x00", "U+0000"),
        (42, "not text (int)"),
        (None, "not text (NoneType)"),
    ],
)
def test_custom_name_refused_with_a_short_reason(name: object, reason: str) -> None:
    problem = custom_name_problem(name)
    assert problem is not None and reason in problem
    assert len(problem) < 80


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("/System/MaxVoltageCellId", "C" * 1_000_000, "1000000 characters, at most 128"),
        ("/Info/ChargeMode", "Bulk\x1b[2J", "not printable"),
        ("/System/MinTemperatureCellId", "T\n1", "not printable"),
    ],
)
def test_pack_texts_are_bounded(path: str, value: str, reason: str) -> None:
    """A pack's texts are republished (merged cell ids) and logged: huge or raw ones are bad."""
    snap, bad = pack_from_values("svc", "A", raw_pack(16, 3.30, **{path: value}))
    (item,) = bad
    assert item.path == path and item.reason == reason and len(item.value) < 40
    assert value not in repr(snap)


def test_a_huge_or_unprintable_pack_name_is_not_used_as_label() -> None:
    svc = ServiceState(name="com.victronenergy.battery.ttyUSB3", owner=":1.5")
    svc.values.update({"/ProductName": "SerialBattery(Jkbms)", "/CustomName": "N" * 129,
                       "/Serial": "SN\x1b[2J"})
    assert svc.label("/CustomName") == "ttyUSB3"
    svc.values["/Serial"] = "SN-42"
    assert svc.label("/CustomName") == "SN-42"
    svc.values["/CustomName"] = "  Rack B  "
    assert svc.label("/CustomName") == "Rack B"
