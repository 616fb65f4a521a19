"""A simulated Venus OS localsettings (``com.victronenergy.settings``) for tests and the demo.

It behaves like the real one for the calls this project makes: ``AddSettings(aa{sv})`` on
``/`` and ``AddSetting(ssvsvv)`` on ``/Settings`` create missing settings and leave existing
ones alone; a ``.../ClassAndVrmInstance`` setting is moved to the next free instance of its
class when the requested one is taken; every setting is a writable BusItem that signals its
changes (velib style: PropertiesChanged and ItemsChanged).
"""

from __future__ import annotations

from collections.abc import Mapping

from dbus_aggregate_batteries.core.venus import SETTINGS_SERVICE, Value
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell._dbus import Message, MessageBus, MessageType, Variant
from dbus_aggregate_batteries.shell.export import BusItemService, wrap

SETTINGS_IFACE = "com.victronenergy.Settings"
DEFAULTS: dict[str, Value] = {"/Settings/CGwacs/OvervoltageFeedIn": 1}


class SimSettings:
    """localsettings on its own connection."""

    def __init__(self, initial: Mapping[str, Value] | None = None) -> None:
        self.initial: dict[str, Value] = {**DEFAULTS, **(initial or {})}
        self.bus: MessageBus | None = None
        self.service: BusItemService | None = None
        self.calls: list[str] = []

    async def start(self, bus_address: str) -> None:
        """Connect and claim the name with the initial settings."""
        self.bus = await _dbus.connect(bus_address)
        # Installed before the BusItem handler, which would answer UnknownMethod for these.
        self.bus.add_message_handler(self._on_message)
        self.service = BusItemService(self.bus, SETTINGS_SERVICE, signals="both")
        for path, value in self.initial.items():
            self._add(path, value)
        await self.service.register()

    async def stop(self) -> None:
        """Leave the bus."""
        if self.bus is not None:
            if self.service is not None:
                await self.service.unregister()
            await _dbus.disconnect(self.bus)
        self.bus = None
        self.service = None

    def __getitem__(self, path: str) -> Value:
        assert self.service is not None
        return self.service[path]

    def set(self, path: str, value: Value) -> None:
        """Change a setting as the GUI would (signals go out)."""
        assert self.service is not None
        self.service.publish({path: value})

    def _add(self, path: str, value: Value) -> None:
        assert self.service is not None
        self.service.add_path(path, value, writable=True, on_change=lambda _p, _v: True)

    def _create(self, path: str, default: Value) -> Value:
        assert self.service is not None
        if path in self.service:
            return self.service[path]
        if path.endswith("/ClassAndVrmInstance") and isinstance(default, str):
            default = self._free_instance(default)
        self._add(path, default)
        self.service.publish({path: default})
        return default

    def _free_instance(self, wanted: str) -> str:
        assert self.service is not None
        cls, _, number = wanted.partition(":")
        taken = set()
        for other in self.service.paths():
            if other.endswith("/ClassAndVrmInstance"):
                value = self.service[other]
                if isinstance(value, str) and value.startswith(cls + ":"):
                    taken.add(value.partition(":")[2])
        instance = int(number) if number.isdigit() else 0
        while str(instance) in taken:
            instance += 1
        return f"{cls}:{instance}"

    def _on_message(self, msg: Message) -> Message | None:
        if msg.message_type != MessageType.METHOD_CALL or msg.interface != SETTINGS_IFACE:
            return None
        self.calls.append(msg.member)
        if msg.member == "AddSettings" and msg.path == "/" and msg.signature == "aa{sv}":
            results = []
            for entry in msg.body[0]:
                path = _dbus.unwrap(entry["path"])
                default = _dbus.unwrap(entry["default"])
                if not isinstance(path, str) or not isinstance(default, (int, float, str)):
                    results.append({"path": Variant("s", str(path)), "error": Variant("i", -1)})
                    continue
                value = self._create(path, default)
                results.append({"path": Variant("s", path), "error": Variant("i", 0),
                                "value": wrap(value)})
            return Message.new_method_return(msg, "aa{sv}", [results])
        if msg.member == "AddSetting" and msg.path == "/Settings":
            group, name, default = msg.body[0], msg.body[1], _dbus.unwrap(msg.body[2])
            if not isinstance(default, (int, float, str)):
                return Message.new_method_return(msg, "i", [-1])
            self._create(f"/Settings/{group}/{name}", default)
            return Message.new_method_return(msg, "i", [0])
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", msg.member)

