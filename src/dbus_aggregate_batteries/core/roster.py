"""The pack roster (pure): which packs are merged, which are missing, what is remembered of them.

The shell gathers, once per tick, each pack service's snapshot and when it last showed a sign
of life (any signal, an answered scan or liveness probe), plus the bank current measured
outside the packs; it reports the services that left the bus.  :func:`assess` returns the
healthy packs, the missing packs with what is remembered of each, which packs to probe, the
events to log and the new :class:`RosterState`.

Rules (docs/failure-modes.md gives the physics and the tests):

- **Alive is not changed.**  A velib service only signals changes, and a BMS at rest or in
  float can hold every value to the last digit for hours.  Steady values are not a fault.
- **STALE**: the process does not answer.  A pack silent (no signal) for ``probe_after_s`` is
  probed with a ``GetValue``; no answer makes it STALE at once.  As a backstop, no sign of
  life at all for ``stale_after_s + probe_after_s`` is STALE too.
- **BMS_OFFLINE**: the driver says its BMS is gone (health.py).
- **FROZEN**: the measured values (voltage, current, SoC, cells, temperatures, Ah) have not
  changed while the bank visibly carried current for ``stale_after_s`` since the last
  change, counted leakily: a second without current takes back a quarter second, so sparse
  glitches in a current reading at rest never add up, and a load running more than a fifth
  of the time still gets a frozen pack caught.  The bank "visibly carries current" for a
  pack when the pack should carry at least ``frozen_current_a``: its capacity share of the
  bank current measured outside the packs (Multi + solar chargers +/- SmartShunts, or the
  battery SmartShunts), or its capacity share of the current that the other, visibly live
  packs report, or its own last reported current.  A pack in parallel shares the bus
  voltage, so it must carry its share, and a current measurement at that level moves; a
  pack that blocks that direction, or is full (charging) or empty (discharging), carries
  none, so it is not expected to move.
- **OFFLINE**: the service left the bus.  Its last healthy snapshot (else its last one) is
  remembered under its identity until the pack is healthy again; only a restart forgets it.
- A pack that is present but not healthy counts with the most restrictive of its current
  values, its last healthy snapshot and what was remembered when it left.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from dbus_aggregate_batteries.config import Config
from dbus_aggregate_batteries.core.health import Health, bms_health
from dbus_aggregate_batteries.core.model import Event, PackSnapshot, Severity, most_restrictive

# Near the top of charge one LFP pack's acceptance falls to ~0 A while emptier packs in
# parallel still take current; near empty the same holds for discharge.  Such a pack is not
# expected to show the bank's current.
FULL_SOC_PCT = 99.0
EMPTY_SOC_PCT = 1.0

# How fast time without current drains the count of time with current (see assess).
MOVING_DRAIN = 0.25

Fingerprint = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class PackInput:
    """One pack service as the shell sees it at this tick."""

    service: str
    identity: str
    snapshot: PackSnapshot
    alive_s: float  # last sign of life: a signal, an answered scan or probe, or discovery
    probe_failed: bool = False
    connected: object = 1  # raw /Connected


@dataclass(frozen=True, slots=True)
class Departure:
    """A pack service that left the bus since the last tick, with its last snapshot."""

    service: str
    identity: str
    snapshot: PackSnapshot


@dataclass(frozen=True, slots=True)
class Watch:
    """What the roster follows for one present pack service."""

    fingerprint: Fingerprint
    changed_s: float  # when the measured values last changed (or were first seen)
    moving_s: float = 0.0  # time the bank visibly carried this pack's current since then
    probed_s: float = -1e18  # when a liveness probe was last asked for
    seen_s: float = 0.0  # when the roster first saw this service (on the bus this time)


@dataclass(frozen=True, slots=True)
class Left:
    """What is remembered of a pack whose service left the bus."""

    snapshot: PackSnapshot
    service: str
    left_s: float


@dataclass(frozen=True, slots=True)
class RosterState:
    """Everything the roster remembers between ticks.  Never mutated: each tick makes a new one.

    ``last_good`` and ``watches`` are keyed by service name, ``departed`` by identity (a pack
    may come back under another tty), ``health`` by service name.
    """

    now_s: float | None = None
    watches: Mapping[str, Watch] = field(default_factory=dict)
    last_good: Mapping[str, PackSnapshot] = field(default_factory=dict)
    departed: Mapping[str, Left] = field(default_factory=dict)
    health: Mapping[str, Health] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RosterResult:
    """The roster's verdict for one tick."""

    healthy: tuple[PackSnapshot, ...]
    missing: tuple[PackSnapshot, ...]
    probe: tuple[str, ...]  # services to probe for life now
    state: RosterState
    events: tuple[Event, ...]

    @property
    def health(self) -> Mapping[str, Health]:
        """Health by service name (departed services stay OFFLINE)."""
        return self.state.health


