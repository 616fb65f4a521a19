"""A consumer of the aggregate, as velib's DbusMonitor reads a service: what the GX pays.

Run by ``bench_service.py`` while the service runs. Like velib's ``DbusMonitor`` (systemcalc,
the VRM logger) it listens to ``PropertiesChanged`` and to ``ItemsChanged`` on "/" of the
service and, for every change received, decodes the value and its text and stores both in its
cache. Every consumer on a GX (systemcalc, the GUI, the MQTT bridge, the VRM logger) does at
least this, once per signal it receives: a change announced twice is decoded twice.

The match rules are scoped to the aggregate's sender so that only its signals are counted
(DbusMonitor's own PropertiesChanged receiver takes every sender's, which costs the same with
or without this service).

Protocol on stdout (one line each, flushed), as ``floor_subscriber.py``:

* ``READY <owner> <library>`` once the match rules are in place;
* ``COUNT <signals> <values> <monotonic>`` on every SIGUSR1 (cumulative counters);
* ``DONE <signals> <values>`` after SIGTERM/SIGINT, then exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Any

from dbus_aggregate_batteries.core.venus import BUSITEM
from dbus_aggregate_batteries.shell import _dbus

AGGREGATE = "com.victronenergy.battery.aggregate"


class Consumer:
    """Decodes and caches the service's values, counting signals and values."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.cache: dict[str, tuple[Any, Any]] = {}
        self.signals = 0
        self.values = 0

    def _store(self, path: str, item: dict[str, Any]) -> None:
        value = item.get("Value")
        text = item.get("Text")
        self.cache[path] = (
            None if value is None else _dbus.unwrap(value),
            None if text is None else _dbus.unwrap(text),
        )
        self.values += 1

    def on_message(self, msg: Any) -> None:
        if msg.message_type != _dbus.MessageType.SIGNAL or msg.sender != self.owner:
            return
        if msg.interface != BUSITEM:
            return
        if msg.member == "PropertiesChanged":
            self._store(msg.path, msg.body[0])
            self.signals += 1
        elif msg.member == "ItemsChanged":
            for path, item in msg.body[0].items():
                self._store(path, item)
            self.signals += 1


async def run(args: argparse.Namespace) -> int:
    bus = await _dbus.connect(args.bus)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        reply = await _dbus.call(
            bus, _dbus.DBUS_SERVICE, _dbus.DBUS_PATH, "GetNameOwner", _dbus.DBUS_SERVICE, "s",
            (args.service,),
        )
        owner = reply[0]
        consumer = Consumer(owner)
        bus.add_message_handler(consumer.on_message)
        base = f"type='signal',sender='{owner}',interface='{BUSITEM}'"
        await _dbus.add_match(bus, f"{base},member='PropertiesChanged'")
        await _dbus.add_match(bus, f"{base},member='ItemsChanged',path='/'")
        # A consumer starts from a GetItems scan, as DbusMonitor does.
        items = await _dbus.call(bus, owner, "/", "GetItems")
        for path, item in items[0].items():
            consumer._store(path, item)

        def report() -> None:
            print(f"COUNT {consumer.signals} {consumer.values} {loop.time():.6f}", flush=True)

        loop.add_signal_handler(signal.SIGUSR1, report)
        print(f"READY {owner} {_dbus.LIBRARY}", flush=True)
        await stop.wait()
        print(f"DONE {consumer.signals} {consumer.values}", flush=True)
    finally:
        await _dbus.disconnect(bus)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--bus", required=True, help="D-Bus address, e.g. unix:path=/tmp/x")
    p.add_argument("--service", default=AGGREGATE, help="the bus name to consume")
    args = p.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
