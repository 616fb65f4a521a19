"""The project's single import site of a D-Bus library, plus small call helpers.

dbus-fast is preferred when importable (maintained, packaged on Venus >= v3.50); dbus-next is
the fallback for older images. ``DAB_DBUS_LIBRARY=dbus_fast|dbus_next`` forces one, so CI can
run the suite against each. Only API the two libraries share is re-exported; the names are
typed as ``Any`` because the concrete classes differ between the libraries.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias

from dbus_aggregate_batteries.core.venus import BUSITEM

log = logging.getLogger(__name__)

__all__ = [
    "LIBRARY",
    "BusType",
    "DBusCallError",
    "DBusError",
    "ErrorType",
    "Message",
    "MessageBus",
    "MessageFlag",
    "MessageType",
    "NameFlag",
    "RequestNameReply",
    "Variant",
    "add_match",
    "call",
    "connect",
    "disconnect",
    "guard_writer",
    "remove_match",
    "unwrap",
    "writer_guarded",
]

_ENV = "DAB_DBUS_LIBRARY"
_KNOWN = ("dbus_fast", "dbus_next")


def _load() -> tuple[str, ModuleType, ModuleType]:
    forced = os.environ.get(_ENV, "").strip()
    if forced and forced not in _KNOWN:
        raise ImportError(f"{_ENV}={forced!r}: expected one of {', '.join(_KNOWN)}")
    errors: list[str] = []
    for name in (forced,) if forced else _KNOWN:
        try:
            return name, importlib.import_module(name), importlib.import_module(name + ".aio")
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    if forced:
        raise ImportError(
            f"{_ENV}={forced} but {forced} cannot be imported ({errors[0]}); "
            f"install it or unset {_ENV}"
        )
    raise ImportError(
        "no D-Bus library found; install dbus-fast or dbus-next: " + "; ".join(errors)
    )


LIBRARY: str
LIBRARY, _lib, _aio = _load()

if TYPE_CHECKING:
    MessageBus: TypeAlias = Any
    Message: TypeAlias = Any
    MessageType: TypeAlias = Any
    MessageFlag: TypeAlias = Any
    Variant: TypeAlias = Any
    BusType: TypeAlias = Any
    NameFlag: TypeAlias = Any
    RequestNameReply: TypeAlias = Any
    DBusError: TypeAlias = Any
    ErrorType: TypeAlias = Any
else:
    MessageBus = _aio.MessageBus
    Message = _lib.Message
    MessageType = _lib.MessageType
    MessageFlag = _lib.MessageFlag
    Variant = _lib.Variant
    BusType = _lib.BusType
    NameFlag = _lib.NameFlag
    RequestNameReply = _lib.RequestNameReply
    DBusError = _lib.DBusError
    ErrorType = _lib.ErrorType

DBUS_SERVICE = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
DEFAULT_TIMEOUT_S = 10.0


class DBusCallError(Exception):
    """A method call was answered with a D-Bus error reply."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}" if text else name)
        self.name = name
        self.text = text


async def connect(bus: str) -> MessageBus:
    """Connect to ``"system"``, ``"session"`` or a D-Bus address such as ``unix:path=/x``."""
    if bus == "system":
        conn = MessageBus(bus_type=BusType.SYSTEM)
    elif bus == "session":
        conn = MessageBus(bus_type=BusType.SESSION)
    else:
        conn = MessageBus(bus_address=bus)
    connected = await conn.connect()
    if not guard_writer(connected):
        log.warning(
            "%s's writer is not the one this version knows: a full socket buffer may close"
            " the connection (see docs/failure-modes.md)", LIBRARY,
        )
    return connected


