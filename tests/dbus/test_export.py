"""BusItemService on a private bus, checked against velib's wire format (venus-dbus.md §1).

The service and the client always use separate connections. Signals are captured on the client
with a per-sender match rule; a Peer.Ping round trip to the service is the barrier that makes
every signal sent before it visible (messages between two peers stay in order), so no sleeps.
"""

from __future__ import annotations

import itertools
import os
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dbus_aggregate_batteries.core.venus import BUSITEM, Value
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell._dbus import (
    DBusCallError,
    Message,
    MessageBus,
    MessageFlag,
    MessageType,
    Variant,
    add_match,
    call,
    remove_match,
    unwrap,
)
from dbus_aggregate_batteries.shell.export import BusItemService, NameTakenError, Signals

pytestmark = pytest.mark.dbus

MakeBus = Callable[[], Awaitable[MessageBus]]

PEER = "org.freedesktop.DBus.Peer"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"

BATTERY: dict[str, Value] = {
    "/Mgmt/ProcessName": "dbus-aggregate-batteries",
    "/Mgmt/ProcessVersion": "0.1.0",
    "/Mgmt/Connection": "Virtual",
    "/DeviceInstance": 7,
    "/ProductId": 0xBA44,
    "/ProductName": "Aggregate battery",
    "/FirmwareVersion": "0.1.0",
    "/HardwareVersion": None,
    "/Connected": 1,
    "/Dc/0/Voltage": 53.2,
    "/Dc/0/Current": None,
    "/Soc": 55.5,
}

_names = itertools.count()


def unique_name() -> str:
    return f"com.victronenergy.battery.test{os.getpid()}_{next(_names)}"


class SignalRecorder:
    """Collects BusItem signals from one sender on a client connection."""

    def __init__(self, bus: MessageBus, sender: str) -> None:
        self.bus = bus
        self.sender = sender
        self.rule = f"type='signal',sender='{sender}',interface='{BUSITEM}'"
        self.messages: list[Any] = []

    async def __aenter__(self) -> SignalRecorder:
        self.bus.add_message_handler(self._on_message)
        await add_match(self.bus, self.rule)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.bus.remove_message_handler(self._on_message)
        if self.bus.connected:
            await remove_match(self.bus, self.rule)

    def _on_message(self, msg: Any) -> None:
        if msg.message_type == MessageType.SIGNAL and msg.sender == self.sender:
            self.messages.append(msg)

    async def sync(self) -> list[Any]:
        """Barrier: everything the service sent before answering this Ping has arrived."""
        await call(self.bus, self.sender, "/", "Ping", interface=PEER)
        got, self.messages = self.messages, []
        return got

    @staticmethod
    def items_changed(messages: list[Any]) -> list[Any]:
        return [m for m in messages if m.member == "ItemsChanged"]

    @staticmethod
    def properties_changed(messages: list[Any]) -> list[Any]:
        return [m for m in messages if m.member == "PropertiesChanged"]


def reject_above_60(path: str, value: Value) -> bool:
    return isinstance(value, (int, float)) and value <= 60


async def start_service(
    make_bus: MakeBus, signals: Signals = "both", name: str | None = None
) -> BusItemService:
    service = BusItemService(await make_bus(), name or unique_name(), signals=signals)
    for path, value in BATTERY.items():
        service.add_path(path, value)
    service.add_path("/CustomName", "", writable=True)
    service.add_path("/Info/MaxChargeVoltage", 55.2, writable=True, on_change=reject_above_60)
    await service.register()
    return service


@pytest.fixture
async def service(make_bus: MakeBus) -> BusItemService:
    return await start_service(make_bus)


@pytest.fixture
async def client(make_bus: MakeBus) -> MessageBus:
    return await make_bus()


@pytest.fixture
async def owner(client: MessageBus, service: BusItemService) -> str:
    """The service's unique name: signals carry it, not the well-known name."""
    (unique,) = await call(
        client,
        _dbus.DBUS_SERVICE,
        _dbus.DBUS_PATH,
        "GetNameOwner",
        _dbus.DBUS_SERVICE,
        "s",
        (service.name,),
    )
    assert isinstance(unique, str)
    return unique


