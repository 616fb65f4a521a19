"""The simulator's models as real D-Bus services, each on its own connection.

One connection owns one object tree (venus-dbus.md §1.12.6), and every real driver is its own
process, so every simulated device gets its own ``MessageBus``. Packs signal the way
dbus-serialbattery does (one ``PropertiesChanged`` per changed path, never ``ItemsChanged``);
the v0.14 layout claims its name before its paths exist, as old velib did (§5.1). Victron
devices signal both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from dbus_aggregate_batteries.core.venus import Value
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.export import BusItemService
from dbus_aggregate_batteries.sim.model import (
    Bank,
    DeviceModel,
    MultiModel,
    PackModel,
    PackSpec,
    Profile,
    ShuntModel,
    SolarChargerModel,
    constant_profile,
    sine_profile,
)

log = logging.getLogger(__name__)

SignalMode = Literal["both", "items", "properties"]
OnChange = Callable[[str, Value], bool]

# How long a v0.14 pack's name is on the bus without paths. Long enough for a scanner reacting
# to NameOwnerChanged to see the empty service, short enough not to slow tests down.
V014_PATH_DELAY_S = 0.05


class DeviceService:
    """One simulated device published on its own bus connection."""

    def __init__(
        self,
        model: DeviceModel,
        *,
        signals: SignalMode = "both",
        register_first: bool = False,
        path_delay_s: float = 0.0,
        writable: Mapping[str, OnChange] | None = None,
    ) -> None:
        self.model = model
        self.signals: SignalMode = signals
        self.register_first = register_first
        self.path_delay_s = path_delay_s
        self.writable: dict[str, OnChange] = dict(writable or {})
        self.bus: _dbus.MessageBus | None = None
        self.service: BusItemService | None = None

    @property
    def name(self) -> str:
        """The well-known bus name."""
        return self.model.service_name

    @property
    def running(self) -> bool:
        """Whether the service is on the bus."""
        return self.service is not None

    async def start(self, bus_address: str) -> None:
        """Connect, export every path and claim the name (order per ``register_first``)."""
        if self.bus is not None:
            raise RuntimeError(f"{self.name} is already started")
        bus = await _dbus.connect(bus_address)
        self.bus = bus
        try:
            service = BusItemService(bus, self.name, signals=self.signals)
            if self.register_first:
                await service.register()
                # Old velib: the name is visible while the driver is still creating paths.
                await asyncio.sleep(self.path_delay_s)
                self._add_paths(service)
            else:
                self._add_paths(service)
                await service.register()
        except BaseException:
            self.bus = None
            await _dbus.disconnect(bus)
            raise
        self.service = service
        log.debug("%s on the bus as %s", self.name, bus.unique_name)

    def _add_paths(self, service: BusItemService) -> None:
        for path, value in self.model.values().items():
            on_change = self.writable.get(path)
            service.add_path(path, value, writable=on_change is not None, on_change=on_change)

    def publish(self) -> int:
        """Publish what changed in the model since the last call; returns the count."""
        if self.service is None:
            return 0
        return self.service.publish(self.model.values())

    async def stop(self, *, release_name: bool = True) -> None:
        """Leave the bus: release the name first, or just drop the connection like a crash."""
        service, bus = self.service, self.bus
        self.service = None
        self.bus = None
        if service is not None and release_name:
            try:
                await service.unregister()
            except Exception:  # the connection may already be gone; disconnecting still works
                log.debug("unregistering %s failed", self.name, exc_info=True)
        if bus is not None:
            await _dbus.disconnect(bus)


def _flag(value: Value) -> bool | None:
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    return None


def pack_service(
    model: PackModel, *, v014_path_delay_s: float = V014_PATH_DELAY_S
) -> DeviceService:
    """A dbus-serialbattery pack: per-path signals; v0.14 registers before its paths exist."""

    def set_custom_name(path: str, value: Value) -> bool:
        if not isinstance(value, str):
            return False
        model.custom_name = value
        return True

    def control(apply: Callable[[bool], None]) -> OnChange:
        def on_change(path: str, value: Value) -> bool:
            flag = _flag(value)
            if flag is None:
                return False
            apply(flag)
            return True

        return on_change

    def set_balancing_off(flag: bool) -> None:
        model.balancing_disabled = flag

    writable: dict[str, OnChange] = {"/CustomName": set_custom_name}
    if model.spec.layout == "v2":
        # v2.0's writeable controls act on the pack, so tests can block a pack over D-Bus.
        writable["/Io/ForceChargingOff"] = control(model.block_charge)
        writable["/Io/ForceDischargingOff"] = control(model.block_discharge)
        writable["/Io/TurnBalancingOff"] = control(set_balancing_off)
    v014 = model.spec.layout == "v014"
    return DeviceService(
        model,
        signals="properties",
        register_first=v014,
        path_delay_s=v014_path_delay_s if v014 else 0.0,
        writable=writable,
    )


class SimBank:
    """A bank of simulated packs (and optionally the Victron devices) on a real bus.

    ``tick(dt_s)`` advances the pure :class:`Bank` and publishes what changed. Models stay
    reachable (``packs``, ``multi`` ...) for fault injection between ticks.
    """

    def __init__(
        self,
        specs: Sequence[PackSpec] = (),
        *,
        victron: bool = False,
        profile: Profile | None = None,
        loads: Profile | None = None,
        solar: Profile | None = None,
        respect_limits: bool = False,
        v014_path_delay_s: float = V014_PATH_DELAY_S,
    ) -> None:
        self.bank = Bank(
            [PackModel(spec) for spec in specs],
            profile=profile if profile is not None else sine_profile(),
            loads=loads if loads is not None else constant_profile(5.0),
            solar=solar,
            respect_limits=respect_limits,
        )
        self.victron = victron
        self.v014_path_delay_s = v014_path_delay_s
        self.bus_address: str | None = None
        self._pack_services: list[DeviceService] = []
        self._device_services: list[DeviceService] = []

    # -- access for tests and fault injection --------------------------------------------------

    @property
    def packs(self) -> list[PackModel]:
        """The pack models, in service order (index as used by ``remove_pack``)."""
        return self.bank.packs

    @property
    def multi(self) -> MultiModel:
        """The Multi's model (published only with ``victron=True``)."""
        return self.bank.multi

    @property
    def solar_charger(self) -> SolarChargerModel:
        """The solar charger's model."""
        return self.bank.solar_charger

    @property
    def battery_shunt(self) -> ShuntModel:
        """The SmartShunt in battery-monitor mode."""
        return self.bank.battery_shunt

    @property
    def dcload_shunt(self) -> ShuntModel:
        """The SmartShunt in DC-load mode."""
        return self.bank.dcload_shunt

    @property
    def pack_names(self) -> list[str]:
        """Bus names of the packs currently on the bus."""
        return [s.name for s in self._pack_services]

    @property
    def service_names(self) -> list[str]:
        """Bus names of every service currently on the bus."""
        return self.pack_names + [s.name for s in self._device_services]

    def pack_service(self, index: int) -> DeviceService:
        """The service publishing pack ``index``."""
        return self._pack_services[index]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, bus_address: str) -> None:
        """Put every pack (and the Victron devices) on the bus at ``bus_address``."""
        if self.bus_address is not None:
            raise RuntimeError("SimBank is already started")
        self.bus_address = bus_address
        packs = [pack_service(p, v014_path_delay_s=self.v014_path_delay_s) for p in self.packs]
        devices = (
            [DeviceService(model, signals="both") for model in self.bank.devices]
            if self.victron
            else []
        )
        results = await asyncio.gather(
            *(s.start(bus_address) for s in packs + devices), return_exceptions=True
        )
        self._pack_services = packs
        self._device_services = devices
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]

    async def tick(self, dt_s: float) -> int:
        """Advance the bank by ``dt_s`` simulated seconds and publish; returns changed values."""
        self.bank.step(dt_s)
        changed = sum(s.publish() for s in self._pack_services + self._device_services)
        # Let the transport write the queued signals before the caller goes on.
        await asyncio.sleep(0)
        return changed

    async def run(self, tick_s: float, stop: asyncio.Event, *, speed: float = 1.0) -> None:
        """Tick every ``tick_s`` on absolute deadlines until ``stop`` is set.

        dt is measured, times ``speed``, so a late tick integrates the time it really covered.
        Missed deadlines are skipped, not caught up.
        """
        loop = asyncio.get_running_loop()
        last = loop.time()
        deadline = last + tick_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, deadline - loop.time()))
            if stop.is_set():
                break
            now = loop.time()
            await self.tick((now - last) * speed)
            last = now
            deadline += tick_s
            if deadline <= now:
                skipped = math.floor((now - deadline) / tick_s) + 1
                log.debug("tick %.3f s late, skipping %d", now - deadline, skipped)
                deadline += skipped * tick_s

    async def sync(self, peer: str) -> None:
        """Return once ``peer`` has received every signal sent so far by every service.

        A bus delivers one sender's messages in order and a peer answers ``Ping`` after
        handling what came before it, so a ping from each connection is a barrier.
        """
        buses = [s.bus for s in self._pack_services + self._device_services if s.bus is not None]
        await asyncio.gather(*(
            _dbus.call(bus, peer, "/", "Ping", "org.freedesktop.DBus.Peer") for bus in buses
        ))

    async def stop(self) -> None:
        """Take every service off the bus."""
        services = self._pack_services + self._device_services
        self._pack_services = []
        self._device_services = []
        self.bus_address = None
        await asyncio.gather(*(s.stop() for s in services), return_exceptions=True)

    async def remove_pack(self, index: int, *, release_name: bool = True) -> PackModel:
        """Take pack ``index`` off the bus and out of the bank; its name vanishes.

        ``release_name=False`` drops the connection without releasing the name first, like a
        driver that crashed.
        """
        service = self._pack_services.pop(index)
        model = self.bank.remove_pack(index)
        await service.stop(release_name=release_name)
        return model

    async def add_pack(self, spec: PackSpec) -> PackModel:
        """Connect another pack and put it on the bus (the bank must be started)."""
        if self.bus_address is None:
            raise RuntimeError("SimBank is not started")
        model = self.bank.add_pack(spec)
        service = pack_service(model, v014_path_delay_s=self.v014_path_delay_s)
        try:
            await service.start(self.bus_address)
        except BaseException:
            self.bank.remove_pack(self.bank.packs.index(model))
            raise
        self._pack_services.append(service)
        return model
