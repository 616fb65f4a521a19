"""A velib-compatible ``com.victronenergy.BusItem`` service (see venus-dbus.md §1).

One low-level message handler answers for every path instead of one exported object per path:
the library's own dispatch rejects calls without an interface header (dbus-next 0.2.3, dbus-fast
< 2.37), which Venus consumers before v3.50 send, and hundreds of exported objects would cost
memory and introspection work for nothing. The handler therefore also answers ``Introspect`` and
``Peer.Ping`` for our paths.

Handler return convention (identical in dbus-next 0.2.3 and dbus-fast 5.x, checked by the tests
in tests/dbus): a returned ``Message`` is sent as the reply and the call counts as handled; any
other truthy value marks it handled without a reply; ``None`` passes the message on to the
library's own dispatch. Neither library looks at ``NO_REPLY_EXPECTED`` for a returned reply, so
the handler returns ``True`` instead of a reply for such calls.

One service per connection: the handler claims every BusItem call that reaches its connection,
answering ``UnknownObject`` for paths it does not have. The handler is the call handler of a
:class:`~dbus_aggregate_batteries.shell.dispatch.Dispatcher`: the service's own when it is used
alone, or the application's, shared with discovery, so signals never reach this handler.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from dbus_aggregate_batteries.core.venus import (
    BUSITEM,
    Value,
    precision_of,
    render_text,
    renderer_of,
    round_float,
    round_for_path,
    text_for_path,
)
from dbus_aggregate_batteries.shell._dbus import (
    Message,
    MessageBus,
    MessageFlag,
    MessageType,
    NameFlag,
    RequestNameReply,
    Variant,
    unwrap,
)
from dbus_aggregate_batteries.shell.dispatch import Dispatcher

__all__ = ["BusItemService", "NameTakenError", "Signals", "wrap"]

log = logging.getLogger(__name__)

Signals = Literal["both", "items", "properties"]
OnChange = Callable[[str, Value], bool]

INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"
ERROR_UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
ERROR_UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
ERROR_INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"

# Members that identify an interface-less call as meant for a BusItem, so that such a call on a
# path we do not have gets velib's UnknownObject rather than falling through to the library.
_BUSITEM_MEMBERS = frozenset(("GetValue", "GetText", "SetValue", "GetItems", "GetDescription"))

# D-Bus object path elements are [A-Za-z0-9_]; "/" itself is the root node, never a leaf.
_PATH_RE = re.compile(r"(?:/[A-Za-z0-9_]+)+")

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1

# Shared: a variant is never mutated after construction, and invalid is by far the most common
# repeated value (unsupported paths).
_INVALID = Variant("ai", [])


class NameTakenError(Exception):
    """The requested bus name is already owned by another connection."""


def wrap(value: Any) -> Variant:
    """Wrap a plain value the way velib's ``wrap_dbus_value`` does (bool as int32 0/1)."""
    kind = type(value)
    if kind is float:
        return Variant("d", value)
    if kind is int:
        return Variant("i" if _INT32_MIN <= value <= _INT32_MAX else "x", value)
    if kind is str:
        return Variant("s", value)
    if value is None:
        return _INVALID
    # Slow path: bool and subclasses (IntEnum, numpy.float64, ...), containers.
    if isinstance(value, bool):
        return Variant("i", int(value))
    if isinstance(value, int):
        return wrap(int(value))
    if isinstance(value, float):
        return Variant("d", float(value))
    if isinstance(value, str):
        return Variant("s", str(value))
    if isinstance(value, (list, tuple)):
        # velib sends an empty list as "au" so it is not mistaken for invalid ("ai").
        return Variant("av", [wrap(v) for v in value]) if value else Variant("au", [])
    if isinstance(value, dict):
        return Variant("a{sv}", {str(k): wrap(v) for k, v in value.items()})
    raise TypeError(f"cannot publish a {kind.__name__} on D-Bus: {value!r}")


