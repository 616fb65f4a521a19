"""One message handler per connection, routing each message by its type.

Both D-Bus libraries call every installed message handler for every message the connection
receives, in Python. With the export, discovery and the settings client each installing its
own, every pack signal (hundreds a second) cost three Python calls where one did the work. The
service shares one :class:`Dispatcher`: method calls go to the one call handler (the export),
signals to the signal handlers (discovery, and the settings client only for the signals of its
own sender), and method returns and errors to nobody.

A component given no dispatcher makes its own, so it still works alone on a connection (the
tests' standalone exports, the simulator's services). A dispatcher is installed on the bus
while it has at least one handler, and removed with its last one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dbus_aggregate_batteries.shell._dbus import Message, MessageBus, MessageType

log = logging.getLogger(__name__)

CallHandler = Callable[[Message], "Message | bool | None"]
SignalHandler = Callable[[Message], None]

_SIGNAL = MessageType.SIGNAL
_METHOD_CALL = MessageType.METHOD_CALL


class Dispatcher:
    """The one message handler of a connection (see the module docstring)."""

    __slots__ = ("_bus", "_by_sender", "_call", "_installed", "_signals")

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._call: CallHandler | None = None
        self._signals: list[SignalHandler] = []
        self._by_sender: dict[str, list[SignalHandler]] = {}
        self._installed = False

    @property
    def installed(self) -> bool:
        """Whether the dispatcher is on the bus (it has at least one handler)."""
        return self._installed

    def set_call_handler(self, handler: CallHandler | None) -> None:
        """The handler of every method call (its return value goes back to the library)."""
        if handler is not None and self._call is not None and handler != self._call:
            raise RuntimeError("this connection already has a method call handler")
        self._call = handler
        self._update()

    def add_signal_handler(self, handler: SignalHandler, *, sender: str | None = None) -> None:
        """Call ``handler`` for every signal, or only for those of ``sender`` (a unique name)."""
        if sender is None:
            self._signals.append(handler)
        else:
            self._by_sender.setdefault(sender, []).append(handler)
        self._update()

    def remove_signal_handler(self, handler: SignalHandler, *, sender: str | None = None) -> None:
        """Undo :meth:`add_signal_handler` (no error when it is not there)."""
        handlers = self._signals if sender is None else self._by_sender.get(sender, [])
        if handler in handlers:
            handlers.remove(handler)
        if sender is not None and not handlers:
            self._by_sender.pop(sender, None)
        self._update()

    def _update(self) -> None:
        wanted = self._call is not None or bool(self._signals) or bool(self._by_sender)
        if wanted and not self._installed:
            self._bus.add_message_handler(self.on_message)
            self._installed = True
        elif not wanted and self._installed:
            self._bus.remove_message_handler(self.on_message)
            self._installed = False

    def on_message(self, msg: Message) -> Message | bool | None:
        """The library's message handler."""
        if msg.message_type is _SIGNAL:
            # As the libraries do between handlers: one handler's bug must not starve the next.
            for handler in self._signals:
                try:
                    handler(msg)
                except Exception:
                    log.exception("a signal handler failed")
            if self._by_sender:
                for handler in self._by_sender.get(msg.sender, ()):
                    try:
                        handler(msg)
                    except Exception:
                        log.exception("a signal handler failed")
            return None
        call = self._call
        if call is not None and msg.message_type is _METHOD_CALL:
            return call(msg)
        return None
