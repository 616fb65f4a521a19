"""Table-driven tests of the pure core; expected numbers are worked out here from the formulas."""

from __future__ import annotations

import ast
import math
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from factories import config, pack

from dbus_aggregate_batteries.core.aggregate import merge_packs
from dbus_aggregate_batteries.core.charge import (
    BalancePhase,
    BalancingState,
    CvlRegulator,
    FeedInState,
    dynamic_cvl,
    regulate_cvl,
    step_balancing,
    step_feed_in,
)
from dbus_aggregate_batteries.core.current import bank_current
from dbus_aggregate_batteries.core.engine import EngineState, step
from dbus_aggregate_batteries.core.limits import (
    bms_current_limits,
    bms_cvl,
    interpolate,
    own_current_limits,
    update_discharge_latch,
)
from dbus_aggregate_batteries.core.model import AuxSnapshot, DeviceCurrent, pack_from_values
from dbus_aggregate_batteries.core.soc import CounterState, step_counter

PKG = Path(__file__).resolve().parents[2] / "src" / "dbus_aggregate_batteries"
CORE = sorted((PKG / "core").glob("*.py"))
FORBIDDEN = {"asyncio", "logging", "time", "os", "pathlib", "socket", "io", "shutil",
             "dbus_next", "dbus_fast", "dbus_aggregate_batteries.shell", "subprocess",
             "threading", "dbus_aggregate_batteries.sim"}
TODAY = date(2026, 6, 15)


def _imports(path: Path) -> set[str]:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    return imported


def test_core_folder_is_the_pure_core() -> None:
    names = {p.stem for p in CORE}
    assert {"engine", "model", "aggregate", "limits", "health"} <= names


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.stem)
def test_pure_modules_import_no_io(path: Path) -> None:
    imported = _imports(path)
    prefixes = {".".join(name.split(".")[:i]) for name in imported
                for i in range(1, name.count(".") + 2)}
    assert not prefixes & FORBIDDEN, f"{path.stem} imports {prefixes & FORBIDDEN}"
    assert "datetime.now" not in path.read_text()
    assert "date.today" not in path.read_text()


def test_only_one_module_imports_a_dbus_library() -> None:
    importers = {
        str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
        if any(n.split(".")[0] in {"dbus_next", "dbus_fast", "dbus"} for n in _imports(p))
    }
    # _dbus.py picks dbus-fast or dbus-next with importlib; nothing else may import either.
    assert importers <= {"shell/_dbus.py"}, importers


# ---------------------------------------------------------------- merge


def test_merge_two_packs_unequal_capacity() -> None:
    a = pack("A", soc_pct=80.0, installed_capacity_ah=100.0, voltage_v=53.0, temperature_c=20.0)
    b = pack("B", soc_pct=20.0, installed_capacity_ah=300.0, voltage_v=52.0, temperature_c=30.0)
    m = merge_packs([a, b])
    assert m.soc_pct == pytest.approx((80 * 100 + 20 * 300) / 400)  # 35 %
    assert m.voltage_v == pytest.approx(52.5)
    assert m.temperature_c == pytest.approx(25.0)
    assert m.installed_capacity_ah == pytest.approx(400.0)
    assert m.current_a == pytest.approx(20.0)
    assert m.count == 2


def test_merge_three_packs_missing_values_average_over_present() -> None:
    packs = [
        pack("A", voltage_v=53.0, temperature_c=None),
        pack("B", voltage_v=None, temperature_c=10.0),
        pack("C", voltage_v=51.0, temperature_c=None),
    ]
    m = merge_packs(packs)
    # Mean over the packs that have the value, not divided by 3.
    assert m.voltage_v == pytest.approx(52.0)
    assert m.temperature_c == pytest.approx(10.0)
    assert "/Dc/0/Voltage" in m.missing


def test_merge_extreme_cells_are_labelled() -> None:
    a = pack("Front", cell_list=[3.30] * 15 + [3.50])
    b = pack("Back", cell_list=[3.10] + [3.30] * 15)
    m = merge_packs([a, b])
    assert m.max_cell_v == pytest.approx(3.50)
    assert m.max_cell_id == "Front: C16"
    assert m.min_cell_v == pytest.approx(3.10)
    assert m.min_cell_id == "Back: C1"
    assert m.cell_diff_v == pytest.approx(0.40)


def test_merge_alarms_worst_and_allow_min() -> None:
    a = pack("A", allow_to_charge=1, alarms=(0,) * 13 + (1,))
    b = pack("B", allow_to_charge=0, alarms=(2,) + (0,) * 13)
    m = merge_packs([a, b])
    assert m.alarms[0] == 2 and m.alarms[13] == 1 and m.alarms[5] == 0
    assert m.allow_to_charge == 0


def test_merge_zero_capacity_guard_and_empty() -> None:
    a = pack("A", soc_pct=40.0, installed_capacity_ah=0.0)
    b = pack("B", soc_pct=60.0, installed_capacity_ah=0.0)
    assert merge_packs([a, b]).soc_pct == pytest.approx(50.0)
    empty = merge_packs([])
    assert empty.soc_pct is None and empty.voltage_v is None and empty.count == 0


