"""The CPU floor of reading the packs: subscribe, receive, decode; nothing else.

Run by ``bench_service.py`` next to the same simulator load as the service. It uses the project's
D-Bus import site (``DAB_DBUS_LIBRARY`` picks the library, exactly as for the service) and adds
the same per-sender match rules the service's discovery adds for a pack (every
``PropertiesChanged`` of the sender, plus ``ItemsChanged`` on "/"), then only unwraps every
received value. No model, no tick, no publishing: whatever the service spends above this is
its own work.

Protocol on stdout (one line each, flushed):

* ``READY <n>`` once the match rules of ``n`` services are in place;
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

BATTERY_PREFIX = "com.victronenergy.battery."
AGGREGATE = "com.victronenergy.battery.aggregate"


class Floor:
    """Counts and decodes the packs' signals."""

    def __init__(self, owners: set[str]) -> None:
        self.owners = owners
        self.signals = 0
        self.values = 0

    def on_message(self, msg: Any) -> None:
        # Return None: never mark a message handled (the library still answers Ping etc.).
        if msg.message_type != _dbus.MessageType.SIGNAL:
            return
        member = msg.member
        if member == "PropertiesChanged":
            if msg.sender not in self.owners or msg.interface != BUSITEM:
                return
            variant = msg.body[0].get("Value")
            if variant is not None:
                _dbus.unwrap(variant)
                self.values += 1
            self.signals += 1
        elif member == "ItemsChanged":
            if msg.sender not in self.owners or msg.interface != BUSITEM:
                return
            unwrap = _dbus.unwrap
            for item in msg.body[0].values():
                variant = item.get("Value")
                if variant is not None:
                    unwrap(variant)
                    self.values += 1
            self.signals += 1


async def _names(bus: Any, wanted: Sequence[str]) -> list[str]:
    if wanted:
        return list(wanted)
    reply = await _dbus.call(
        bus, _dbus.DBUS_SERVICE, _dbus.DBUS_PATH, "ListNames", _dbus.DBUS_SERVICE
    )
    return sorted(n for n in reply[0] if n.startswith(BATTERY_PREFIX) and n != AGGREGATE)


async def run(args: argparse.Namespace) -> int:
    bus = await _dbus.connect(args.bus)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        names = await _names(bus, [n for n in args.services.split(",") if n])
        owners: dict[str, str] = {}
        for name in names:
            reply = await _dbus.call(
                bus,
                _dbus.DBUS_SERVICE,
                _dbus.DBUS_PATH,
                "GetNameOwner",
                _dbus.DBUS_SERVICE,
                "s",
                (name,),
            )
            owners[name] = reply[0]
        floor = Floor(set(owners.values()))
        bus.add_message_handler(floor.on_message)
        for owner in owners.values():
            # The very rules discovery.Monitor._track adds for a pack.
            base = f"type='signal',sender='{owner}',interface='{BUSITEM}'"
            await _dbus.add_match(bus, f"{base},member='PropertiesChanged'")
            await _dbus.add_match(bus, f"{base},member='ItemsChanged',path='/'")

        def report() -> None:
            print(f"COUNT {floor.signals} {floor.values} {loop.time():.6f}", flush=True)

        loop.add_signal_handler(signal.SIGUSR1, report)
        print(f"READY {len(owners)} {_dbus.LIBRARY}", flush=True)
        await stop.wait()
        print(f"DONE {floor.signals} {floor.values}", flush=True)
    finally:
        await _dbus.disconnect(bus)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bus", required=True, help="D-Bus address, e.g. unix:path=/tmp/x")
    p.add_argument(
        "--services",
        default="",
        help="comma-separated bus names to read (default: every battery service but ours)",
    )
    args = p.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