@pytest.fixture
async def recorder(client: MessageBus, owner: str) -> AsyncIterator[SignalRecorder]:
    async with SignalRecorder(client, owner) as rec:
        yield rec


async def raw_call(
    client: MessageBus,
    destination: str,
    path: str,
    member: str,
    interface: str | None = BUSITEM,
    signature: str = "",
    body: list[Any] | None = None,
) -> Any:
    """The whole reply Message, for checks on its signature."""
    msg = Message(
        destination=destination,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=body or [],
    )
    reply = await client.call(msg)
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    return reply


# -- library selection --------------------------------------------------------------------------


def test_library_follows_environment() -> None:
    forced = os.environ.get("DAB_DBUS_LIBRARY")
    assert _dbus.LIBRARY in ("dbus_fast", "dbus_next")
    if forced:
        assert forced == _dbus.LIBRARY
    assert type(Variant("i", 1)).__module__.startswith(_dbus.LIBRARY)


# -- root and tree nodes ------------------------------------------------------------------------


async def test_get_items_lists_every_item_with_value_and_text(
    client: MessageBus, service: BusItemService
) -> None:
    reply = await raw_call(client, service.name, "/", "GetItems")
    assert reply.signature == "a{sa{sv}}"
    items = reply.body[0]
    assert set(items) == set(service.paths())
    assert all(set(entry) == {"Value", "Text"} for entry in items.values())
    assert all(entry["Text"].signature == "s" for entry in items.values())
    voltage = items["/Dc/0/Voltage"]
    assert (voltage["Value"].signature, voltage["Value"].value) == ("d", 53.2)
    assert voltage["Text"].value == "53.20V"
    current = items["/Dc/0/Current"]
    assert (current["Value"].signature, current["Value"].value) == ("ai", [])
    assert current["Text"].value == "---"
    instance = items["/DeviceInstance"]["Value"]
    assert (instance.signature, instance.value) == ("i", 7)
    assert items["/ProductId"]["Text"].value == "0xBA44"


async def test_root_get_value_is_a_dict_keyed_without_leading_slash(
    client: MessageBus, service: BusItemService
) -> None:
    reply = await raw_call(client, service.name, "/", "GetValue")
    assert reply.signature == "v"
    variant = reply.body[0]
    assert variant.signature == "a{sv}"
    assert set(variant.value) == {path[1:] for path in service.paths()}
    assert variant.value["Dc/0/Voltage"].value == 53.2
    assert variant.value["Dc/0/Current"].signature == "ai"


async def test_root_get_text_is_a_string_dict_in_a_variant(
    client: MessageBus, service: BusItemService
) -> None:
    reply = await raw_call(client, service.name, "/", "GetText")
    assert reply.signature == "v"
    variant = reply.body[0]
    assert variant.signature == "a{ss}"
    assert variant.value["ProductId"] == "0xBA44"
    assert variant.value["Dc/0/Voltage"] == "53.20V"
    assert variant.value["Dc/0/Current"] == "---"


async def test_tree_node_answers_for_its_subtree(
    client: MessageBus, service: BusItemService
) -> None:
    (dc,) = await call(client, service.name, "/Dc", "GetValue")
    assert dc.signature == "a{sv}"
    assert set(dc.value) == {"0/Voltage", "0/Current"}
    (dc0,) = await call(client, service.name, "/Dc/0", "GetValue")
    assert set(dc0.value) == {"Voltage", "Current"}
    (texts,) = await call(client, service.name, "/Dc/0", "GetText")
    assert texts.signature == "a{ss}"
    assert texts.value == {"Voltage": "53.20V", "Current": "---"}


# -- leaves -------------------------------------------------------------------------------------