def test_merge_consumed_amphours_is_never_positive() -> None:
    # v0.14 publishes consumed Ah positive, v2.x negative; the bank follows Victron (<= 0).
    m = merge_packs([pack("A", consumed_ah=30.0), pack("B", consumed_ah=-20.0)])
    assert m.consumed_ah == pytest.approx(-50.0)


def test_pack_from_values_rejects_bad_values() -> None:
    values = {
        "/Dc/0/Voltage": float("nan"),
        "/Dc/0/Current": "12",
        "/Soc": 150.0,
        "/System/MaxCellVoltage": 7.0,
        "/System/NrOfCellsPerBattery": 4,
        "/Voltages/Cell1": 3.3,
        "/Voltages/Cell2": -1.0,
        "/Voltages/Cell3": 3.4,
        "/Voltages/Cell4": None,
        "/Dc/0/Temperature": 25.0,
        "/Info/MaxChargeCurrent": float("inf"),
    }
    snap, bad = pack_from_values("svc", "A", values)
    assert snap.voltage_v is None and snap.current_a is None and snap.soc_pct is None
    assert snap.ccl_a is None
    assert snap.temperature_c == 25.0
    assert snap.cells == (3.3, None, 3.4, None)
    assert snap.max_cell_v == pytest.approx(3.4)  # from the valid cells, 7.0 rejected
    paths = {b.path for b in bad}
    assert {"/Dc/0/Voltage", "/Dc/0/Current", "/Soc", "/System/MaxCellVoltage",
            "/Voltages/Cell2", "/Info/MaxChargeCurrent"} <= paths


# ---------------------------------------------------------------- bank current


def _aux(**kw: object) -> AuxSnapshot:
    return AuxSnapshot(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "invert", "expected"),
    [
        # Multi 30 + MPPTs 10 + 5; battery shunt 2 adds, DC-load shunt 4 subtracts.
        ("victron", False, 30 + 15 + (2 - 4)),
        ("victron", True, 30 + 15 - (2 - 4)),
        # Shunt-only: battery-mode shunts are the bank current; inversion applies here too.
        ("smartshunt", False, 2.0),
        ("smartshunt", True, -2.0),
    ],
)
def test_bank_current_sources(source: str, invert: bool, expected: float) -> None:
    cfg = config(current={"source": source, "invert_smartshunts": invert})
    aux = _aux(
        multi=DeviceCurrent("vebus", 30.0),
        solar_chargers=(DeviceCurrent("s1", 10.0), DeviceCurrent("s2", 5.0)),
        battery_shunts=(DeviceCurrent("sh1", 2.0),),
        dcload_shunts=(DeviceCurrent("sh2", 4.0),),
    )
    merged = merge_packs([pack("A", voltage_v=50.0)])
    result, events = bank_current(cfg.current, merged, aux)
    assert result.current_a == pytest.approx(expected)
    assert result.power_w == pytest.approx(50.0 * expected)
    assert events == ()


def test_bank_current_disconnected_multi_counts_zero() -> None:
    cfg = config(current={"source": "victron"})
    aux = _aux(multi=DeviceCurrent("vebus", 30.0, connected=False),
               solar_chargers=(DeviceCurrent("s1", 10.0),))
    result, _ = bank_current(cfg.current, merge_packs([pack()]), aux)
    assert result.current_a == pytest.approx(10.0)


def test_bank_current_fallback_and_invalid() -> None:
    merged = merge_packs([pack("A", current_a=7.0), pack("B", current_a=-2.0)])
    aux = _aux(solar_chargers=(DeviceCurrent("s1", None),), multi=DeviceCurrent("v", 1.0))
    cfg = config(current={"source": "victron"})
    result, events = bank_current(cfg.current, merged, aux)
    assert result.current_a == pytest.approx(5.0) and result.source == "bms-fallback"
    assert events and events[0].code == "current-fallback"
    cfg = config(current={"source": "victron", "fallback_to_bms": False})
    result, events = bank_current(cfg.current, merged, aux)
    assert result.current_a is None and result.power_w is None


def test_bank_current_bms_power_is_measured_or_v_times_i() -> None:
    cfg = config()
    measured = merge_packs([pack("A", power_w=100.0), pack("B", power_w=50.0)])
    assert bank_current(cfg.current, measured, _aux())[0].power_w == pytest.approx(150.0)
    partial = merge_packs([pack("A", voltage_v=50.0, current_a=3.0, power_w=None)])
    assert bank_current(cfg.current, partial, _aux())[0].power_w == pytest.approx(150.0)


# ---------------------------------------------------------------- own Coulomb counter


def _soc_cfg(**kw: object) -> object:
    return config(soc={"source": "own", **kw}).soc


