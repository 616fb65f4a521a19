"""The ``share`` currents rule (pure): keep every pack inside its own CCL/DCL.

Parallel packs do not split the current equally (resistance, cables, state of charge), so
"lowest pack limit x N" lets the pack with the largest share exceed its own limit while the
bank total is still allowed.  This rule sets the bank limit to the largest bank current at
which no pack exceeds its own limit:

    bank CCL = (1 - headroom) x min over packs of  anticipated CCL_i / share_i

- ``share_i``: the pack's measured share of the bank charge (discharge) current, I_i / sum I,
  clamped to 0..1 and never taken below ``0.25 / N`` (a pack taking nothing now may take
  current later).  It is measured only while every healthy pack reports a current and the
  summed current is at least ``min_current_a`` in that direction; otherwise the last estimate
  is carried.  A rising share is taken at once (the limit falls at once); a falling share is
  smoothed with the time constant ``smoothing_s`` (the limit rises slowly).  While a pack is
  missing, the healthy packs' sum is not the bank current, so shares may only rise.
- Before a pack's share was ever measured (start, a pack that joined), its share is assumed to
  be ``(1 + unmeasured_margin) / N`` (at most 1), and the reason says "assumed".
- A pack that leaves the healthy set: the remaining packs' measured shares are renormalised to
  sum to 1 in the same tick (its current goes to them), so the limit falls at once.  If some
  remaining pack was never measured, all remaining ones fall back to the assumed share.  A
  missing pack that may still be connected keeps its own constraint from its last limit and
  last share.
- The bank limit falls at once and rises with the time constant ``rise_s``.
- ``anticipated CCL_i``: the pack's CCL minus ``anticipate_s`` x the rate at which it has been
  falling steadily over the last few seconds (see :func:`fall_rate`: a ramp is projected,
  a single step or a wobble is not), so that the bank limit is already down when the charger,
  which needs seconds to follow, gets there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dbus_aggregate_batteries.config import ShareConfig
from dbus_aggregate_batteries.core.model import PackSnapshot
from dbus_aggregate_batteries.core.reasons import Reason

MAX_DT_S = 10.0  # a longer gap between ticks is not evidence of a trend or of a settled share
MIN_SHARE_OF_EQUAL = 0.25
# A limit's trend is judged over this window: long enough for a few driver updates (about one
# a second), short enough to catch a ramp within a few seconds.
TREND_WINDOW_S = 4.0


@dataclass(frozen=True, slots=True)
class PackShare:
    """What the rule remembers about one pack between ticks."""

    charge: float | None = None  # estimated share of the bank charge current (0..1)
    discharge: float | None = None  # estimated share of the bank discharge current (0..1)
    # (time, limit) samples of the last TREND_WINDOW_S, for the trend (frozen while missing)
    ccl_history: tuple[tuple[float, float], ...] = ()
    dcl_history: tuple[tuple[float, float], ...] = ()


_NO_SHARE = PackShare()  # a pack new to the rule (frozen: one instance serves all)


@dataclass(frozen=True, slots=True)
class ShareState:
    """The rule's memory: per pack (by service name), the healthy set, the last tick time."""

    packs: Mapping[str, PackShare] = field(default_factory=dict)
    members: frozenset[str] = frozenset()
    last_s: float | None = None
    ccl_a: float | None = None  # the rule's last bank limits, for the smoothed rise
    dcl_a: float | None = None


@dataclass(frozen=True, slots=True)
class ShareLimits:
    """Bank limits from the rule; None = no pack reports that limit (no constraint known)."""

    ccl_a: float | None
    dcl_a: float | None
    ccl_reason: Reason
    dcl_reason: Reason


def _with(ps: PackShare, direction: str, share: float | None) -> PackShare:
    # Built directly: dataclasses.replace introspects the fields at every call (hot path).
    if direction == "charge":
        return PackShare(share, ps.discharge, ps.ccl_history, ps.dcl_history)
    return PackShare(ps.charge, share, ps.ccl_history, ps.dcl_history)


def _share(ps: PackShare, direction: str) -> float | None:
    return ps.charge if direction == "charge" else ps.discharge


