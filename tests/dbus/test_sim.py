"""The simulator's services on a private bus, seen from a separate client connection.

Barriers, not sleeps: a Peer.Ping round trip to a service makes every signal it sent before
visible (messages between two peers stay in order); state that other connections change is
awaited with ``wait_until`` and a timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dbus_aggregate_batteries.core.venus import BUSITEM
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell._dbus import MessageBus, MessageType, Variant, call, unwrap
from dbus_aggregate_batteries.sim.model import PackModel, PackSpec, constant_profile
from dbus_aggregate_batteries.sim.services import DeviceService, SimBank

pytestmark = pytest.mark.dbus

MakeBus = Callable[[], Awaitable[MessageBus]]

PEER = "org.freedesktop.DBus.Peer"
V2 = "com.victronenergy.battery.ttyUSB0"
V014 = "com.victronenergy.battery.ttyUSB1"
VICTRON = [
    "com.victronenergy.vebus.ttyS4",
    "com.victronenergy.solarcharger.ttyS5",
    "com.victronenergy.battery.ttyS6",
    "com.victronenergy.dcload.ttyS7",
]


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while not await predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout_s} s waiting for: {what}")


async def list_names(client: MessageBus) -> set[str]:
    (names,) = await call(
        client, _dbus.DBUS_SERVICE, _dbus.DBUS_PATH, "ListNames", _dbus.DBUS_SERVICE
    )
    return set(names)


async def get_items(client: MessageBus, name: str) -> dict[str, Any]:
    (items,) = await call(client, name, "/", "GetItems")
    return {path: unwrap(entry["Value"]) for path, entry in items.items()}


async def get_value(client: MessageBus, name: str, path: str) -> Any:
    (value,) = await call(client, name, path, "GetValue")
    return unwrap(value)


async def name_owner(client: MessageBus, name: str) -> str:
    (owner,) = await call(
        client,
        _dbus.DBUS_SERVICE,
        _dbus.DBUS_PATH,
        "GetNameOwner",
        _dbus.DBUS_SERVICE,
        "s",
        (name,),
    )
    assert isinstance(owner, str)
    return owner


class Recorder:
    """BusItem signals from one service, captured on the client connection."""

    def __init__(self, bus: MessageBus, name: str) -> None:
        self.bus = bus
        self.name = name
        self.owner = ""
        self.rule = f"type='signal',sender='{name}',interface='{BUSITEM}'"
        self.messages: list[Any] = []

    async def __aenter__(self) -> Recorder:
        self.owner = await name_owner(self.bus, self.name)
        self.bus.add_message_handler(self._on_message)
        await _dbus.add_match(self.bus, self.rule)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.bus.remove_message_handler(self._on_message)
        if self.bus.connected:
            await _dbus.remove_match(self.bus, self.rule)

    def _on_message(self, msg: Any) -> None:
        if msg.message_type == MessageType.SIGNAL and msg.sender == self.owner:
            self.messages.append(msg)

    async def sync(self) -> list[Any]:
        """Everything the service sent before it answered this Ping."""
        await call(self.bus, self.name, "/", "Ping", interface=PEER)
        got, self.messages = self.messages, []
        return got


@pytest.fixture
async def sim(bus_address: str) -> AsyncIterator[SimBank]:
    bank = SimBank(
        [
            PackSpec("ttyUSB0", layout="v2", device_instance=1),
            PackSpec("ttyUSB1", layout="v014", device_instance=2, cells=8, capacity_ah=100.0),
        ],
        victron=True,
        profile=constant_profile(30.0),
    )
    await bank.start(bus_address)
    yield bank
    await bank.stop()


@pytest.fixture
async def client(make_bus: MakeBus) -> MessageBus:
    return await make_bus()


async def test_list_names_shows_every_service(sim: SimBank, client: MessageBus) -> None:
    names = await list_names(client)
    assert {V2, V014, *VICTRON} <= names
    assert sorted(sim.service_names) == sorted([V2, V014, *VICTRON])


async def test_v2_pack_get_items_has_sane_values(sim: SimBank, client: MessageBus) -> None:
    items = await get_items(client, V2)
    assert 45.0 < items["/Dc/0/Voltage"] < 58.0
    assert items["/Info/MaxChargeVoltage"] == pytest.approx(16 * 3.45)
    assert items["/DeviceInstance"] == 1
    assert items["/ProductId"] == 0xBA77
    assert items["/ProductName"] == "SerialBattery(Jkbms)"
    assert items["/Serial"] == "SIM-ttyUSB0"
    assert items["/Connected"] == 1
    assert items["/ConsumedAmphours"] < 0
    assert all(3.0 < items[f"/Voltages/Cell{k}"] < 3.6 for k in range(1, 17))
    assert set(items) >= set(sim.packs[0].values())


async def test_v014_pack_has_the_old_layout(sim: SimBank, client: MessageBus) -> None:
    items = await get_items(client, V014)
    assert items["/ProductId"] == 0
    assert items["/ConsumedAmphours"] > 0
    assert "/TimeToGo" not in items
    assert "/Serial" not in items
    assert "/Info/ChargeMode" not in items
    assert 22.0 < items["/Dc/0/Voltage"] < 29.0


async def test_victron_devices_publish_their_paths(sim: SimBank, client: MessageBus) -> None:
    shunt = await get_items(client, "com.victronenergy.battery.ttyS6")
    assert shunt["/ProductName"] == "SmartShunt 500A/50mV"
    assert {"/Dc/0/Current", "/Soc", "/ConsumedAmphours", "/TimeToGo"} <= set(shunt)
    assert not any(path.startswith("/Info/") for path in shunt)
    dcload = await get_items(client, "com.victronenergy.dcload.ttyS7")
    assert dcload["/Dc/0/Current"] == pytest.approx(5.0)
    multi = await get_items(client, "com.victronenergy.vebus.ttyS4")
    assert multi["/ProductName"] == "MultiPlus-II 48/5000/70-50"
    solar = await get_items(client, "com.victronenergy.solarcharger.ttyS5")
    assert solar["/Dc/0/Current"] + multi["/Dc/0/Current"] == pytest.approx(
        shunt["/Dc/0/Current"] + dcload["/Dc/0/Current"]
    )


async def test_tick_sends_properties_changed_only_from_packs(
    sim: SimBank, client: MessageBus
) -> None:
    async with Recorder(client, V2) as pack, Recorder(client, VICTRON[0]) as multi:
        changed = await sim.tick(60.0)
        assert changed > 0
        from_pack = await pack.sync()
        from_multi = await multi.sync()
    members = {m.member for m in from_pack}
    assert members == {"PropertiesChanged"}
    paths = {m.path for m in from_pack}
    assert {"/Soc", "/Dc/0/Current", "/Dc/0/Voltage"} <= paths
    soc = next(m for m in from_pack if m.path == "/Soc")
    assert unwrap(soc.body[0]["Value"]) == pytest.approx(sim.packs[0].soc_pct, abs=0.05)
    # Victron devices batch their updates as well: ItemsChanged on "/".
    assert any(m.member == "ItemsChanged" and m.path == "/" for m in from_multi)


async def test_frozen_pack_sends_nothing(sim: SimBank, client: MessageBus) -> None:
    sim.packs[0].freeze()
    async with Recorder(client, V2) as pack:
        await sim.tick(60.0)
        assert await pack.sync() == []


async def test_override_reaches_the_bus(sim: SimBank, client: MessageBus) -> None:
    sim.packs[0].set_override("/Soc", None)
    sim.packs[0].set_override("/Dc/0/Current", "garbage")
    await sim.tick(1.0)
    assert await get_value(client, V2, "/Soc") is None
    assert await get_value(client, V2, "/Dc/0/Current") == "garbage"


async def test_set_value_force_charging_off_blocks_the_pack(
    sim: SimBank, client: MessageBus
) -> None:
    (result,) = await call(
        client, V2, "/Io/ForceChargingOff", "SetValue", signature="v", body=(Variant("i", 1),)
    )
    assert result == 0
    assert sim.packs[0].charge_blocked
    await sim.tick(1.0)
    assert await get_value(client, V2, "/Info/MaxChargeCurrent") == 0.0
    assert await get_value(client, V2, "/Io/AllowToCharge") == 0
    (result,) = await call(
        client, V2, "/CustomName", "SetValue", signature="v", body=(Variant("s", "Left"),)
    )
    assert result == 0
    assert sim.packs[0].custom_name == "Left"
    (result,) = await call(
        client, V2, "/Dc/0/Voltage", "SetValue", signature="v", body=(Variant("d", 1.0),)
    )
    assert result == 1  # measurements are read-only


async def test_remove_pack_makes_its_name_vanish(sim: SimBank, client: MessageBus) -> None:
    removed = await sim.remove_pack(1)
    assert removed.spec.name == "ttyUSB1"
    assert V014 not in await list_names(client)
    assert [p.spec.name for p in sim.packs] == ["ttyUSB0"]
    await sim.tick(1.0)  # the bank goes on with the rest
    assert sim.packs[0].current_a == pytest.approx(30.0)


async def test_crashed_pack_vanishes_too(sim: SimBank, client: MessageBus) -> None:
    await sim.remove_pack(0, release_name=False)

    async def gone() -> bool:
        return V2 not in await list_names(client)

    await wait_until(gone, what=f"{V2} left the bus")


async def test_add_pack_appears_with_its_paths(sim: SimBank, client: MessageBus) -> None:
    model = await sim.add_pack(PackSpec("ttyUSB2", device_instance=3))
    assert isinstance(model, PackModel)
    name = "com.victronenergy.battery.ttyUSB2"
    assert name in await list_names(client)
    assert (await get_items(client, name))["/DeviceInstance"] == 3
    await sim.tick(1.0)
    assert model.current_a == pytest.approx(30.0 * 280.0 / 660.0)


async def test_v014_claims_its_name_before_its_paths(bus_address: str, client: MessageBus) -> None:
    model = PackModel(PackSpec("ttyUSB9", layout="v014", device_instance=9))
    # Long enough that the checks below run inside the window, even on a slow CI machine.
    service = DeviceService(model, signals="properties", register_first=True, path_delay_s=1.0)
    name = model.service_name
    starting = asyncio.create_task(service.start(bus_address))
    try:

        async def named() -> bool:
            return name in await list_names(client)

        await wait_until(named, what=f"{name} on the bus")
        early = await get_items(client, name)
        await starting
        late = await get_items(client, name)
    finally:
        await starting
        await service.stop()
    assert "/DeviceInstance" not in early
    assert late["/DeviceInstance"] == 9


async def test_start_fails_cleanly_when_a_name_is_taken(
    sim: SimBank, bus_address: str, client: MessageBus
) -> None:
    other = SimBank([PackSpec("ttyUSB0")])
    with pytest.raises(Exception, match="ttyUSB0"):
        await other.start(bus_address)
    assert other.service_names == []
    assert V2 in await list_names(client)


async def test_cli_runs_until_sigterm_and_exits_zero(bus_address: str, client: MessageBus) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dbus_aggregate_batteries.sim",
        "--bus",
        bus_address,
        "--batteries",
        "3",
        "--layout",
        "mixed",
        "--cells",
        "24",
        "--tick",
        "0.05",
        "--all-cells-change",
        "--victron",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20.0):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("READY "), line
        announced = set(line.split()[1:])
        expected = {f"com.victronenergy.battery.ttyUSB{i}" for i in range(3)} | set(VICTRON)
        assert announced == expected
        assert expected <= await list_names(client)
        cells = [f"/Voltages/Cell{k}" for k in range(1, 25)]
        counts = dict.fromkeys(cells, 0)
        async with Recorder(client, "com.victronenergy.battery.ttyUSB0") as pack:

            async def several_ticks_seen() -> bool:
                for m in await pack.sync():
                    if m.path in counts:
                        counts[m.path] += 1
                return min(counts.values()) >= 5

            await wait_until(several_ticks_seen, what="cell voltages changing")
        # Every cell changed on every tick (a tick may straddle the last barrier: +-1).
        assert max(counts.values()) - min(counts.values()) <= 1, counts
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10.0):
            code = await proc.wait()
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
