"""Why each limit is what it is (pure).

A :class:`Reason` pairs a stable ``key`` (what binds: "cell", "share Battery 2", "block
Battery 1", ...) with the ``text`` shown to the owner ("cell Battery 1: C7 3.520 V (table)").
The text carries live numbers and changes every tick; the key changes only when another
constraint takes over, so the shell logs a change of key once instead of every tick.

Published like dbus-serialbattery does for one pack: ``/Info/ChargeLimitation`` (CCL),
``/Info/DischargeLimitation`` (DCL) and ``/Info/ChargeModeDebug`` (CVL; the driver's free-text
path shown under the charge mode, since ``/Info/ChargeMode`` already carries the mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dbus_aggregate_batteries.config import OwnLimitsConfig
from dbus_aggregate_batteries.core.limits import interpolate
from dbus_aggregate_batteries.core.model import Event, PackSnapshot, Severity

CVL_REASON_PATH = "/Info/ChargeModeDebug"
CCL_REASON_PATH = "/Info/ChargeLimitation"
DCL_REASON_PATH = "/Info/DischargeLimitation"


@dataclass(frozen=True, slots=True)
class Reason:
    """The binding constraint of one limit."""

    key: str
    text: str


NONE = Reason("", "")


@dataclass(frozen=True, slots=True)
class Reasons:
    """The binding constraint of CVL, CCL and DCL."""

    cvl: Reason = NONE
    ccl: Reason = NONE
    dcl: Reason = NONE


def tighter(value: float, reason: Reason, cap: float, cap_reason: Reason) -> tuple[float, Reason]:
    """min(value, cap), with the reason of whichever binds (the existing one on a tie)."""
    if cap < value:
        return cap, cap_reason
    return value, reason


# A new binding constraint is logged once it has held this long: two packs taking turns at
# binding (nearly equal limits and shares) must not log a line every tick.
REASON_SETTLE_S = 5.0


@dataclass(frozen=True, slots=True)
class ReasonLog:
    """What was logged last, and since when each current constraint has been binding."""

    logged: Reasons = field(default_factory=Reasons)
    since_s: tuple[float, float, float] = (0.0, 0.0, 0.0)


def reason_events(
    log: ReasonLog, old: Reasons, new: Reasons, now_s: float
) -> tuple[ReasonLog, tuple[Event, ...]]:
    """One INFO event per limit whose binding constraint changed and has held for a while."""
    logged_now = log.logged
    if (
        new.cvl.key == old.cvl.key == logged_now.cvl.key
        and new.ccl.key == old.ccl.key == logged_now.ccl.key
        and new.dcl.key == old.dcl.key == logged_now.dcl.key
    ):
        # The usual tick: every constraint is the one already logged; nothing to change.
        return log, ()
    events = []
    logged = []
    since = []
    for name, before, after, was_logged, started in zip(
        ("CVL", "CCL", "DCL"),
        (old.cvl, old.ccl, old.dcl),
        (new.cvl, new.ccl, new.dcl),
        (log.logged.cvl, log.logged.ccl, log.logged.dcl),
        log.since_s,
        strict=True,
    ):
        if after.key != before.key:
            started = now_s
        if after.key != was_logged.key and now_s - started >= REASON_SETTLE_S:
            events.append(
                Event(Severity.INFO, f"reason-{name.lower()}", f"{name} now set by: {after.text}")
            )
            was_logged = after
        logged.append(was_logged)
        since.append(started)
    return ReasonLog(Reasons(*logged), (since[0], since[1], since[2])), tuple(events)


def block_reason(
    packs: Sequence[PackSnapshot], direction: str, *, missing: bool = False
) -> Reason | None:
    """"<pack> blocks charge" (or discharge) for the first pack that blocks, or None."""
    for pack in packs:
        blocks = pack.blocks_charge if direction == "charge" else pack.blocks_discharge
        if blocks:
            extra = " (last known, missing)" if missing else ""
            return Reason(
                f"block {direction} {pack.service}", f"{pack.label} blocks {direction}{extra}"
            )
    return None


def bms_current_reason(
    rule: str,
    healthy: Sequence[PackSnapshot],
    missing: Sequence[PackSnapshot],
    direction: str,
    value: float,
) -> Reason:
    """Why the min x N or sum rule gave ``value`` (blocks are explained by the caller)."""
    name = "CCL" if direction == "charge" else "DCL"

    def limit(p: PackSnapshot) -> float | None:
        return p.ccl_a if direction == "charge" else p.dcl_a

    reporting = [p for p in healthy if limit(p) is not None]
    if not reporting:
        return Reason(f"none {name}", f"no healthy pack reports a {name}")
    n = len(reporting)
    if rule == "sum":
        return Reason(f"sum {name}", f"sum of {n} pack {name}s")
    lowest = min(reporting, key=lambda p: limit(p) or 0.0)
    low = limit(lowest) or 0.0
    for p in missing:
        last = limit(p)
        if last is not None and last * n < low * n and last * n <= value + 1e-9:
            return Reason(
                f"min {name} {p.service}",
                f"{p.label} last {name} {last:.0f} A x {n} packs (missing, min x N)",
            )
    return Reason(
        f"min {name} {lowest.service}", f"{lowest.label} {name} {low:.0f} A x {n} packs (min x N)"
    )


def bms_cvl_reason(
    healthy: Sequence[PackSnapshot], missing: Sequence[PackSnapshot], cvl: float | None
) -> Reason:
    """Which pack's CVL the bank follows."""
    if cvl is None:
        return Reason("cvl-none", "no pack reports a CVL")
    # Runs every tick: two plain loops, no list of (pack, where) pairs.
    for packs, where in ((healthy, ""), (missing, ", missing")):
        for p in packs:
            if p.cvl_v is not None and abs(p.cvl_v - cvl) < 1e-9:
                floating = " in float" if p.in_float else ""
                return Reason(f"cvl {p.service}", f"{p.label} CVL {cvl:.2f} V{floating}{where}")
    return Reason("cvl", f"CVL {cvl:.2f} V")


