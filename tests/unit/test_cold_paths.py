"""The core's cold-cache paths give exactly what the plain definitions give.

The tick runs once a second on cold caches, so its hot code reads each pack once (merge in
one loop, the share rule's constraints in its update pass), skips the share rule's
bookkeeping when the set of packs did not change, and takes the config values once per
Config into the engine state.  Each test restates the plain definition (the per-field merge,
the share rule's separate passes, a step without remembered settings) and checks equality of
the ``repr`` (0.0 and -0.0 differ there): the published values must stay bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import date
from operator import attrgetter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbus_aggregate_batteries.config import ShareConfig, parse_config
from dbus_aggregate_batteries.core.aggregate import Merged, _alarms, _missing, merge_packs
from dbus_aggregate_batteries.core.engine import EngineState, step
from dbus_aggregate_batteries.core.limits import bms_cvl
from dbus_aggregate_batteries.core.model import AuxSnapshot, PackSnapshot
from dbus_aggregate_batteries.core.reasons import Reason
from dbus_aggregate_batteries.core.share import (
    _NO_SHARE,
    MAX_DT_S,
    MIN_SHARE_OF_EQUAL,
    TREND_WINDOW_S,
    PackShare,
    ShareLimits,
    ShareState,
    _history,
    _renormalise,
    _rise,
    _smooth,
    fall_rate,
    step_share,
)

FAST = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Few distinct values, so that ties (first pack wins), Nones and zeros are common.
volts = st.one_of(st.none(), st.sampled_from([0.0, 3.2, 3.3, 3.3, 3.45, 52.1, 53.0]))
amps = st.one_of(st.none(), st.sampled_from([-40.0, -0.0, 0.0, 0.4, 12.5, 12.5, 80.0]))
caps = st.one_of(st.none(), st.sampled_from([-5.0, 0.0, 100.0, 280.0, 280.0]))
ints = st.one_of(st.none(), st.sampled_from([0, 1, 2, 16]))
ids = st.one_of(st.none(), st.sampled_from(["", "C1", "C7"]))
modes = st.one_of(st.none(), st.sampled_from(["", "Bulk", "Float │ Linear", "Absorption x"]))


@st.composite
def packs_st(draw: st.DrawFn, max_size: int = 5) -> list[PackSnapshot]:
    n = draw(st.integers(0, max_size))
    return [
        PackSnapshot(
            f"com.victronenergy.battery.s{draw(st.integers(0, 6))}", f"B{i}",
            voltage_v=draw(volts), current_a=draw(amps), power_w=draw(amps),
            temperature_c=draw(volts), soc_pct=draw(caps), capacity_ah=draw(caps),
            installed_capacity_ah=draw(caps), consumed_ah=draw(amps), time_to_go_s=draw(caps),
            max_cell_v=draw(volts), min_cell_v=draw(volts), max_cell_id=draw(ids),
            min_cell_id=draw(ids), max_cell_temp_c=draw(volts), min_cell_temp_c=draw(volts),
            max_temp_id=draw(ids), min_temp_id=draw(ids), voltages_sum_v=draw(volts),
            cells=tuple(draw(st.lists(volts, max_size=3))), cells_per_battery=draw(ints),
            modules_online=draw(ints), modules_offline=draw(ints),
            blocking_charge=draw(ints), blocking_discharge=draw(ints),
            alarms=draw(st.sampled_from([(0,) * 14, (0,) * 13 + (2,), (None,) * 14])),
            allow_to_charge=draw(ints), allow_to_discharge=draw(ints),
            allow_to_balance=draw(ints), balancing=draw(ints), cvl_v=draw(volts),
            ccl_a=draw(caps), dcl_a=draw(caps), charge_mode=draw(modes),
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------- merge, per field


def _extreme(
    packs: Sequence[PackSnapshot], value: Callable[[PackSnapshot], float | None],
    ident: Callable[[PackSnapshot], str | None], highest: bool,
) -> tuple[float | None, str | None]:
    with_value = [p for p in packs if value(p) is not None]
    if not with_value:
        return None, None
    best = max(with_value, key=value) if highest else min(with_value, key=value)  # type: ignore[arg-type]
    cell = ident(best)
    return value(best), f"{best.label}: {cell}" if cell else best.label


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _sum(values: list[float]) -> float | None:
    return sum(values) if values else None


def plain_merge(packs: Sequence[PackSnapshot]) -> Merged:
    max_cell, max_id = _extreme(packs, attrgetter("max_cell_v"), attrgetter("max_cell_id"), True)
    min_cell, min_id = _extreme(packs, attrgetter("min_cell_v"), attrgetter("min_cell_id"), False)
    max_t, max_t_id = _extreme(
        packs, attrgetter("max_cell_temp_c"), attrgetter("max_temp_id"), True
    )
    min_t, min_t_id = _extreme(
        packs, attrgetter("min_cell_temp_c"), attrgetter("min_temp_id"), False
    )
    pairs = [(p.soc_pct, p.installed_capacity_ah) for p in packs if p.soc_pct is not None]
    soc = None
    if pairs:
        weights = [c for _, c in pairs if c is not None and c > 0]
        if len(weights) == len(pairs):
            soc = sum([s * c for (s, _), c in zip(pairs, weights, strict=True)]) / sum(weights)
        else:
            soc = sum(s for s, _ in pairs) / len(pairs)
        soc = min(100.0, max(0.0, soc))
    ttg_pairs = [
        (p.time_to_go_s, p.installed_capacity_ah) for p in packs
        if p.time_to_go_s is not None and p.installed_capacity_ah is not None
        and p.installed_capacity_ah > 0
    ]
    ttg = None
    if ttg_pairs and len(ttg_pairs) == len(packs):
        ttg = sum([t * c for t, c in ttg_pairs]) / sum([c for _, c in ttg_pairs])
    consumed = [abs(p.consumed_ah) for p in packs if p.consumed_ah is not None]
    counts = [p.cells_per_battery for p in packs if p.cells_per_battery is not None]
    if not counts:
        counts = [len(p.cells) for p in packs if p.cells]
    powers = [p.power_w for p in packs if p.power_w is not None]

    def ints(name: str) -> list[int]:
        return [v for p in packs if (v := getattr(p, name)) is not None]

    def floats(name: str) -> list[float]:
        return [v for p in packs if (v := getattr(p, name)) is not None]

    return Merged(
        count=len(packs), voltage_v=_mean(floats("voltage_v")),
        current_a=_sum(floats("current_a")),
        power_w=sum(powers) if packs and len(powers) == len(packs) else None,
        temperature_c=_mean(floats("temperature_c")), soc_pct=soc,
        capacity_ah=_sum(floats("capacity_ah")),
        installed_capacity_ah=_sum(floats("installed_capacity_ah")),
        consumed_ah=-sum(consumed) if consumed else None, time_to_go_s=ttg,
        max_cell_v=max_cell, max_cell_id=max_id, min_cell_v=min_cell, min_cell_id=min_id,
        max_cell_temp_c=max_t, max_temp_id=max_t_id, min_cell_temp_c=min_t,
        min_temp_id=min_t_id, voltages_sum_v=_mean(floats("voltages_sum_v")),
        cell_diff_v=None if max_cell is None or min_cell is None else max_cell - min_cell,
        cells_per_battery=min(counts) if counts else None,
        modules_online=sum(ints("modules_online")) if ints("modules_online") else None,
        modules_offline=sum(ints("modules_offline")) if ints("modules_offline") else None,
        blocking_charge=sum(ints("blocking_charge")) if ints("blocking_charge") else None,
        blocking_discharge=(
            sum(ints("blocking_discharge")) if ints("blocking_discharge") else None
        ),
        alarms=_alarms(packs),
        allow_to_charge=min(ints("allow_to_charge"), default=None),
        allow_to_discharge=min(ints("allow_to_discharge"), default=None),
        allow_to_balance=min(ints("allow_to_balance"), default=None),
        balancing=max(ints("balancing"), default=None),
        missing=_missing(packs),
    )


@FAST
@given(packs_st())
def test_one_pass_merge_equals_per_field_merge(packs: list[PackSnapshot]) -> None:
    assert repr(merge_packs(packs)) == repr(plain_merge(packs))


# ------------------------------------------------------------- share rule, separate passes


def _plain_bank_limit(
    cfg: ShareConfig, healthy: Sequence[PackSnapshot], missing: Sequence[PackSnapshot],
    packs: Mapping[str, PackShare], charge: bool, assumed: float, floor: float,
) -> tuple[float | None, Reason]:
    name = "CCL" if charge else "DCL"
    best: float | None = None
    binding = None
    for i, p in enumerate((*healthy, *missing)):
        limit = p.ccl_a if charge else p.dcl_a
        if limit is None:
            continue
        ps = packs.get(p.service, _NO_SHARE)
        share = ps.charge if charge else ps.discharge
        measured = share is not None
        share = max(floor, share) if share is not None else assumed
        fall = fall_rate(ps.ccl_history if charge else ps.dcl_history)
        anticipated = max(0.0, limit - fall * cfg.anticipate_s)
        bank = anticipated / share * (1.0 - cfg.headroom)
        if best is None or bank < best:
            best = bank
            binding = (p, limit, share, measured, anticipated, i >= len(healthy))
    if binding is None:
        return best, Reason(f"share-none-{name}", f"no pack reports a {name}")
    p, limit, share, measured, anticipated, is_missing = binding
    notes = (["assumed"] if not measured else []) + (
        [f"falling, {anticipated:.0f} A expected"] if anticipated < limit else []
    ) + (["last known, missing"] if is_missing else [])
    extra = f" ({', '.join(notes)})" if notes else ""
    return best, Reason(
        f"share {p.service}", f"{p.label} {name} {limit:.0f} A at {share * 100:.0f} % share{extra}"
    )


def plain_step_share(
    state: ShareState, cfg: ShareConfig, healthy: Sequence[PackSnapshot],
    missing: Sequence[PackSnapshot], now_s: float,
) -> tuple[ShareState, ShareLimits]:
    dt = 0.0 if state.last_s is None else min(MAX_DT_S, max(0.0, now_s - state.last_s))
    members = frozenset(p.service for p in healthy)
    keep = members | {p.service for p in missing}
    packs = {k: v for k, v in state.packs.items() if k in keep}
    for key in members:
        if key not in packs:
            packs[key] = _NO_SHARE
    left = set(state.members - members)
    for direction in ("charge", "discharge"):
        _renormalise(packs, left, set(members), direction)
    currents = [p.current_a for p in healthy if p.current_a is not None]
    measuring = None
    total = 0.0
    if healthy and len(currents) == len(healthy):
        total = sum(currents)
        if total >= cfg.min_current_a:
            measuring = "charge"
        elif total <= -cfg.min_current_a:
            measuring = "discharge"
    tau = math.inf if missing else cfg.smoothing_s
    window = TREND_WINDOW_S if cfg.anticipate_s > 0.0 else 0.0
    for p in healthy:
        ps = packs[p.service]
        charge, discharge = ps.charge, ps.discharge
        if measuring is not None:
            assert p.current_a is not None
            raw = min(1.0, max(0.0, p.current_a / total))
            if measuring == "charge":
                charge = _smooth(charge, raw, dt, tau)
            else:
                discharge = _smooth(discharge, raw, dt, tau)
        packs[p.service] = PackShare(
            charge, discharge, _history(ps.ccl_history, now_s, p.ccl_a, window),
            _history(ps.dcl_history, now_s, p.dcl_a, window),
        )
    n = max(1, len(healthy))
    assumed = min(1.0, (1.0 + cfg.unmeasured_margin) / n)
    floor = MIN_SHARE_OF_EQUAL / n
    ccl, ccl_reason = _plain_bank_limit(cfg, healthy, missing, packs, True, assumed, floor)
    dcl, dcl_reason = _plain_bank_limit(cfg, healthy, missing, packs, False, assumed, floor)
    ccl = _rise(state.ccl_a, ccl, dt, cfg.rise_s)
    dcl = _rise(state.dcl_a, dcl, dt, cfg.rise_s)
    return (
        ShareState(packs=packs, members=members, last_s=now_s, ccl_a=ccl, dcl_a=dcl),
        ShareLimits(ccl, dcl, ccl_reason, dcl_reason),
    )


share_cfgs = st.sampled_from([
    parse_config({}).limits.share,
    parse_config({"limits": {"share": {"anticipate_s": 0.0, "smoothing_s": 0.0}}}).limits.share,
])
tick_st = st.tuples(packs_st(4), packs_st(2), st.sampled_from([0.0, 0.5, 1.0, 1.0, 1.0, 30.0]))


@FAST
@given(share_cfgs, st.lists(tick_st, min_size=1, max_size=12), st.integers(0, 3))
def test_share_rule_in_one_pass_equals_separate_passes(
    cfg: ShareConfig,
    ticks: list[tuple[list[PackSnapshot], list[PackSnapshot], float]],
    repeat: int,
) -> None:
    # A tick's packs repeated a few times: the usual case (same packs as last tick) too.
    mine, plain = ShareState(), ShareState()
    now = 0.0
    for healthy, missing, dt in ticks:
        for _ in range(1 + repeat):
            now += dt
            mine, got = step_share(mine, cfg, healthy, missing, now_s=now)
            plain, want = plain_step_share(plain, cfg, healthy, missing, now)
            assert repr(got) == repr(want)
            assert repr(mine) == repr(plain)


# ---------------------------------------------------------------- settings kept in the state


@FAST
@given(st.lists(st.tuples(packs_st(4), packs_st(1), st.booleans()), min_size=1, max_size=8))
def test_settings_kept_in_state_equal_a_step_without_them(
    ticks: list[tuple[list[PackSnapshot], list[PackSnapshot], bool]],
) -> None:
    bms = parse_config({"limits": {"max_charge_current_a": 150.0}})
    own = parse_config({"limits": {"mode": "own"}, "publish": {"mode": "shadow"}})
    kept, fresh = EngineState(), EngineState()
    for i, (healthy, missing, switch) in enumerate(ticks):
        # A new Config object (a reload) must be taken, not the remembered settings.
        cfg = own if switch else bms
        a = step(cfg, kept, healthy, AuxSnapshot(), now_s=float(i), today=date(2026, 1, 1),
                 missing=missing)
        b = step(cfg, replace(fresh, settings=None), healthy, AuxSnapshot(), now_s=float(i),
                 today=date(2026, 1, 1), missing=missing)
        assert repr((a.values, a.limits, a.events, a.reasons, a.state)) == repr(
            (b.values, b.limits, b.events, b.reasons, b.state)
        )
        assert a.state.settings is not None and a.state.settings.cfg is cfg
        kept, fresh = a.state, b.state


# ------------------------------------------------------------------------- bms CVL, one loop


def plain_bms_cvl(float_aware: bool, packs: Sequence[PackSnapshot]) -> float | None:
    with_cvl = [p for p in packs if p.cvl_v is not None]
    if not with_cvl:
        return None
    if float_aware:
        absorbing = [p.cvl_v for p in with_cvl if not p.in_float and p.cvl_v is not None]
        if absorbing:
            return min(absorbing)
    return min(p.cvl_v for p in with_cvl if p.cvl_v is not None)


@FAST
@given(packs_st(6), st.booleans())
def test_bms_cvl_loop_equals_plain_definition(packs: list[PackSnapshot], aware: bool) -> None:
    cfg = parse_config({"limits": {"bms": {"cvl": "float_aware" if aware else "min"}}})
    assert repr(bms_cvl(cfg.limits.bms, packs)) == repr(plain_bms_cvl(aware, packs))
