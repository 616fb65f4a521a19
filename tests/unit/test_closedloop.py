"""In-process closed loop: our engine against the physics, one test per control target.

Short versions of the shipped scenarios (started near the LFP knee), so each runs in seconds.
The figures of the full scenarios are in the README (benchmarks/bench_control.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from dbus_aggregate_batteries.sim.closedloop import (
    Figures,
    cvl_oscillation,
    run_inprocess,
    scenario_config,
)
from dbus_aggregate_batteries.sim.scenario import Scenario, load_scenario, parse_scenario

VMAX = 3.45


def near_full(weak: bool, **extra: Any) -> Scenario:
    packs: list[dict[str, Any]] = [
        {"soc_pct": 94.0, "resistance_factor": 1.0},
        {"soc_pct": 94.0, "resistance_factor": 1.15},
        {"soc_pct": 94.0, "resistance_factor": 1.3},
    ]
    if weak:
        packs[0]["weak_cell"] = {"cell": 5, "capacity_factor": 0.95, "resistance_factor": 1.5}
    data: dict[str, Any] = {
        "name": "near_full",
        "duration_s": 2400,
        "packs": packs,
        "charge_w": [[0, 9000]],
        "load_w": [[0, 300]],
        **extra,
    }
    return parse_scenario(data)


def assert_own_targets(fig: Figures) -> None:
    assert fig.trips == 0
    assert fig.max_cell_v <= VMAX + 0.010
    # No sustained oscillation: at most one CVL reversal every five minutes after settling.
    assert fig.cvl_reversals_per_min is not None and fig.cvl_reversals_per_min <= 0.2


def test_own_mode_healthy_bank_reaches_full_within_bounds() -> None:
    scn = near_full(weak=False)
    own = run_inprocess(scn, "own")
    bms = run_inprocess(scn, "bms min x N")
    assert_own_targets(own)
    assert own.time_to_full_s is not None and bms.time_to_full_s is not None
    assert min(own.final_soc_pct) >= 98.5
    # About the time BMS mode takes (the README has the full-length figures).
    assert own.time_to_full_s <= 1.25 * bms.time_to_full_s


def test_own_mode_weak_cell_stays_within_bounds() -> None:
    fig = run_inprocess(near_full(weak=True), "own")
    assert_own_targets(fig)
    assert fig.max_cell_v >= VMAX - 0.005  # it did charge up to the maximum


def test_own_mode_with_charger_offset_still_holds_the_cell() -> None:
    # The charger reads the bus 50 mV high: it holds the bank lower than asked, which the
    # regulator's bias makes up for without letting the cell overshoot.
    fig = run_inprocess(near_full(weak=True, charger={"offset_v": -0.05}), "own")
    assert_own_targets(fig)


def test_upstream_cvl_law_oscillates_where_the_regulator_does_not() -> None:
    scn = near_full(weak=True)
    upstream = run_inprocess(scn, "own, upstream CVL")
    regulated = run_inprocess(scn, "own")
    assert upstream.cvl_peak_to_peak_v is not None and regulated.cvl_peak_to_peak_v is not None
    assert upstream.cvl_reversals_per_min is not None
    assert regulated.cvl_reversals_per_min is not None
    assert upstream.cvl_reversals_per_min >= 0.5 > 0.2 >= regulated.cvl_reversals_per_min
    assert upstream.cvl_peak_to_peak_v > 2 * regulated.cvl_peak_to_peak_v
    assert upstream.max_cell_v > regulated.max_cell_v


def test_own_counter_stays_within_two_percent_over_cycles_with_gain_error() -> None:
    full = load_scenario("cycles10")
    scn = full.model_copy(update={"cycles": full.cycles.model_copy(update={"count": 2})
                                  if full.cycles else None})
    fig = run_inprocess(scn, "own")
    assert fig.cycles_done == 2
    assert fig.trips == 0
    assert fig.soc_error_max_pct is not None and fig.soc_error_end_pct is not None
    assert fig.soc_error_max_pct <= 2.0
    assert fig.soc_error_end_pct <= 2.0


def test_bms_min_times_n_exceeds_a_falling_pack_limit() -> None:
    # The effect issue 11 removes: in BMS mode, a pack whose own CCL falls quickly carries
    # more than it for a while, because the charger follows with a lag.
    fig = run_inprocess(near_full(weak=True), "bms min x N")
    assert fig.over_limit_s > 0 or fig.max_cell_v > VMAX + 0.010


def test_mode_is_one_config_change() -> None:
    scn = near_full(weak=False)
    cfg = scenario_config(scn, {"limits": {"mode": "own", "own": {"max_charge_current_a": 50}}})
    assert cfg.limits.mode == "own" and cfg.limits.own.max_charge_current_a == 50
    assert cfg.discovery.expected_count == 3


def test_recorder_sees_truth() -> None:
    rows: list[dict[str, Any]] = []
    scn = near_full(weak=False).model_copy(update={"duration_s": 20})
    run_inprocess(scn, "own", record=rows.append, record_every_s=5.0)
    assert len(rows) == 4
    assert len(rows[0]["packs"]) == 3 and len(rows[0]["packs"][0]["cells_v"]) == 16
    assert rows[-1]["t_s"] == pytest.approx(20.0)


def test_cvl_oscillation_counts_reversals_after_settling() -> None:
    series = [(float(t), 55.2) for t in range(0, 100)]
    # Engaged at 100 s; from 400 s a square wave of 1 V every 30 s: 2 reversals per minute.
    series += [(float(t), 54.0) for t in range(100, 400)]
    series += [(float(t), 54.0 + ((t - 400) // 30) % 2) for t in range(400, 1000)]
    per_min, p2p = cvl_oscillation(series)
    assert p2p == pytest.approx(1.0)
    assert per_min == pytest.approx(18 / (599 / 60), rel=0.01)  # 19 moves, 18 reversals
    assert cvl_oscillation([(0.0, 55.2), (100.0, 55.2)]) == (0.0, 0.0)