def test_counter_initialises_from_bms_soc_then_integrates() -> None:
    cfg = config(soc={"source": "own", "battery_efficiency": 0.9}).soc
    st, out, ev = step_counter(CounterState(), cfg, now_s=100.0, current_a=50.0,
                               installed_ah=200.0, bms_soc_pct=50.0, max_cell_v=3.3, min_cell_v=3.2)
    assert st.charge_ah == pytest.approx(100.0) and ev[0].code == "soc-init"
    # 10 s at +50 A with 90 % efficiency: +50*10/3600*0.9 Ah.
    st, out, _ = step_counter(st, cfg, now_s=110.0, current_a=50.0, installed_ah=200.0,
                              bms_soc_pct=50.0, max_cell_v=3.3, min_cell_v=3.2)
    assert st.charge_ah == pytest.approx(100.0 + 50 * 10 / 3600 * 0.9)
    # Discharge is counted at 100 %.
    st, out, _ = step_counter(st, cfg, now_s=120.0, current_a=-36.0, installed_ah=200.0,
                              bms_soc_pct=50.0, max_cell_v=3.3, min_cell_v=3.2)
    expected = 100.0 + 50 * 10 / 3600 * 0.9 - 36 * 10 / 3600
    assert st.charge_ah == pytest.approx(expected)
    assert out.soc_pct == pytest.approx(100 * expected / 200)
    assert out.consumed_ah == pytest.approx(expected - 200)
    assert out.time_to_go_s == pytest.approx(expected / 36 * 3600)
    assert out.time_to_full_s is None


def test_counter_time_to_full_while_charging() -> None:
    cfg = config(soc={"source": "own", "battery_efficiency": 0.98}).soc
    st = CounterState(150.0, 0.0)
    _, out, _ = step_counter(st, cfg, now_s=1.0, current_a=49.0, installed_ah=200.0,
                             bms_soc_pct=None, max_cell_v=3.3, min_cell_v=3.2)
    charge = 150.0 + 49 / 3600 * 0.98
    assert out.time_to_full_s == pytest.approx((200 - charge) / (49 * 0.98) * 3600)
    assert out.time_to_go_s is None


@pytest.mark.parametrize("dt", [-5.0, 31.0, 10_000.0])
def test_counter_gap_integrates_nothing(dt: float) -> None:
    cfg = config(soc={"source": "own", "max_gap_s": 30}).soc
    st, _, ev = step_counter(CounterState(100.0, 1000.0), cfg, now_s=1000.0 + dt,
                             current_a=-100.0, installed_ah=200.0, bms_soc_pct=None,
                             max_cell_v=3.3, min_cell_v=3.2)
    assert st.charge_ah == pytest.approx(100.0)
    assert st.last_s == pytest.approx(1000.0 + dt)
    assert [e.code for e in ev] == ["soc-gap"]


def test_counter_resets_and_clamps() -> None:
    cfg = config(soc={"source": "own", "reset_to_zero_at_empty": True}).soc  # LFP 3.45/2.90
    st, out, ev = step_counter(CounterState(150.0, 0.0), cfg, now_s=1.0, current_a=1.0,
                               installed_ah=200.0, bms_soc_pct=None, max_cell_v=3.45,
                               min_cell_v=3.3)
    assert st.charge_ah == 200.0 and out.soc_pct == 100.0 and "soc-full" in [e.code for e in ev]
    st, out, ev = step_counter(CounterState(50.0, 0.0), cfg, now_s=1.0, current_a=-1.0,
                               installed_ah=200.0, bms_soc_pct=None, max_cell_v=3.0,
                               min_cell_v=2.90)
    assert st.charge_ah == 0.0 and out.consumed_ah == -200.0
    cfg_no_zero = config(soc={"source": "own"}).soc
    st, _, _ = step_counter(CounterState(50.0, 0.0), cfg_no_zero, now_s=1.0, current_a=-1.0,
                            installed_ah=200.0, bms_soc_pct=None, max_cell_v=3.0,
                            min_cell_v=2.80)
    assert st.charge_ah == pytest.approx(50.0 - 1 / 3600)
    # Capacity shrank below the charge (a pack left): clamp.
    st, _, _ = step_counter(CounterState(250.0, 0.0), cfg, now_s=1.0, current_a=0.0,
                            installed_ah=200.0, bms_soc_pct=None, max_cell_v=3.3, min_cell_v=3.2)
    assert st.charge_ah == 200.0


def test_counter_without_capacity_or_soc_publishes_nothing() -> None:
    cfg = config(soc={"source": "own"}).soc
    st, out, _ = step_counter(CounterState(), cfg, now_s=5.0, current_a=1.0, installed_ah=None,
                              bms_soc_pct=50.0, max_cell_v=None, min_cell_v=None)
    assert out.soc_pct is None and st.charge_ah is None and st.last_s == 5.0
    st, out, _ = step_counter(CounterState(), cfg, now_s=5.0, current_a=1.0, installed_ah=100.0,
                              bms_soc_pct=None, max_cell_v=None, min_cell_v=None)
    assert out.soc_pct is None and st.charge_ah is None


# ---------------------------------------------------------------- limits


def test_interpolate_table() -> None:
    table = config().limits.own.charge_table  # 2.90 .2, 2.95 1, 3.45 1, 3.50 0
    assert interpolate(table, 2.5) == pytest.approx(0.2)
    assert interpolate(table, 2.925) == pytest.approx(0.6)
    assert interpolate(table, 3.40) == pytest.approx(1.0)
    assert interpolate(table, 3.475) == pytest.approx(0.5)
    assert interpolate(table, 3.50) == pytest.approx(0.0)
    assert interpolate(table, 4.0) == pytest.approx(0.0)