def _renormalise(
    packs: dict[str, PackShare], left: set[str], remaining: set[str], direction: str
) -> None:
    if not left or not remaining:
        return
    shares = {k: _share(packs[k], direction) if k in packs else None for k in remaining}
    known = [s for s in shares.values() if s is not None]
    if len(known) != len(shares) or sum(known) <= 0.0:
        for k in remaining:
            if k in packs:
                packs[k] = _with(packs[k], direction, None)
        return
    total = sum(known)
    for k, s in shares.items():
        assert s is not None
        packs[k] = _with(packs[k], direction, min(1.0, s / total))


def _smooth(old: float | None, raw: float, dt: float, tau: float) -> float:
    if old is None or raw >= old or tau <= 0.0:
        return raw
    if math.isinf(tau):
        return old
    return old + (raw - old) * (1.0 - math.exp(-dt / tau))


def _history(
    old: tuple[tuple[float, float], ...], now_s: float, limit: float | None, window_s: float
) -> tuple[tuple[float, float], ...]:
    if limit is None or window_s <= 0.0:
        return ()
    if old and old[-1][0] < now_s:
        # The samples are in rising time order (each tick appends the newest and keeps only
        # older ones), so the kept ones are a suffix: drop the expired head, keep the rest.
        start = 0
        while start < len(old) and now_s - old[start][0] > window_s:
            start += 1
        return (*old[start:], (now_s, limit))
    return (*(h for h in old if now_s - h[0] <= window_s and h[0] < now_s), (now_s, limit))


def fall_rate(history: tuple[tuple[float, float], ...]) -> float:
    """How fast a limit has been falling steadily (A/s, >= 0) over its recorded window.

    The lower of the fall rates over the older and the newer half of the window: a ramp falls
    in both halves, while a single step, or a limit that wobbles with the pack's own current,
    does not, and is not projected (projecting a step would take the bank limit to 0 for no
    reason; a DCL of 0 stops island inverters).
    """
    if len(history) < 3:
        return 0.0
    (t0, l0), (t1, l1) = history[0], history[-1]
    if l0 <= l1:
        # Not lower at the end than at the start: the two halves cannot both fall, so the
        # result below would be 0.0 too.  The usual case (a steady limit), decided cheaply.
        return 0.0
    # The sample nearest the middle of the window (the first of equals), without a key
    # function: this runs for every pack and direction at every tick.
    centre = (t0 + t1) / 2.0
    tm, lm = history[1]
    best = abs(tm - centre)
    for t, lim in history[2:-1]:
        d = abs(t - centre)
        if d < best:
            best, tm, lm = d, t, lim
    if tm <= t0 or t1 <= tm:
        return 0.0
    return max(0.0, min((l0 - lm) / (tm - t0), (lm - l1) / (t1 - tm)))


