"""Typed, frozen data shared by the pure core: pack snapshots, auxiliary inputs, events.

``pack_from_values`` is where raw D-Bus values become trusted numbers: anything that is not a
finite number of the right kind and inside a plausible range is treated as missing and
reported, so nothing downstream ever sees None-as-number, NaN, infinity or nonsense.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from dbus_aggregate_batteries.core.venus import ALARM_PATHS, Value

# Plausible ranges; outside them a value is treated as missing (bad data, not physics).
# The pack-voltage paths (PER_CELL_PATHS) use the range here only when the pack's cell count
# is unknown; otherwise their upper bound is the cell count times the highest cell voltage.
RANGES: dict[str, tuple[float, float]] = {
    "/Dc/0/Voltage": (0.0, 100.0),
    "/Dc/0/Current": (-10000.0, 10000.0),
    "/Dc/0/Power": (-1_000_000.0, 1_000_000.0),
    "/Dc/0/Temperature": (-50.0, 120.0),
    "/Soc": (0.0, 100.0),
    "/Capacity": (0.0, 100_000.0),
    "/InstalledCapacity": (0.0, 100_000.0),
    "/ConsumedAmphours": (-100_000.0, 100_000.0),
    "/TimeToGo": (0.0, 10_000_000.0),
    "/System/MaxCellVoltage": (0.0, 5.0),
    "/System/MinCellVoltage": (0.0, 5.0),
    "/System/MaxCellTemperature": (-50.0, 120.0),
    "/System/MinCellTemperature": (-50.0, 120.0),
    "/Voltages/Sum": (0.0, 100.0),
    "/Info/MaxChargeVoltage": (0.0, 100.0),
    "/Info/MaxChargeCurrent": (0.0, 10000.0),
    "/Info/MaxDischargeCurrent": (0.0, 10000.0),
    "/Info/BatteryLowVoltage": (0.0, 100.0),
}
# Voltage 0 is not a pack voltage: a BMS that lost its cells reports 0, not a measurement.
EXCLUSIVE_LOW = frozenset({"/Dc/0/Voltage", "/Voltages/Sum"})
CELL_RANGE = (0.0, 5.0)
# Voltages of the whole pack: plausible up to (cells in series) x CELL_RANGE[1], so a 32-cell
# LFP pack (~105 V) or a 48-cell LTO pack is accepted and a 16-cell pack claiming 200 V is not.
PER_CELL_PATHS = frozenset(
    {"/Dc/0/Voltage", "/Voltages/Sum", "/Info/MaxChargeVoltage", "/Info/BatteryLowVoltage"}
)
INT_RANGES: dict[str, tuple[int, int]] = {
    "/System/NrOfCellsPerBattery": (1, 64),
    "/System/NrOfModulesOnline": (0, 1000),
    "/System/NrOfModulesOffline": (0, 1000),
    "/System/NrOfModulesBlockingCharge": (0, 1000),
    "/System/NrOfModulesBlockingDischarge": (0, 1000),
    "/Io/AllowToCharge": (0, 1),
    "/Io/AllowToDischarge": (0, 1),
    "/Io/AllowToBalance": (0, 1),
    "/Connected": (0, 1),
    "/Balancing": (0, 1),
    **{path: (0, 2) for path in ALARM_PATHS},
}
TEXT_PATHS = frozenset(
    {
        "/System/MaxVoltageCellId",
        "/System/MinVoltageCellId",
        "/System/MaxTemperatureCellId",
        "/System/MinTemperatureCellId",
        "/Info/ChargeMode",
        "/CustomName",
        "/ProductName",
        "/Serial",
    }
)
MAX_CELLS = 64
# Longest text taken from a pack (cell ids, charge mode, names): texts are republished in the
# merged ids and logged, so a pack (or whoever writes its /CustomName) must not inflate them.
MAX_TEXT_CHARS = 128
# How far the mean cell voltage (pack voltage / cell count) may lie outside the pack's own
# min..max cell before the count is not believed (cable drop, measurement offsets).
CELL_COUNT_TOLERANCE_V = 0.25


class Severity(Enum):
    """How loudly the shell should log an event."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Event:
    """Something worth logging, returned by the pure core instead of logged by it."""

    severity: Severity
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class BadValue:
    """A value that was rejected while building a snapshot."""

    path: str
    value: str
    reason: str