class _RetryingSocket:
    """The writer's view of the bus socket: a full send buffer means "0 bytes sent, retry".

    Both libraries' asyncio writers (dbus-next 0.2.3, dbus-fast 2.21.1 up to at least 5.2.0)
    call ``send()`` on the non-blocking socket and treat *every* exception as fatal: they
    finalize the connection. ``BlockingIOError`` (EAGAIN) only means the kernel's send buffer
    is full because the daemon has not read it yet; it happens whenever more is queued than the
    buffer holds (~200 kB on Linux): a large reply or signal followed by another message, or
    many replies while the daemon is busy. dbus-fast also sends at once, without waiting until
    the socket is writable, whenever its queue is empty, so it hits this even with a partly
    written message pending. Reporting 0 bytes instead makes the writer keep the unsent rest
    and wait for the socket to become writable, which is the writer's own path for a partial
    write.
    """

    __slots__ = ("_sock",)

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def send(self, data: Any, *flags: int) -> int:
        try:
            sent: int = self._sock.send(data, *flags)
        except (BlockingIOError, InterruptedError):
            return 0
        return sent

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        # Only used to pass file descriptors, which this project never sends; after it the
        # writer forgets the descriptors, so a failed attempt must stay an error.
        sent: int = self._sock.sendmsg(buffers, *args)
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def guard_writer(bus: MessageBus) -> bool:
    """Make ``bus``'s writer survive a full socket send buffer (see :class:`_RetryingSocket`).

    Returns False, and changes nothing, when the library's writer does not look as expected
    (a future version); the tests check that it is installed for the versions we support.
    """
    writer = getattr(bus, "_writer", None)
    sock = getattr(writer, "sock", None)
    if sock is None or not callable(getattr(sock, "send", None)):
        return False
    if not isinstance(sock, _RetryingSocket):
        writer.sock = _RetryingSocket(sock)  # type: ignore[union-attr]
    return True


def writer_guarded(bus: MessageBus) -> bool:
    """Whether :func:`guard_writer` is in place on this connection (for tests)."""
    return isinstance(getattr(getattr(bus, "_writer", None), "sock", None), _RetryingSocket)


async def disconnect(bus: MessageBus, timeout_s: float = 5.0) -> None:
    """Close a connection and wait until it is closed."""
    bus.disconnect()
    # A connection that already failed re-raises its error here; closing it is all we want.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_s):
            await bus.wait_for_disconnect()
    # dbus-next never closes its socket (dbus-fast does, in _finalize): without this every
    # connection leaks a file descriptor and a ResourceWarning.
    for name in ("_stream", "_sock"):
        resource = getattr(bus, name, None)
        if resource is not None:
            resource.close()


async def call(
    bus: MessageBus,
    destination: str,
    path: str,
    member: str,
    interface: str | None = BUSITEM,
    signature: str = "",
    body: Sequence[Any] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[Any]:
    """Call a method and return the reply body.

    ``interface=None`` sends the call without an interface header, as old Venus consumers do.
    Raises :class:`DBusCallError` on an error reply and :class:`asyncio.TimeoutError` when no
    reply arrives within ``timeout_s``.
    """
    msg = Message(
        destination=destination,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=list(body),
    )
    async with asyncio.timeout(timeout_s):
        reply = await bus.call(msg)
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.signature[:1] == "s" and reply.body else ""
        raise DBusCallError(reply.error_name or "", str(text))
    body_out: list[Any] = list(reply.body)
    return body_out


async def add_match(bus: MessageBus, rule: str) -> None:
    """Ask the daemon to route messages matching ``rule`` to this connection."""
    await call(bus, DBUS_SERVICE, DBUS_PATH, "AddMatch", DBUS_SERVICE, "s", (rule,))


async def remove_match(bus: MessageBus, rule: str) -> None:
    """Remove a rule added with :func:`add_match`."""
    await call(bus, DBUS_SERVICE, DBUS_PATH, "RemoveMatch", DBUS_SERVICE, "s", (rule,))


Unwrapped: TypeAlias = "float | int | str | list[Any] | dict[str, Any] | None"

# Signatures whose unmarshalled value already is the plain Python value we want.
_PLAIN = frozenset(("i", "u", "x", "t", "n", "q", "y", "s", "o", "g", "h"))


def unwrap(variant: Variant) -> Unwrapped:
    """Turn a received Variant into plain Python; any empty array is invalid (None), as in velib."""
    sig: str = variant.signature
    value = variant.value
    # Most received values are doubles, ints or strings: test those first, without a call.
    if sig == "d":
        return value if type(value) is float else float(value)
    if sig in _PLAIN:
        return value  # type: ignore[no-any-return]
    if sig[0] == "a":
        if not value:
            return None
        if sig[1] == "{":
            if sig[-2] == "v":
                return {k: unwrap(v) for k, v in value.items()}
            return dict(value)
        if sig == "av":
            return [unwrap(v) for v in value]
        return list(value)
    if sig == "b":
        return int(value)
    if sig == "v":
        return unwrap(value)
    # Structs: both libraries give a sequence (list in dbus-next, tuple in dbus-fast >= 3).
    return list(value)