async def test_leaf_get_value_and_text(client: MessageBus, service: BusItemService) -> None:
    reply = await raw_call(client, service.name, "/Dc/0/Voltage", "GetValue")
    assert reply.signature == "v"
    assert (reply.body[0].signature, reply.body[0].value) == ("d", 53.2)
    reply = await raw_call(client, service.name, "/Dc/0/Voltage", "GetText")
    assert reply.signature == "s"
    assert reply.body == ["53.20V"]
    (product,) = await call(client, service.name, "/ProductId", "GetValue")
    assert (product.signature, product.value) == ("i", 0xBA44)
    assert await call(client, service.name, "/ProductId", "GetText") == ["0xBA44"]
    assert await call(client, service.name, "/ProductName", "GetText") == ["Aggregate battery"]
    assert await call(
        client, service.name, "/Dc/0/Voltage", "GetDescription", None, "si", ("en", 100)
    ) == [""]


async def test_invalid_value_is_an_empty_int32_array(
    client: MessageBus, service: BusItemService
) -> None:
    (value,) = await call(client, service.name, "/Dc/0/Current", "GetValue")
    assert (value.signature, value.value) == ("ai", [])
    assert unwrap(value) is None
    assert await call(client, service.name, "/Dc/0/Current", "GetText") == ["---"]


async def test_received_values_unwrap_to_plain_python(
    client: MessageBus, service: BusItemService
) -> None:
    (root,) = await call(client, service.name, "/", "GetValue")
    plain = unwrap(root)
    assert isinstance(plain, dict)
    assert plain["Dc/0/Voltage"] == 53.2
    assert plain["DeviceInstance"] == 7
    assert plain["ProductName"] == "Aggregate battery"
    assert plain["HardwareVersion"] is None


async def test_unknown_path_is_unknown_object(client: MessageBus, service: BusItemService) -> None:
    for interface in (BUSITEM, None):
        with pytest.raises(DBusCallError) as err:
            await call(client, service.name, "/Nope", "GetValue", interface)
        assert err.value.name == "org.freedesktop.DBus.Error.UnknownObject"


async def test_unknown_method_is_unknown_method(
    client: MessageBus, service: BusItemService
) -> None:
    for path, member in (("/Dc", "GetItems"), ("/Soc", "GetItems"), ("/Soc", "Frobnicate")):
        with pytest.raises(DBusCallError) as err:
            await call(client, service.name, path, member)
        assert err.value.name == "org.freedesktop.DBus.Error.UnknownMethod", (path, member)


async def test_calls_without_interface_header_are_answered(
    client: MessageBus, service: BusItemService
) -> None:
    # systemcalc on Venus <= v3.4x and VeDbusItemImport call without an interface.
    (value,) = await call(client, service.name, "/Soc", "GetValue", interface=None)
    assert (value.signature, value.value) == ("d", 55.5)
    assert await call(client, service.name, "/Soc", "GetText", interface=None) == ["55.5%"]
    reply = await raw_call(client, service.name, "/", "GetItems", interface=None)
    assert reply.signature == "a{sa{sv}}"
    assert set(reply.body[0]) == set(service.paths())
    (texts,) = await call(client, service.name, "/", "GetText", interface=None)
    assert texts.signature == "a{ss}"


@pytest.mark.parametrize(
    ("path", "member", "interface", "error"),
    [
        ("/Soc", "GetValue", BUSITEM, None),
        ("/Soc", "GetValue", None, None),
        ("/", "GetItems", None, None),
        ("/Dc", "GetText", None, None),
        ("/Nope", "GetValue", None, "org.freedesktop.DBus.Error.UnknownObject"),
        ("/Soc", "GetItems", None, "org.freedesktop.DBus.Error.UnknownMethod"),
        ("/Soc", "Introspect", INTROSPECTABLE, None),
        ("/Soc", "Introspect", None, None),
        ("/Soc", "Ping", PEER, None),
    ],
)
async def test_each_call_gets_exactly_one_reply(
    client: MessageBus,
    service: BusItemService,
    path: str,
    member: str,
    interface: str | None,
    error: str | None,
) -> None:
    # The handler's returned Message is the reply; the library must not add its own error.
    replies: list[Any] = []

    def record(msg: Any) -> None:
        if msg.message_type in (MessageType.METHOD_RETURN, MessageType.ERROR):
            replies.append(msg.reply_serial)

    client.add_message_handler(record)
    try:
        msg = Message(destination=service.name, path=path, interface=interface, member=member)
        reply = await client.call(msg)
        await call(client, service.name, "/", "Ping", interface=PEER)
    finally:
        client.remove_message_handler(record)
    assert reply.error_name == error, reply.body
    assert replies.count(msg.serial) == 1


