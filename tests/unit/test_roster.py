"""The pack roster: every health rule with worked inputs, no bus.

Default thresholds: stale_after_s 30, probe_after_s 10, frozen_current_a 5, tick 1 s.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from factories import config, pack

from dbus_aggregate_batteries.core.current import measured_current
from dbus_aggregate_batteries.core.health import Health
from dbus_aggregate_batteries.core.model import AuxSnapshot, DeviceCurrent, PackSnapshot
from dbus_aggregate_batteries.core.roster import (
    Departure,
    PackInput,
    RosterResult,
    RosterState,
    assess,
    expected_currents,
)

CFG = config()


def at_rest(name: str, **kw: Any) -> PackSnapshot:
    """A healthy pack carrying nothing, every value steady (as a real BMS at rest)."""
    return pack(name, **{"current_a": 0.0, "power_w": 0.0, **kw})


def inp(snap: PackSnapshot, alive_s: float, **kw: Any) -> PackInput:
    return PackInput(snap.service, f"serial:{snap.label}", snap, alive_s, **kw)


Scene = Callable[[float], tuple[Sequence[PackInput], float | None]]


def run(scene: Scene, seconds: int, *, cfg: Any = CFG, state: RosterState | None = None,
        start: float = 1000.0) -> tuple[list[RosterResult], RosterState]:
    """One tick a second; ``scene(t)`` gives the packs and the measured bank current."""
    state = state or RosterState()
    results = []
    for k in range(seconds + 1):
        now = start + k
        packs, measured = scene(now)
        res = assess(cfg, state, packs, now_s=now, measured_current_a=measured)
        state = res.state
        results.append(res)
    return results, state


def health_of(res: RosterResult, name: str) -> Health:
    return res.health[f"com.victronenergy.battery.{name}"]


# ---------------------------------------------------------------- quiet is healthy


def test_quiet_bank_for_30_minutes_stays_active_and_is_only_probed() -> None:
    snaps = [at_rest(n) for n in "ABC"]
    answered = {s.service: 1000.0 for s in snaps}
    probes: list[tuple[float, str]] = []

    def scene(now: float) -> tuple[Sequence[PackInput], float | None]:
        return [inp(s, answered[s.service]) for s in snaps], 0.0

    state = RosterState()
    for k in range(1801):
        now = 1000.0 + k
        packs, measured = scene(now)
        res = assess(CFG, state, packs, now_s=now, measured_current_a=measured)
        state = res.state
        assert len(res.healthy) == 3 and not res.missing, now
        for name in res.probe:
            probes.append((now, name))
            answered[name] = now + 0.01  # the process answers the GetValue
        if k:
            assert res.events == ()
    # Probed only after 10 s of silence, then once per 10 s: cheap.
    per_pack = [t for t, n in probes if n == snaps[0].service]
    assert per_pack[0] == 1011.0
    assert all(b - a == pytest.approx(11.0) for a, b in itertools.pairwise(per_pack))
    assert len(probes) == 3 * len(per_pack)


def test_quiet_bank_where_one_pack_jitters_1_mv_stays_active() -> None:
    a0, a1 = at_rest("A", max_cell_v=3.301), at_rest("A", max_cell_v=3.302)
    b, c = at_rest("B"), at_rest("C")

    def scene(now: float) -> tuple[Sequence[PackInput], float | None]:
        a = a0 if int(now) % 2 else a1
        return [inp(a, now), inp(b, now), inp(c, now)], None

    results, _ = run(scene, 600)
    assert all(len(r.healthy) == 3 for r in results)


def test_float_with_small_currents_stays_active() -> None:
    # Charger holds the voltage; 0.3 A trickle and a Multi/MPPT sum of 4 A: below 5 A a pack.
    snaps = [at_rest(n, current_a=0.1, soc_pct=100.0, charge_mode="Float") for n in "ABC"]
    results, _ = run(lambda now: ([inp(s, now) for s in snaps], 4.0), 600)
    assert all(len(r.healthy) == 3 for r in results)


def test_measured_share_below_threshold_is_not_movement() -> None:
    snaps = [at_rest(n) for n in "ABC"]
    results, _ = run(lambda now: ([inp(s, now) for s in snaps], -12.0), 300)  # 4 A a pack
    assert len(results[-1].healthy) == 3


# ---------------------------------------------------------------- frozen


def test_pack_frozen_while_the_others_carry_current_is_caught_in_30_s() -> None:
    frozen = at_rest("A")

    def scene(now: float) -> tuple[Sequence[PackInput], float | None]:
        # B and C discharge 10 A each and their values move every second.
        moving = [pack(n, current_a=-10.0, soc_pct=50.0 - (now - 1000.0) / 1000.0) for n in "BC"]
        return [inp(frozen, now), *(inp(s, now) for s in moving)], None

    results, _ = run(scene, 31)
    # Seen first at t=0 (its last change); unchanged for 30 s of movement: frozen at t=30.
    assert [health_of(r, "A") for r in results[:30]] == [Health.ACTIVE] * 30
    assert health_of(results[30], "A") is Health.FROZEN
    assert len(results[30].healthy) == 2 and len(results[30].missing) == 1
    assert results[30].events[0].message.startswith("pack A (com.victronenergy.battery.A): frozen")


def test_all_packs_frozen_while_the_multi_pushes_50_a_are_caught() -> None:
    snaps = [at_rest(n) for n in "ABC"]
    results, _ = run(lambda now: ([inp(s, now) for s in snaps], 50.0), 31)
    assert len(results[29].healthy) == 3
    assert results[30].healthy == () and len(results[30].missing) == 3
    assert {h for h in results[30].health.values()} == {Health.FROZEN}


def test_own_large_current_that_never_moves_is_frozen() -> None:
    stuck = pack("A", current_a=-20.0)
    results, _ = run(lambda now: ([inp(stuck, now)], None), 30)
    assert health_of(results[29], "A") is Health.ACTIVE
    assert health_of(results[30], "A") is Health.FROZEN


def test_any_change_resets_the_frozen_clock() -> None:
    def scene(now: float) -> tuple[Sequence[PackInput], float | None]:
        # Moves once every 25 s under a measured 30 A: never 30 s unchanged.
        snap = at_rest("A", soc_pct=50.0 + int((now - 1000.0) // 25) * 0.1)
        return [inp(snap, now)], 30.0

    results, _ = run(scene, 300)
    assert all(health_of(r, "A") is Health.ACTIVE for r in results)


def test_intermittent_load_accumulates_movement() -> None:
    snap = at_rest("A")
    # 10 ticks of 30 A, 10 of rest, repeated; a tick under current adds the second before it,
    # a tick at rest drains a quarter second.  Seen first at t=0: 9 s by t=9, 6.5 by t=19,
    # 16.5, 14, 24, 21.5, then 30.5 s at t=68.
    results, _ = run(lambda now: ([inp(snap, now)], 30.0 if (now - 1000.0) % 20 < 10 else 0.0),
                     80)
    first = next(k for k, r in enumerate(results) if health_of(r, "A") is Health.FROZEN)
    assert first == 68


def test_sparse_current_glitches_at_rest_never_add_up() -> None:
    # Found by review: one 1 s reading of 8 A every 10 min at rest used to add up to a frozen
    # verdict after ~5 h (DCL 0 at night).  The count drains at rest.
    snap = at_rest("A")
    results, _ = run(
        lambda now: ([inp(snap, now)], 8.0 if (now - 1000.0) % 600 == 0 else 0.5), 6 * 3600
    )
    assert all(health_of(r, "A") is Health.ACTIVE for r in results)
    assert max(r.state.watches[snap.service].moving_s for r in results) <= 1.0


def test_a_long_gap_between_ticks_counts_as_two_ticks_only() -> None:
    snap = at_rest("A")
    state = assess(CFG, RosterState(), [inp(snap, 1000.0)], now_s=1000.0,
                   measured_current_a=30.0).state
    res = assess(CFG, state, [inp(snap, 1100.0)], now_s=1100.0, measured_current_a=30.0)
    assert res.state.watches[snap.service].moving_s == pytest.approx(2.0)
    assert health_of(res, "A") is Health.ACTIVE


@pytest.mark.parametrize(
    ("kw", "measured", "frozen"),
    [
        ({"allow_to_charge": 0}, 30.0, False),  # blocks charge: carries no charge current
        ({"ccl_a": 0.0}, 30.0, False),
        ({"soc_pct": 99.5}, 30.0, False),  # full: its acceptance tapers to 0 A
        ({"charge_mode": "Float"}, 30.0, False),
        ({"soc_pct": 99.5}, -30.0, True),  # ... but it must deliver on discharge
        ({"allow_to_discharge": 0}, -30.0, False),
        ({"soc_pct": 0.5}, -30.0, False),  # empty
        ({"allow_to_discharge": 0}, 30.0, True),
    ],
)
def test_a_pack_that_cannot_take_that_direction_is_not_expected_to_move(
    kw: dict[str, Any], measured: float, frozen: bool
) -> None:
    snap = at_rest("A", **kw)
    results, _ = run(lambda now: ([inp(snap, now)], measured), 31)
    assert (health_of(results[-1], "A") is Health.FROZEN) is frozen


def test_a_frozen_peer_cannot_make_a_quiet_pack_look_frozen() -> None:
    stuck = pack("A", current_a=-20.0)  # frozen at 20 A
    quiet = at_rest("B")
    results, _ = run(lambda now: ([inp(stuck, now), inp(quiet, now)], None), 120)
    assert health_of(results[-1], "A") is Health.FROZEN
    # A's stale current counted for B only while A still looked live (10 s), then drained.
    assert all(health_of(r, "B") is Health.ACTIVE for r in results)
    assert max(r.state.watches[quiet.service].moving_s for r in results) == pytest.approx(10.0)
    assert results[-1].state.watches[quiet.service].moving_s == 0.0


def test_expected_share_is_capacity_weighted() -> None:
    big = at_rest("A", installed_capacity_ah=560.0)
    small = at_rest("B", installed_capacity_ah=280.0)
    packs = [inp(big, 0.0), inp(small, 0.0)]
    got = expected_currents(packs, frozenset(), 30.0)
    assert got == {big.service: pytest.approx(20.0), small.service: pytest.approx(10.0)}
    # B reports 9 A over its 280 Ah: A (560 Ah) in parallel should carry 18 A.
    moving = inp(replace(small, current_a=9.0), 0.0)
    got = expected_currents([packs[0], moving], frozenset({small.service}), None)
    assert got[big.service] == pytest.approx(18.0)
    # Unknown capacity anywhere: equal shares.
    packs = [inp(replace(big, installed_capacity_ah=None), 0.0), inp(small, 0.0)]
    assert expected_currents(packs, frozenset(), 30.0)[small.service] == pytest.approx(15.0)


def test_frozen_threshold_is_a_setting() -> None:
    snaps = [at_rest(n) for n in "ABC"]
    strict = config(fault={"frozen_current_a": 3.0})
    results, _ = run(lambda now: ([inp(s, now) for s in snaps], -12.0), 31, cfg=strict)
    assert results[-1].healthy == ()  # 4 A a pack is now movement


def test_frozen_pack_recovers_when_its_values_move() -> None:
    snap = at_rest("A")
    results, state = run(lambda now: ([inp(snap, now)], 30.0), 30)
    assert health_of(results[-1], "A") is Health.FROZEN
    moved = replace(snap, current_a=10.0)
    res = assess(CFG, state, [inp(moved, 1031.0)], now_s=1031.0, measured_current_a=30.0)
    assert health_of(res, "A") is Health.ACTIVE and len(res.healthy) == 1
    assert res.events[0].message.endswith("active (ok)")


# ---------------------------------------------------------------- alive or not


def test_failed_probe_is_stale_at_once() -> None:
    snap = at_rest("A")
    res = assess(CFG, RosterState(), [inp(snap, 1000.0, probe_failed=True)], now_s=1000.0)
    assert health_of(res, "A") is Health.STALE and res.healthy == ()
    assert "liveness probe" in res.events[0].message


def test_no_sign_of_life_at_all_is_stale_as_a_backstop() -> None:
    snap = at_rest("A")
    results, _ = run(lambda now: ([inp(snap, 1000.0)], None), 41)  # probes never answered
    assert health_of(results[40], "A") is Health.ACTIVE
    assert health_of(results[41], "A") is Health.STALE
    assert [k for k, r in enumerate(results) if r.probe] == [11, 22, 33]


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"voltage_v": None}, "no valid pack voltage"),
        ({"modules_online": 0}, "BMS offline"),
        ({"max_cell_v": None}, "no valid cell voltages"),
        ({"ccl_a": None}, "charge limits"),
    ],
)
def test_driver_says_bms_gone(kw: dict[str, Any], reason: str) -> None:
    res = assess(CFG, RosterState(), [inp(pack("A", **kw), 1000.0)], now_s=1000.0)
    assert health_of(res, "A") is Health.BMS_OFFLINE
    assert reason in res.events[0].message


def test_connected_zero_is_bms_offline() -> None:
    res = assess(CFG, RosterState(), [inp(pack("A"), 1000.0, connected=0)], now_s=1000.0)
    assert health_of(res, "A") is Health.BMS_OFFLINE


# ---------------------------------------------------------------- departed and remembered


def test_departed_pack_is_remembered_by_identity_until_healthy_again() -> None:
    good = pack("A", ccl_a=80.0)
    state = assess(CFG, RosterState(), [inp(good, 1000.0)], now_s=1000.0).state
    # It leaves; the snapshot taken at departure is worse, but the last good one is kept.
    res = assess(CFG, state, [], now_s=1001.0,
                 departures=[Departure(good.service, "serial:A", replace(good, ccl_a=None))])
    assert health_of(res, "A") is Health.OFFLINE and res.healthy == ()
    assert [m.ccl_a for m in res.missing] == [80.0]
    assert "is offline: its service left the bus" in res.events[0].message
    # Still remembered on later ticks, without repeating the event.
    res = assess(CFG, res.state, [], now_s=1002.0)
    assert len(res.missing) == 1 and res.events == ()
    # Back under another tty, BMS not read yet: the remembered block holds, combined with now.
    back = replace(pack("A", voltage_v=None, ccl_a=120.0, dcl_a=40.0),
                   service="com.victronenergy.battery.B")
    res = assess(CFG, res.state, [PackInput(back.service, "serial:A", back, 1003.0)],
                 now_s=1003.0)
    assert len(res.missing) == 1
    assert res.missing[0].ccl_a == 80.0 and res.missing[0].dcl_a == 40.0
    # Healthy again: merged, and nothing is remembered any more.
    healthy = replace(pack("A", ccl_a=120.0), service=back.service)
    res = assess(CFG, res.state, [PackInput(back.service, "serial:A", healthy, 1004.0)],
                 now_s=1004.0)
    assert len(res.healthy) == 1 and res.missing == () and res.state.departed == {}


def test_unhealthy_pack_counts_with_its_last_good_values() -> None:
    good = pack("A", max_cell_v=3.50, ccl_a=100.0)
    state = assess(CFG, RosterState(), [inp(good, 1000.0)], now_s=1000.0).state
    worse = pack("A", max_cell_v=3.40, ccl_a=50.0, dcl_a=None)
    res = assess(CFG, state, [inp(worse, 1001.0, connected=0)], now_s=1001.0)
    (m,) = res.missing
    assert m.max_cell_v == 3.50 and m.ccl_a == 50.0 and m.dcl_a == 150.0


def test_assess_does_not_change_the_state_it_is_given() -> None:
    snap = at_rest("A")
    state = assess(CFG, RosterState(), [inp(snap, 1000.0)], now_s=1000.0,
                   measured_current_a=30.0).state
    before = (dict(state.watches), dict(state.health), dict(state.last_good))
    assess(CFG, state, [inp(snap, 1001.0)], now_s=1001.0, measured_current_a=30.0,
           departures=[Departure(snap.service, "serial:A", snap)])
    assert (dict(state.watches), dict(state.health), dict(state.last_good)) == before


# ---------------------------------------------------------------- the measured bank current


def _dev(name: str, amps: float | None) -> DeviceCurrent:
    return DeviceCurrent(service=name, current_a=amps, connected=True)


def test_measured_current_comes_only_from_outside_the_packs() -> None:
    aux = AuxSnapshot(multi=_dev("vebus", 30.0), solar_chargers=(_dev("mppt", 20.0),),
                      dcload_shunts=(_dev("dc", 5.0),))
    assert measured_current(config(current={"source": "victron"}).current, aux) == 45.0
    shunts = AuxSnapshot(battery_shunts=(_dev("s", -7.0),))
    assert measured_current(config(current={"source": "smartshunt"}).current, shunts) == -7.0
    inverted = config(current={"source": "smartshunt", "invert_smartshunts": True}).current
    assert measured_current(inverted, shunts) == 7.0
    assert measured_current(config().current, aux) is None  # bms: no outside measurement
    broken = AuxSnapshot(multi=_dev("vebus", None))
    assert measured_current(config(current={"source": "victron"}).current, broken) is None


def test_a_service_back_under_the_same_name_starts_afresh() -> None:
    snap = at_rest("A")
    _, state = run(lambda now: ([inp(snap, now)], 30.0), 20)
    assert state.watches[snap.service].moving_s == pytest.approx(20.0)
    res = assess(CFG, state, [inp(snap, 1021.0)], now_s=1021.0, measured_current_a=30.0,
                 departures=[Departure(snap.service, "serial:A", snap)])
    assert res.state.watches[snap.service].moving_s == 0.0
    assert res.state.watches[snap.service].changed_s == 1021.0
    assert health_of(res, "A") is Health.ACTIVE and res.state.departed == {}


def test_frozen_event_says_how_much_current_the_pack_should_show() -> None:
    snaps = [at_rest(n) for n in "AB"]
    results, _ = run(lambda now: ([inp(s, now) for s in snaps], 24.0), 30)
    messages = [e.message for e in results[30].events]
    assert any("frozen (values unchanged for 30 s" in m and "(now 12.0 A)" in m
               for m in messages), messages


def test_shell_state_tells_alive_from_changed() -> None:
    from dbus_aggregate_batteries.shell.state import ServiceState

    svc = ServiceState(name="com.victronenergy.battery.A", owner=":1.5", first_seen_s=10.0)
    svc.apply_one("/Dc/0/Voltage", 53.2, 11.0)
    svc.changed.clear()  # a tick took the change
    svc.apply_one("/Dc/0/Voltage", 53.2, 20.0)  # the same value again: alive, not changed
    assert not svc.changed and svc.alive_s == 20.0
    svc.probe_failed = True
    svc.answered(35.0)  # an answered probe: alive, and no longer failed
    assert svc.alive_s == 35.0 and not svc.probe_failed and not svc.changed


@pytest.mark.parametrize("value", [0.5, 0.0, -5.0, 1001.0])
def test_frozen_current_outside_its_range_is_refused(value: float) -> None:
    from dbus_aggregate_batteries.config import ConfigError

    with pytest.raises(ConfigError, match="frozen_current_a"):
        config(fault={"frozen_current_a": value})


def test_a_pack_sharing_the_serial_of_one_that_left_does_not_wipe_its_memory() -> None:
    # Found by review: serial-less BMSes can share a fallback id.  B, on the bus all along,
    # used to count as A's return and erase A's remembered charge block (CCL rose, alarm
    # cleared).  Only a service that appears after the departure is a return.
    a = pack("A", allow_to_charge=0, ccl_a=0.0, max_cell_v=3.65)
    b = replace(pack("A", ccl_a=100.0), service="com.victronenergy.battery.B")
    both = [inp(a, 1000.0), inp(b, 1000.0)]
    state = assess(CFG, RosterState(), both, now_s=1000.0).state
    res = assess(CFG, state, [inp(b, 1001.0)], now_s=1001.0,
                 departures=[Departure(a.service, "serial:A", a)])
    for t in range(1002, 1010):
        res = assess(CFG, res.state, [inp(b, float(t))], now_s=float(t))
        assert len(res.healthy) == 1 and len(res.missing) == 1
        assert res.missing[0].blocks_charge and res.missing[0].max_cell_v == 3.65
    # A real return under a new tty (appearing after the departure) clears it.
    back = replace(pack("A"), service="com.victronenergy.battery.C")
    res = assess(CFG, res.state, [inp(b, 1010.0), inp(back, 1010.0)], now_s=1010.0)
    assert len(res.healthy) == 2 and res.missing == () and res.state.departed == {}