def fingerprint(snap: PackSnapshot) -> Fingerprint:
    """The measured values: what must move when the pack carries current.

    Limits, alarms, ids and driver timers are left out: a driver whose BMS is gone can still
    recompute those.
    """
    fp: Fingerprint = _FINGERPRINT(snap)
    return fp


# One C-level call per pack and tick for the tuple below.
_FINGERPRINT = attrgetter(
    "voltage_v",
    "current_a",
    "power_w",
    "temperature_c",
    "soc_pct",
    "capacity_ah",
    "consumed_ah",
    "max_cell_v",
    "min_cell_v",
    "max_cell_temp_c",
    "min_cell_temp_c",
    "voltages_sum_v",
    "cells",
)


def _accepts(snap: PackSnapshot, charging: bool) -> bool:
    """Whether the pack can carry current in that direction (so it must show it)."""
    soc = snap.soc_pct
    if charging:
        full = soc is not None and soc >= FULL_SOC_PCT
        return not (snap.blocks_charge or snap.in_float or full)
    return not (snap.blocks_discharge or (soc is not None and soc <= EMPTY_SOC_PCT))


def _weights(packs: Sequence[PackInput]) -> dict[str, float]:
    """Capacity weights; equal weights unless every pack reports its capacity."""
    weights: dict[str, float] = {}
    for p in packs:
        cap = p.snapshot.installed_capacity_ah
        if cap is None or cap <= 0:
            return {q.service: 1.0 for q in packs}
        weights[p.service] = cap
    return weights


def expected_currents(
    packs: Sequence[PackInput],
    fresh: frozenset[str],
    measured_current_a: float | None,
) -> dict[str, float]:
    """The current (magnitude, A) each pack should be carrying by the evidence of this tick.

    ``fresh``: the services whose values changed recently (visibly live), the only ones whose
    currents may vouch for the bank moving.
    """
    weights = _weights(packs)
    measured = measured_current_a or 0.0
    # Which packs can take the measured current (only asked when there is one).
    accepts = (
        [_accepts(p.snapshot, measured > 0) for p in packs] if measured else [False] * len(packs)
    )
    takers = sum(weights[p.service] for p, ok in zip(packs, accepts, strict=True) if ok)
    # The fresh packs' reported currents and capacities, summed once; each pack then takes
    # its own part out to see what the others say.
    vouching = {p.service: p.snapshot.current_a or 0.0 for p in packs
                if p.service in fresh and p.snapshot.current_a is not None}
    peer_amps = sum(vouching.values())
    peer_weight = sum(weights[name] for name in vouching)
    out: dict[str, float] = {}
    for i, p in enumerate(packs):
        snap = p.snapshot
        weight = weights[p.service]
        best = abs(snap.current_a) if snap.current_a is not None else 0.0
        if measured and accepts[i]:
            best = max(best, abs(measured) * weight / takers)
        amps, others = peer_amps, peer_weight
        if p.service in vouching:
            amps -= vouching[p.service]
            others -= weight
        if others > 1e-9 and amps != 0.0 and _accepts(snap, amps > 0):
            best = max(best, abs(amps) / others * weight)  # the others' A per Ah, times ours
        out[p.service] = best
    return out


