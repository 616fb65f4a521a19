"""A hostile client on the bus: huge and unprintable names, and the largest messages we emit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from test_faults import start_app
from test_service import AGG, get_items

from dbus_aggregate_batteries.core.venus import CUSTOM_NAME_MAX_CHARS
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.export import BusItemService
from dbus_aggregate_batteries.sim.model import constant_profile, default_pack_specs
from dbus_aggregate_batteries.sim.services import SimBank
from dbus_aggregate_batteries.sim.settings import SimSettings

MakeBus = Callable[[], Awaitable[_dbus.MessageBus]]
BASE = "/Settings/Devices/aggregatebatteries"


@pytest.fixture
async def bank(bus_address: str) -> AsyncIterator[SimBank]:
    sim = SimBank(default_pack_specs(2), profile=constant_profile(0.0))
    await sim.start(bus_address)
    await sim.tick(1.0)
    yield sim
    await sim.stop()


async def set_name(client: _dbus.MessageBus, value: object) -> int:
    variant = _dbus.Variant("s", value) if isinstance(value, str) else _dbus.Variant("i", value)
    reply = await _dbus.call(client, AGG, "/CustomName", "SetValue", signature="v",
                             body=(variant,), timeout_s=20.0)
    result: int = reply[0]
    return result


async def test_every_connection_has_the_writer_guard(make_bus: MakeBus) -> None:
    bus = await make_bus()
    assert _dbus.writer_guarded(bus)
    assert _dbus.guard_writer(bus)  # idempotent
    assert _dbus.writer_guarded(bus)


async def test_a_burst_larger_than_the_socket_buffer_keeps_the_connection(
    make_bus: MakeBus,
) -> None:
    """Without the guard both libraries finalize the connection with BlockingIOError here."""
    bus = await make_bus()
    sent = []
    for size, count in ((50_000, 400), (1_000_000, 8)):
        for _ in range(count):
            msg = _dbus.Message(message_type=_dbus.MessageType.SIGNAL, path="/", member="Big",
                                interface="com.example.Hostile", signature="s",
                                body=["x" * size])
            fut = bus.send(msg)
            if fut is not None:
                sent.append(fut)
    async with asyncio.timeout(30):
        results = await asyncio.gather(*sent, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert bus.connected
    # And the connection still works both ways.
    names = await _dbus.call(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "ListNames",
                             "org.freedesktop.DBus")
    assert "org.freedesktop.DBus" in names[0]


async def test_custom_name_refuses_huge_and_unprintable_values(
    bank: SimBank, make_bus: MakeBus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_bus()
    app = await start_app(make_bus, tmp_path)
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            # velib's answers: 2 = rejected by the service, 1 = wrong type.
            assert await set_name(client, "x" * 10_000_000) == 2
            assert await set_name(client, "x" * 1_000_000) == 2
            assert await set_name(client, "\x01\x07\x1b[2J evil") == 2
            assert await set_name(client, "x" * (CUSTOM_NAME_MAX_CHARS + 1)) == 2
            assert await set_name(client, 7) == 1
            assert (await get_items(client, AGG))["/CustomName"] == "AggregateBatteries"
            longest = "Ü" * CUSTOM_NAME_MAX_CHARS
            assert await set_name(client, longest) == 0
            assert (await get_items(client, AGG))["/CustomName"] == longest
        assert app.bus.connected
        # One short warning for the whole burst (rate-limited), no value echoed.
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "10000000 characters" in warnings[0] and len(warnings[0]) < 120
        assert sum(len(r.getMessage()) for r in caplog.records) < 2000
    finally:
        await app.shutdown()


async def test_a_bad_name_in_localsettings_is_not_used(
    bus_address: str, bank: SimBank, make_bus: MakeBus, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = SimSettings({f"{BASE}/CustomName": "\x1b[31mred" + "y" * 100})
    await settings.start(bus_address)
    try:
        app = await start_app(make_bus, tmp_path)
        try:
            assert app.service["/CustomName"] == "AggregateBatteries"
            assert "ignoring the custom name stored in localsettings" in caplog.text
            assert "\x1b" not in caplog.text
        finally:
            await app.shutdown()
    finally:
        await settings.stop()


async def test_largest_replies_and_signals_keep_the_service_up(
    bus_address: str, make_bus: MakeBus, tmp_path: Path
) -> None:
    """16 packs x 32 cells republished, the longest name, 12 clients calling GetItems at once.

    The GetItems reply is the largest message the service sends (every path with its text),
    and many of them queue up on the service's socket faster than the daemon reads them.
    """
    sim = SimBank(default_pack_specs(16, cells=32), profile=constant_profile(20.0))
    await sim.start(bus_address)
    await sim.tick(1.0)
    try:
        app = await start_app(make_bus, tmp_path, publish={"send_cell_voltages": True},
                              discovery={"expected_count": 16})
        try:
            app.tick()
            assert app.service["/System/NrOfModulesOnline"] == 16
            assert app.service["/Info/MaxChargeVoltage"] == pytest.approx(32 * 3.45, abs=0.1)
            clients = [await make_bus() for _ in range(12)]
            assert await set_name(clients[0], "N" * CUSTOM_NAME_MAX_CHARS) == 0

            async def hammer(client: _dbus.MessageBus) -> int:
                sizes = 0
                for _ in range(5):
                    items = await get_items(client, AGG)
                    sizes += len(items)
                return sizes

            async with asyncio.timeout(60):
                counts = await asyncio.gather(*(hammer(c) for c in clients))
                for _ in range(3):  # ticks in between signal the changed cells
                    await sim.tick(1.0)
                    app.tick()
            assert len(app.service.paths()) > 16 * 32
            assert counts == [5 * len(app.service.paths())] * len(clients)
            assert app.bus.connected and not app.stopping.is_set()
        finally:
            await app.shutdown()
    finally:
        await sim.stop()


async def test_without_any_valid_pack_cvl_is_zero_not_invalid(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """Registered with no pack at all: CVL is a valid 0 V, so DVCC keeps us as the BMS."""
    client = await make_bus()
    app = await start_app(make_bus, tmp_path, fault={"startup_window_s": 0.3})
    try:
        reply = await _dbus.call(client, AGG, "/Info/MaxChargeVoltage", "GetValue")
        assert reply[0].signature == "d" and reply[0].value == 0.0
        items = await get_items(client, AGG)
        assert items["/Info/MaxChargeCurrent"] == 0.0
        assert items["/Alarms/BmsCable"] == 2
        app.tick()
        assert app.service["/Info/MaxChargeVoltage"] == 0.0
    finally:
        await app.shutdown()


async def test_the_largest_configurable_reply_reaches_many_clients(make_bus: MakeBus) -> None:
    """64 packs x 64 cells republished (the config's maxima): a ~330 kB GetItems reply, more
    than the kernel's ~210 kB socket buffer, to 8 clients at once, while every cell changes."""
    bus = await make_bus()
    service = BusItemService(bus, "com.victronenergy.battery.hostiletest")
    cells = {f"/Voltages/Pack{p:02d}_Cell{c}": 3.3 + c / 1000 for p in range(64)
             for c in range(1, 65)}
    for path, value in cells.items():
        service.add_path(path, value)
    await service.register()
    clients = [await make_bus() for _ in range(8)]
    try:
        async def read(client: _dbus.MessageBus) -> int:
            reply = await _dbus.call(client, service.name, "/", "GetItems", timeout_s=30.0)
            return len(reply[0])

        async with asyncio.timeout(60):
            calls = [read(c) for c in clients for _ in range(3)]
            service.publish({path: value + 0.01 for path, value in cells.items()})
            counts = await asyncio.gather(*calls)
        assert counts == [len(cells)] * len(calls)
        assert bus.connected
    finally:
        await service.unregister()