def _normalise(path: str, value: Value) -> Value:
    value = round_for_path(path, value)
    # Victron services publish flags as int32 0/1; keeping ints also makes the text "1".
    return int(value) if type(value) is bool else value


def _same(old: Value, new: Value) -> bool:
    # A type change (0 -> 0.0) changes the wire signature, so it counts as a change.
    return old == new and type(old) is type(new)


class _Leaf:
    __slots__ = ("on_change", "places", "raw", "render", "value", "writable")

    def __init__(
        self, path: str, value: Value, writable: bool, on_change: OnChange | None
    ) -> None:
        self.value = value
        self.raw: object = _UNSET  # last value given to publish(), before rounding
        self.writable = writable
        self.on_change = on_change
        # round_for_path's and text_for_path's lookups, done once: publish() needs them for
        # every changed value at every tick.
        self.places = precision_of(path)
        self.render = renderer_of(path)

    def text(self, value: Value) -> str:
        """text_for_path(path, value) for this leaf's path."""
        return render_text(self.render, value)


_UNSET = object()


class _Node:
    """An intermediate path (or "/"): the leaves below it and its direct children."""

    __slots__ = ("children", "cut", "leaves")

    def __init__(self, path: str) -> None:
        self.leaves: list[str] = []
        self.children: dict[str, None] = {}  # ordered set, for Introspect
        self.cut = 1 if path == "/" else len(path) + 1  # strips "<node>/" off a leaf path