async def test_introspection_lists_methods_and_children(
    client: MessageBus, service: BusItemService
) -> None:
    (root_xml,) = await call(client, service.name, "/", "Introspect", INTROSPECTABLE)
    root = ET.fromstring(root_xml)
    children = {node.get("name") for node in root.findall("node")}
    assert {"Dc", "Mgmt", "Soc", "DeviceInstance", "Info"} <= children
    busitem = root.find(f"interface[@name='{BUSITEM}']")
    assert busitem is not None
    assert {m.get("name") for m in busitem.findall("method")} == {
        "GetValue",
        "GetText",
        "GetItems",
    }
    assert [s.get("name") for s in busitem.findall("signal")] == ["ItemsChanged"]

    (node_xml,) = await call(client, service.name, "/Dc", "Introspect", INTROSPECTABLE)
    node = ET.fromstring(node_xml)
    assert [n.get("name") for n in node.findall("node")] == ["0"]

    (leaf_xml,) = await call(client, service.name, "/Dc/0/Voltage", "Introspect", INTROSPECTABLE)
    leaf = ET.fromstring(leaf_xml)
    busitem = leaf.find(f"interface[@name='{BUSITEM}']")
    assert busitem is not None
    assert {m.get("name") for m in busitem.findall("method")} == {
        "GetValue",
        "GetText",
        "SetValue",
        "GetDescription",
    }
    assert leaf.findall("node") == []


# -- SetValue -----------------------------------------------------------------------------------


async def test_set_value_on_read_only_item_is_refused(
    client: MessageBus, service: BusItemService, recorder: SignalRecorder
) -> None:
    assert await call(
        client, service.name, "/Soc", "SetValue", BUSITEM, "v", (Variant("d", 80.0),)
    ) == [1]
    assert service["/Soc"] == 55.5
    assert await recorder.sync() == []


async def test_set_value_on_writable_item_emits_properties_changed(
    client: MessageBus, service: BusItemService, recorder: SignalRecorder
) -> None:
    result = await call(
        client, service.name, "/CustomName", "SetValue", BUSITEM, "v", (Variant("s", "House bank"),)
    )
    assert result == [0]
    assert service["/CustomName"] == "House bank"
    signals = await recorder.sync()
    assert len(signals) == 1
    (signal,) = signals
    assert (signal.path, signal.member, signal.signature) == (
        "/CustomName",
        "PropertiesChanged",
        "a{sv}",
    )
    change = signal.body[0]
    assert (change["Value"].signature, change["Value"].value) == ("s", "House bank")
    assert (change["Text"].signature, change["Text"].value) == ("s", "House bank")
    assert await call(client, service.name, "/CustomName", "GetText") == ["House bank"]

    # Setting the same value again is accepted and silent.
    result = await call(
        client, service.name, "/CustomName", "SetValue", BUSITEM, "v", (Variant("s", "House bank"),)
    )
    assert result == [0]
    assert await recorder.sync() == []


async def test_set_value_rejected_by_callback(
    client: MessageBus, service: BusItemService, recorder: SignalRecorder
) -> None:
    path = "/Info/MaxChargeVoltage"
    assert await call(
        client, service.name, path, "SetValue", BUSITEM, "v", (Variant("d", 70.0),)
    ) == [2]
    assert service[path] == 55.2
    assert await recorder.sync() == []
    # An int for a float item is coerced, then accepted by the callback.
    assert await call(
        client, service.name, path, "SetValue", BUSITEM, "v", (Variant("i", 56),)
    ) == [0]
    assert service[path] == 56.0
    assert type(service[path]) is float
    assert len(await recorder.sync()) == 1