@dataclass(frozen=True, slots=True)
class PackSnapshot:
    """One pack's trusted values at one instant; None means missing or rejected."""

    service: str
    label: str
    voltage_v: float | None = None
    current_a: float | None = None
    power_w: float | None = None
    temperature_c: float | None = None
    soc_pct: float | None = None
    capacity_ah: float | None = None
    installed_capacity_ah: float | None = None
    consumed_ah: float | None = None
    time_to_go_s: float | None = None
    max_cell_v: float | None = None
    min_cell_v: float | None = None
    max_cell_id: str | None = None
    min_cell_id: str | None = None
    max_cell_temp_c: float | None = None
    min_cell_temp_c: float | None = None
    max_temp_id: str | None = None
    min_temp_id: str | None = None
    voltages_sum_v: float | None = None
    cells: tuple[float | None, ...] = ()
    cells_per_battery: int | None = None
    modules_online: int | None = None
    modules_offline: int | None = None
    blocking_charge: int | None = None
    blocking_discharge: int | None = None
    alarms: tuple[int | None, ...] = tuple(None for _ in ALARM_PATHS)
    allow_to_charge: int | None = None
    allow_to_discharge: int | None = None
    allow_to_balance: int | None = None
    balancing: int | None = None
    cvl_v: float | None = None
    ccl_a: float | None = None
    dcl_a: float | None = None
    battery_low_voltage_v: float | None = None
    charge_mode: str | None = None

    @property
    def blocks_charge(self) -> bool:
        """The pack forbids charging by any of the ways a BMS says so."""
        return (
            self.allow_to_charge == 0
            or (self.blocking_charge or 0) > 0
            or (self.ccl_a is not None and self.ccl_a <= 0.0)
        )

    @property
    def blocks_discharge(self) -> bool:
        """The pack forbids discharging by any of the ways a BMS says so."""
        return (
            self.allow_to_discharge == 0
            or (self.blocking_discharge or 0) > 0
            or (self.dcl_a is not None and self.dcl_a <= 0.0)
        )

    @property
    def in_float(self) -> bool:
        """The pack's BMS reports float charging (serialbattery: e.g. "Float │ Linear Mode")."""
        return self.charge_mode is not None and "float" in self.charge_mode.lower()


@dataclass(frozen=True, slots=True)
class DeviceCurrent:
    """One auxiliary device's DC current (Multi, solar charger or SmartShunt)."""

    service: str
    current_a: float | None
    connected: bool = True


@dataclass(frozen=True, slots=True)
class AuxSnapshot:
    """Everything besides the packs: Victron devices, shunts and two system settings."""

    multi: DeviceCurrent | None = None
    solar_chargers: tuple[DeviceCurrent, ...] = ()
    battery_shunts: tuple[DeviceCurrent, ...] = ()
    dcload_shunts: tuple[DeviceCurrent, ...] = ()
    feed_in_setting: int | None = None


