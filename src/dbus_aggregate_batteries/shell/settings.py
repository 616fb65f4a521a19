"""Client of Venus OS localsettings (``com.victronenergy.settings``).

- identity: ``/Settings/Devices/<key>/ClassAndVrmInstance`` is created with AddSettings and
  its value READ BACK: localsettings moves it to the next free instance of the class when the
  requested one is taken, and consumers pair our name with that instance at scan time;
- ``/Settings/Devices/<key>/CustomName`` persists the name the owner gives in the GUI;
- ``/Settings/CGwacs/OvervoltageFeedIn`` (DC-coupled PV feed-in) is watched by signal and
  written only when the engine asks for it.
Without a settings service (a laptop) every call reports "unavailable" and the caller falls
back to its configuration. Calls go to the well-known name, so a localsettings restart does not
break them; the feed-in signal is followed to the new process (NameOwnerChanged), and the
setting is read again then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from dbus_aggregate_batteries.core.venus import BUSITEM, SETTINGS_SERVICE, Value
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell._dbus import Message, MessageBus, Variant
from dbus_aggregate_batteries.shell.dispatch import Dispatcher
from dbus_aggregate_batteries.shell.export import wrap

log = logging.getLogger(__name__)

SETTINGS_IFACE = "com.victronenergy.Settings"
FEED_IN_PATH = "/Settings/CGwacs/OvervoltageFeedIn"
CALL_TIMEOUT_S = 5.0


def device_key(service_suffix: str) -> str:
    """The settings key of our device (stable across restarts: same key, same instance)."""
    if service_suffix == "aggregate":
        return "aggregatebatteries"  # the original program's key: its CustomName carries over
    return f"aggregatebatteries_{service_suffix}"


def parse_instance(value: object) -> int | None:
    """``"battery:7"`` -> 7."""
    if not isinstance(value, str) or ":" not in value:
        return None
    cls, _, number = value.partition(":")
    return int(number) if cls == "battery" and number.isdigit() else None


class LocalSettings:
    """The few localsettings calls this service needs."""

    def __init__(
        self,
        bus: MessageBus,
        *,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self._bus = bus
        # The owner's task runner: its tasks are awaited at its shutdown.
        self._spawn = spawn
        self._dispatcher = dispatcher if dispatcher is not None else Dispatcher(bus)
        self._owner: str | None = None
        self.feed_in: int | None = None

    async def connect(self) -> bool:
        """Whether a settings service is on the bus; starts watching the feed-in setting."""
        try:
            reply = await _dbus.call(
                self._bus, _dbus.DBUS_SERVICE, _dbus.DBUS_PATH, "GetNameOwner",
                _dbus.DBUS_SERVICE, "s", (SETTINGS_SERVICE,), timeout_s=CALL_TIMEOUT_S,
            )
        except (_dbus.DBusCallError, TimeoutError):
            return False
        # A restart of localsettings gives it a new unique name: follow it.
        self._dispatcher.add_signal_handler(self._on_owner_changed, sender=_dbus.DBUS_SERVICE)
        await _dbus.add_match(
            self._bus,
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            f"member='NameOwnerChanged',arg0='{SETTINGS_SERVICE}'",
        )
        await self._bind(str(reply[0]))
        return True

    async def _bind(self, owner: str) -> None:
        # Only this sender's signals reach the handler: no call per pack signal.
        self._owner = owner
        self._dispatcher.add_signal_handler(self._on_signal, sender=owner)
        await _dbus.add_match(self._bus, _feed_in_rule(owner))
        value = await self.get(FEED_IN_PATH)
        if self._owner == owner:
            self.feed_in = value if isinstance(value, int) else None

    def _unbind(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            self._dispatcher.remove_signal_handler(self._on_signal, sender=owner)
            self._spawn(self._quietly(_dbus.remove_match(self._bus, _feed_in_rule(owner))))

    def _on_owner_changed(self, msg: Message) -> None:
        if msg.member != "NameOwnerChanged" or not msg.body or msg.body[0] != SETTINGS_SERVICE:
            return
        new = msg.body[2]
        if new == self._owner:
            return
        self._unbind()
        if new:
            log.info("localsettings restarted (%s): following it", new)
            self._spawn(self._quietly(self._bind(new)))
        else:
            log.warning("localsettings left the bus")

    @staticmethod
    async def _quietly(coro: Coroutine[Any, Any, object]) -> None:
        try:
            await coro
        except (_dbus.DBusCallError, TimeoutError) as exc:
            log.debug("localsettings call failed: %s", exc)

    @property
    def available(self) -> bool:
        """A settings service was found."""
        return self._owner is not None

    async def add_settings(self, entries: dict[str, Value]) -> dict[str, Value]:
        """Create settings (path -> default) if missing; returns path -> current value."""
        if self._owner is None:
            return {}
        body = [
            {"path": Variant("s", path), "default": wrap(default)}
            for path, default in entries.items()
        ]
        try:
            reply = await _dbus.call(
                self._bus, SETTINGS_SERVICE, "/", "AddSettings", SETTINGS_IFACE, "aa{sv}", (body,),
                timeout_s=CALL_TIMEOUT_S,
            )
        except (_dbus.DBusCallError, TimeoutError) as exc:
            log.warning("localsettings AddSettings failed (%s)", exc)
            return {}
        result: dict[str, Value] = {}
        for item in reply[0]:
            path = _dbus.unwrap(item["path"])
            error = _dbus.unwrap(item.get("error", Variant("i", 0)))
            value = _dbus.unwrap(item["value"]) if "value" in item else None
            if isinstance(path, str) and not error:
                result[path] = value if isinstance(value, (int, float, str)) else None
        return result

    async def get(self, path: str) -> Value:
        """A setting's value, or None."""
        if self._owner is None:
            return None
        try:
            reply = await _dbus.call(self._bus, SETTINGS_SERVICE, path, "GetValue",
                                     timeout_s=CALL_TIMEOUT_S)
        except (_dbus.DBusCallError, TimeoutError):
            return None
        value = _dbus.unwrap(reply[0])
        return value if isinstance(value, (int, float, str)) else None

    async def set(self, path: str, value: Value) -> bool:
        """Write a setting; True when localsettings accepted it."""
        if self._owner is None:
            return False
        try:
            reply = await _dbus.call(self._bus, SETTINGS_SERVICE, path, "SetValue", BUSITEM, "v",
                                     (wrap(value),), timeout_s=CALL_TIMEOUT_S)
        except (_dbus.DBusCallError, TimeoutError) as exc:
            log.warning("cannot write %s: %s", path, exc)
            return False
        return bool(reply and reply[0] == 0)

    def _on_signal(self, msg: Message) -> None:
        if (
            msg.member == "PropertiesChanged"
            and msg.sender == self._owner
            and msg.path == FEED_IN_PATH
        ):
            value = _dbus.unwrap(msg.body[0].get("Value", Variant("ai", [])))
            self.feed_in = value if isinstance(value, int) else None

    async def write_feed_in(self, value: int) -> None:
        """Write the feed-in setting; until localsettings answers it counts as written.

        A refused or failed write reads the setting back, so what the service holds (and shows
        the engine) is what is really set, not what it asked for. The engine does not ask again
        within the same high-cell episode: the owner may have set it by hand meanwhile.
        """
        self.feed_in = value
        if await self.set(FEED_IN_PATH, value):
            return
        log.warning("PV feed-in setting not written (localsettings refused or did not answer)")
        actual = await self.get(FEED_IN_PATH)
        if self.feed_in == value:
            self.feed_in = actual if isinstance(actual, int) else None

    def close(self) -> None:
        """Stop watching signals."""
        if self._owner is not None:
            self._dispatcher.remove_signal_handler(self._on_signal, sender=self._owner)
        self._dispatcher.remove_signal_handler(self._on_owner_changed, sender=_dbus.DBUS_SERVICE)


def _feed_in_rule(owner: str) -> str:
    return (
        f"type='signal',sender='{owner}',interface='{BUSITEM}',"
        f"member='PropertiesChanged',path='{FEED_IN_PATH}'"
    )

