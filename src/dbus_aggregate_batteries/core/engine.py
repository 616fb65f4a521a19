"""One tick of the pure core: packs and auxiliary inputs in, published values and events out.

The shell calls :func:`step` once per tick with the healthy packs' snapshots, the last known
snapshots of packs that are missing or stale, the auxiliary devices, monotonic time and
today's date.  Nothing here touches D-Bus, the clock, files or logging.

Degraded operation (fewer healthy packs than expected, or any pack missing/stale):
- the merge uses the healthy packs only;
- ``policy: zero`` publishes CCL = DCL = 0;
- ``policy: derate`` computes the limits from the healthy packs, keeps every missing pack's
  last known limit in the minimum (so a pack that disappears can never make a limit rise) and
  scales own-mode limits by healthy/expected;
- with no healthy pack at all, CCL = 0 and CVL holds its last value; for ``grace_s`` the DCL
  stays at the lowest last known DCL of a single pack (a driver restart must not shut down
  inverters in island mode, which stop at DCL 0), then DCL = 0;
- /Alarms/BmsCable is raised (1 = warning while degraded, 2 = alarm with no healthy pack).

Before any CVL was ever known (no pack has been valid since start) CVL is NO_DATA_CVL_V (0 V):
a valid number keeps the service the system's BMS, and no charger charges towards 0 V
whatever the cell count or chemistry (docs/failure-modes.md says why not None).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date

from dbus_aggregate_batteries.config import (
    BmsLimitsConfig,
    Config,
    CurrentConfig,
    OwnLimitsConfig,
    ShareConfig,
    SocConfig,
    TemperatureConfig,
)
from dbus_aggregate_batteries.core.aggregate import Merged, merge_packs
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
from dbus_aggregate_batteries.core.history import (
    HistoryState,
    advance_history,
    history_values,
)
from dbus_aggregate_batteries.core.limits import (
    CurrentLimits,
    bms_current_limits,
    bms_cvl,
    own_current_limits,
    update_discharge_latch,
)
from dbus_aggregate_batteries.core.model import AuxSnapshot, Event, PackSnapshot, Severity
from dbus_aggregate_batteries.core.reasons import (
    CCL_REASON_PATH,
    CVL_REASON_PATH,
    DCL_REASON_PATH,
    Reason,
    ReasonLog,
    Reasons,
    block_reason,
    bms_current_reason,
    bms_cvl_reason,
    derated,
    own_current_reasons,
    own_cvl_reason,
    reason_events,
    tighter,
)
from dbus_aggregate_batteries.core.share import ShareState, step_share
from dbus_aggregate_batteries.core.soc import CounterState, SocOutput, step_counter
from dbus_aggregate_batteries.core.temperature import apply_derating, bank_temperatures, derate
from dbus_aggregate_batteries.core.venus import ALARM_PATHS, Value

BMS_CABLE_INDEX = ALARM_PATHS.index("/Alarms/BmsCable")
LOW_VOLTAGE_INDEX = ALARM_PATHS.index("/Alarms/LowVoltage")
HIGH_VOLTAGE_INDEX = ALARM_PATHS.index("/Alarms/HighVoltage")
# CVL while no CVL was ever known: the only voltage safe for any cell count and chemistry.
NO_DATA_CVL_V = 0.0


@dataclass(frozen=True, slots=True)
class _Settings:
    """The config values a tick reads, taken from the config once per Config.

    The tick runs once a second on cold caches, where each ``cfg.limits.x.y`` chain costs
    several cache misses (a pydantic model's attribute goes through its ``__getattr__`` hook
    and the type's lookup); a slotted field here is one read.
    """

    cfg: Config  # the config these were taken from (identity decides reuse)
    own_mode: bool
    soc: SocConfig
    soc_own: bool
    max_gap_s: float
    current: CurrentConfig
    own: OwnLimitsConfig
    bms: BmsLimitsConfig
    bms_currents: str
    share: ShareConfig
    temperature: TemperatureConfig
    temperature_own: bool
    temperature_bms_cap: bool
    policy: str
    grace_s: float
    cap_c: float | None
    cap_d: float | None
    cap_c_reason: Reason
    cap_d_reason: Reason
    shadow: bool
    send_cell_voltages: bool

    @staticmethod
    def of(cfg: Config) -> _Settings:
        """Take the values from ``cfg``."""
        limits = cfg.limits
        cap_c, cap_d = limits.max_charge_current_a, limits.max_discharge_current_a
        return _Settings(
            cfg=cfg,
            own_mode=limits.mode == "own",
            soc=cfg.soc,
            soc_own=cfg.soc.source == "own",
            max_gap_s=cfg.soc.max_gap_s,
            current=cfg.current,
            own=limits.own,
            bms=limits.bms,
            bms_currents=limits.bms.currents,
            share=limits.share,
            temperature=limits.temperature,
            temperature_own=limits.temperature.own,
            temperature_bms_cap=limits.temperature.bms_cap,
            policy=cfg.fault.policy,
            grace_s=cfg.fault.grace_s,
            cap_c=cap_c,
            cap_d=cap_d,
            # The cap reasons' texts are fixed by the config: formatted once (unused if None).
            cap_c_reason=Reason("cap", f"limits.max_charge_current_a {cap_c:g} A")
            if cap_c is not None else Reason("cap", ""),
            cap_d_reason=Reason("cap", f"limits.max_discharge_current_a {cap_d:g} A")
            if cap_d is not None else Reason("cap", ""),
            shadow=cfg.publish.mode == "shadow",
            send_cell_voltages=cfg.publish.send_cell_voltages,
        )


@dataclass(frozen=True, slots=True)
class EngineState:
    """Everything the core remembers between ticks (the shell persists parts of it)."""

    counter: CounterState = field(default_factory=CounterState)
    balancing: BalancingState = field(default_factory=BalancingState)
    feed_in: FeedInState = field(default_factory=FeedInState)
    discharge_latched: bool = False
    high_cell: bool = False
    degraded: bool = False
    last_cvl_v: float | None = None
    no_healthy_since_s: float | None = None
    history: HistoryState = field(default_factory=HistoryState)
    cvl_regulator: CvlRegulator = field(default_factory=CvlRegulator)
    share: ShareState = field(default_factory=ShareState)
    reasons: Reasons = field(default_factory=Reasons)
    reason_log: ReasonLog = field(default_factory=ReasonLog)
    # Derived from the config, not state: kept here so that it is taken once per Config.
    settings: _Settings | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Limits:
    """The three values DVCC acts on; never None (CVL is NO_DATA_CVL_V until one is known)."""

    cvl_v: float
    ccl_a: float
    dcl_a: float


@dataclass(frozen=True, slots=True)
class StepResult:
    """Output of one tick."""

    state: EngineState
    values: dict[str, Value]
    limits: Limits
    merged: Merged
    events: tuple[Event, ...]
    feed_in_request: int | None = None
    reasons: Reasons = field(default_factory=Reasons)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _cell_path_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "", label) or "Pack"


def _charge_mode(own_mode: bool, packs: Sequence[PackSnapshot], state: EngineState) -> str:
    if own_mode:
        if state.high_cell:
            return "Dynamic CVL"
        if state.balancing.phase is BalancePhase.ACTIVE:
            return "Balancing"
        if state.balancing.phase is BalancePhase.HOLD:
            return "Balanced (holding)"
        return "Normal"
    # One plain loop: a comprehension or generator is a function of its own to enter.
    first = None
    floating = 0
    for p in packs:
        if p.charge_mode:
            if first is None:
                first = p.charge_mode
            if p.in_float:
                floating += 1
    if first is None:
        return "Unknown"
    if floating == len(packs):
        return "Float"
    if floating:
        return f"Bulk/Absorption ({floating} of {len(packs)} in float)"
    return first.split(" ")[0]


def _installed_with_missing(
    installed_ah: float | None, missing: Sequence[PackSnapshot]
) -> float | None:
    if not missing:
        return installed_ah
    extra = sum(p.installed_capacity_ah or 0.0 for p in missing)
    if installed_ah is None:
        return extra or None
    return installed_ah + extra


def _derated_bms_limits(
    cfg: BmsLimitsConfig, healthy: Sequence[PackSnapshot], missing: Sequence[PackSnapshot]
) -> tuple[CurrentLimits, tuple[Event, ...]]:
    limits, events = bms_current_limits(cfg, healthy)
    if not missing or cfg.currents != "min_times_n":
        return limits, events
    # A missing pack may still be connected: its last known limit stays in the minimum.
    ccls = [p.ccl_a for p in missing if p.ccl_a is not None]
    dcls = [p.dcl_a for p in missing if p.dcl_a is not None]
    n = len([p for p in healthy if p.ccl_a is not None])
    m = len([p for p in healthy if p.dcl_a is not None])
    ccl = min([limits.ccl_a, *(c * n for c in ccls)]) if n else 0.0
    dcl = min([limits.dcl_a, *(d * m for d in dcls)]) if m else 0.0
    return CurrentLimits(ccl, dcl), events


def _temperature_limits(
    cfg: TemperatureConfig,
    packs: Sequence[PackSnapshot],
    currents: CurrentLimits,
    ccl_reason: Reason,
    dcl_reason: Reason,
    base: tuple[float, float],
) -> tuple[CurrentLimits, Reason, Reason]:
    (ccl, ccl_reason), (dcl, dcl_reason) = apply_derating(
        cfg, packs, (currents.ccl_a, ccl_reason),
        (currents.dcl_a, dcl_reason), base,
    )
    return CurrentLimits(ccl, dcl), ccl_reason, dcl_reason


def _temperature_alarm(settings: _Settings, packs: Sequence[PackSnapshot]) -> int | None:
    # Only while temperature derating is in use; invalid (hidden in the GUI) otherwise.
    if not (settings.temperature_own if settings.own_mode else settings.temperature_bms_cap):
        return None
    # A warning, not an alarm: the bank still discharges (see core/temperature.py).
    return 1 if bank_temperatures(packs) is None else 0


def step(
    cfg: Config,
    state: EngineState,
    healthy: Sequence[PackSnapshot],
    aux: AuxSnapshot,
    *,
    now_s: float,
    today: date,
    missing: Sequence[PackSnapshot] = (),
    expected_count: int = 0,
) -> StepResult:
    """Compute everything the virtual battery publishes for this tick."""
    settings = state.settings
    if settings is None or settings.cfg is not cfg:
        settings = _Settings.of(cfg)
    events: list[Event] = []
    merged = merge_packs(healthy)
    # Every pack the limits must respect: a missing one may still be connected.
    known = [*healthy, *missing]
    expected = max(expected_count, len(healthy) + len(missing))
    # No pack at all is degraded too: the owner must see that nothing is being merged.
    degraded = len(healthy) < expected or not healthy
    if degraded != state.degraded:
        events.append(
            Event(
                Severity.WARNING if degraded else Severity.INFO,
                "degraded" if degraded else "recovered",
                f"{len(healthy)} of {expected} packs healthy"
                + ("; limits derated" if degraded else "; normal operation"),
            )
        )

    current, ev = bank_current(settings.current, merged, aux)
    events.extend(ev)

    # Own Coulomb counter (always runs so switching source keeps a warm counter).
    counter, soc_out, ev = step_counter(
        state.counter,
        settings.soc,
        now_s=now_s,
        current_a=current.current_a,
        # A missing pack's capacity still counts: clamping the counter to the healthy packs'
        # capacity would lose charge for good when the pack comes back.
        installed_ah=_installed_with_missing(merged.installed_capacity_ah, missing),
        bms_soc_pct=merged.soc_pct,
        max_cell_v=merged.max_cell_v,
        min_cell_v=merged.min_cell_v,
    )
    if settings.soc_own:
        events.extend(ev)
    else:
        soc_out = SocOutput(
            soc_pct=merged.soc_pct,
            capacity_ah=merged.capacity_ah,
            consumed_ah=merged.consumed_ah,
            time_to_go_s=merged.time_to_go_s,
            time_to_full_s=None,
        )

    min_temp, max_temp = merged.min_cell_temp_c, merged.max_cell_temp_c
    history, ev = advance_history(
        state.history,
        bool(healthy),
        merged.voltage_v,
        current.current_a,
        soc_out.soc_pct,
        soc_out.consumed_ah,
        merged.min_cell_v,
        merged.max_cell_v,
        min_temp if min_temp is not None else merged.temperature_c,
        max_temp if max_temp is not None else merged.temperature_c,
        merged.alarms[LOW_VOLTAGE_INDEX],
        merged.alarms[HIGH_VOLTAGE_INDEX],
        now_s=now_s,
        max_gap_s=settings.max_gap_s,
    )
    events.extend(ev)

    balancing = state.balancing
    feed_in = state.feed_in
    regulator = state.cvl_regulator
    share_state = state.share
    feed_in_request: int | None = None
    high_cell = False
    latched = state.discharge_latched
    n_cells = merged.cells_per_battery
    # Plain loops over the packs here and below: a comprehension is a function to enter.
    differing = False  # merged.cells_per_battery is the lowest reported count, if any
    for p in healthy:
        if p.cells_per_battery is not None and p.cells_per_battery != n_cells:
            differing = True
    if differing:
        counts = {p.cells_per_battery for p in healthy if p.cells_per_battery is not None}
        events.append(
            Event(
                Severity.WARNING,
                "cell-counts",
                f"packs report different cell counts {sorted(counts)}: using {n_cells}",
            )
        )
    if settings.own_mode:
        own = settings.own
        mean_cell = (
            merged.voltage_v / n_cells if merged.voltage_v is not None and n_cells else None
        )
        balancing, target_cell, ev = step_balancing(
            balancing, own, today=today, mean_cell_v=mean_cell, cell_diff_v=merged.cell_diff_v
        )
        events.extend(ev)
        cvl: float | None = None
        if n_cells:
            # A missing pack may still be connected: its last known high cell keeps the CVL
            # down and PV feed-in off.
            cvl, high_cell = dynamic_cvl(
                known, own, target_cell * n_cells, n_cells
            )
            if own.cvl_control == "regulate":
                highs = [p.max_cell_v for p in known if p.max_cell_v is not None]
                regulator, regulated = regulate_cvl(
                    regulator,
                    own,
                    target_v=target_cell * n_cells,
                    n_cells=n_cells,
                    max_cell_v=max(highs) if highs else None,
                    bank_v=merged.voltage_v,
                    now_s=now_s,
                )
                if regulated is not None:
                    cvl = regulated
        if high_cell != state.high_cell:
            events.append(
                Event(
                    Severity.INFO,
                    "high-cell" if high_cell else "high-cell-end",
                    f"highest cell {merged.max_cell_id} at {merged.max_cell_v}: dynamic CVL"
                    if high_cell
                    else "no cell above the maximum any more",
                )
            )
        cvl_reason = own_cvl_reason(
            balancing.phase is not BalancePhase.IDLE, target_cell, n_cells, high_cell,
            known,
        )
        if not high_cell and cvl is not None and n_cells and cvl < target_cell * n_cells - 0.005:
            cvl_reason = Reason(
                "cvl-regulator",
                f"regulator: highest cell {merged.max_cell_id} {merged.max_cell_v or 0.0:.3f} V"
                f" held near {own.max_cell_voltage_v:.3f} V",
            )
        feed_in, feed_in_request, ev = step_feed_in(
            feed_in,
            enabled=own.disable_feed_in_on_high_cell,
            high_cell=high_cell,
            cell_diff_v=merged.cell_diff_v,
            cell_diff_max_v=own.cell_diff_max_v,
            current_setting=aux.feed_in_setting,
        )
        events.extend(ev)
        # A missing pack may still be connected: its last known extreme cells still count.
        max_cell = merged.max_cell_v
        min_cell = merged.min_cell_v
        if missing:
            highs = [p.max_cell_v for p in missing if p.max_cell_v is not None]
            lows = [p.min_cell_v for p in missing if p.min_cell_v is not None]
            if highs:
                max_cell = max([*highs, *([max_cell] if max_cell is not None else [])])
            if lows:
                min_cell = min([*lows, *([min_cell] if min_cell is not None else [])])
        latched = update_discharge_latch(latched, min_cell, own)
        currents, ev = own_current_limits(
            own, known, max_cell_v=max_cell, min_cell_v=min_cell,
            discharge_latched=latched,
        )
        events.extend(ev)
        ccl_reason, dcl_reason = own_current_reasons(
            own, known, max_cell, min_cell, latched
        )
        if settings.temperature_own:
            currents, ccl_reason, dcl_reason = _temperature_limits(
                settings.temperature, known, currents, ccl_reason, dcl_reason,
                (own.max_charge_current_a, own.max_discharge_current_a),
            )
        if own.pack_limits == "share":
            share_state, shared = step_share(
                share_state, settings.share, healthy, missing, now_s=now_s
            )
            ccl, dcl = currents.ccl_a, currents.dcl_a
            if shared.ccl_a is not None:
                ccl, ccl_reason = tighter(ccl, ccl_reason, shared.ccl_a, shared.ccl_reason)
            if shared.dcl_a is not None:
                dcl, dcl_reason = tighter(dcl, dcl_reason, shared.dcl_a, shared.dcl_reason)
            currents = CurrentLimits(ccl, dcl)
        own_share = currents.dcl_a / expected if expected else 0.0
        if degraded and expected:
            scale = len(healthy) / expected
            currents = CurrentLimits(currents.ccl_a * scale, currents.dcl_a * scale)
            ccl_reason = derated(ccl_reason, len(healthy), expected)
            dcl_reason = derated(dcl_reason, len(healthy), expected)
        low_voltage = own.min_cell_voltage_v * n_cells if n_cells else None
    else:
        cvl = bms_cvl(settings.bms, healthy)
        # A missing pack's last known CVL stays in the minimum (it may still be connected).
        missing_cvls = [p.cvl_v for p in missing if p.cvl_v is not None] if missing else []
        if missing_cvls:
            cvl = min([*missing_cvls, *([cvl] if cvl is not None else [])])
        cvl_reason = bms_cvl_reason(healthy, missing, cvl)
        own_share = 0.0
        if settings.bms_currents == "share":
            share_state, shared = step_share(
                share_state, settings.share, healthy, missing, now_s=now_s
            )
            currents = CurrentLimits(shared.ccl_a or 0.0, shared.dcl_a or 0.0)
            ccl_reason, dcl_reason = shared.ccl_reason, shared.dcl_reason
        else:
            currents, ev = _derated_bms_limits(settings.bms, healthy, missing)
            events.extend(ev)
            ccl_reason = bms_current_reason(
                settings.bms_currents, healthy, missing, "charge", currents.ccl_a
            )
            dcl_reason = bms_current_reason(
                settings.bms_currents, healthy, missing, "discharge", currents.dcl_a
            )
        blocked = block_reason(healthy, "charge")
        if blocked is not None:
            currents, ccl_reason = CurrentLimits(0.0, currents.dcl_a), blocked
        blocked = block_reason(healthy, "discharge")
        if blocked is not None:
            currents, dcl_reason = CurrentLimits(currents.ccl_a, 0.0), blocked
        if settings.temperature_bms_cap:
            currents, ccl_reason, dcl_reason = _temperature_limits(
                settings.temperature, known, currents, ccl_reason, dcl_reason,
                (currents.ccl_a, currents.dcl_a),
            )
        low_voltage = None  # the highest reported (the first of equals, as max())
        for p in healthy:
            v = p.battery_low_voltage_v
            if v is not None and (low_voltage is None or v > low_voltage):
                low_voltage = v

    if missing:
        # A block known from a missing pack's last values still holds: it may be connected.
        blocked = block_reason(missing, "charge", missing=True)
        if blocked is not None:
            currents, ccl_reason = CurrentLimits(0.0, currents.dcl_a), blocked
        blocked = block_reason(missing, "discharge", missing=True)
        if blocked is not None:
            currents, dcl_reason = CurrentLimits(currents.ccl_a, 0.0), blocked
    if degraded and settings.policy == "zero":
        currents = CurrentLimits(0.0, 0.0)
        ccl_reason = dcl_reason = Reason(
            "policy-zero", f"{len(healthy)} of {expected} packs healthy (policy zero)"
        )
    no_healthy_since = None
    if not healthy:
        no_healthy_since = state.no_healthy_since_s
        if no_healthy_since is None:
            no_healthy_since = now_s
        dcl_grace = 0.0
        if (
            settings.policy == "derate"
            and now_s - no_healthy_since < settings.grace_s
            and not any(p.blocks_discharge for p in missing)
        ):
            # At most one pack's last known BMS DCL; in own mode also at most one pack's
            # share of the own limit from the last known cells (and latch).
            last_dcls = [p.dcl_a for p in missing if p.dcl_a is not None]
            if last_dcls:
                dcl_grace = min(last_dcls)
                if settings.own_mode:
                    dcl_grace = min(dcl_grace, own_share)
                elif settings.temperature_bms_cap:
                    # The temperature cap holds through the grace: the packs' last known
                    # temperatures are all we have (own mode's share above already has it).
                    factor = derate(
                        settings.temperature.discharge_table, bank_temperatures(known),
                        "discharge table", unknown_is_worst=False,
                    ).factor
                    dcl_grace = min(dcl_grace, dcl_grace * factor)
        currents = CurrentLimits(0.0, dcl_grace)
        ccl_reason = Reason("no-healthy", "no healthy pack")
        dcl_reason = (
            Reason("grace", f"no healthy pack: one pack's last DCL for {settings.grace_s:g} s")
            if dcl_grace > 0.0
            else Reason("no-healthy", "no healthy pack")
        )
    ccl_a, dcl_a = currents.ccl_a, currents.dcl_a
    if settings.cap_c is not None:
        ccl_a, ccl_reason = tighter(ccl_a, ccl_reason, settings.cap_c, settings.cap_c_reason)
    if settings.cap_d is not None:
        dcl_a, dcl_reason = tighter(dcl_a, dcl_reason, settings.cap_d, settings.cap_d_reason)
    currents = CurrentLimits(ccl_a, dcl_a)
    cvl = _finite(cvl)
    if cvl is None:
        if state.last_cvl_v is None:
            cvl = NO_DATA_CVL_V
            cvl_reason = Reason("cvl-none", f"no CVL known yet: {NO_DATA_CVL_V:g} V")
        else:
            cvl = state.last_cvl_v
            cvl_reason = Reason("cvl-held", f"held at {cvl:.2f} V ({cvl_reason.text})")
    elif not healthy and state.last_cvl_v is not None:
        cvl = min(cvl, state.last_cvl_v)  # nothing live to follow: hold, never raise
        cvl_reason = Reason("cvl-held", f"held at {cvl:.2f} V (no healthy pack)")
    limits = Limits(cvl, _finite(currents.ccl_a) or 0.0, _finite(currents.dcl_a) or 0.0)
    reasons = Reasons(cvl_reason, ccl_reason, dcl_reason)
    reason_log, ev = reason_events(state.reason_log, state.reasons, reasons, now_s)
    events.extend(ev)
    shadow = settings.shadow
    if shadow:
        # Shadow mode controls nothing: the owner's feed-in setting is never written.
        feed_in, feed_in_request = state.feed_in, None

    new_state = EngineState(
        counter=counter,
        balancing=balancing,
        feed_in=feed_in,
        discharge_latched=latched,
        high_cell=high_cell,
        degraded=degraded,
        last_cvl_v=cvl,
        no_healthy_since_s=no_healthy_since,
        history=history,
        cvl_regulator=regulator,
        share=share_state,
        reasons=reasons,
        reason_log=reason_log,
        settings=settings,
    )
    values = _publish_values(
        settings.send_cell_voltages, merged, healthy, current.current_a, current.power_w, soc_out
    )
    values.update(history_values(history))
    alarms = list(merged.alarms)
    if degraded:
        level = 2 if not healthy else 1
        alarms[BMS_CABLE_INDEX] = max(alarms[BMS_CABLE_INDEX] or 0, level)
    for path, alarm in zip(ALARM_PATHS, alarms, strict=True):
        values[path] = alarm
    values.update(
        {
            # Shadow mode: without a valid /Info/MaxChargeVoltage systemcalc never takes this
            # service as a BMS; the limits it would set go to /Shadow/* instead.
            "/Info/MaxChargeVoltage": None if shadow else limits.cvl_v,
            "/Info/MaxChargeCurrent": None if shadow else limits.ccl_a,
            "/Info/MaxDischargeCurrent": None if shadow else limits.dcl_a,
            "/Info/BatteryLowVoltage": None if shadow else low_voltage,
            CVL_REASON_PATH: reasons.cvl.text,
            CCL_REASON_PATH: reasons.ccl.text,
            DCL_REASON_PATH: reasons.dcl.text,
            "/Alarms/BatteryTemperatureSensor": _temperature_alarm(settings, known),
            "/Info/ChargeMode": _charge_mode(settings.own_mode, healthy, new_state),
            "/Io/AllowToCharge": 0 if limits.ccl_a <= 0.0 else (merged.allow_to_charge or 1),
            "/Io/AllowToDischarge": 0 if limits.dcl_a <= 0.0 else (merged.allow_to_discharge or 1),
            "/Io/AllowToBalance": merged.allow_to_balance,
            "/System/NrOfBatteries": len(healthy),
            "/System/BatteriesParallel": len(healthy),
            "/System/NrOfModulesOnline": len(healthy),
            "/System/NrOfModulesOffline": expected - len(healthy),
        }
    )
    if shadow:
        values.update(
            {
                "/Shadow/MaxChargeVoltage": limits.cvl_v,
                "/Shadow/MaxChargeCurrent": limits.ccl_a,
                "/Shadow/MaxDischargeCurrent": limits.dcl_a,
                "/Shadow/BatteryLowVoltage": low_voltage,
            }
        )
    return StepResult(
        state=new_state,
        values=values,
        limits=limits,
        merged=merged,
        events=tuple(events),
        feed_in_request=feed_in_request,
        reasons=reasons,
    )


def _publish_values(
    send_cell_voltages: bool,
    merged: Merged,
    packs: Sequence[PackSnapshot],
    current_a: float | None,
    power_w: float | None,
    soc: SocOutput,
) -> dict[str, Value]:
    values: dict[str, Value] = {
        "/Dc/0/Voltage": merged.voltage_v,
        "/Dc/0/Current": current_a,
        "/Dc/0/Power": power_w,
        "/Dc/0/Temperature": merged.temperature_c,
        "/Soc": soc.soc_pct,
        "/Capacity": soc.capacity_ah,
        "/InstalledCapacity": merged.installed_capacity_ah,
        "/ConsumedAmphours": soc.consumed_ah,
        "/TimeToGo": soc.time_to_go_s,
        "/TimeToSoC/100": soc.time_to_full_s,
        "/System/MaxCellTemperature": merged.max_cell_temp_c,
        "/System/MaxTemperatureCellId": merged.max_temp_id,
        "/System/MinCellTemperature": merged.min_cell_temp_c,
        "/System/MinTemperatureCellId": merged.min_temp_id,
        "/System/MaxCellVoltage": merged.max_cell_v,
        "/System/MaxVoltageCellId": merged.max_cell_id,
        "/System/MinCellVoltage": merged.min_cell_v,
        "/System/MinVoltageCellId": merged.min_cell_id,
        "/System/NrOfCellsPerBattery": merged.cells_per_battery,
        "/System/NrOfModulesBlockingCharge": merged.blocking_charge,
        "/System/NrOfModulesBlockingDischarge": merged.blocking_discharge,
        "/Voltages/Sum": merged.voltages_sum_v,
        "/Voltages/Diff": merged.cell_diff_v,
        "/Balancing": merged.balancing,
    }
    if send_cell_voltages:
        for pack in packs:
            name = _cell_path_name(pack.label)
            for i, cell in enumerate(pack.cells, start=1):
                values[f"/Voltages/{name}_Cell{i}"] = cell
    for path, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            values[path] = None
    return values


def restore_state(
    counter_charge_ah: float | None,
    last_balanced: date | None,
    phase: BalancePhase = BalancePhase.IDLE,
    feed_in_saved: int | None = None,
    history: HistoryState | None = None,
) -> EngineState:
    """Rebuild the engine state from what the shell persisted."""
    return replace(
        EngineState(),
        counter=CounterState(counter_charge_ah, None),
        balancing=BalancingState(phase, last_balanced),
        feed_in=FeedInState(feed_in_saved),
        history=history if history is not None else HistoryState(),
    )