def _number(value: Value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(slots=True)
class _Reader:
    values: Mapping[str, Value]
    bad: list[BadValue] = field(default_factory=list)

    def num(self, path: str, cells: int | None = None) -> float | None:
        """A finite number in its plausible range; ``cells`` scales a PER_CELL_PATHS range."""
        if path not in self.values:
            return None
        raw = self.values[path]
        if raw is None:
            return None
        number = _number(raw)
        if number is None:
            self.bad.append(BadValue(path, repr(raw)[:40], "not a finite number"))
            return None
        low, high = RANGES.get(path, (-math.inf, math.inf))
        why = ""
        if cells is not None and path in PER_CELL_PATHS:
            high = cells * CELL_RANGE[1]
            why = f" ({cells} cells x {CELL_RANGE[1]:g} V)"
        too_low = number <= low if path in EXCLUSIVE_LOW else number < low
        if too_low or number > high:
            self.bad.append(BadValue(path, repr(raw)[:40], f"outside {low:g}..{high:g}{why}"))
            return None
        return number

    def cell(self, path: str) -> float | None:
        number = self.num(path)
        if number is None:
            return None
        if not CELL_RANGE[0] < number <= CELL_RANGE[1]:
            self.bad.append(BadValue(path, repr(number), "cell voltage outside 0..5 V"))
            return None
        return number

    def integer(self, path: str) -> int | None:
        raw = self.values.get(path)
        if raw is None:
            return None
        number = _number(raw)
        if number is None or number != int(number):
            self.bad.append(BadValue(path, repr(raw)[:40], "not an integer"))
            return None
        low, high = INT_RANGES.get(path, (-(2**31), 2**31 - 1))
        if not low <= number <= high:
            self.bad.append(BadValue(path, repr(raw)[:40], f"outside {low}..{high}"))
            return None
        return int(number)

    def text(self, path: str) -> str | None:
        raw = self.values.get(path)
        if raw is None:
            return None
        if not isinstance(raw, str):
            self.bad.append(BadValue(path, repr(raw)[:40], "not a string"))
            return None
        if len(raw) > MAX_TEXT_CHARS or not raw.isprintable():
            reason = (f"{len(raw)} characters, at most {MAX_TEXT_CHARS}"
                      if len(raw) > MAX_TEXT_CHARS else "not printable")
            self.bad.append(BadValue(path, repr(raw[:30]), reason))
            return None
        return raw


def check_cell_count(
    values: Mapping[str, Value], n_cells: int | None, max_cell: float | None,
    min_cell: float | None,
) -> tuple[int | None, BadValue | None]:
    """The published cell count, or None with the reason when the pack voltage contradicts it.

    The pack voltage divided by the count must lie within the extreme cells (+/- a tolerance).
    """
    if n_cells is None or max_cell is None or min_cell is None:
        return n_cells, None
    voltage = _number(values.get("/Dc/0/Voltage"))
    if voltage is None or voltage <= 0:
        return n_cells, None
    per_cell = voltage / n_cells
    if min_cell - CELL_COUNT_TOLERANCE_V <= per_cell <= max_cell + CELL_COUNT_TOLERANCE_V:
        return n_cells, None
    return None, BadValue(
        "/System/NrOfCellsPerBattery",
        str(n_cells),
        f"{voltage:.2f} V / {n_cells} cells = {per_cell:.3f} V per cell, outside the"
        f" cells' {min_cell:.3f}..{max_cell:.3f} V",
    )


def pack_from_values(
    service: str, label: str, values: Mapping[str, Value], *, with_cells: bool = True
) -> tuple[PackSnapshot, tuple[BadValue, ...]]:
    """Build a trusted snapshot from raw path values, and list what was rejected.

    ``with_cells=False`` skips the per-cell voltages (a third of the work on a 24-cell pack)
    when nothing needs them; they are still read when the pack does not publish its extreme
    cells itself.
    """
    r = _Reader(values)
    n_cells = r.integer("/System/NrOfCellsPerBattery")
    max_cell = r.num("/System/MaxCellVoltage")
    min_cell = r.num("/System/MinCellVoltage")
    max_cell = max_cell if max_cell is None or max_cell > 0 else None
    min_cell = min_cell if min_cell is None or min_cell > 0 else None
    # A BMS configured for the wrong cell count would scale every pack voltage we derive: the
    # count is checked against the voltage first, so a wrong count cannot get a good voltage
    # rejected by a range it scaled, nor limit the cells read.
    n_cells, wrong_count = check_cell_count(values, n_cells, max_cell, min_cell)
    if wrong_count is not None:
        r.bad.append(wrong_count)
    cells: list[float | None] = []
    if with_cells or max_cell is None or min_cell is None:
        # Cells are read up to the published count, or as far as they are present.
        limit = n_cells if n_cells is not None else MAX_CELLS
        for i in range(1, limit + 1):
            path = f"/Voltages/Cell{i}"
            if path not in values and n_cells is None:
                break
            cells.append(r.cell(path))
    # Ranges of the pack voltages scale with the cells in series: the published count, else
    # the cell voltages the pack publishes, else (neither known) RANGES' fixed bound.
    present = sum(1 for c in cells if c is not None)
    range_cells = n_cells if n_cells is not None else present or None
    voltage = r.num("/Dc/0/Voltage", range_cells)
    known_cells = [c for c in cells if c is not None]
    if max_cell is None and known_cells:
        max_cell = max(known_cells)
    if min_cell is None and known_cells:
        min_cell = min(known_cells)
    snap = PackSnapshot(
        service=service,
        label=label,
        voltage_v=voltage,
        current_a=r.num("/Dc/0/Current"),
        power_w=r.num("/Dc/0/Power"),
        temperature_c=r.num("/Dc/0/Temperature"),
        soc_pct=r.num("/Soc"),
        capacity_ah=r.num("/Capacity"),
        installed_capacity_ah=r.num("/InstalledCapacity"),
        consumed_ah=r.num("/ConsumedAmphours"),
        time_to_go_s=r.num("/TimeToGo"),
        max_cell_v=max_cell,
        min_cell_v=min_cell,
        max_cell_id=r.text("/System/MaxVoltageCellId"),
        min_cell_id=r.text("/System/MinVoltageCellId"),
        max_cell_temp_c=r.num("/System/MaxCellTemperature"),
        min_cell_temp_c=r.num("/System/MinCellTemperature"),
        max_temp_id=r.text("/System/MaxTemperatureCellId"),
        min_temp_id=r.text("/System/MinTemperatureCellId"),
        voltages_sum_v=r.num("/Voltages/Sum", range_cells),
        cells=tuple(cells),
        cells_per_battery=n_cells,
        modules_online=r.integer("/System/NrOfModulesOnline"),
        modules_offline=r.integer("/System/NrOfModulesOffline"),
        blocking_charge=r.integer("/System/NrOfModulesBlockingCharge"),
        blocking_discharge=r.integer("/System/NrOfModulesBlockingDischarge"),
        alarms=tuple(r.integer(p) for p in ALARM_PATHS),
        allow_to_charge=r.integer("/Io/AllowToCharge"),
        allow_to_discharge=r.integer("/Io/AllowToDischarge"),
        allow_to_balance=r.integer("/Io/AllowToBalance"),
        balancing=r.integer("/Balancing"),
        cvl_v=r.num("/Info/MaxChargeVoltage", range_cells),
        ccl_a=r.num("/Info/MaxChargeCurrent"),
        dcl_a=r.num("/Info/MaxDischargeCurrent"),
        battery_low_voltage_v=r.num("/Info/BatteryLowVoltage", range_cells),
        charge_mode=r.text("/Info/ChargeMode"),
    )
    return snap, tuple(r.bad)


def device_current(service: str, values: Mapping[str, Value]) -> DeviceCurrent:
    """An auxiliary device's current; a non-number or absurd current is missing."""
    current = _number(values.get("/Dc/0/Current"))
    if current is not None and abs(current) > 10000.0:
        current = None
    connected = values.get("/Connected")
    return DeviceCurrent(service, current, connected is None or connected == 1)


def _lowest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _highest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def most_restrictive(current: PackSnapshot, last_good: PackSnapshot | None) -> PackSnapshot:
    """For a pack that is not healthy: the stricter of its current and last healthy values.

    Blocks from either count, limits are the lower, the highest cell the higher and the lowest
    cell the lower; so neither a fresh block nor an old one is forgotten.
    """
    if last_good is None:
        return current
    hot = current if (current.max_cell_v or 0.0) >= (last_good.max_cell_v or 0.0) else last_good
    return replace(
        last_good,
        cvl_v=_lowest(current.cvl_v, last_good.cvl_v),
        ccl_a=_lowest(current.ccl_a, last_good.ccl_a),
        dcl_a=_lowest(current.dcl_a, last_good.dcl_a),
        max_cell_v=_highest(current.max_cell_v, last_good.max_cell_v),
        min_cell_v=_lowest(current.min_cell_v, last_good.min_cell_v),
        cells=hot.cells,
        allow_to_charge=_lowest_int(current.allow_to_charge, last_good.allow_to_charge),
        allow_to_discharge=_lowest_int(current.allow_to_discharge, last_good.allow_to_discharge),
        blocking_charge=max(current.blocking_charge or 0, last_good.blocking_charge or 0),
        blocking_discharge=max(current.blocking_discharge or 0, last_good.blocking_discharge or 0),
        charge_mode=last_good.charge_mode if current.charge_mode is None else current.charge_mode,
    )


def _lowest_int(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)
