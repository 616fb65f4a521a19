"""The closed loop over D-Bus: the physics publishes packs, a Multi and an MPPT, and obeys the
limits ``com.victronenergy.battery.aggregate`` publishes, whoever that is.

The packs look like dbus-serialbattery (one ``PropertiesChanged`` per changed path), the Multi
and the MPPT like Victron's drivers.  The aggregate's /Info/MaxChargeVoltage,
/Info/MaxChargeCurrent and /Info/MaxDischargeCurrent (and /Soc, for the SoC figure) are
followed through ``ItemsChanged`` on / and ``PropertiesChanged``, and read with ``GetValue``
whenever the service (re)appears; while it is absent the limits are invalid, and the charger
stops charging at once and discharging after its timeout, as a Multi does when it loses its BMS.

Time: the physics runs ``speed`` simulated seconds per real second.  Any aggregator ticks in
real time, so its tick covers ``speed`` simulated seconds: keep ``speed`` low for control
figures, or, for our own service, scale its tick and clock by the same factor (the D-Bus
closed-loop test does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable
from typing import IO, Any

from dbus_aggregate_batteries.config import PRESETS
from dbus_aggregate_batteries.core.venus import BUSITEM, Value
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell._dbus import Message, MessageBus, MessageType
from dbus_aggregate_batteries.sim.closedloop import ClosedLoop, Figures
from dbus_aggregate_batteries.sim.model import (
    SERIALBATTERY_PRODUCT_ID,
    MultiModel,
    SolarChargerModel,
)
from dbus_aggregate_batteries.sim.physics import DvccLimits
from dbus_aggregate_batteries.sim.scenario import Scenario
from dbus_aggregate_batteries.sim.services import DeviceService

log = logging.getLogger(__name__)

AGGREGATE = "com.victronenergy.battery.aggregate"
LIMIT_PATHS = (
    "/Info/MaxChargeVoltage",
    "/Info/MaxChargeCurrent",
    "/Info/MaxDischargeCurrent",
    "/Soc",
)


class PackDevice:
    """One closed-loop pack as dbus-serialbattery (v2 layout) publishes it."""

    def __init__(self, loop: ClosedLoop, index: int) -> None:
        self.loop = loop
        self.index = index
        name = loop.packs[index].name
        self._service = f"com.victronenergy.battery.{name}"
        self._identity: dict[str, Value] = {
            "/Mgmt/ProcessName": "/data/apps/dbus-serialbattery/dbus-serialbattery.py",
            "/Mgmt/ProcessVersion": "Python 3.12.3",
            "/Mgmt/Connection": f"Serial /dev/{name}",
            "/DeviceInstance": index + 1,
            "/ProductId": SERIALBATTERY_PRODUCT_ID,
            "/ProductName": "SerialBattery(Jkbms)",
            "/FirmwareVersion": "2.0.20250729",
            "/HardwareVersion": f"JKBMS {len(loop.packs[index].cells)}S",
            "/CustomName": f"Battery {index + 1}",
            "/Serial": f"CL-{name}",
            "/State": 9,
            "/ErrorCode": 0,
        }

    @property
    def service_name(self) -> str:
        """com.victronenergy.battery.<port>."""
        return self._service

    def values(self) -> dict[str, Value]:
        """Identity paths and the pack's live values."""
        return {**self._identity, **self.loop.pack_values(self.index)}


class LimitsReader:
    """Follows what the aggregate service publishes, on its own connection."""

    def __init__(self, bus: MessageBus, name: str = AGGREGATE) -> None:
        self.bus = bus
        self.name = name
        self.owner: str | None = None
        self.values: dict[str, Value] = {}
        self.changes = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Subscribe (name changes, ItemsChanged, PropertiesChanged), then read the values."""
        self.bus.add_message_handler(self._on_message)
        await _dbus.add_match(
            self.bus,
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            f"member='NameOwnerChanged',arg0='{self.name}'",
        )
        # A well-known sender in a match rule follows whoever owns the name.
        base = f"type='signal',sender='{self.name}',interface='{BUSITEM}'"
        await _dbus.add_match(self.bus, f"{base},member='ItemsChanged',path='/'")
        for path in LIMIT_PATHS:
            await _dbus.add_match(self.bus, f"{base},member='PropertiesChanged',path='{path}'")
        with contextlib.suppress(_dbus.DBusCallError):
            reply = await _dbus.call(
                self.bus, _dbus.DBUS_SERVICE, _dbus.DBUS_PATH, "GetNameOwner",
                _dbus.DBUS_SERVICE, "s", (self.name,),
            )
            self.owner = str(reply[0])
            await self.refresh()

    async def stop(self) -> None:
        """Stop listening."""
        self.bus.remove_message_handler(self._on_message)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def refresh(self) -> None:
        """Read every followed path with GetValue."""
        for path in LIMIT_PATHS:
            try:
                reply = await _dbus.call(self.bus, self.name, path, "GetValue", timeout_s=2.0)
            except (_dbus.DBusCallError, TimeoutError):
                continue
            self.values[path] = _dbus.unwrap(reply[0])  # type: ignore[assignment]

    @property
    def limits(self) -> DvccLimits:
        """The three DVCC limits; invalid while the service is absent."""
        if self.owner is None:
            return DvccLimits(None, None, None)
        return DvccLimits(
            _number(self.values.get(LIMIT_PATHS[0])),
            _number(self.values.get(LIMIT_PATHS[1])),
            _number(self.values.get(LIMIT_PATHS[2])),
        )

    @property
    def soc_pct(self) -> float | None:
        """The aggregate's /Soc."""
        return _number(self.values.get("/Soc")) if self.owner is not None else None

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.member == "NameOwnerChanged" and msg.sender == _dbus.DBUS_SERVICE:
            name, _old, new = msg.body
            if name != self.name:
                return
            self.owner = new or None
            self.values.clear()
            if new:
                task = asyncio.ensure_future(self.refresh())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        if self.owner is None or msg.sender != self.owner or msg.interface != BUSITEM:
            return
        if msg.member == "ItemsChanged":
            for path, item in msg.body[0].items():
                if path in LIMIT_PATHS and "Value" in item:
                    self.values[path] = _dbus.unwrap(item["Value"])  # type: ignore[assignment]
                    self.changes += 1
        elif msg.member == "PropertiesChanged" and msg.path in LIMIT_PATHS:
            variant = msg.body[0].get("Value")
            if variant is not None:
                self.values[msg.path] = _dbus.unwrap(variant)  # type: ignore[assignment]
                self.changes += 1