@pytest.mark.parametrize("chemistry", ["lfp", "lto"])
def test_own_limits_presets(chemistry: str) -> None:
    own = config(chemistry=chemistry, limits={"mode": "own"}).limits.own
    vmin, vmax = own.min_cell_voltage_v, own.max_cell_voltage_v
    # Half way between max (factor 1) and max + 0.05 (factor 0).
    x = vmax + 0.025
    limits, _ = own_current_limits(own, [pack()], max_cell_v=x, min_cell_v=vmin + 0.15,
                                   discharge_latched=False)
    assert limits.ccl_a == pytest.approx(200 * 0.5)
    # Half way between min+0.1 (0.05) and min+0.2 (1).
    assert limits.dcl_a == pytest.approx(200 * 0.525)
    limits, _ = own_current_limits(own, [pack()], max_cell_v=vmax, min_cell_v=vmin,
                                   discharge_latched=False)
    assert limits.ccl_a == pytest.approx(200.0) and limits.dcl_a == 0.0
    limits, _ = own_current_limits(own, [pack()], max_cell_v=vmax + 0.05, min_cell_v=vmin,
                                   discharge_latched=False)
    assert limits.ccl_a == 0.0


@pytest.mark.parametrize(
    "blocker",
    [{"allow_to_charge": 0}, {"blocking_charge": 1}, {"ccl_a": 0.0}],
)
def test_any_block_zeroes_ccl_in_both_modes(blocker: dict[str, object]) -> None:
    packs = [pack("A"), pack("B", **blocker)]
    own = config(limits={"mode": "own"}).limits.own
    limits, _ = own_current_limits(own, packs, max_cell_v=3.3, min_cell_v=3.2,
                                   discharge_latched=False)
    assert limits.ccl_a == 0.0 and limits.dcl_a > 0.0
    bms, _ = bms_current_limits(config().limits.bms, packs)
    assert bms.ccl_a == 0.0 and bms.dcl_a == pytest.approx(300.0)


def test_discharge_latch_hysteresis() -> None:
    own = config(limits={"mode": "own"}).limits.own  # min 2.90, hysteresis 0.10
    seq = [(3.0, False), (2.90, True), (2.95, True), (3.00, True), (3.01, False), (2.95, False)]
    latched = False
    for v, expected in seq:
        latched = update_discharge_latch(latched, v, own)
        assert latched is expected, v
    limits, _ = own_current_limits(own, [pack()], max_cell_v=3.3, min_cell_v=3.5,
                                   discharge_latched=True)
    assert limits.dcl_a == 0.0


def test_bms_limits_min_times_n_and_sum() -> None:
    packs = [pack("A", ccl_a=100.0, dcl_a=80.0), pack("B", ccl_a=60.0, dcl_a=None),
             pack("C", ccl_a=90.0, dcl_a=120.0)]
    cfg_min = config(limits={"bms": {"currents": "min_times_n"}}).limits.bms
    limits, _ = bms_current_limits(cfg_min, packs)
    assert limits.ccl_a == pytest.approx(60 * 3)
    assert limits.dcl_a == pytest.approx(80 * 2)  # only packs that report a DCL
    cfg = config(limits={"bms": {"currents": "sum"}}).limits.bms
    limits, _ = bms_current_limits(cfg, packs)
    assert limits.ccl_a == pytest.approx(250.0) and limits.dcl_a == pytest.approx(200.0)
    limits, events = bms_current_limits(cfg, [pack("A", ccl_a=None, dcl_a=None)])
    assert limits.ccl_a == 0.0 and limits.dcl_a == 0.0 and len(events) == 2


def test_bms_cvl_min_and_float_aware() -> None:
    absorbing = pack("A", cvl_v=56.8, charge_mode="Absorption")
    floating = pack("B", cvl_v=54.0, charge_mode="Float │ Linear Mode")
    other = pack("C", cvl_v=56.0, charge_mode="Bulk")
    plain = config().limits.bms
    aware = config(limits={"bms": {"cvl": "float_aware"}}).limits.bms
    assert bms_cvl(plain, [absorbing, floating, other]) == pytest.approx(54.0)
    # One pack in float must not pull the bank down while others absorb.
    assert bms_cvl(aware, [absorbing, floating, other]) == pytest.approx(56.0)
    # All in float: the bank goes to float.
    all_float = [replace(p, charge_mode="Float") for p in (absorbing, floating, other)]
    assert bms_cvl(aware, all_float) == pytest.approx(54.0)
    assert bms_cvl(aware, []) is None


# ---------------------------------------------------------------- charge voltage


def test_dynamic_cvl_reduces_to_sum_of_capped_cells() -> None:
    own = config(limits={"mode": "own"}).limits.own  # max cell 3.45
    a = pack("A", cell_list=[3.40] * 14 + [3.50, 3.60])
    b = pack("B", cell_list=[3.42] * 16)
    target = 16 * 3.55
    cvl, active = dynamic_cvl([a, b], own, target)
    assert active
    assert cvl == pytest.approx(14 * 3.40 + 2 * 3.45)
    cvl, active = dynamic_cvl([b], own, target)
    assert not active and cvl == pytest.approx(target)


def _own(**kw: object) -> object:
    return config(limits={"mode": "own", "own": kw}).limits.own