async def test_set_value_of_wrong_type_is_refused(
    client: MessageBus, service: BusItemService
) -> None:
    path = "/Info/MaxChargeVoltage"
    assert await call(
        client, service.name, path, "SetValue", BUSITEM, "v", (Variant("s", "high"),)
    ) == [1]
    assert service[path] == 55.2


async def test_set_value_without_reply_expected_is_applied_silently(
    client: MessageBus, service: BusItemService
) -> None:
    replies: list[Any] = []

    def record(msg: Any) -> None:
        if msg.message_type in (MessageType.METHOD_RETURN, MessageType.ERROR):
            replies.append(msg.reply_serial)

    client.add_message_handler(record)
    try:
        msg = Message(
            destination=service.name,
            path="/CustomName",
            interface=BUSITEM,
            member="SetValue",
            signature="v",
            body=[Variant("s", "quiet")],
            flags=MessageFlag.NO_REPLY_EXPECTED,
        )
        sent = client.send(msg)
        if sent is not None:
            await sent
        await call(client, service.name, "/", "Ping", interface=PEER)
    finally:
        client.remove_message_handler(record)
    assert service["/CustomName"] == "quiet"
    assert msg.serial not in replies


# -- publish ------------------------------------------------------------------------------------


async def test_publish_signals_only_changed_items(
    service: BusItemService, recorder: SignalRecorder
) -> None:
    changed = service.publish({"/Dc/0/Voltage": 52.5, "/Soc": 55.5, "/Dc/0/Current": -3.25})
    assert changed == 2
    signals = await recorder.sync()

    (items,) = SignalRecorder.items_changed(signals)
    assert (items.path, items.signature) == ("/", "a{sa{sv}}")
    body = items.body[0]
    assert set(body) == {"/Dc/0/Voltage", "/Dc/0/Current"}
    assert body["/Dc/0/Voltage"]["Value"].value == 52.5
    assert body["/Dc/0/Voltage"]["Text"].value == "52.50V"
    assert body["/Dc/0/Current"]["Text"].value == "-3.25A"

    properties = SignalRecorder.properties_changed(signals)
    assert sorted(m.path for m in properties) == ["/Dc/0/Current", "/Dc/0/Voltage"]
    assert all(m.signature == "a{sv}" for m in properties)
    assert all(set(m.body[0]) == {"Value", "Text"} for m in properties)
    assert len(signals) == 3


async def test_publish_without_change_sends_nothing(
    service: BusItemService, recorder: SignalRecorder
) -> None:
    assert service.publish(dict(BATTERY)) == 0
    assert service.publish({"/Dc/0/Voltage": 52.001}) == 1
    assert len(await recorder.sync()) == 2
    # Below the published precision (2 decimals): noise, not a change.
    assert service.publish({"/Dc/0/Voltage": 52.004}) == 0
    assert service["/Dc/0/Voltage"] == 52.0
    assert service.publish({"/Soc": float("nan")}) == 1  # NaN is published as invalid
    assert service.publish({"/Soc": float("inf")}) == 0
    signals = await recorder.sync()
    assert [(m.member, m.path) for m in signals] == [
        ("ItemsChanged", "/"),
        ("PropertiesChanged", "/Soc"),
    ]
    assert signals[1].body[0]["Value"].signature == "ai"
    assert signals[1].body[0]["Text"].value == "---"


@pytest.mark.parametrize(
    ("mode", "members"),
    [
        ("items", ["ItemsChanged"]),
        ("properties", ["PropertiesChanged", "PropertiesChanged"]),
        ("both", ["ItemsChanged", "PropertiesChanged", "PropertiesChanged"]),
    ],
)
async def test_publish_signal_modes(
    make_bus: MakeBus, client: MessageBus, mode: Signals, members: list[str]
) -> None:
    service = await start_service(make_bus, signals=mode)
    async with SignalRecorder(client, service._bus.unique_name) as recorder:
        assert service.publish({"/Soc": 60.0, "/Dc/0/Voltage": 53.0}) == 2
        signals = await recorder.sync()
    assert [m.member for m in signals] == members


