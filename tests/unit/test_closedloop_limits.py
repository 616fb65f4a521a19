"""Closed loop (issue 11): the share rule, temperature derating and the reasons, measured.

Short versions of the shipped ``spread``, ``spread_hot`` and ``cold`` scenarios, so each runs in
a few seconds. The full-length figures are in the README (benchmarks/bench_control.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from dbus_aggregate_batteries.sim import closedloop, physics, scenario

MIN_N: dict[str, Any] = {"limits": {"mode": "bms", "bms": {"currents": "min_times_n"}}}
SHARE: dict[str, Any] = {"limits": {"mode": "bms", "bms": {"currents": "share"}}}
run_inprocess = closedloop.run_inprocess


def short(name: str, duration_s: float) -> Any:
    return scenario.load_scenario(name).model_copy(update={"duration_s": duration_s})


class Overruns:
    """Per second: whether any pack carried more than its own limit x 1.05 + 0.5 A."""

    def __init__(self) -> None:
        self.seconds = 0
        self.longest = 0
        self._run = 0

    def __call__(self, truth: dict[str, Any]) -> None:
        over = False
        for p in truth["packs"]:
            limit = p["ccl_a"] if p["current_a"] > 0 else p["dcl_a"]
            over = over or abs(p["current_a"]) > limit * 1.05 + 0.5
        self._run = self._run + 1 if over else 0
        self.seconds += over
        self.longest = max(self.longest, self._run)


def test_share_keeps_every_pack_inside_its_ccl_where_min_times_n_does_not() -> None:
    scn = short("spread", 900)  # 30 % resistance spread, held at the packs' CCL
    minn, share = Overruns(), Overruns()
    run_inprocess(scn, MIN_N, record=minn)
    fig = run_inprocess(scn, SHARE, record=share)
    assert minn.seconds > 600  # the lowest-resistance pack carries more than its CCL
    assert share.seconds == 0
    assert fig.trips == 0


def test_share_keeps_every_pack_inside_its_dcl_where_min_times_n_does_not() -> None:
    scn = short("spread_discharge", 600)
    minn, share = Overruns(), Overruns()
    run_inprocess(scn, MIN_N, record=minn)
    run_inprocess(scn, SHARE, record=share)
    assert minn.seconds > 300
    assert share.seconds == 0


def test_a_falling_pack_limit_is_exceeded_for_at_most_two_seconds() -> None:
    scn = short("spread_hot", 900)  # the largest taker heats up: its own CCL falls
    minn, share = Overruns(), Overruns()
    run_inprocess(scn, MIN_N, record=minn)
    run_inprocess(scn, SHARE, record=share)
    assert minn.longest > 60
    assert share.longest <= 2


def test_share_reason_names_the_largest_taker() -> None:
    scn = short("spread", 300)
    cfg = closedloop.scenario_config(scn, SHARE)
    loop = closedloop.ClosedLoop(scn, reference_v=closedloop.reference_voltage(scn, cfg))
    aggregator = closedloop.InProcessAggregator(cfg)
    limits = physics.DvccLimits(None, None, None)
    while not loop.done:
        limits, _ = aggregator.tick(loop)
        loop.advance(scn.dt_s, limits)
    reason = aggregator.state.reasons.ccl.text
    # Battery 1 has the lowest resistance: it takes the largest share and binds the bank.
    assert reason.startswith("Battery 1 CCL ") and "% share" in reason
    share = float(reason.split(" at ")[1].split(" %")[0])
    assert 34 < share < 45


@pytest.mark.parametrize(
    ("temperature_c", "expected_a"),
    [(5.0, 200.0 * (0.2 + 0.8 * 4.0 / 9.0)), (1.0, 40.0), (0.0, 0.0), (-2.0, 0.0)],
)
def test_temperature_table_cuts_the_current_at_the_configured_points(
    temperature_c: float, expected_a: float
) -> None:
    scn = scenario.load_scenario("cold")
    rows: list[tuple[float, float | None]] = []
    run_inprocess(
        scn,
        {"limits": {"mode": "own", "own": {"pack_limits": "ignore"}}},
        record=lambda t: rows.append(
            (min(p["temperature_c"] for p in t["packs"]), t["limits"][1])
        ),
    )
    t, ccl = min(rows, key=lambda r: abs(r[0] - temperature_c))
    assert abs(t - temperature_c) < 0.1
    assert ccl == pytest.approx(expected_a, abs=3.0)
