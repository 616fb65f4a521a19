"""``dbus-aggregate-batteries status``: print the virtual battery's paths, values and texts."""

from __future__ import annotations

import asyncio
import sys

from dbus_aggregate_batteries.shell import _dbus


async def _status(bus_spec: str, service: str) -> int:
    try:
        bus = await _dbus.connect(bus_spec)
    except Exception as exc:
        print(f"status: cannot connect to the {bus_spec} bus: {exc}", file=sys.stderr)
        return 1
    try:
        reply = await _dbus.call(bus, service, "/", "GetItems", timeout_s=5.0)
    except (_dbus.DBusCallError, TimeoutError) as exc:
        print(f"status: {service} does not answer: {exc}", file=sys.stderr)
        return 1
    finally:
        await _dbus.disconnect(bus)
    items = reply[0]
    for line in limit_lines({path: _dbus.unwrap(item["Value"]) for path, item in items.items()}):
        print(line)
    print("-" * 40)
    width = max((len(p) for p in items), default=0)
    for path in sorted(items):
        value = _dbus.unwrap(items[path]["Value"])
        text = _dbus.unwrap(items[path]["Text"])
        print(f"{path:<{width}}  {value!r:<24}  {text}")
    return 0


def limit_lines(values: dict[str, object]) -> list[str]:
    """The three limits with the reason for each (the would-be limits in shadow mode)."""
    shadow = "/Shadow/MaxChargeVoltage" in values
    base = "/Shadow/" if shadow else "/Info/"
    rows = [
        ("CVL", values.get(base + "MaxChargeVoltage"), "V", values.get("/Info/ChargeModeDebug")),
        ("CCL", values.get(base + "MaxChargeCurrent"), "A", values.get("/Info/ChargeLimitation")),
        ("DCL", values.get(base + "MaxDischargeCurrent"), "A",
         values.get("/Info/DischargeLimitation")),
    ]
    lines = ["SHADOW MODE: these limits are NOT offered to DVCC"] if shadow else []
    for name, value, unit, why in rows:
        shown = f"{value:.2f} {unit}" if isinstance(value, (int, float)) else "---"
        lines.append(f"{name} {shown:>10}  {why or ''}")
    return lines


def show_status(*, bus: str, service: str) -> int:
    """Entry point of the ``status`` command."""
    return asyncio.run(_status(bus, service))
