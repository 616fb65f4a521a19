"""The pure core's per-tick shortcuts give exactly what the plain definitions give.

The hot paths of the core take shortcuts (a steady limit's fall rate decided up front, the
trend window trimmed as a suffix, the cells' capped sum without a call per cell, alarms of
equal packs taken as they are, a reason log left as it is when nothing changed).  Each test
here restates the plain definition and checks equality, not closeness: the published values
must stay bit for bit what they were.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbus_aggregate_batteries.core.aggregate import merge_packs
from dbus_aggregate_batteries.core.charge import pack_dynamic_cvl
from dbus_aggregate_batteries.core.model import PackSnapshot
from dbus_aggregate_batteries.core.reasons import Reason, ReasonLog, Reasons, reason_events
from dbus_aggregate_batteries.core.share import _history, fall_rate
from dbus_aggregate_batteries.core.venus import ALARM_PATHS

FAST = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Few distinct values, so that ties, equal limits and repeated times are common.
limits = st.sampled_from([0.0, 5.0, 37.5, 100.0, 100.0, 99.95, 99.9, 99.8, 250.0])
times = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 9.0])


def plain_fall_rate(history: tuple[tuple[float, float], ...]) -> float:
    if len(history) < 3:
        return 0.0
    (t0, l0), (t1, l1) = history[0], history[-1]
    tm, lm = min(history[1:-1], key=lambda h: abs(h[0] - (t0 + t1) / 2.0))
    if tm <= t0 or t1 <= tm:
        return 0.0
    return max(0.0, min((l0 - lm) / (tm - t0), (lm - l1) / (t1 - tm)))


def plain_history(
    old: tuple[tuple[float, float], ...], now_s: float, limit: float | None, window_s: float
) -> tuple[tuple[float, float], ...]:
    if limit is None or window_s <= 0.0:
        return ()
    return (*(h for h in old if now_s - h[0] <= window_s and h[0] < now_s), (now_s, limit))


@FAST
@given(st.lists(st.tuples(times, limits), max_size=7))
def test_fall_rate_shortcut_equals_plain_definition(samples: list[tuple[float, float]]) -> None:
    # Any order of times: the rule's own histories rise in time, but the function must not
    # depend on that.
    history = tuple(samples)
    got, want = fall_rate(history), plain_fall_rate(history)
    assert got == want and str(got) == str(want)  # str: 0.0 and -0.0 differ


@FAST
@given(
    st.lists(st.tuples(times, limits), max_size=7),
    times,
    st.one_of(st.none(), limits),
    st.sampled_from([0.0, 1.0, 4.0]),
)
def test_trend_window_trim_equals_plain_filter(
    samples: list[tuple[float, float]], now_s: float, limit: float | None, window_s: float
) -> None:
    # The rule's histories are in time order (each tick appends the newest sample and keeps
    # only older ones); the trim relies on that.
    old = tuple(sorted(samples, key=lambda h: h[0]))
    assert _history(old, now_s, limit, window_s) == plain_history(old, now_s, limit, window_s)


def test_trend_window_trim_over_a_long_run_of_ticks() -> None:
    # The way the rule builds it: a sample per tick, time going backwards now and then.
    mine: tuple[tuple[float, float], ...] = ()
    plain: tuple[tuple[float, float], ...] = ()
    now = 0.0
    for i in range(300):
        now += (1.0, 0.5, 3.0, -2.0, 0.0, 1.0, 6.0)[i % 7]
        limit = None if i % 41 == 40 else 100.0 - (i % 13) * (0.1 if i % 50 < 25 else 1.0)
        mine = _history(mine, now, limit, 4.0)
        plain = plain_history(plain, now, limit, 4.0)
        assert mine == plain
        assert fall_rate(mine) == plain_fall_rate(plain)


cells_st = st.lists(
    st.sampled_from([2.5, 3.3, 3.45, 3.55, 3.6, 3.65, 3.9]), min_size=1, max_size=32
)


@FAST
@given(cells_st, st.sampled_from([3.45, 3.55, 3.6]))
def test_capped_cell_sum_equals_sum_of_minimums(cells: list[float], cap_v: float) -> None:
    pack = PackSnapshot("s", "B", cells=tuple(cells))
    want = sum(min(c, cap_v) for c in cells)
    assert pack_dynamic_cvl(pack, cap_v, len(cells)) == (want if want > 0.0 else None)


levels = st.one_of(st.none(), st.sampled_from([0, 1, 2]))
alarm_rows = st.tuples(*(levels for _ in ALARM_PATHS))
maybe = st.one_of(st.none(), st.sampled_from([1.0, 48.0, 52.5]))


@FAST
@given(st.lists(st.tuples(alarm_rows, maybe, maybe, maybe), max_size=5), st.booleans())
def test_merged_alarms_and_missing_equal_plain_definitions(
    rows: list[tuple[tuple[int | None, ...], float | None, float | None, float | None]],
    same_alarms: bool,
) -> None:
    packs = [
        PackSnapshot(f"s{i}", f"B{i}", voltage_v=v, ccl_a=ccl, soc_pct=soc,
                     alarms=rows[0][0] if same_alarms else alarms)
        for i, (alarms, v, ccl, soc) in enumerate(rows)
    ]
    merged = merge_packs(packs)
    want_alarms = tuple(
        max((a for a in (p.alarms[i] for p in packs) if a is not None), default=None)
        for i in range(len(ALARM_PATHS))
    )
    assert merged.alarms == want_alarms
    want_missing = [
        path
        for path, name in (("/Dc/0/Voltage", "voltage_v"), ("/Dc/0/Current", "current_a"),
                           ("/Soc", "soc_pct"), ("/InstalledCapacity", "installed_capacity_ah"),
                           ("/System/MaxCellVoltage", "max_cell_v"),
                           ("/System/MinCellVoltage", "min_cell_v"),
                           ("/Info/MaxChargeVoltage", "cvl_v"),
                           ("/Info/MaxChargeCurrent", "ccl_a"),
                           ("/Info/MaxDischargeCurrent", "dcl_a"))
        if packs and any(getattr(p, name) is None for p in packs)
    ]
    assert list(merged.missing) == want_missing


keys = st.sampled_from(["a", "b", "c"])
reasons_st = st.builds(
    Reasons,
    st.builds(Reason, keys, st.sampled_from(["x", "y"])),
    st.builds(Reason, keys, st.sampled_from(["x", "y"])),
    st.builds(Reason, keys, st.sampled_from(["x", "y"])),
)


@FAST
@given(
    st.lists(st.tuples(reasons_st, st.sampled_from([0.0, 1.0, 4.0, 6.0])), min_size=1,
             max_size=12),
    reasons_st,
)
def test_reason_log_shortcut_equals_full_bookkeeping(
    ticks: list[tuple[Reasons, float]], first: Reasons
) -> None:
    log, old, now = ReasonLog(logged=first), first, 0.0
    for new, dt in ticks:
        now += dt
        got_log, got_events = reason_events(log, old, new, now)
        # The full bookkeeping, restated: a key change restarts the clock, a settled new key
        # is logged once.
        logged, since, events = [], [], []
        for name, before, after, was, started in zip(
            ("CVL", "CCL", "DCL"), (old.cvl, old.ccl, old.dcl), (new.cvl, new.ccl, new.dcl),
            (log.logged.cvl, log.logged.ccl, log.logged.dcl), log.since_s, strict=True,
        ):
            if after.key != before.key:
                started = now
            if after.key != was.key and now - started >= 5.0:
                events.append(f"{name} now set by: {after.text}")
                was = after
            logged.append(was)
            since.append(started)
        assert got_log == replace(log, logged=Reasons(*logged), since_s=tuple(since))
        assert [e.message for e in got_events] == events
        log, old = got_log, new