def assess(
    cfg: Config,
    state: RosterState,
    packs: Sequence[PackInput],
    *,
    now_s: float,
    measured_current_a: float | None = None,
    departures: Sequence[Departure] = (),
) -> RosterResult:
    """Decide every pack's health for this tick and what the engine merges or remembers."""
    fault = cfg.fault
    events: list[Event] = []
    health = dict(state.health)
    last_good = dict(state.last_good)
    departed = dict(state.departed)
    old_watches = state.watches
    left_now = {gone.service for gone in departures}

    for gone in departures:
        snap = last_good.pop(gone.service, None) or gone.snapshot
        departed[gone.identity] = Left(snap, gone.service, now_s)
        if health.get(gone.service) is not Health.OFFLINE:
            events.append(Event(
                Severity.WARNING, "pack-health",
                f"pack {snap.label} ({gone.service}) is offline: its service left the bus",
            ))
        health[gone.service] = Health.OFFLINE

    # Time since the last tick, capped: after a stall the bank's movement is unknown, and
    # counting the whole gap could call a pack frozen that had no chance to show a change.
    dt = 0.0
    if state.now_s is not None:
        dt = min(max(now_s - state.now_s, 0.0), 2.0 * cfg.publish.tick_s)

    watches: dict[str, Watch] = {}
    for p in packs:
        fp = fingerprint(p.snapshot)
        # A service that left and is back under the same name starts afresh.
        old = None if p.service in left_now else old_watches.get(p.service)
        if old is None or old.fingerprint != fp:
            watches[p.service] = Watch(
                fp, now_s, 0.0, old.probed_s if old is not None else -1e18,
                old.seen_s if old is not None else now_s,
            )
        else:
            watches[p.service] = old
    # The expected currents only count for a pack whose values did not change this tick: one
    # that just changed has a new watch (no time moving), so it cannot be frozen.  When every
    # pack changed (the usual tick of a live bank) they are not needed at all.  (A watch with
    # moving time needs them for its frozen text, should a clock ever step back to its change.)
    expected: dict[str, float] = {}
    if any(
        watches[p.service].changed_s != now_s or watches[p.service].moving_s > 0.0 for p in packs
    ):
        fresh = frozenset(
            p.service for p in packs
            if not p.probe_failed and now_s - watches[p.service].changed_s <= fault.probe_after_s
        )
        expected = expected_currents(packs, fresh, measured_current_a)

    healthy: list[PackSnapshot] = []
    missing: list[PackSnapshot] = []
    probe: list[str] = []
    present: set[str] = set()  # identities of unhealthy packs already in ``missing``
    for p in packs:
        watch = watches[p.service]
        if watch.changed_s != now_s:
            # A leaky count: time with current adds, time without drains it at a quarter of
            # that rate.  Brief current readings hours apart at rest never add up to a frozen
            # verdict (a false alarm stops the inverter), while a load that runs more than a
            # fifth of the time (a cycling fridge, a pump) still gets a frozen pack caught.
            moving = watch.moving_s + (dt if expected[p.service] >= fault.frozen_current_a
                                       else -MOVING_DRAIN * dt)
            watch = Watch(watch.fingerprint, watch.changed_s, max(moving, 0.0), watch.probed_s,
                          watch.seen_s)
        silent = now_s - p.alive_s
        if silent > fault.probe_after_s and now_s - watch.probed_s > fault.probe_after_s:
            probe.append(p.service)
            watch = Watch(watch.fingerprint, watch.changed_s, watch.moving_s, now_s, watch.seen_s)
        watches[p.service] = watch

        verdict, reason = _verdict(cfg, p, watch, silent, now_s, expected.get(p.service, 0.0))
        snap = p.snapshot
        if health.get(p.service) is not verdict:
            events.append(Event(
                Severity.INFO if verdict is Health.ACTIVE else Severity.WARNING,
                "pack-health",
                f"pack {snap.label} ({p.service}): {verdict.value} ({reason})",
            ))
            health[p.service] = verdict
        # A pack is the one that left only if it is that service, or (a tty rename) a service
        # that appeared after it left.  Another pack with the same serial that was on the bus
        # all along (serial-less BMSes share fallback ids) must not wipe the memory.
        gone_entry = departed.get(p.identity)
        returned = gone_entry is not None and (
            gone_entry.service == p.service or watch.seen_s >= gone_entry.left_s
        )
        left = gone_entry.snapshot if returned and gone_entry is not None else None
        if verdict is Health.ACTIVE:
            # Only a healthy return clears what was remembered when it left.
            if returned:
                departed.pop(p.identity, None)
            healthy.append(snap)
            last_good[p.service] = snap
        else:
            last = last_good.get(p.service)
            remembered = most_restrictive(last, left) if last is not None else left
            missing.append(most_restrictive(snap, remembered))
            if returned:
                present.add(p.identity)
    missing.extend(entry.snapshot for key, entry in departed.items() if key not in present)

    return RosterResult(
        healthy=tuple(healthy),
        missing=tuple(missing),
        probe=tuple(probe),
        state=RosterState(now_s, watches, last_good, departed, health),
        events=tuple(events),
    )


def _verdict(
    cfg: Config, p: PackInput, watch: Watch, silent: float, now_s: float, expected_a: float
) -> tuple[Health, str]:
    fault = cfg.fault
    if p.probe_failed:
        return Health.STALE, "did not answer a liveness probe"
    if silent > fault.stale_after_s + fault.probe_after_s:
        return Health.STALE, f"no sign of life for {silent:.0f} s"
    verdict, reason = bms_health(
        p.snapshot, connected=p.connected, needs_limits=cfg.limits.mode == "bms"
    )
    if verdict is not Health.ACTIVE:
        return verdict, reason
    if watch.moving_s >= fault.stale_after_s:
        return Health.FROZEN, (
            f"values unchanged for {now_s - watch.changed_s:.0f} s while the bank carried"
            f" current it should show (now {expected_a:.1f} A)"
        )
    return Health.ACTIVE, "ok"
