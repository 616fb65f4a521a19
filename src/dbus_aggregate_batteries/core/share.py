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
- ``anticipated CCL_i``: the pack's CCL minus ``anticipate_s`` x the rate at which it has been
  falling (a decaying maximum of the observed fall rate), so that the bank limit is already
  down when the charger, which needs seconds to follow, gets there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from dbus_aggregate_batteries.config import ShareConfig
from dbus_aggregate_batteries.core.model import PackSnapshot
from dbus_aggregate_batteries.core.reasons import Reason

MAX_DT_S = 10.0  # a longer gap between ticks is not evidence of a trend or of a settled share
MIN_SHARE_OF_EQUAL = 0.25


@dataclass(frozen=True, slots=True)
class PackShare:
    """What the rule remembers about one pack between ticks."""

    charge: float | None = None  # estimated share of the bank charge current (0..1)
    discharge: float | None = None  # estimated share of the bank discharge current (0..1)
    ccl_a: float | None = None  # last seen limits, for the fall rate
    dcl_a: float | None = None
    ccl_fall_a_s: float = 0.0  # A/s (>= 0): how fast the CCL has been falling
    dcl_fall_a_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ShareState:
    """The rule's memory: per pack (by service name), the healthy set, the last tick time."""

    packs: Mapping[str, PackShare] = field(default_factory=dict)
    members: frozenset[str] = frozenset()
    last_s: float | None = None


@dataclass(frozen=True, slots=True)
class ShareLimits:
    """Bank limits from the rule; None = no pack reports that limit (no constraint known)."""

    ccl_a: float | None
    dcl_a: float | None
    ccl_reason: Reason
    dcl_reason: Reason


def _with(ps: PackShare, direction: str, share: float | None) -> PackShare:
    return replace(ps, charge=share) if direction == "charge" else replace(ps, discharge=share)


def _share(ps: PackShare, direction: str) -> float | None:
    return ps.charge if direction == "charge" else ps.discharge


def _renormalise(
    packs: dict[str, PackShare], left: set[str], remaining: set[str], direction: str
) -> None:
    shares = {k: _share(packs[k], direction) if k in packs else None for k in remaining}
    if not left or not remaining:
        return
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


def _fall_rate(old_limit: float | None, new_limit: float | None, old_rate: float, dt: float,
               hold_s: float) -> float:
    if old_limit is None or new_limit is None or dt <= 0.0:
        return old_rate if new_limit is not None else 0.0
    observed = max(0.0, (old_limit - new_limit) / dt)
    decayed = old_rate * math.exp(-dt / hold_s) if hold_s > 0.0 else 0.0
    return max(observed, decayed)


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
    keep = members | {p.service for p in missing}
    packs = {k: v for k, v in state.packs.items() if k in keep}
    for key in members:
        packs.setdefault(key, PackShare())
    left = set(state.members - members)
    for direction in ("charge", "discharge"):
        _renormalise(packs, left, set(members), direction)

    currents = [p.current_a for p in healthy]
    if healthy and all(c is not None for c in currents):
        total = sum(c for c in currents if c is not None)
        measuring = (
            "charge" if total >= cfg.min_current_a
            else "discharge" if total <= -cfg.min_current_a
            else None
        )
        if measuring is not None:
            for p in healthy:
                assert p.current_a is not None
                raw = min(1.0, max(0.0, p.current_a / total))
                old = _share(packs[p.service], measuring)
                # While a pack is missing the true total is unknown: shares may rise, never fall.
                tau = math.inf if missing else cfg.smoothing_s
                packs[p.service] = _with(packs[p.service], measuring, _smooth(old, raw, dt, tau))

    for p in healthy:
        old_ps = packs[p.service]
        packs[p.service] = replace(
            old_ps,
            ccl_a=p.ccl_a,
            dcl_a=p.dcl_a,
            ccl_fall_a_s=_fall_rate(old_ps.ccl_a, p.ccl_a, old_ps.ccl_fall_a_s, dt,
                                    cfg.anticipate_s),
            dcl_fall_a_s=_fall_rate(old_ps.dcl_a, p.dcl_a, old_ps.dcl_fall_a_s, dt,
                                    cfg.anticipate_s),
        )

    n = max(1, len(healthy))
    assumed = min(1.0, (1.0 + cfg.unmeasured_margin) / n)
    floor = MIN_SHARE_OF_EQUAL / n
    ccl, ccl_reason = _bank_limit(cfg, healthy, missing, packs, "charge", assumed, floor)
    dcl, dcl_reason = _bank_limit(cfg, healthy, missing, packs, "discharge", assumed, floor)
    new_state = ShareState(packs=packs, members=members, last_s=now_s)
    return new_state, ShareLimits(ccl, dcl, ccl_reason, dcl_reason)


def _bank_limit(
    cfg: ShareConfig,
    healthy: Sequence[PackSnapshot],
    missing: Sequence[PackSnapshot],
    packs: Mapping[str, PackShare],
    direction: str,
    assumed: float,
    floor: float,
) -> tuple[float | None, Reason]:
    name = "CCL" if direction == "charge" else "DCL"
    best: float | None = None
    reason = Reason(f"share-none-{name}", f"no pack reports a {name}")
    for p in [*healthy, *missing]:
        limit = p.ccl_a if direction == "charge" else p.dcl_a
        if limit is None:
            continue
        ps = packs.get(p.service, PackShare())
        share = _share(ps, direction)
        measured = share is not None
        share = max(floor, share) if share is not None else assumed
        fall = ps.ccl_fall_a_s if direction == "charge" else ps.dcl_fall_a_s
        anticipated = max(0.0, limit - fall * cfg.anticipate_s)
        bank = anticipated / share * (1.0 - cfg.headroom)
        if best is None or bank < best:
            best = bank
            notes = []
            if not measured:
                notes.append("assumed")
            if anticipated < limit:
                notes.append(f"falling, {anticipated:.0f} A expected")
            if p in missing:
                notes.append("last known, missing")
            extra = f" ({', '.join(notes)})" if notes else ""
            reason = Reason(
                f"share {p.service}",
                f"{p.label} {name} {limit:.0f} A at {share * 100:.0f} % share{extra}",
            )
    return best, reason