def step_share(
    state: ShareState,
    cfg: ShareConfig,
    healthy: Sequence[PackSnapshot],
    missing: Sequence[PackSnapshot] = (),
    *,
    now_s: float,
) -> tuple[ShareState, ShareLimits]:
    """Update the share estimates with this tick's currents and compute the bank limits."""
    dt = 0.0 if state.last_s is None else min(MAX_DT_S, max(0.0, now_s - state.last_s))
    members = frozenset(p.service for p in healthy)
    if (
        members == state.members
        and len(members) == len(healthy)
        and state.packs.keys() == members
    ):
        # The usual tick (same packs as last tick, none remembered besides them): nothing to
        # drop, add or renormalise.  The dict keeps its order, as the general path would.
        packs = dict(state.packs)
        fused = True
    else:
        keep = members | {p.service for p in missing}
        packs = {k: v for k, v in state.packs.items() if k in keep}
        for key in members:
            if key not in packs:
                packs[key] = _NO_SHARE
        left = set(state.members - members)
        for direction in ("charge", "discharge"):
            _renormalise(packs, left, set(members), direction)
        # A service named twice must see its last update in both places: the bank limits
        # then come from the finished dict, as the plain definition does.
        fused = len(members) == len(healthy)

    currents = [p.current_a for p in healthy if p.current_a is not None]
    measuring: str | None = None
    total = 0.0
    if healthy and len(currents) == len(healthy):
        total = sum(currents)
        measuring = (
            "charge" if total >= cfg.min_current_a
            else "discharge" if total <= -cfg.min_current_a
            else None
        )
    # While a pack is missing the true total is unknown: shares may rise, never fall.
    tau = math.inf if missing else cfg.smoothing_s
    window = TREND_WINDOW_S if cfg.anticipate_s > 0.0 else 0.0
    n = max(1, len(healthy))
    assumed = min(1.0, (1.0 + cfg.unmeasured_margin) / n)
    floor = MIN_SHARE_OF_EQUAL / n
    ccl = _Binding(cfg, assumed, floor)
    dcl = _Binding(cfg, assumed, floor)
    # One new PackShare per pack and tick (the measured share and the limit histories), and
    # with services unique, each pack's constraints in the same pass over the packs.
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
        ps = PackShare(
            charge,
            discharge,
            _history(ps.ccl_history, now_s, p.ccl_a, window),
            _history(ps.dcl_history, now_s, p.dcl_a, window),
        )
        packs[p.service] = ps
        if fused:
            ccl.add(p, p.ccl_a, ps.charge, ps.ccl_history, False)
            dcl.add(p, p.dcl_a, ps.discharge, ps.dcl_history, False)
    if not fused:
        for p in healthy:
            ps = packs[p.service]
            ccl.add(p, p.ccl_a, ps.charge, ps.ccl_history, False)
            dcl.add(p, p.dcl_a, ps.discharge, ps.dcl_history, False)
    for p in missing:
        ps = packs.get(p.service, _NO_SHARE)
        ccl.add(p, p.ccl_a, ps.charge, ps.ccl_history, True)
        dcl.add(p, p.dcl_a, ps.discharge, ps.dcl_history, True)
    ccl_a = _rise(state.ccl_a, ccl.best, dt, cfg.rise_s)
    dcl_a = _rise(state.dcl_a, dcl.best, dt, cfg.rise_s)
    new_state = ShareState(packs=packs, members=members, last_s=now_s, ccl_a=ccl_a, dcl_a=dcl_a)
    return new_state, ShareLimits(ccl_a, dcl_a, ccl.reason("CCL"), dcl.reason("DCL"))


def _rise(old: float | None, new: float | None, dt: float, tau_s: float) -> float | None:
    # Falls at once; rises smoothed.  A pack's own limit often falls as its current rises (its
    # cells' voltage follows the current): an instant rise would overshoot it and oscillate.
    if old is None or new is None or new <= old or tau_s <= 0.0:
        return new
    return old + (new - old) * (1.0 - math.exp(-dt / tau_s))


class _Binding:
    """The lowest bank limit over the packs of one direction, and the pack that sets it."""

    __slots__ = ("anticipate_s", "assumed", "best", "binding", "floor", "keep")

    def __init__(self, cfg: ShareConfig, assumed: float, floor: float) -> None:
        self.anticipate_s = cfg.anticipate_s
        self.keep = 1.0 - cfg.headroom
        self.assumed = assumed
        self.floor = floor
        self.best: float | None = None
        # The binding pack's figures; its reason text is formatted once, after the loop.
        self.binding: tuple[PackSnapshot, float, float, bool, float, bool] | None = None

    def add(
        self,
        p: PackSnapshot,
        limit: float | None,
        share: float | None,
        history: tuple[tuple[float, float], ...],
        is_missing: bool,
    ) -> None:
        """One pack's constraint: its anticipated limit over its share (first pack on a tie)."""
        if limit is None:
            return
        measured = share is not None
        share = max(self.floor, share) if share is not None else self.assumed
        fall = fall_rate(history)
        anticipated = max(0.0, limit - fall * self.anticipate_s)
        bank = anticipated / share * self.keep
        if self.best is None or bank < self.best:
            self.best = bank
            self.binding = (p, limit, share, measured, anticipated, is_missing)

    def reason(self, name: str) -> Reason:
        """Why the bank limit is what it is."""
        if self.binding is None:
            return Reason(f"share-none-{name}", f"no pack reports a {name}")
        p, limit, share, measured, anticipated, is_missing = self.binding
        notes = []
        if not measured:
            notes.append("assumed")
        if anticipated < limit:
            notes.append(f"falling, {anticipated:.0f} A expected")
        if is_missing:
            notes.append("last known, missing")
        extra = f" ({', '.join(notes)})" if notes else ""
        return Reason(
            f"share {p.service}",
            f"{p.label} {name} {limit:.0f} A at {share * 100:.0f} % share{extra}",
        )