def test_balancing_cycle_with_real_dates() -> None:
    own = config(limits={"mode": "own", "own": {
        "charge_cell_voltage_v": 3.35, "balancing_voltage_v": 3.45, "max_cell_voltage_v": 3.50,
        "balancing_repetition_days": 10}}).limits.own
    st = BalancingState(BalancePhase.IDLE, date(2024, 2, 20))
    # Leap year: 2024-02-20 + 10 days = 2024-03-01.
    st, target, _ = step_balancing(st, own, today=date(2024, 2, 29), mean_cell_v=3.3,
                                   cell_diff_v=0.01)
    assert st.phase is BalancePhase.IDLE and target == pytest.approx(3.35)
    st, target, ev = step_balancing(st, own, today=date(2024, 3, 1), mean_cell_v=3.3,
                                    cell_diff_v=0.01)
    assert st.phase is BalancePhase.ACTIVE and target == pytest.approx(3.45)
    assert ev[0].code == "balancing-start"
    # Reached but not balanced yet: stay active.
    st, _, _ = step_balancing(st, own, today=date(2024, 3, 1), mean_cell_v=3.45,
                              cell_diff_v=0.05)
    assert st.phase is BalancePhase.ACTIVE
    st, target, _ = step_balancing(st, own, today=date(2024, 3, 1), mean_cell_v=3.446,
                                   cell_diff_v=0.01)
    assert st.phase is BalancePhase.HOLD and target == pytest.approx(3.45)
    st, target, _ = step_balancing(st, own, today=date(2024, 3, 2), mean_cell_v=3.34,
                                   cell_diff_v=0.01)
    assert st == BalancingState(BalancePhase.IDLE, date(2024, 3, 2))
    assert target == pytest.approx(3.35)


def test_balancing_due_across_year_and_long_gap_and_future_date() -> None:
    own = config(limits={"mode": "own", "own": {
        "charge_cell_voltage_v": 3.35, "balancing_voltage_v": 3.45, "max_cell_voltage_v": 3.50,
        "balancing_repetition_days": 10}}).limits.own
    st, _, _ = step_balancing(BalancingState(last_balanced=date(2025, 12, 25)), own,
                              today=date(2026, 1, 4), mean_cell_v=3.3, cell_diff_v=0.01)
    assert st.phase is BalancePhase.ACTIVE  # 10 days across New Year
    st, _, _ = step_balancing(BalancingState(last_balanced=date(2023, 1, 1)), own,
                              today=date(2026, 1, 1), mean_cell_v=3.3, cell_diff_v=0.01)
    assert st.phase is BalancePhase.ACTIVE  # three years later
    st, _, ev = step_balancing(BalancingState(last_balanced=date(2030, 1, 1)), own,
                               today=TODAY, mean_cell_v=3.3, cell_diff_v=0.01)
    assert st.last_balanced == TODAY and st.phase is BalancePhase.IDLE
    assert ev[0].code == "balancing-date"
    st, _, _ = step_balancing(BalancingState(), own, today=TODAY, mean_cell_v=3.3,
                              cell_diff_v=0.01)
    assert st.phase is BalancePhase.ACTIVE  # never balanced: due


def test_monthly_charge_voltage_and_balancing_below_normal() -> None:
    own = config(limits={"mode": "own"}).limits.own  # LFP list, balancing 3.40
    st, target, _ = step_balancing(BalancingState(), own, today=date(2026, 1, 10),
                                   mean_cell_v=3.41, cell_diff_v=0.01)
    assert target == pytest.approx(3.55)  # January
    assert st.phase is BalancePhase.IDLE and st.last_balanced == date(2026, 1, 10)
    _, target, _ = step_balancing(st, own, today=date(2026, 6, 10), mean_cell_v=3.3,
                                  cell_diff_v=0.01)
    # June: 3.40 <= balancing 3.40, so the machine stays idle at the normal voltage.
    assert target == pytest.approx(3.40)


def test_feed_in_request_is_remembered_and_restored() -> None:
    st, req, _ = step_feed_in(FeedInState(), enabled=True, high_cell=True, cell_diff_v=0.1,
                              cell_diff_max_v=0.025, current_setting=1)
    assert req == 0 and st.saved_value == 1
    st, req, _ = step_feed_in(st, enabled=True, high_cell=True, cell_diff_v=0.1,
                              cell_diff_max_v=0.025, current_setting=0)
    assert req is None
    # Episode over but cells still apart: keep holding, retry each tick (upstream gave up).
    st, req, _ = step_feed_in(st, enabled=True, high_cell=False, cell_diff_v=0.05,
                              cell_diff_max_v=0.025, current_setting=0)
    assert req is None and st.saved_value == 1
    st, req, _ = step_feed_in(st, enabled=True, high_cell=False, cell_diff_v=0.01,
                              cell_diff_max_v=0.025, current_setting=0)
    assert req == 1 and st.saved_value is None
    # Owner had feed-in off already: nothing to do or restore.
    st, req, _ = step_feed_in(FeedInState(), enabled=True, high_cell=True, cell_diff_v=0.1,
                              cell_diff_max_v=0.025, current_setting=0)
    assert req is None and st.saved_value is None
    _, req, _ = step_feed_in(FeedInState(), enabled=False, high_cell=True, cell_diff_v=0.1,
                             cell_diff_max_v=0.025, current_setting=1)
    assert req is None


# ---------------------------------------------------------------- whole tick


