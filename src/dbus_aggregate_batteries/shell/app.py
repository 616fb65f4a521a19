"""The running service: wiring, the 1 s tick, persistence, shutdown (the imperative shell).

Per tick: snapshot the model -> pure roster (pack health) -> pure engine step -> publish the
diff -> log events -> persist when due.  This module is the one place that knows about time,
tasks and the bus together; all arithmetic and every health rule live in the pure modules.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

from dbus_aggregate_batteries import __version__
from dbus_aggregate_batteries.config import Config
from dbus_aggregate_batteries.core.charge import BalancePhase
from dbus_aggregate_batteries.core.current import measured_current
from dbus_aggregate_batteries.core.engine import EngineState, StepResult, restore_state, step
from dbus_aggregate_batteries.core.health import Health
from dbus_aggregate_batteries.core.history import COUNT_FIELDS, HistoryState, clear_history
from dbus_aggregate_batteries.core.model import (
    AuxSnapshot,
    DeviceCurrent,
    Event,
    PackSnapshot,
    Severity,
    device_current,
)
from dbus_aggregate_batteries.core.roster import Departure, PackInput, RosterState, assess
from dbus_aggregate_batteries.core.venus import SERVICE_PREFIX, Value, custom_name_problem
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.discovery import Monitor
from dbus_aggregate_batteries.shell.dispatch import Dispatcher
from dbus_aggregate_batteries.shell.export import BusItemService, NameTakenError
from dbus_aggregate_batteries.shell.persist import SavedState, StateFile
from dbus_aggregate_batteries.shell.settings import (
    LocalSettings,
    device_key,
    parse_instance,
)
from dbus_aggregate_batteries.shell.state import BusState, Kind, ServiceState

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1

_LEVELS = {
    Severity.DEBUG: logging.DEBUG,
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.ERROR: logging.ERROR,
}


@dataclass(slots=True)
class Counters:
    """Numbers for the periodic summary (and the tests)."""

    ticks: int = 0
    missed_ticks: int = 0
    tick_failures: int = 0
    consecutive_failures: int = 0
    bad_values: int = 0
    state_writes: int = 0
    published_changes: int = 0
    items_changed_signals: int = 0
    health: Mapping[str, Health] = field(default_factory=dict)


def identity_values(cfg: Config, custom_name: str, device_instance: int) -> dict[str, Value]:
    """The mandatory identity paths of a Venus OS service."""
    return {
        "/Mgmt/ProcessName": "dbus-aggregate-batteries",
        "/Mgmt/ProcessVersion": f"{__version__} (Python {sys.version.split()[0]})",
        "/Mgmt/Connection": "Virtual",
        "/DeviceInstance": device_instance,
        "/ProductId": cfg.publish.product_id,
        "/ProductName": cfg.publish.product_name,
        "/CustomName": custom_name,
        "/FirmwareVersion": __version__,
        "/HardwareVersion": "virtual",
        "/Serial": f"aggregate-{cfg.publish.service_suffix}",
        "/Connected": 1,
    }


class Application:
    """One aggregate battery service on one bus connection."""

    def __init__(
        self,
        cfg: Config,
        bus: _dbus.MessageBus,
        *,
        state_dir: str | Path,
        clock: Callable[[], float] = time.monotonic,
        today: Callable[[], date] | None = None,
        clock_rate: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.bus = bus
        self.name = SERVICE_PREFIX + cfg.publish.service_suffix
        self.clock = clock
        # Clock seconds per real second: the closed-loop simulator runs the service on a
        # scaled clock; waits are real, so they are divided by it.
        self.clock_rate = clock_rate
        self.today = today if today is not None else _LocalDate()
        self.state = BusState()
        # One message handler for the connection: the libraries call every handler for every
        # message, and hundreds of pack signals a second would pay for three.
        self.dispatcher = Dispatcher(bus)
        self.monitor = Monitor(
            bus, self.state, cfg, own_name=self.name, clock=clock, on_departed=self._departed,
            dispatcher=self.dispatcher,
        )
        self.service = BusItemService(
            bus, self.name, signals="both" if cfg.publish.properties_changed else "items",
            dispatcher=self.dispatcher,
        )
        self.state_file = StateFile(state_dir)
        self.engine = EngineState()
        self.counters = Counters()
        self.last_result: StepResult | None = None
        self.custom_name = cfg.publish.custom_name
        self.device_instance = cfg.publish.device_instance
        self.settings = LocalSettings(bus, spawn=self._spawn, dispatcher=self.dispatcher)
        self._settings_base = f"/Settings/Devices/{device_key(cfg.publish.service_suffix)}"
        self._tasks: set[asyncio.Task[None]] = set()
        # Per-cell voltages are only used by own-mode dynamic CVL and the cell republishing.
        self._with_cells = cfg.limits.mode == "own" or cfg.publish.send_cell_voltages
        self.stopping = asyncio.Event()
        self._deadline = 0.0  # clock time of the next tick (run())
        self._timer: asyncio.TimerHandle | None = None
        self.exit_code = EXIT_OK
        self.roster = RosterState()
        self._departures: list[Departure] = []
        self._bms_aux: AuxSnapshot | None = None
        self._bad_logged: set[tuple[str, str]] = set()
        self._saved: SavedState | None = None
        self._saved_at = -1e18
        self._history_cleared = False
        self._save_task: asyncio.Task[None] | None = None
        self._last_summary = 0.0
        self._last_tick_done = 0.0
        self.registered = False
        self._names_rejected = 0
        self._name_rejection_logged_s = -1e18

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Load state, discover packs, compute the first values, then claim the bus name."""
        saved = await asyncio.to_thread(self.state_file.load)
        if saved is not None:
            self._saved = saved
            self.engine = restore_state(
                saved.charge_ah,
                saved.last_balanced,
                BalancePhase(saved.balancing_phase),
                saved.feed_in_saved,
                saved.history,
            )
            log.info(
                "restored state: charge %s Ah, last balancing %s",
                saved.charge_ah, saved.last_balanced,
            )
        await self._load_identity()
        await self.monitor.start()
        await self._wait_for_packs()
        result = self.tick()
        values = {
            **identity_values(self.cfg, self.custom_name, self.device_instance),
            **result.values,
        }
        writable = {
            "/CustomName": self._custom_name_changed,
            "/History/Clear": self._history_clear,
        }
        for path, value in values.items():
            self.service.add_path(
                path, value, writable=path in writable, on_change=writable.get(path)
            )
        await self.service.register()
        self.registered = True
        self._last_tick_done = self.clock()
        log.info(
            "%s registered: %d pack(s), CVL %s V, CCL %.1f A, DCL %.1f A",
            self.name, result.merged.count,
            result.limits.cvl_v, result.limits.ccl_a, result.limits.dcl_a,
        )
        if self.cfg.publish.mode == "shadow":
            log.warning(
                "shadow mode: no limits are offered to DVCC (/Info/MaxCharge* invalid) and no "
                "setting is written; the limits it would set are on /Shadow/*"
            )

    async def _load_identity(self) -> None:
        """DeviceInstance and CustomName from localsettings (the instance may be bumped)."""
        if not await self.settings.connect():
            log.warning(
                "no localsettings service on this bus: using device instance %d from the config",
                self.device_instance,
            )
            return
        base = self._settings_base
        got = await self.settings.add_settings(
            {
                f"{base}/ClassAndVrmInstance": f"battery:{self.cfg.publish.device_instance}",
                f"{base}/CustomName": self.cfg.publish.custom_name,
            }
        )
        instance = parse_instance(got.get(f"{base}/ClassAndVrmInstance"))
        if instance is None:
            log.warning("localsettings gave no usable instance: using %d", self.device_instance)
        else:
            if instance != self.cfg.publish.device_instance:
                log.info("device instance %d assigned by localsettings (configured %d)",
                         instance, self.cfg.publish.device_instance)
            self.device_instance = instance
        name = got.get(f"{base}/CustomName")
        problem = custom_name_problem(name)
        if name is None:
            pass  # not returned: keep the configured name
        elif problem is None:
            assert isinstance(name, str)
            self.custom_name = name
        else:
            # Written by anyone who can reach localsettings; the configured name is safe.
            log.warning(
                "ignoring the custom name stored in localsettings (%s): using %r",
                problem, self.custom_name,
            )

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait_for_packs(self) -> None:
        """Do not publish limits until the bank is known: a restart must not start at CCL 0."""
        window = self.cfg.fault.startup_window_s
        expected = self.cfg.discovery.expected_count
        deadline = self.clock() + window
        while self.clock() < deadline:
            self.monitor.rescan_due(self.clock())
            packs = self.state.of_kind(Kind.PACK)
            complete = [
                p for p in packs if p.has_paths(("/Dc/0/Voltage", "/System/MaxCellVoltage"))
            ]
            candidates = self.state.of_kind(Kind.CANDIDATE)
            if expected and len(complete) >= expected:
                return
            if not expected and complete and not candidates and not self.monitor.scans_pending:
                return
            await asyncio.sleep(0.05)
        log.warning(
            "start-up window of %.0f s over with %d pack(s) found", window,
            len(self.state.of_kind(Kind.PACK)),
        )

    def _custom_name_changed(self, path: str, value: Value) -> bool:
        problem = custom_name_problem(value)
        if problem is not None:
            # One short line, and at most one a minute: any LAN client can write this path.
            now = self.clock()
            self._names_rejected += 1
            if now - self._name_rejection_logged_s >= 60.0:
                log.warning(
                    "SetValue %s rejected: %s (%d rejected so far)",
                    path, problem, self._names_rejected,
                )
                self._name_rejection_logged_s = now
            return False
        assert isinstance(value, str)
        self.custom_name = value
        log.info("custom name set to %r", value)
        if self.settings.available:
            self._spawn(self.settings.set(f"{self._settings_base}/CustomName", value))
        return True

    def _history_clear(self, path: str, value: Value) -> bool:
        # The GUI's "Clear history" button writes 1; anything else is refused (velib's 2).
        if value != 1 or isinstance(value, bool):
            log.warning("%s: refused write of %.20r (write 1 to clear the history)", path, value)
            return False
        self.engine = replace(self.engine, history=clear_history(self.engine.history))
        self._history_cleared = True
        log.info("bank history cleared on request")
        return True

    def _departed(self, svc: ServiceState) -> None:
        # Its last values are taken now (the service state is dropped); the roster decides
        # at the next tick what is remembered of it.
        if svc.kind is Kind.PACK:
            snap, _ = svc.snapshot(self.cfg.discovery.name_path, with_cells=self._with_cells)
            self._departures.append(Departure(svc.name, svc.identity, snap))

    # ------------------------------------------------------------------ one tick

    def tick(self) -> StepResult:
        """Run one cycle synchronously (no awaits: a tick can never interleave with another)."""
        now = self.clock()
        cfg = self.cfg
        self.monitor.rescan_due(now)
        packs: list[PackInput] = []
        services: dict[str, ServiceState] = {}
        for svc in self.state.of_kind(Kind.PACK):
            snap, bad = svc.snapshot(cfg.discovery.name_path, with_cells=self._with_cells)
            for item in bad:
                self.counters.bad_values += 1
                key = (svc.name, item.path)
                if key not in self._bad_logged:
                    self._bad_logged.add(key)
                    log.warning(
                        "%s: ignoring bad value %s at %s (%s); further ones are only counted",
                        svc.name, item.value, item.path, item.reason,
                    )
            services[svc.name] = svc
            packs.append(PackInput(
                svc.name, svc.identity, snap, svc.alive_s, svc.probe_failed,
                svc.values.get("/Connected", 1),
            ))
        aux = self._aux()
        departures, self._departures = self._departures, []
        roster = assess(
            cfg, self.roster, packs, now_s=now,
            measured_current_a=measured_current(cfg.current, aux), departures=departures,
        )
        self.roster = roster.state
        self.counters.health = roster.health
        for name in roster.probe:
            self.monitor.probe(services[name])
        self._log(roster.events)
        healthy, missing = roster.healthy, roster.missing

        result = step(
            cfg,
            self.engine,
            healthy,
            aux,
            now_s=now,
            today=self.today(),
            missing=missing,
            expected_count=cfg.discovery.expected_count,
        )
        self.engine = result.state
        self.last_result = result
        if result.feed_in_request is not None and self.settings.available:
            self._spawn(self.settings.write_feed_in(result.feed_in_request))
        self._log(result.events)
        if self.registered:
            changed = self.service.publish(result.values)
            self.counters.published_changes += changed
            if changed:
                self.counters.items_changed_signals += 1
        self.counters.ticks += 1
        self._persist_if_due(now, result)
        self._summary_if_due(now, result, len(healthy), len(healthy) + len(missing), healthy)
        self._last_tick_done = self.clock()
        return result

    @staticmethod
    def _log(events: tuple[Event, ...]) -> None:
        for event in events:
            log.log(_LEVELS[event.severity], "%s", event.message)

    def _aux(self) -> AuxSnapshot:
        feed_in = self.settings.feed_in
        if self.cfg.current.source == "bms":
            # Nothing but a setting that rarely changes: the same (frozen) value every tick.
            aux = self._bms_aux
            if aux is None or aux.feed_in_setting != feed_in:
                aux = self._bms_aux = AuxSnapshot(feed_in_setting=feed_in)
            return aux
        multis = self.state.of_kind(Kind.MULTI)
        return AuxSnapshot(
            feed_in_setting=feed_in,
            multi=device_current(multis[0].name, multis[0].values) if multis else None,
            solar_chargers=self._currents(Kind.SOLAR),
            battery_shunts=self._currents(Kind.BATTERY_SHUNT),
            dcload_shunts=self._currents(Kind.DCLOAD_SHUNT),
        )

    def _currents(self, kind: Kind) -> tuple[DeviceCurrent, ...]:
        return tuple(device_current(s.name, s.values) for s in self.state.of_kind(kind))

    # ------------------------------------------------------------------ persistence

    def saved_state(self) -> SavedState:
        """What would be written now."""
        e = self.engine
        return SavedState(
            charge_ah=e.counter.charge_ah,
            last_balanced=e.balancing.last_balanced,
            balancing_phase=e.balancing.phase.value,
            feed_in_saved=e.feed_in.saved_value,
            history=replace(e.history, last_s=None),
        )

    def _persist_if_due(self, now: float, result: StepResult) -> None:
        if self._save_task is not None and not self._save_task.done():
            return
        old = self._saved
        e = self.engine
        # The decision reads the engine's scalars directly: the SavedState (and its copy of
        # the history) is only built when a write may be due, not at every tick.
        urgent = self._history_cleared or old is None or (
            (e.balancing.last_balanced, e.balancing.phase.value, e.feed_in.saved_value)
            != (old.last_balanced, old.balancing_phase, old.feed_in_saved)
        )
        if not urgent and old is not None:
            installed = result.merged.installed_capacity_ah or 0.0
            moved = abs((e.counter.charge_ah or 0.0) - (old.charge_ah or 0.0))
            # A counted history event is saved without waiting for the charge to move (still
            # rate-limited below: a flapping alarm must not wear the flash).
            if moved < self.cfg.soc.save_every_fraction * installed and not _counts_changed(
                e.history, old.history
            ):
                return
            if now - self._saved_at < self.cfg.soc.min_save_interval_s:
                return
        want = self.saved_state()
        if want == old:
            return
        self._saved_at = now
        self._history_cleared = False
        self._save_task = asyncio.ensure_future(self._save(want))

    async def _save(self, want: SavedState) -> None:
        try:
            await asyncio.to_thread(self.state_file.save, want)
        except OSError as exc:
            log.error("cannot write state file %s: %s", self.state_file.path, exc)
            return
        self._saved = want
        self.counters.state_writes += 1

    async def save_now(self) -> None:
        """Write the state unconditionally (shutdown)."""
        if self._save_task is not None:
            await asyncio.gather(self._save_task, return_exceptions=True)
        await self._save(self.saved_state())

    # ------------------------------------------------------------------ logging

    def _summary_if_due(
        self, now: float, result: StepResult, healthy: int, known: int,
        packs: Sequence[PackSnapshot] = (),
    ) -> None:
        interval = self.cfg.service.summary_interval_s
        if interval <= 0 or now - self._last_summary < interval:
            return
        self._last_summary = now
        v = result.values
        shadow = self.cfg.publish.mode == "shadow"
        log.info(
            "packs %d/%d healthy | %s V %s A SoC %s %% | %sCVL %s V CCL %.1f A DCL %.1f A | "
            "cells %s..%s V | bad values %d, missed ticks %d, tick failures %d",
            healthy, max(known, self.cfg.discovery.expected_count),
            _fmt(v.get("/Dc/0/Voltage"), 2), _fmt(v.get("/Dc/0/Current"), 1),
            _fmt(v.get("/Soc"), 1), "SHADOW, would set " if shadow else "",
            _fmt(result.limits.cvl_v, 2), result.limits.ccl_a,
            result.limits.dcl_a, _fmt(v.get("/System/MinCellVoltage"), 3),
            _fmt(v.get("/System/MaxCellVoltage"), 3), self.counters.bad_values,
            self.counters.missed_ticks, self.counters.tick_failures,
        )
        r = result.reasons
        log.info("why: CVL %s | CCL %s | DCL %s", r.cvl.text, r.ccl.text, r.dcl.text)
        if shadow:
            log.info("packs' own BMS limits: %s", "; ".join(
                f"{p.label} CVL {_fmt(p.cvl_v, 2)} V CCL {_fmt(p.ccl_a, 1)} A "
                f"DCL {_fmt(p.dcl_a, 1)} A" for p in packs
            ) or "none")

    # ------------------------------------------------------------------ main loop

    async def run(self) -> int:
        """Tick on absolute monotonic deadlines until stopped; returns the exit code."""
        loop = asyncio.get_running_loop()
        watchdog_done = threading.Event()
        watchdog = threading.Thread(
            target=self._watchdog, args=(watchdog_done,), name="watchdog", daemon=True
        )
        watchdog.start()
        disconnect = asyncio.ensure_future(self._watch_bus())
        # Each tick is a plain timer callback that schedules the next: no task, future or
        # wait() per tick (the loop itself wakes for the timer either way).
        self._deadline = self.clock() + self.cfg.publish.tick_s
        self._timer = loop.call_later(self._delay(), self._on_deadline)
        try:
            await self.stopping.wait()
        finally:
            if self._timer is not None:
                self._timer.cancel()
            watchdog_done.set()
            disconnect.cancel()
        return self.exit_code

    def _delay(self) -> float:
        return max(self._deadline - self.clock(), 0.0) / self.clock_rate

    def _on_deadline(self) -> None:
        if self.stopping.is_set():
            return
        period = self.cfg.publish.tick_s
        now = self.clock()
        if now - self._deadline >= period:
            skipped = int((now - self._deadline) // period)
            self.counters.missed_ticks += skipped
            self._deadline += skipped * period
        self._deadline += period
        try:
            self.tick()
            self.counters.consecutive_failures = 0
        except Exception:
            self.counters.tick_failures += 1
            self.counters.consecutive_failures += 1
            log.exception("tick failed (%d in a row)", self.counters.consecutive_failures)
            if self.counters.consecutive_failures >= self.cfg.service.max_consecutive_failures:
                log.error("too many failed ticks: exiting so the supervisor restarts us")
                self.exit_code = EXIT_FAILURE
                self.stopping.set()
                return
        if not self.stopping.is_set():
            self._timer = asyncio.get_running_loop().call_later(
                self._delay(), self._on_deadline
            )

    def _watchdog(self, done: threading.Event) -> None:
        # A thread, not a task: a blocked event loop would never run a watchdog task, and a
        # frozen service leaves its last limits in force (systemcalc has no timeout).
        limit = self.cfg.service.watchdog_s
        while not done.wait(limit / 4):
            stalled = self.clock() - self._last_tick_done
            if stalled > limit:
                log.error("no tick completed for %.0f s: saving state and exiting", stalled)
                try:
                    self.state_file.save(self.saved_state())
                except OSError as exc:
                    log.error("cannot save state: %s", exc)
                logging.shutdown()
                os._exit(EXIT_FAILURE)

    async def _watch_bus(self) -> None:
        try:
            # Shielded: cancelling this watcher must not cancel the library's shared future.
            await asyncio.shield(self.bus.wait_for_disconnect())
        except Exception as exc:
            log.error("D-Bus connection failed: %s", exc)
        else:
            log.error("D-Bus connection lost")
        if not self.stopping.is_set():
            self.exit_code = EXIT_FAILURE
            self.stopping.set()

    async def shutdown(self) -> None:
        """Save state and release the name."""
        await self.save_now()
        await self.monitor.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self.settings.close()
        if self.bus.connected:
            try:
                await asyncio.wait_for(self.service.unregister(), 2.0)
            except (TimeoutError, _dbus.DBusCallError, Exception) as exc:
                log.debug("releasing the name failed: %s", exc)


class _LocalDate:
    """Today's local date, worked out again once a minute of wall time (or when it steps back).

    ``datetime.now()`` goes through the C library's localtime, which looks at the time zone
    file on every call; the date only matters for the history's day boundary, which may come
    up to a minute late.
    """

    __slots__ = ("_date", "_from", "_until")

    def __init__(self) -> None:
        self._date = date.min
        self._from = self._until = 0.0

    def __call__(self) -> date:
        now = time.time()
        if not self._from <= now < self._until:
            self._date = datetime.fromtimestamp(now).date()
            self._from, self._until = now, now + 60.0
        return self._date


def _counts_changed(new: HistoryState | None, old: HistoryState | None) -> bool:
    if new is None or old is None:
        return new is not old
    return _counts(new) != _counts(old)


_counts = operator.attrgetter(*COUNT_FIELDS)


def _fmt(value: object, places: int) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{places}f}"
    return "--"


async def serve(cfg: Config, bus_spec: str, state_dir: str | Path) -> int:
    """Connect, start, run until SIGTERM/SIGINT or a fatal fault; returns the exit code."""
    try:
        bus = await _dbus.connect(bus_spec)
    except Exception as exc:
        log.error("cannot connect to the %s bus: %s", bus_spec, exc)
        return EXIT_FAILURE
    app = Application(cfg, bus, state_dir=state_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.stopping.set)
    try:
        await app.start()
    except NameTakenError as exc:
        log.error("%s: is another instance running? exiting", exc)
        await _dbus.disconnect(bus)
        return EXIT_FAILURE
    log.info("running with %s", _dbus.LIBRARY)
    code = await app.run()
    await app.shutdown()
    await _dbus.disconnect(bus)
    log.info("stopped (exit code %d)", code)
    return code


def run_service(cfg: Config, *, bus: str, state_dir: str | None) -> int:
    """Entry point used by the CLI."""
    return asyncio.run(serve(cfg, bus, state_dir or cfg.service.state_dir))