@pytest.mark.parametrize("mode", ["items", "properties", "both"])
async def test_set_value_emits_one_properties_changed_in_every_mode(
    make_bus: MakeBus, client: MessageBus, mode: Signals
) -> None:
    # velib: a SetValue outside a batch is announced on its own path only.
    service = await start_service(make_bus, signals=mode)
    async with SignalRecorder(client, service._bus.unique_name) as recorder:
        assert await call(
            client, service.name, "/CustomName", "SetValue", BUSITEM, "v", (Variant("s", "x"),)
        ) == [0]
        signals = await recorder.sync()
    assert [(m.member, m.path) for m in signals] == [("PropertiesChanged", "/CustomName")]
    assert signals[0].body[0]["Value"].value == "x"


async def test_publish_adds_unknown_paths(
    client: MessageBus, service: BusItemService, recorder: SignalRecorder
) -> None:
    assert service.publish({"/Voltages/Cell1": 3.3124, "/Balancing": 1}) == 2
    assert "/Voltages/Cell1" in service
    (items,) = SignalRecorder.items_changed(await recorder.sync())
    assert set(items.body[0]) == {"/Voltages/Cell1", "/Balancing"}
    assert items.body[0]["/Voltages/Cell1"]["Text"].value == "3.312V"
    (node,) = await call(client, service.name, "/Voltages", "GetValue")
    assert unwrap(node) == {"Cell1": 3.312}


# -- registration -------------------------------------------------------------------------------


async def test_taken_name_raises(make_bus: MakeBus, service: BusItemService) -> None:
    other = BusItemService(await make_bus(), service.name)
    other.add_path("/DeviceInstance", 8)
    with pytest.raises(NameTakenError):
        await other.register()


async def test_paths_added_after_register_are_served(make_bus: MakeBus, client: MessageBus) -> None:
    # Old dbus-serialbattery (v0.14) claims its name first and adds paths afterwards.
    service = BusItemService(await make_bus(), unique_name())
    await service.register()
    (items,) = await call(client, service.name, "/", "GetItems")
    assert items == {}
    service.add_path("/DeviceInstance", 3)
    service.add_path("/Dc/0/Voltage", 13.2)
    (items,) = await call(client, service.name, "/", "GetItems")
    assert set(items) == {"/DeviceInstance", "/Dc/0/Voltage"}
    (value,) = await call(client, service.name, "/Dc/0/Voltage", "GetValue")
    assert value.value == 13.2


async def test_unregister_releases_the_name(client: MessageBus, service: BusItemService) -> None:
    async def has_owner() -> bool:
        (owned,) = await call(
            client,
            _dbus.DBUS_SERVICE,
            _dbus.DBUS_PATH,
            "NameHasOwner",
            _dbus.DBUS_SERVICE,
            "s",
            (service.name,),
        )
        return bool(owned)

    assert await has_owner()
    await service.unregister()
    assert not await has_owner()
    assert service.publish({"/Soc": 1.0}) == 1  # values are still kept, just not signalled


def test_add_path_rejects_bad_and_conflicting_paths() -> None:
    service = BusItemService(object(), "com.victronenergy.battery.offline")
    service.add_path("/Dc/0/Voltage", 1.0)
    for bad in ("Soc", "/", "/Soc/", "/Dc//Power", "/Dc/0/Voltage", "/Dc", "/Dc/0/Voltage/X"):
        with pytest.raises(ValueError):
            service.add_path(bad)
    assert service.paths() == ["/Dc/0/Voltage"]


# -- client helpers -----------------------------------------------------------------------------


async def test_call_times_out(make_bus: MakeBus, client: MessageBus) -> None:
    silent = await make_bus()
    silent.add_message_handler(lambda msg: msg.message_type == MessageType.METHOD_CALL)
    with pytest.raises(TimeoutError):
        await call(client, silent.unique_name, "/", "GetValue", timeout_s=0.2)