def _all_finite(values: dict[str, object]) -> bool:
    return all(not (isinstance(v, float) and not math.isfinite(v)) for v in values.values())


def test_step_bms_mode_publishes_every_path() -> None:
    cfg = config(limits={"bms": {"currents": "min_times_n"}})
    packs = [pack("A", ccl_a=100.0), pack("B", ccl_a=80.0)]
    res = step(cfg, EngineState(), packs, AuxSnapshot(), now_s=1.0, today=TODAY)
    v = res.values
    assert v["/Info/MaxChargeCurrent"] == pytest.approx(160.0)
    assert v["/Info/MaxDischargeCurrent"] == pytest.approx(300.0)
    assert v["/Info/MaxChargeVoltage"] == pytest.approx(16 * 3.45)
    assert v["/System/NrOfBatteries"] == 2 and v["/System/BatteriesParallel"] == 2
    assert v["/Info/BatteryLowVoltage"] == pytest.approx(16 * 2.9)
    assert v["/Info/ChargeMode"] == "Bulk"
    assert v["/Alarms/BmsCable"] == 0
    for path in ("/Dc/0/Voltage", "/Soc", "/Voltages/Diff", "/System/MaxVoltageCellId",
                 "/Io/AllowToCharge", "/Alarms/InternalFailure", "/System/NrOfCellsPerBattery"):
        assert path in v
    assert _all_finite(v)


def test_step_own_mode_lto_preset() -> None:
    cfg = config(chemistry="lto", limits={"mode": "own", "own": {"pack_limits": "ignore"}},
                 soc={"source": "own"})
    cells = [2.40] * 24
    packs = [pack("A", cell_list=cells, soc_pct=60.0), pack("B", cell_list=cells, soc_pct=40.0)]
    st = EngineState(balancing=BalancingState(last_balanced=TODAY))
    res = step(cfg, st, packs, AuxSnapshot(), now_s=1.0, today=TODAY)
    v = res.values
    assert v["/Info/MaxChargeVoltage"] == pytest.approx(24 * 2.35)  # June in the LTO list
    # LTO table: bal-0.1 = 2.40 → factor 1.
    assert v["/Info/MaxChargeCurrent"] == pytest.approx(200.0)
    # LTO discharge table: 1.9/0, 2.0/0.05, 2.1/1 → 2.40 is above → 1.
    assert v["/Info/MaxDischargeCurrent"] == pytest.approx(200.0)
    assert v["/Soc"] == pytest.approx(50.0)
    assert v["/Info/BatteryLowVoltage"] == pytest.approx(24 * 1.9)


def test_step_own_mode_high_cell_requests_feed_in_off() -> None:
    cfg = config(limits={"mode": "own", "own": {"cvl_control": "upstream"}})
    a = pack("A", cell_list=[3.40] * 15 + [3.50])
    january = date(2026, 1, 15)  # normal target 3.55 V/cell, above the reduced CVL
    res = step(cfg, EngineState(balancing=BalancingState(last_balanced=january)), [a],
               AuxSnapshot(feed_in_setting=1), now_s=1.0, today=january)
    assert res.feed_in_request == 0
    assert res.state.feed_in.saved_value == 1
    assert res.values["/Info/MaxChargeVoltage"] == pytest.approx(15 * 3.40 + 3.45)
    assert res.values["/Info/ChargeMode"] == "Dynamic CVL"
    assert res.values["/Info/MaxChargeCurrent"] == 0.0  # table end at 3.50


def test_step_degraded_derates_and_never_raises_limits() -> None:
    cfg = config(discovery={"expected_count": 3}, limits={"bms": {"currents": "min_times_n"}})
    a, b, c = pack("A", ccl_a=10.0), pack("B", ccl_a=100.0), pack("C", ccl_a=100.0)
    full = step(cfg, EngineState(), [a, b, c], AuxSnapshot(), now_s=1.0, today=TODAY)
    assert full.limits.ccl_a == pytest.approx(30.0)
    gone = step(cfg, full.state, [b, c], AuxSnapshot(), now_s=2.0, today=TODAY, missing=[a],
                expected_count=3)
    # A's last known 10 A stays in the minimum: 10 x 2 healthy packs.
    assert gone.limits.ccl_a == pytest.approx(20.0)
    assert gone.values["/Alarms/BmsCable"] == 1
    assert gone.values["/System/NrOfModulesOffline"] == 1
    assert "degraded" in [e.code for e in gone.events]
    zero = step(config(fault={"policy": "zero"}), full.state, [b, c], AuxSnapshot(), now_s=2.0,
                today=TODAY, missing=[a])
    assert zero.limits.ccl_a == 0.0 and zero.limits.dcl_a == 0.0
    none = step(cfg, full.state, [], AuxSnapshot(), now_s=3.0, today=TODAY, missing=[a, b, c])
    # Grace: one pack's worth of discharge (lowest last known DCL), no charge.
    assert none.limits.ccl_a == 0.0 and none.limits.dcl_a == pytest.approx(150.0)
    later = step(cfg, none.state, [], AuxSnapshot(), now_s=3.0 + cfg.fault.grace_s, today=TODAY,
                 missing=[a, b, c])
    assert later.limits.dcl_a == 0.0 and later.limits.ccl_a == 0.0
    zero_none = step(config(fault={"policy": "zero"}), full.state, [], AuxSnapshot(), now_s=3.0,
                     today=TODAY, missing=[a, b, c])
    assert zero_none.limits.dcl_a == 0.0
    assert none.limits.cvl_v == pytest.approx(full.limits.cvl_v or 0.0)  # held
    assert none.values["/Alarms/BmsCable"] == 2
    assert _all_finite(none.values)


