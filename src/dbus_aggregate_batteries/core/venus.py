"""Venus OS names: D-Bus paths, the BusItem interface, and how each published value is shown.

Plain constants and pure formatting only; no D-Bus library is imported here, so the pure core
may use the path names too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

BUSITEM = "com.victronenergy.BusItem"
SETTINGS_SERVICE = "com.victronenergy.settings"
SERVICE_PREFIX = "com.victronenergy.battery."

Value = float | int | str | None

# Alarm paths merged as "worst of" (0 ok, 1 warning, 2 alarm).
ALARM_PATHS: tuple[str, ...] = (
    "/Alarms/LowVoltage",
    "/Alarms/HighVoltage",
    "/Alarms/LowCellVoltage",
    "/Alarms/HighCellVoltage",
    "/Alarms/LowSoc",
    "/Alarms/HighChargeCurrent",
    "/Alarms/HighDischargeCurrent",
    "/Alarms/CellImbalance",
    "/Alarms/InternalFailure",
    "/Alarms/HighChargeTemperature",
    "/Alarms/LowChargeTemperature",
    "/Alarms/HighTemperature",
    "/Alarms/LowTemperature",
    "/Alarms/BmsCable",
)


def _fmt(spec: str, unit: str) -> Callable[[Value], str]:
    def render(value: Value) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return format(value, spec) + unit
        return str(value)

    return render


def _seconds(value: Value) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    total = int(value)
    return f"{total // 3600}h {total % 3600 // 60:02d}m"


def _hex(value: Value) -> str:
    return f"0x{value:X}" if isinstance(value, int) else str(value)


# Decimal places each path is rounded to before the change test (so measurement noise below the
# shown precision does not produce signals), and its text.
PRECISION: dict[str, int] = {
    "/Dc/0/Voltage": 2,
    "/Dc/0/Current": 2,
    "/Dc/0/Power": 0,
    "/Dc/0/Temperature": 1,
    "/Soc": 1,
    "/Capacity": 1,
    "/InstalledCapacity": 1,
    "/ConsumedAmphours": 1,
    "/TimeToGo": 0,
    "/TimeToSoC/100": 0,
    "/System/MaxCellTemperature": 1,
    "/System/MinCellTemperature": 1,
    "/System/MaxCellVoltage": 3,
    "/System/MinCellVoltage": 3,
    "/Voltages/Sum": 3,
    "/Voltages/Diff": 3,
    "/Info/MaxChargeVoltage": 2,
    "/Info/MaxChargeCurrent": 1,
    "/Info/MaxDischargeCurrent": 1,
    "/Info/BatteryLowVoltage": 2,
    # Shadow mode: the limits it would set, as precise as the real ones.
    "/Shadow/MaxChargeVoltage": 2,
    "/Shadow/MaxChargeCurrent": 1,
    "/Shadow/MaxDischargeCurrent": 1,
    "/Shadow/BatteryLowVoltage": 2,
    # History: the resolution of a BMV's own history records (VE.Direct H1..H18).
    "/History/ChargedEnergy": 2,
    "/History/DischargedEnergy": 2,
    "/History/TotalAhDrawn": 1,
    "/History/DeepestDischarge": 1,
    "/History/LastDischarge": 1,
    "/History/AverageDischarge": 1,
    "/History/MinimumVoltage": 2,
    "/History/MaximumVoltage": 2,
    "/History/MinimumCellVoltage": 3,
    "/History/MaximumCellVoltage": 3,
    "/History/MinimumTemperature": 1,
    "/History/MaximumTemperature": 1,
}
CELL_PRECISION = 3

TEXT: dict[str, Callable[[Value], str]] = {
    "/Dc/0/Voltage": _fmt(".2f", "V"),
    "/Dc/0/Current": _fmt(".2f", "A"),
    "/Dc/0/Power": _fmt(".0f", "W"),
    "/Dc/0/Temperature": _fmt(".1f", "°C"),
    "/Soc": _fmt(".1f", "%"),
    "/Capacity": _fmt(".0f", "Ah"),
    "/InstalledCapacity": _fmt(".0f", "Ah"),
    "/ConsumedAmphours": _fmt(".0f", "Ah"),
    "/TimeToGo": _seconds,
    "/TimeToSoC/100": _seconds,
    "/System/MaxCellTemperature": _fmt(".1f", "°C"),
    "/System/MinCellTemperature": _fmt(".1f", "°C"),
    "/System/MaxCellVoltage": _fmt(".3f", "V"),
    "/System/MinCellVoltage": _fmt(".3f", "V"),
    "/Voltages/Sum": _fmt(".3f", "V"),
    "/Voltages/Diff": _fmt(".3f", "V"),
    "/Info/MaxChargeVoltage": _fmt(".2f", "V"),
    "/Info/MaxChargeCurrent": _fmt(".1f", "A"),
    "/Info/MaxDischargeCurrent": _fmt(".1f", "A"),
    "/Info/BatteryLowVoltage": _fmt(".2f", "V"),
    "/Shadow/MaxChargeVoltage": _fmt(".2f", "V"),
    "/Shadow/MaxChargeCurrent": _fmt(".1f", "A"),
    "/Shadow/MaxDischargeCurrent": _fmt(".1f", "A"),
    "/Shadow/BatteryLowVoltage": _fmt(".2f", "V"),
    "/ProductId": _hex,
    "/History/ChargedEnergy": _fmt(".2f", "kWh"),
    "/History/DischargedEnergy": _fmt(".2f", "kWh"),
    "/History/TotalAhDrawn": _fmt(".1f", "Ah"),
    "/History/DeepestDischarge": _fmt(".1f", "Ah"),
    "/History/LastDischarge": _fmt(".1f", "Ah"),
    "/History/AverageDischarge": _fmt(".1f", "Ah"),
    "/History/MinimumVoltage": _fmt(".2f", "V"),
    "/History/MaximumVoltage": _fmt(".2f", "V"),
    "/History/MinimumCellVoltage": _fmt(".3f", "V"),
    "/History/MaximumCellVoltage": _fmt(".3f", "V"),
    "/History/MinimumTemperature": _fmt(".1f", "°C"),
    "/History/MaximumTemperature": _fmt(".1f", "°C"),
    "/History/TimeSinceLastFullCharge": _seconds,
}
_CELL_TEXT = _fmt(".3f", "V")

INVALID_TEXT = "---"


def precision_of(path: str) -> int | None:
    """Decimal places a float at ``path`` is rounded to (None: not rounded)."""
    places = PRECISION.get(path)
    if places is None and path.startswith("/Voltages/"):
        places = CELL_PRECISION
    return places


def renderer_of(path: str) -> Callable[[Value], str] | None:
    """How a (valid) value at ``path`` is worded (None: ``str``)."""
    render = TEXT.get(path)
    if render is None and path.startswith("/Voltages/"):
        render = _CELL_TEXT
    return render


def round_float(value: float, places: int | None) -> float | None:
    """``value`` rounded to ``places`` (None: as it is); NaN and infinity become invalid."""
    if not math.isfinite(value):
        return None
    if places is None:
        return value
    return round(value, places) + 0.0  # normalise -0.0


def round_for_path(path: str, value: Value) -> Value:
    """Round a value to its published precision; NaN and infinity become invalid."""
    if isinstance(value, float):
        return round_float(value, precision_of(path))
    return value


def render_text(render: Callable[[Value], str] | None, value: Value) -> str:
    """The text of ``value`` with the renderer ``renderer_of`` gave for its path."""
    if value is None:
        return INVALID_TEXT
    return render(value) if render else str(value)


def text_for_path(path: str, value: Value) -> str:
    """The text velib's GetText would return for ``value`` at ``path``."""
    return render_text(renderer_of(path), value)


# The Venus GUI's own limit for a device name: gui-v2 pages/settings/PageDeviceInfo.qml gives
# the /CustomName text field ``maximumLength: 32`` (characters).
CUSTOM_NAME_MAX_CHARS = 32


def custom_name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a /CustomName, or None when it can (empty clears the name).

    Bounded and printable only: the name is republished in every GetItems reply and shown by
    the GUI, VRM and MQTT clients, and a control character or a megabyte string there only
    does harm. The reason never contains the value itself, so logging it stays short.
    """
    if not isinstance(value, str):
        return f"not text ({type(value).__name__})"
    if len(value) > CUSTOM_NAME_MAX_CHARS:
        return f"{len(value)} characters, at most {CUSTOM_NAME_MAX_CHARS} allowed"
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        return f"contains the non-printable character U+{ord(bad):04X}"
    return None
