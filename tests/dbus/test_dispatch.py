"""One message handler per connection (shell/dispatch.py), with real messages on a private bus."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_service import AGG, MakeBus, test_config, wait_until

from dbus_aggregate_batteries.core.venus import BUSITEM
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.app import Application
from dbus_aggregate_batteries.shell.dispatch import Dispatcher
from dbus_aggregate_batteries.shell.export import BusItemService, wrap
from dbus_aggregate_batteries.sim.model import constant_profile, default_pack_specs
from dbus_aggregate_batteries.sim.services import SimBank


@pytest.fixture
async def bank(bus_address: str) -> AsyncIterator[SimBank]:
    sim = SimBank(default_pack_specs(2, layout="mixed"), profile=constant_profile(-20.0))
    await sim.start(bus_address)
    await sim.tick(1.0)
    yield sim
    await sim.stop()


def handlers(bus: _dbus.MessageBus) -> list[Any]:
    # Both libraries keep the installed handlers in this list (dbus-next 0.2.3, dbus-fast 5.x).
    found: list[Any] = bus._user_message_handlers
    return found


async def signal_from(bus: _dbus.MessageBus, path: str, value: Any) -> None:
    msg = _dbus.Message(
        message_type=_dbus.MessageType.SIGNAL, path=path, interface=BUSITEM,
        member="PropertiesChanged", signature="a{sv}",
        body=[{"Value": wrap(value), "Text": _dbus.Variant("s", str(value))}],
    )
    await bus.send(msg)


async def test_the_service_installs_one_handler_and_still_answers_and_listens(
    make_bus: MakeBus, bank: SimBank, tmp_path: Path
) -> None:
    bus = await make_bus()
    app = Application(test_config(), bus, state_dir=tmp_path)
    await app.start()
    try:
        # Discovery and the export share one handler (no settings service on this bus).
        assert handlers(bus) == [app.dispatcher.on_message]
        client = await make_bus()
        # Method calls reach the export, with and without an interface header.
        for interface in (BUSITEM, None):
            reply = await _dbus.call(client, AGG, "/ProductName", "GetValue", interface)
            assert _dbus.unwrap(reply[0]) == app.service["/ProductName"]
        await _dbus.call(client, AGG, "/", "Ping", "org.freedesktop.DBus.Peer")
        # Signals reach discovery: a pack's change shows in the model.
        svc = app.state.services[bank.pack_names[0]]
        bank.packs[0].set_override("/Dc/0/Voltage", 51.23)
        await bank.tick(0.0)
        await wait_until(lambda: svc.values.get("/Dc/0/Voltage") == 51.23)
    finally:
        await app.shutdown()
    assert handlers(bus) == []  # the last component gone, the dispatcher is removed too


async def test_signal_handlers_are_isolated_and_sender_scoped(
    make_bus: MakeBus, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await make_bus()
    other = await make_bus()
    third = await make_bus()
    for peer in (other, third):
        await _dbus.add_match(bus, f"type='signal',sender='{peer.unique_name}'")
    dispatcher = Dispatcher(bus)
    seen: list[tuple[str, str]] = []

    def broken(msg: _dbus.Message) -> None:
        raise RuntimeError("boom")

    def every(msg: _dbus.Message) -> None:
        seen.append(("every", msg.path))

    def scoped(msg: _dbus.Message) -> None:
        seen.append(("scoped", msg.path))

    assert not dispatcher.installed
    dispatcher.add_signal_handler(broken)
    dispatcher.add_signal_handler(every)
    dispatcher.add_signal_handler(scoped, sender=other.unique_name)
    assert dispatcher.installed and handlers(bus) == [dispatcher.on_message]
    with caplog.at_level(logging.ERROR):
        await signal_from(third, "/A", 1.0)
        await signal_from(other, "/B", 2.0)
        await wait_until(lambda: ("scoped", "/B") in seen)
    assert seen == [("every", "/A"), ("every", "/B"), ("scoped", "/B")]
    assert "a signal handler failed" in caplog.text  # logged, and the next handler still ran
    for handler in (broken, every):
        dispatcher.remove_signal_handler(handler)
    assert dispatcher.installed
    dispatcher.remove_signal_handler(scoped, sender=other.unique_name)
    assert not dispatcher.installed and handlers(bus) == []


async def test_one_call_handler_per_connection(make_bus: MakeBus) -> None:
    bus = await make_bus()
    dispatcher = Dispatcher(bus)
    first = BusItemService(bus, "com.victronenergy.battery.first", dispatcher=dispatcher)
    first.add_path("/A", 1)
    second = BusItemService(bus, "com.victronenergy.battery.second", dispatcher=dispatcher)
    await first.register()
    with pytest.raises(RuntimeError, match="already has a method call handler"):
        await second.register()
    client = await make_bus()
    reply = await _dbus.call(client, "com.victronenergy.battery.first", "/A", "GetValue")
    assert _dbus.unwrap(reply[0]) == 1
    await first.unregister()
    assert handlers(bus) == []
    await asyncio.sleep(0)
