"""Discovery and the signal-fed model of the services we read (the D-Bus reading side).

Order matters (a scan must never miss or clobber a change): the NameOwnerChanged match comes
first, then ListNames; per service, its PropertiesChanged/ItemsChanged match rules (scoped to
the sender, so we never parse other services' traffic), then one GetItems whose reply does
not overwrite what was signalled while it was asked (a signal received before the request is
older than the reply: one sender's messages arrive in order).  A service whose mandatory paths
are missing (old serialbattery claims its name before creating paths) is scanned again until
they appear.

Both streams of a service are read, always: velib sends a batched change as ItemsChanged and
a single assignment or an accepted SetValue as PropertiesChanged, so one service may send both
(dbus-serialbattery sends only PropertiesChanged). A service that sends both for the same change
costs a second decoding; ignoring its PropertiesChanged would lose changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from dbus_aggregate_batteries.config import Config
from dbus_aggregate_batteries.core.venus import BUSITEM, Value
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell._dbus import Message, MessageBus
from dbus_aggregate_batteries.shell.dispatch import Dispatcher
from dbus_aggregate_batteries.shell.state import MISSING, BusState, Kind, ServiceState

log = logging.getLogger(__name__)

VICTRON_NAMESPACE = "com.victronenergy"
MANDATORY_PACK_PATHS = ("/ProductName", "/DeviceInstance", "/Dc/0/Voltage")
# Victron devices publish hundreds of paths; we only need these, so their per-path signals
# are subscribed path by path.
AUX_PATHS = ("/Dc/0/Current", "/Connected")
SCAN_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 2.0
# A probe that times out is asked once more, for longer, before the pack counts as hung: a
# driver reading a slow BMS blocks its main loop for a moment, and a STALE verdict derates the
# whole bank (a false alarm is not conservative). A hung process fails both within 5 s.
PROBE_RETRY_TIMEOUT_S = 3.0


@dataclass(slots=True)
class _Rules:
    owner: str
    properties: list[str]
    items: str


def _all(rules: _Rules) -> tuple[str, ...]:
    return (*rules.properties, rules.items)


class Monitor:
    """Finds packs, shunts and Victron devices and keeps :class:`BusState` up to date."""

    def __init__(
        self,
        bus: MessageBus,
        state: BusState,
        cfg: Config,
        *,
        own_name: str,
        clock: Callable[[], float],
        on_departed: Callable[[ServiceState], None] | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self._bus = bus
        self._dispatcher = dispatcher if dispatcher is not None else Dispatcher(bus)
        self._state = state
        self._cfg = cfg
        self._own_name = own_name
        self._clock = clock
        self._on_departed = on_departed
        self._rules: dict[str, _Rules] = {}
        # The owner NameOwnerChanged last gave each relevant name ("" once it left): a
        # GetNameOwner reply, or a retry after a failed subscription, may be older than that.
        self._owner_of: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Names of services that may still be incomplete (not classified, or a pack without
        # its mandatory paths): rescan_due looks at these only. A service leaves the set once
        # complete, which is for good: kinds are set once and values are never removed.
        self._incomplete: set[str] = set()
        self.scans_pending = 0
        self.probes_pending = 0
        d = cfg.discovery
        self._prefixes = tuple(
            p
            for p in (
                d.battery_service_prefix,
                d.dcload_service_prefix,
                d.multi_service_prefix if self._wants_victron() else "",
                d.solarcharger_service_prefix if self._wants_victron() else "",
            )
            if p
        )

    def _wants_victron(self) -> bool:
        return self._cfg.current.source == "victron"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Subscribe to name changes, then look at every name already on the bus."""
        self._dispatcher.add_signal_handler(self._on_signal)
        await _dbus.add_match(
            self._bus,
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            f"member='NameOwnerChanged',arg0namespace='{VICTRON_NAMESPACE}'",
        )
        names = await _dbus.call(
            self._bus, _dbus.DBUS_SERVICE, _dbus.DBUS_PATH, "ListNames", _dbus.DBUS_SERVICE
        )
        for name in sorted(names[0]):
            if self._relevant(name):
                try:
                    owner = await _dbus.call(
                        self._bus, _dbus.DBUS_SERVICE, _dbus.DBUS_PATH, "GetNameOwner",
                        _dbus.DBUS_SERVICE, "s", (name,),
                    )
                except _dbus.DBusCallError:
                    continue  # gone between ListNames and now
                self._spawn(self._track(name, owner[0]))

    async def stop(self) -> None:
        """Stop handling signals and cancel pending scans."""
        self._dispatcher.remove_signal_handler(self._on_signal)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("discovery task failed", exc_info=task.exception())

    def _relevant(self, name: str) -> bool:
        if name == self._own_name or name in self._cfg.discovery.exclude_services:
            return False
        return name.startswith(self._prefixes)

    # ------------------------------------------------------------------ tracking

    async def _track(self, name: str, owner: str) -> None:
        if self._owner_of.get(name, owner) != owner:
            return  # that owner is gone already: tracking it would shadow the live one
        now = self._clock()
        replaced = self._rules.get(name)
        if replaced is not None and replaced.owner != owner:
            # The daemon keeps a rule until it is removed. (The same owner tracked twice adds
            # the same rules twice: the daemon counts them, and the first track removes its
            # own copy once it sees it was replaced.)
            del self._rules[name]
            self._remove_rules(_all(replaced))
        svc = self._state.add(name, owner, now)
        self._incomplete.add(name)
        aux = not (
            name.startswith(self._cfg.discovery.battery_service_prefix)
            or name.startswith(self._cfg.discovery.dcload_service_prefix)
        )
        base = f"type='signal',sender='{owner}',interface='{BUSITEM}'"
        rules = _Rules(
            owner=owner,
            properties=(
                [f"{base},member='PropertiesChanged',path='{p}'" for p in AUX_PATHS]
                if aux
                else [f"{base},member='PropertiesChanged'"]
            ),
            items=f"{base},member='ItemsChanged',path='/'",
        )
        self._rules[name] = rules
        added: list[str] = []  # removed again one for one: the daemon counts a rule's copies
        failure: Exception | None = None
        try:
            for rule in _all(rules):
                await _dbus.add_match(self._bus, rule)
                added.append(rule)
        except (_dbus.DBusCallError, TimeoutError) as exc:
            failure = exc
        if self._state.services.get(name) is not svc:
            # It left (or has a newer owner) while we subscribed: that one is not ours to drop,
            # and the removal _departed sent may have reached the daemon before these rules.
            self._remove_rules(added)
            return
        if failure is not None:
            # Without its match rules the service would look frozen: start over later.
            log.warning("%s: cannot subscribe (%s); retrying", name, failure)
            self._departed(name)
            await asyncio.sleep(self._cfg.discovery.rescan_interval_s)
            if (
                self._bus.connected
                and name not in self._state.services
                and self._owner_of.get(name, owner) == owner
            ):
                self._spawn(self._track(name, owner))
            return
        await self.scan(svc)

    async def scan(self, svc: ServiceState) -> None:
        """GetItems on a service; classify it once its product name is known."""
        self.scans_pending += 1
        svc.scan_started()
        try:
            try:
                reply = await _dbus.call(
                    self._bus, svc.owner, "/", "GetItems", timeout_s=SCAN_TIMEOUT_S
                )
            except (_dbus.DBusCallError, TimeoutError) as exc:
                log.debug("%s: GetItems failed (%s); will retry", svc.name, exc)
                svc.last_scan_s = self._clock()
                return
            finally:
                self.scans_pending -= 1
            if self._state.services.get(svc.name) is not svc:
                return  # it left while we waited
            items: dict[str, Value] = {}
            unwrap = _dbus.unwrap
            for path, item in reply[0].items():
                variant = item.get("Value")
                if variant is not None:
                    items[path] = unwrap(variant)  # type: ignore[assignment]
            svc.apply_scan(items, self._clock())
        finally:
            svc.scan_ended()
        if svc.kind is Kind.CANDIDATE:
            self._classify(svc)

    def _classify(self, svc: ServiceState) -> None:
        d = self._cfg.discovery
        cur = self._cfg.current
        product = svc.values.get("/ProductName")
        if not isinstance(product, str):
            return  # not there yet: rescanned later
        is_shunt = any(k in product for k in d.smartshunt_product_names)
        kind = Kind.IGNORED
        if svc.name.startswith(d.battery_service_prefix):
            if is_shunt:
                if cur.source != "bms" and self._shunt_selected(svc):
                    kind = Kind.BATTERY_SHUNT
            elif any(k in product for k in d.battery_product_names):
                serial = svc.values.get("/Serial")
                ours = svc.values.get("/ProductId") == self._cfg.publish.product_id and (
                    product == self._cfg.publish.product_name
                )
                if not ours and not (isinstance(serial, str) and serial in d.exclude_serials):
                    kind = Kind.PACK
        elif svc.name.startswith(d.dcload_service_prefix):
            if is_shunt and cur.source == "victron" and self._shunt_selected(svc):
                kind = Kind.DCLOAD_SHUNT
        elif d.multi_service_prefix and svc.name.startswith(d.multi_service_prefix):
            kind = Kind.MULTI
        elif d.solarcharger_service_prefix and svc.name.startswith(d.solarcharger_service_prefix):
            kind = Kind.SOLAR
        svc.kind = kind
        if kind is Kind.IGNORED:
            log.debug("%s (%s): not used", svc.name, product)
            self._forget(svc.name)
        else:
            log.info("found %s %s (%s)", kind.value, svc.name, product)

    def _shunt_selected(self, svc: ServiceState) -> bool:
        wanted = self._cfg.current.smartshunts
        if wanted == "all":
            return True
        if wanted == "none":
            return False
        instance = svc.values.get("/DeviceInstance")
        name = svc.values.get(self._cfg.current.smartshunt_name_path)
        return any(
            (isinstance(w, int) and w == instance) or (isinstance(w, str) and w == name)
            for w in wanted
        )

    def _forget(self, name: str) -> ServiceState | None:
        """Stop listening to a service (one we do not use, or one that left); returns it."""
        rules = self._rules.pop(name, None)
        svc = self._state.remove(name)
        if rules is not None:
            self._remove_rules(_all(rules))
        return svc

    def _remove_rules(self, rules: Iterable[str]) -> None:
        if self._bus.connected:
            for rule in rules:
                self._spawn(self._remove_rule(rule))

    async def _remove_rule(self, rule: str) -> None:
        # dbus-daemon keeps a rule whose sender has left until it is removed, and counts it
        # against the connection's limit (1024 on Venus OS).
        with contextlib.suppress(_dbus.DBusCallError, TimeoutError):
            await _dbus.remove_match(self._bus, rule)

    def _departed(self, name: str) -> None:
        svc = self._forget(name)
        if svc is not None and svc.kind is not Kind.IGNORED:
            log.warning("%s %s left the bus", svc.kind.value, name)
            if self._on_departed is not None:
                self._on_departed(svc)

    # ------------------------------------------------------------------ periodic work

    def rescan_due(self, now_s: float) -> None:
        """Scan again services whose product name or mandatory paths are still missing."""
        if not self._incomplete:
            return  # the usual case: every service complete, nothing to look at
        interval = self._cfg.discovery.rescan_interval_s
        services = self._state.services
        self._incomplete.intersection_update(services)  # the departed
        for svc in list(services.values()):
            name = svc.name
            if name not in self._incomplete:
                continue
            incomplete = svc.kind is Kind.CANDIDATE or (
                svc.kind is Kind.PACK and not svc.has_paths(MANDATORY_PACK_PATHS)
            )
            if not incomplete:
                self._incomplete.discard(name)
            elif svc.last_scan_s is None or now_s - svc.last_scan_s >= interval:
                svc.last_scan_s = now_s
                self._spawn(self.scan(svc))

    def probe(self, svc: ServiceState) -> None:
        """Check in the background that a silent pack's process still answers."""
        self.probes_pending += 1
        self._spawn(self._probe(svc))

    async def _probe(self, svc: ServiceState) -> None:
        try:
            try:
                await _dbus.call(
                    self._bus, svc.owner, "/ProductName", "GetValue", timeout_s=PROBE_TIMEOUT_S
                )
            except TimeoutError:
                log.info(
                    "%s: no answer to a liveness probe within %.0f s; asking once more",
                    svc.name, PROBE_TIMEOUT_S,
                )
                await _dbus.call(
                    self._bus, svc.owner, "/ProductName", "GetValue",
                    timeout_s=PROBE_RETRY_TIMEOUT_S,
                )
        except (TimeoutError, _dbus.DBusCallError):
            if self._state.services.get(svc.name) is svc and not svc.probe_failed:
                log.warning("%s did not answer a liveness probe", svc.name)
                svc.probe_failed = True
        else:
            # A quiet pack proves it is alive here: steady values send no signal at all.
            svc.answered(self._clock())
        finally:
            self.probes_pending -= 1

    # ------------------------------------------------------------------ signals

    def _on_signal(self, msg: Message) -> None:
        member = msg.member
        if member == "PropertiesChanged":
            # The hot path (one call per changed path of every pack): ServiceState.apply_one
            # inlined, and a double unwrapped without a call.
            services = self._state.by_owner.get(msg.sender)
            if not services or msg.interface != BUSITEM:
                return
            variant = msg.body[0].get("Value")
            if variant is None:
                return
            value = variant.value
            if variant.signature != "d" or type(value) is not float:
                value = _dbus.unwrap(variant)
            path: str = msg.path
            now = self._clock()
            for svc in services:
                values = svc.values
                svc.last_signal_s = now
                svc.probe_failed = False
                if svc.scanning:
                    svc.signalled.add(path)
                old = values.get(path, MISSING)
                if old == value and type(old) is type(value):
                    continue
                values[path] = value
                svc.changed.add(path)
        elif member == "ItemsChanged":
            services = self._state.by_owner.get(msg.sender)
            if not services or msg.interface != BUSITEM:
                return
            unwrap = _dbus.unwrap
            changes: dict[str, Value] = {}
            for path, item in msg.body[0].items():
                variant = item.get("Value")
                if variant is not None:
                    changes[path] = unwrap(variant)  # type: ignore[assignment]
            now = self._clock()
            for svc in services:
                svc.apply_signal(changes, now)
        elif member == "NameOwnerChanged" and msg.sender == _dbus.DBUS_SERVICE:
            name, old, new = msg.body
            if self._relevant(name):
                self._owner_of[name] = new
            if old and name in self._state.services:
                self._departed(name)
            if new and self._relevant(name):
                self._spawn(self._track(name, new))