class BusItemService:
    """One ``com.victronenergy.*`` service on one connection, with velib's wire behaviour.

    ``signals`` says what :meth:`publish` sends: ``"items"`` one ItemsChanged on ``/`` (velib's
    batched update), ``"properties"`` one PropertiesChanged per changed path, ``"both"`` both.
    An accepted ``SetValue`` always sends one PropertiesChanged on its own path, as velib does.
    ``dispatcher`` shares the connection's message handler (see dispatch.py); without one the
    service installs its own.
    """

    def __init__(
        self,
        bus: MessageBus,
        name: str,
        *,
        signals: Signals = "both",
        dispatcher: Dispatcher | None = None,
    ) -> None:
        if signals not in ("both", "items", "properties"):
            raise ValueError(f"signals must be 'both', 'items' or 'properties', not {signals!r}")
        self._bus = bus
        self._dispatcher = dispatcher if dispatcher is not None else Dispatcher(bus)
        self._name = name
        self._items_signal = signals != "properties"
        self._properties_signal = signals != "items"
        self._leaves: dict[str, _Leaf] = {}
        self._nodes: dict[str, _Node] = {"/": _Node("/")}
        self._handler_installed = False
        self._registered = False

    @property
    def name(self) -> str:
        """The well-known bus name this service requests."""
        return self._name

    # -- paths and values ----------------------------------------------------------------------

    def add_path(
        self,
        path: str,
        value: Value = None,
        *,
        writable: bool = False,
        on_change: OnChange | None = None,
    ) -> None:
        """Create a leaf; ``on_change(path, value)`` returning False rejects a ``SetValue``."""
        if not _PATH_RE.fullmatch(path):
            raise ValueError(f"invalid D-Bus object path for an item: {path!r}")
        if path in self._leaves:
            raise ValueError(f"{path} already exists")
        if path in self._nodes:
            raise ValueError(f"{path} already has items below it")
        parts = path[1:].split("/")
        ancestors = ["/"]
        for part in parts[:-1]:
            ancestors.append(f"{ancestors[-1].rstrip('/')}/{part}")
        for node_path in ancestors[1:]:
            if node_path in self._leaves:
                raise ValueError(f"{path}: {node_path} is an item, it cannot have children")

        self._leaves[path] = _Leaf(path, _normalise(path, value), writable, on_change)
        for node_path, child in zip(ancestors, parts, strict=True):
            node = self._nodes.get(node_path)
            if node is None:
                node = self._nodes[node_path] = _Node(node_path)
            node.leaves.append(path)
            node.children[child] = None

    def publish(self, values: Mapping[str, Value]) -> int:
        """Set many paths at once and signal the changed ones; returns how many changed.

        Values are rounded to their shown precision first, so noise below it sends nothing.
        Unknown paths are created (read-only) and count as changed. Before :meth:`register`
        (and after :meth:`unregister`) values are stored but not signalled.
        """
        changed: list[str] = []
        leaves = self._leaves
        for path, raw in values.items():
            leaf = leaves.get(path)
            # Most values are exactly what they were last tick: skip the rounding for them.
            if leaf is not None and leaf.raw == raw and type(leaf.raw) is type(raw):
                continue
            if leaf is None:
                self.add_path(path, _normalise(path, raw))
                leaves[path].raw = raw
            else:
                leaf.raw = raw
                # _normalise(), with the leaf's precision for a plain float.
                value: Value = (
                    round_float(raw, leaf.places) if type(raw) is float
                    else _normalise(path, raw)
                )
                if _same(leaf.value, value):
                    continue
                leaf.value = value
            changed.append(path)
        if changed:
            self._emit(changed, batch=True)
        return len(changed)

    def __getitem__(self, path: str) -> Value:
        return self._leaves[path].value

    def __contains__(self, path: object) -> bool:
        return path in self._leaves

    def paths(self) -> list[str]:
        """All leaf paths, in the order they were added."""
        return list(self._leaves)

    # -- bus name ------------------------------------------------------------------------------

    async def register(self) -> None:
        """Start answering calls, then claim the name (paths may still be added afterwards).

        Raises :class:`NameTakenError` when another connection owns the name.
        """
        if self._handler_installed:
            raise RuntimeError(f"{self._name} is already registered")
        # Install the handler first: consumers call GetItems the moment the name appears.
        self._dispatcher.set_call_handler(self._on_call)
        self._handler_installed = True
        try:
            reply = await self._bus.request_name(self._name, NameFlag.DO_NOT_QUEUE)
        except BaseException:
            self._remove_handler()
            raise
        if reply != RequestNameReply.PRIMARY_OWNER:
            self._remove_handler()
            raise NameTakenError(f"{self._name} is already owned (request_name: {reply.name})")
        self._registered = True
        log.debug("registered %s with %d paths", self._name, len(self._leaves))

    async def unregister(self) -> None:
        """Release the name and stop answering calls; the paths and values are kept."""
        if not self._handler_installed:
            return
        self._remove_handler()
        was_registered, self._registered = self._registered, False
        if was_registered and self._bus.connected:
            await self._bus.release_name(self._name)

    def _remove_handler(self) -> None:
        self._dispatcher.set_call_handler(None)
        self._handler_installed = False

    # -- signals -------------------------------------------------------------------------------

    def _emit(self, paths: list[str], *, batch: bool) -> None:
        # Nobody can watch a service that has no name yet, and after unregister nobody should.
        if not self._registered:
            return
        items: dict[str, dict[str, Variant]] = {}
        leaves = self._leaves
        for path in paths:
            leaf = leaves[path]
            value = leaf.value
            items[path] = {
                "Value": Variant("d", value) if type(value) is float else wrap(value),
                "Text": Variant("s", leaf.text(value)),
            }
        if not batch:
            # velib announces an accepted SetValue by a lone PropertiesChanged, in every mode.
            for path, item in items.items():
                self._send_signal(path, "PropertiesChanged", "a{sv}", item)
            return
        # velib's batched update (``with service as s:``): one ItemsChanged on / and no
        # PropertiesChanged for the same paths, unless asked for (consumers before Venus v3.0).
        if self._items_signal:
            self._send_signal("/", "ItemsChanged", "a{sa{sv}}", items)
        if self._properties_signal:
            for path, item in items.items():
                self._send_signal(path, "PropertiesChanged", "a{sv}", item)

    def _send_signal(self, path: str, member: str, signature: str, body: object) -> None:
        msg = Message(
            message_type=MessageType.SIGNAL,
            path=path,
            interface=BUSITEM,
            member=member,
            signature=signature,
            body=[body],
            flags=MessageFlag.NO_REPLY_EXPECTED,
        )
        # dbus-fast (and dbus-next's asyncio bus) return a future that resolves once written;
        # nothing waits for it, so log a failure here instead of asyncio's "never retrieved".
        # Usually it is written at once: checked now, since a callback on a done future goes
        # through call_soon, one more event-loop pass (a zero-timeout poll) every tick.
        sent = self._bus.send(msg)
        if sent is None:
            return
        if sent.done():
            _log_send_failure(sent)
        else:
            sent.add_done_callback(_log_send_failure)

    # -- method calls --------------------------------------------------------------------------

    def _on_call(self, msg: Message) -> Message | bool | None:
        """Answer a method call on one of our paths; return None for everything else."""
        # Runs for every method call the connection receives (the dispatcher sorts out signals).
        path: str = msg.path
        interface: str | None = msg.interface
        member: str = msg.member
        leaf = self._leaves.get(path)
        node = self._nodes.get(path) if leaf is None else None
        if leaf is None and node is None:
            if interface == BUSITEM or (interface is None and member in _BUSITEM_MEMBERS):
                return _answer(
                    msg,
                    Message.new_error(msg, ERROR_UNKNOWN_OBJECT, f"No such object path {path!r}"),
                )
            return None  # not ours: other exports on this connection, library defaults

        if interface is None or interface == BUSITEM:
            if leaf is not None:
                reply = self._leaf_call(msg, path, leaf, member)
            else:
                assert node is not None
                reply = self._node_call(msg, path, node, member)
            if reply is not None:
                return _answer(msg, reply)
        if (interface is None or interface == INTROSPECTABLE) and member == "Introspect":
            return _answer(msg, Message.new_method_return(msg, "s", [self._introspect(path)]))
        if interface is None or interface == PEER:
            if member == "Ping":
                return _answer(msg, Message.new_method_return(msg))
            if interface == PEER:
                return None  # GetMachineId: the library answers it for any path
        return _answer(
            msg,
            Message.new_error(
                msg,
                ERROR_UNKNOWN_METHOD,
                f'{interface or "(no interface)"}.{member} with signature "{msg.signature}" '
                f"does not exist at {path}",
            ),
        )

    def _leaf_call(self, msg: Message, path: str, leaf: _Leaf, member: str) -> Message | None:
        if member == "GetValue":
            return Message.new_method_return(msg, "v", [wrap(leaf.value)])
        if member == "GetText":
            return Message.new_method_return(msg, "s", [text_for_path(path, leaf.value)])
        if member == "SetValue":
            if msg.signature != "v":
                return Message.new_error(msg, ERROR_INVALID_ARGS, "SetValue takes one variant")
            return Message.new_method_return(msg, "i", [self._set_value(path, leaf, msg.body[0])])
        if member == "GetDescription":
            return Message.new_method_return(msg, "s", [""])
        return None

    def _node_call(self, msg: Message, path: str, node: _Node, member: str) -> Message | None:
        leaves = self._leaves
        cut = node.cut
        if member == "GetValue":
            values = {p[cut:]: wrap(leaves[p].value) for p in node.leaves}
            return Message.new_method_return(msg, "v", [Variant("a{sv}", values)])
        if member == "GetText":
            texts = {p[cut:]: text_for_path(p, leaves[p].value) for p in node.leaves}
            return Message.new_method_return(msg, "v", [Variant("a{ss}", texts)])
        if member == "GetItems" and path == "/":
            items = {}
            for p in node.leaves:
                value = leaves[p].value
                items[p] = {"Value": wrap(value), "Text": Variant("s", text_for_path(p, value))}
            return Message.new_method_return(msg, "a{sa{sv}}", [items])
        return None

    def _set_value(self, path: str, leaf: _Leaf, variant: Variant) -> int:
        """velib's SetValue: 0 accepted or equal, 1 not writable or wrong type, 2 rejected."""
        if not leaf.writable:
            return 1
        new = unwrap(variant)
        if isinstance(new, (list, dict)):
            return 1
        old = leaf.value
        # The published type follows the current value (consumers and Modbus expect a stable
        # type); lossless numeric conversions are allowed, anything else is refused.
        if old is not None and new is not None and type(new) is not type(old):
            if type(old) is float and type(new) is int:
                new = float(new)
            elif type(old) is int and type(new) is float and new.is_integer():
                new = int(new)
            else:
                return 1
        new = _normalise(path, new)
        if _same(old, new):
            return 0
        if leaf.on_change is not None:
            try:
                accepted = leaf.on_change(path, new)
            except Exception:
                log.exception("on_change callback for %s failed; SetValue rejected", path)
                return 2
            if not accepted:
                return 2
        leaf.value = new
        leaf.raw = _UNSET  # the next publish() compares against the new value again
        self._emit([path], batch=False)
        return 0

    def _introspect(self, path: str) -> str:
        node = self._nodes.get(path)
        if node is None:
            interfaces = _LEAF_XML
            children = ""
        else:
            interfaces = _ROOT_XML if path == "/" else _NODE_XML
            children = "".join(f'  <node name="{child}"/>\n' for child in node.children)
        return f'{_DOCTYPE}<node name="{path}">\n{_STANDARD_XML}{interfaces}{children}</node>\n'