def derated(reason: Reason, healthy: int, expected: int) -> Reason:
    """The reason of an own-mode limit scaled by healthy/expected (fault policy derate)."""
    return Reason(
        f"derate {reason.key}",
        f"{reason.text}; x {healthy}/{expected}: {healthy} of {expected} packs healthy (derate)",
    )


def _highest(packs: Sequence[PackSnapshot], high: bool) -> str:
    with_cell = [p for p in packs if (p.max_cell_v if high else p.min_cell_v) is not None]
    if not with_cell:
        return "?"
    if high:
        p = max(with_cell, key=lambda q: q.max_cell_v or 0.0)
        return f"{p.label}: {p.max_cell_id}" if p.max_cell_id else p.label
    p = min(with_cell, key=lambda q: q.min_cell_v or 0.0)
    return f"{p.label}: {p.min_cell_id}" if p.min_cell_id else p.label


def own_current_reasons(
    cfg: OwnLimitsConfig,
    packs: Sequence[PackSnapshot],
    max_cell_v: float | None,
    min_cell_v: float | None,
    discharge_latched: bool,
) -> tuple[Reason, Reason]:
    """Why own-mode CCL and DCL (before temperature and pack limits) are what they are."""
    ccl = block_reason(packs, "charge")
    if ccl is None:
        if max_cell_v is None:
            ccl = Reason("no-cells", "no cell voltages")
        elif interpolate(cfg.charge_table, max_cell_v) >= 1.0:
            ccl = Reason(
                "own-max", f"limits.own.max_charge_current_a {cfg.max_charge_current_a:g} A"
            )
        else:
            ccl = Reason("cell", f"cell {_highest(packs, True)} {max_cell_v:.3f} V (table)")
    dcl = block_reason(packs, "discharge")
    if dcl is None:
        if discharge_latched:
            release = cfg.min_cell_voltage_v + cfg.min_cell_hysteresis_v
            dcl = Reason(
                "latch",
                f"discharged: latched until the lowest cell is above {release:.3f} V"
                + (f" (now {min_cell_v:.3f} V)" if min_cell_v is not None else ""),
            )
        elif min_cell_v is None:
            dcl = Reason("no-cells", "no cell voltages")
        elif interpolate(cfg.discharge_table, min_cell_v) >= 1.0:
            dcl = Reason(
                "own-max",
                f"limits.own.max_discharge_current_a {cfg.max_discharge_current_a:g} A",
            )
        else:
            dcl = Reason("cell", f"cell {_highest(packs, False)} {min_cell_v:.3f} V (table)")
    return ccl, dcl


def own_cvl_reason(
    phase_active: bool,
    target_cell_v: float,
    n_cells: int | None,
    high_cell: bool,
    packs: Sequence[PackSnapshot],
) -> Reason:
    """Why the own-mode CVL is what it is."""
    if not n_cells:
        return Reason("cvl-none", "cell count unknown")
    if high_cell:
        return Reason("cvl-dynamic", f"dynamic CVL: cell {_highest(packs, True)} too high")
    if phase_active:
        return Reason("cvl-balancing", f"balancing {target_cell_v:.3f} V x {n_cells} cells")
    return Reason("cvl-charge", f"charge voltage {target_cell_v:.3f} V x {n_cells} cells")