def _number(value: Value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def reference_voltage(scn: Scenario) -> float:
    """The highest cell voltage the bus form judges against (the chemistry's preset max)."""
    if scn.max_cell_voltage_v is not None:
        return scn.max_cell_voltage_v
    return float(PRESETS[scn.chemistry]["max_cell_voltage_v"])


class BusClosedLoop:
    """The closed loop's devices on a bus, ticking in scaled real time."""

    def __init__(
        self,
        scn: Scenario,
        *,
        speed: float = 1.0,
        record: IO[str] | None = None,
        record_every_s: float = 1.0,
        mode: str = "bus",
    ) -> None:
        self.scn = scn
        self.speed = speed
        self.loop = ClosedLoop(scn, reference_v=reference_voltage(scn), mode=mode)
        self.record = record
        self.record_every_s = record_every_s
        self.packs = [DeviceService(PackDevice(self.loop, i), signals="properties")
                      for i in range(len(self.loop.packs))]
        self.multi = MultiModel()
        self.solar = SolarChargerModel()
        self.devices = [DeviceService(self.multi), DeviceService(self.solar)]
        self.reader: LimitsReader | None = None
        self._reader_bus: MessageBus | None = None
        self._address: str | None = None

    @property
    def service_names(self) -> list[str]:
        """Every name this loop puts on the bus."""
        return [s.name for s in self.packs + self.devices]

    async def start(self, bus_address: str) -> None:
        """Publish every device and start following the aggregate."""
        self._address = bus_address
        self._sync_devices()
        await asyncio.gather(*(s.start(bus_address) for s in self.packs + self.devices))
        self._reader_bus = await _dbus.connect(bus_address)
        self.reader = LimitsReader(self._reader_bus)
        await self.reader.start()

    async def stop(self) -> None:
        """Leave the bus."""
        if self.reader is not None:
            await self.reader.stop()
        if self._reader_bus is not None:
            await _dbus.disconnect(self._reader_bus)
            self._reader_bus = None
        await asyncio.gather(
            *(s.stop() for s in self.packs + self.devices), return_exceptions=True
        )

    def _sync_devices(self) -> None:
        # The MPPT delivers what the sun gives up to what the bank and loads take; the Multi
        # makes up the rest (negative: it inverts for the loads).
        loop = self.loop
        volts = max(1.0, sum(sum(p.voltages) for p in loop.packs) / len(loop.packs))
        battery = loop.charger.current_a
        need = battery + loop.load_w / volts
        solar = min(loop.charge_w / volts, max(0.0, need))
        self.solar.current_a = solar
        self.solar.voltage_v = volts
        self.multi.current_a = battery - solar
        self.multi.voltage_v = volts
        self.multi.soc_pct = loop.true_soc_pct

    async def _visibility(self) -> None:
        assert self._address is not None
        for index, service in enumerate(self.packs):
            want = self.loop.visible[index]
            if want and not service.running:
                await service.start(self._address)
            elif not want and service.running:
                await service.stop()

    async def run(
        self,
        stop: asyncio.Event,
        *,
        on_tick: Callable[[BusClosedLoop], None] | None = None,
    ) -> Figures:
        """Run until the scenario is over or ``stop`` is set; return the figures."""
        assert self.reader is not None
        aio = asyncio.get_running_loop()
        period = self.scn.dt_s / self.speed
        last = aio.time()
        next_record = 0.0
        while not stop.is_set() and not self.loop.done:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period)
            now = aio.time()
            # A late wake-up integrates the time it really covered, in steps of at most dt.
            remaining = min((now - last) * self.speed, 10.0 * self.scn.dt_s)
            last = now
            limits = self.reader.limits
            self.loop.observe(limits, self.reader.soc_pct)
            while remaining > 1e-9:
                dt = min(self.scn.dt_s, remaining)
                self.loop.advance(dt, limits)
                remaining -= dt
            await self._visibility()
            self._sync_devices()
            for service in self.packs + self.devices:
                service.publish()
            if self.record is not None and self.loop.t_s >= next_record:
                self.record.write(json.dumps(self.loop.truth()) + "\n")
                next_record = self.loop.t_s + self.record_every_s
            if on_tick is not None:
                on_tick(self)
        return self.loop.finish()


def figures_json(fig: Figures) -> str:
    """The figures as one JSON line."""
    data: dict[str, Any] = {
        name: getattr(fig, name) for name in fig.__dataclass_fields__
    }
    data["overshoot_mv"] = fig.overshoot_mv
    return json.dumps(data)