def _answer(call: Message, reply: Message) -> Message | bool:
    # A returned Message is sent unconditionally by both libraries; True means "handled".
    if call.flags & MessageFlag.NO_REPLY_EXPECTED:
        return True
    return reply


def _log_send_failure(sent: asyncio.Future[Any]) -> None:
    if not sent.cancelled() and (exc := sent.exception()) is not None:
        log.warning("sending a signal failed: %s", exc)


_DOCTYPE = (
    '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
    ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
)
_STANDARD_XML = (
    f'  <interface name="{INTROSPECTABLE}">\n'
    '    <method name="Introspect"><arg name="data" type="s" direction="out"/></method>\n'
    "  </interface>\n"
    f'  <interface name="{PEER}">\n'
    '    <method name="Ping"/>\n'
    '    <method name="GetMachineId">'
    '<arg name="machine_uuid" type="s" direction="out"/></method>\n'
    "  </interface>\n"
)
_GET_VALUE_TEXT_V = (
    '    <method name="GetValue"><arg type="v" direction="out"/></method>\n'
    '    <method name="GetText"><arg type="v" direction="out"/></method>\n'
)
_NODE_XML = f'  <interface name="{BUSITEM}">\n{_GET_VALUE_TEXT_V}  </interface>\n'
_ROOT_XML = (
    f'  <interface name="{BUSITEM}">\n{_GET_VALUE_TEXT_V}'
    '    <method name="GetItems"><arg type="a{sa{sv}}" direction="out"/></method>\n'
    '    <signal name="ItemsChanged"><arg name="changes" type="a{sa{sv}}"/></signal>\n'
    "  </interface>\n"
)
_LEAF_XML = (
    f'  <interface name="{BUSITEM}">\n'
    '    <method name="GetValue"><arg type="v" direction="out"/></method>\n'
    '    <method name="GetText"><arg type="s" direction="out"/></method>\n'
    '    <method name="SetValue">'
    '<arg name="newvalue" type="v" direction="in"/><arg type="i" direction="out"/></method>\n'
    '    <method name="GetDescription"><arg name="language" type="s" direction="in"/>'
    '<arg name="length" type="i" direction="in"/><arg type="s" direction="out"/></method>\n'
    '    <signal name="PropertiesChanged"><arg name="changes" type="a{sv}"/></signal>\n'
    "  </interface>\n"
)