def test_grace_dcl_keeps_the_temperature_cap_of_a_hot_pack_gone_missing() -> None:
    # Found by test_degraded_bms_never_raises_limits: with every pack missing, the grace DCL
    # was the last known BMS DCL, without the temperature cap the same pack had a tick before.
    cfg = config(limits={"bms": {"currents": "min_times_n"}, "temperature": {"bms_cap": True}})
    hot = pack("A", dcl_a=100.0, temperature_c=57.5)  # discharge table: x0.25 at 57.5 degC
    full = step(cfg, EngineState(), [hot], AuxSnapshot(), now_s=1.0, today=TODAY)
    assert full.limits.dcl_a == pytest.approx(25.0)
    none = step(cfg, full.state, [], AuxSnapshot(), now_s=2.0, today=TODAY, missing=[hot],
                expected_count=1)
    assert none.limits.dcl_a == pytest.approx(25.0)
    no_cap = config(limits={"bms": {"currents": "min_times_n"}})
    none = step(no_cap, EngineState(), [], AuxSnapshot(), now_s=2.0, today=TODAY,
                missing=[hot], expected_count=1)
    assert none.limits.dcl_a == pytest.approx(100.0)


def test_step_cap_applies_in_bms_mode() -> None:
    cfg = config(limits={"max_charge_current_a": 50.0, "max_discharge_current_a": 60.0})
    res = step(cfg, EngineState(), [pack("A"), pack("B")], AuxSnapshot(), now_s=1.0, today=TODAY)
    assert res.limits.ccl_a == 50.0 and res.limits.dcl_a == 60.0


def test_step_send_cell_voltages() -> None:
    cfg = config(publish={"send_cell_voltages": True})
    res = step(cfg, EngineState(), [pack("Front Left", cells=4)], AuxSnapshot(), now_s=1.0,
               today=TODAY)
    assert res.values["/Voltages/FrontLeft_Cell4"] == pytest.approx(3.30)


# ---------------------------------------------------------------- review findings (regressions)


def test_missing_pack_with_high_cell_keeps_cvl_down_and_feed_in_off() -> None:
    cfg = config(limits={"mode": "own", "own": {"cvl_control": "upstream"}})
    a = pack("A", cell_list=[3.30] * 16)
    b = pack("B", cell_list=[3.30] * 15 + [3.60])
    st = EngineState(balancing=BalancingState(last_balanced=TODAY))
    both = step(cfg, st, [a, b], AuxSnapshot(feed_in_setting=1), now_s=1.0, today=TODAY)
    assert both.feed_in_request == 0 and both.state.high_cell
    gone = step(cfg, both.state, [a], AuxSnapshot(feed_in_setting=0), now_s=2.0, today=TODAY,
                missing=[b])
    assert gone.limits.cvl_v == pytest.approx(both.limits.cvl_v or 0.0)  # 15 x 3.30 + 3.45
    assert gone.feed_in_request is None and gone.state.feed_in.saved_value == 1


def test_missing_pack_lower_cvl_stays_in_bms_minimum() -> None:
    a, b = pack("A", cvl_v=55.2), pack("B", cvl_v=53.6)
    both = step(config(), EngineState(), [a, b], AuxSnapshot(), now_s=1.0, today=TODAY)
    gone = step(config(), both.state, [a], AuxSnapshot(), now_s=2.0, today=TODAY, missing=[b])
    assert both.limits.cvl_v == pytest.approx(53.6)
    assert gone.limits.cvl_v == pytest.approx(53.6)


def test_implausible_cell_count_is_not_believed() -> None:
    values = {"/Dc/0/Voltage": 52.8, "/System/NrOfCellsPerBattery": 24,
              "/System/MaxCellVoltage": 3.31, "/System/MinCellVoltage": 3.29}
    snap, bad = pack_from_values("svc", "A", values)
    assert snap.cells_per_battery is None
    assert [b.path for b in bad] == ["/System/NrOfCellsPerBattery"]
    ok, bad = pack_from_values("svc", "A", {**values, "/System/NrOfCellsPerBattery": 16})
    assert ok.cells_per_battery == 16 and not bad


def test_mixed_cell_counts_use_the_lower_and_warn() -> None:
    res = step(config(limits={"mode": "own"}), EngineState(),
               [pack("A", cells=16), pack("B", cells=15)], AuxSnapshot(), now_s=1.0,
               today=TODAY)
    assert res.values["/System/NrOfCellsPerBattery"] == 15
    assert "cell-counts" in [e.code for e in res.events]


def test_counter_keeps_missing_pack_capacity() -> None:
    cfg = config(soc={"source": "own"})
    a, b = pack("A", soc_pct=90.0), pack("B", soc_pct=90.0)
    first = step(cfg, EngineState(), [a, b], AuxSnapshot(), now_s=1.0, today=TODAY)
    assert first.values["/Soc"] == pytest.approx(90.0)
    gone = step(cfg, first.state, [a], AuxSnapshot(), now_s=1.0, today=TODAY, missing=[b])
    back = step(cfg, gone.state, [a, b], AuxSnapshot(), now_s=1.0, today=TODAY)
    assert back.values["/Soc"] == pytest.approx(90.0)  # not clamped to one pack's capacity


def test_no_pack_at_all_raises_the_alarm() -> None:
    res = step(config(), EngineState(), [], AuxSnapshot(), now_s=1.0, today=TODAY)
    assert res.values["/Alarms/BmsCable"] == 2
    assert res.limits.ccl_a == 0.0 and res.limits.dcl_a == 0.0


def test_most_restrictive_keeps_fresh_and_old_blocks() -> None:
    from dbus_aggregate_batteries.core.health import Health, bms_health
    from dbus_aggregate_batteries.core.model import most_restrictive

    last = pack("B", ccl_a=100.0, dcl_a=150.0, cell_list=[3.3] * 15 + [3.5])
    now = pack("B", ccl_a=0.0, allow_to_charge=0, dcl_a=None, max_cell_v=None)
    worst = most_restrictive(now, last)
    assert worst.ccl_a == 0.0 and worst.blocks_charge
    assert worst.dcl_a == pytest.approx(150.0) and worst.max_cell_v == pytest.approx(3.5)
    health, _ = bms_health(pack("C", ccl_a=None), needs_limits=True)
    assert health is Health.BMS_OFFLINE


# ---------------------------------------------------------------- CVL regulator (closed-loop issue)


def test_regulator_is_idle_below_the_engage_band() -> None:
    own = config(limits={"mode": "own"}).limits.own
    state, cvl = regulate_cvl(CvlRegulator(), own, target_v=55.2, n_cells=16,
                              max_cell_v=3.40, bank_v=54.0, now_s=0.0)
    assert cvl == 55.2 and not state.engaged


def test_regulator_worked_values() -> None:
    own = config(limits={"mode": "own"}).limits.own  # max 3.45 V
    # Engages 10 mV below the maximum: CVL = V + 0.5 x 16 x 0.010 = 54.0 + 0.08.
    state, cvl = regulate_cvl(CvlRegulator(), own, target_v=55.2, n_cells=16,
                              max_cell_v=3.44, bank_v=54.0, now_s=0.0)
    assert state.engaged and cvl == pytest.approx(54.08)
    # One second later the cell rose 2 mV: rise = 1/(10+1) x 2 mV/s, looked ahead 15 s; the
    # bias integrates 0.02 x 16 x error x 1 s.
    state2, cvl2 = regulate_cvl(state, own, target_v=55.2, n_cells=16,
                                max_cell_v=3.442, bank_v=54.02, now_s=1.0)
    rise = 0.002 / 11.0
    error = 3.45 - 3.442 - 15.0 * rise
    bias = 0.02 * 16 * error * 1.0
    assert state2.rise_v_per_s == pytest.approx(rise)
    assert state2.bias_v == pytest.approx(bias)
    assert cvl2 == pytest.approx(54.02 + 0.5 * 16 * error + bias)
    # A cell over the maximum pulls the CVL below the bank voltage (never below n x min).
    _, cvl3 = regulate_cvl(state2, own, target_v=55.2, n_cells=16,
                           max_cell_v=3.47, bank_v=54.3, now_s=2.0)
    assert 16 * own.min_cell_voltage_v <= cvl3 < 54.3
    # Released once the cell is 60 mV below the maximum: back to the target.
    state4, cvl4 = regulate_cvl(state2, own, target_v=55.2, n_cells=16,
                                max_cell_v=3.38, bank_v=53.0, now_s=3.0)
    assert not state4.engaged and cvl4 == 55.2


def test_regulator_never_above_target_and_gives_up_without_data() -> None:
    own = config(limits={"mode": "own"}).limits.own
    state, cvl = regulate_cvl(CvlRegulator(), own, target_v=54.4, n_cells=16,
                              max_cell_v=3.43, bank_v=54.3, now_s=0.0)
    assert cvl == 54.4  # V + 0.16 would be above the target
    assert regulate_cvl(state, own, target_v=54.4, n_cells=16, max_cell_v=None,
                        bank_v=54.3, now_s=1.0)[1] is None
    # A bank voltage that does not fit 16 cells (1 V) is not regulated on.
    assert regulate_cvl(state, own, target_v=54.4, n_cells=16, max_cell_v=3.46,
                        bank_v=1.0, now_s=1.0)[1] is None


def test_engine_regulate_mode_holds_cvl_near_bank_voltage() -> None:
    cfg = config(limits={"mode": "own"})
    a = pack("A", cell_list=[3.40] * 15 + [3.46])  # voltage from the cells: 54.46 V
    res = step(cfg, EngineState(balancing=BalancingState(last_balanced=TODAY)), [a],
               AuxSnapshot(), now_s=1.0, today=TODAY)
    assert res.limits.cvl_v is not None
    assert res.limits.cvl_v < (a.voltage_v or 0.0)  # a cell over max: below the bus
    assert res.state.cvl_regulator.engaged and res.state.high_cell
