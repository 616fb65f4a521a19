"""Pure models of the devices the simulator puts on D-Bus.

No D-Bus, no asyncio and no clock: time only moves when a caller passes ``dt_s``. Every model
answers ``values()`` with the paths its real driver publishes, so the same models serve unit
tests, the bus services in ``sim.services`` and anything else that wants realistic numbers.

The pack model follows what dbus-serialbattery publishes (venus-dbus.md §5.2) in two layouts:
``"v2"`` (mr-manuel v2.x) and ``"v014"`` (Louisvdw v0.14). The physics is deliberately simple: a
piecewise-linear open-circuit-voltage curve per chemistry, a series resistance per cell and a
fixed per-cell spread. It only has to be plausible and deterministic.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from dbus_aggregate_batteries.core.venus import Value

Chemistry = Literal["lfp", "lto"]
Layout = Literal["v2", "v014"]
ShuntMode = Literal["battery", "dcload"]
Profile = Callable[[float], float]

SERIALBATTERY_PRODUCT_ID = 0xBA77
SHUNT_PRODUCT_NAME = "SmartShunt 500A/50mV"
SHUNT_PRODUCT_ID = 0xA389
MULTI_PRODUCT_NAME = "MultiPlus-II 48/5000/70-50"
# A value in the range Victron reserves for VE.Bus products; the exact id of this model was not
# verified, and nothing in the aggregator may depend on it.
MULTI_PRODUCT_ID = 0x2716
SOLAR_PRODUCT_NAME = "SmartSolar MPPT VE.Can 250/100"
# VE.Direct's id for the SmartSolar 250/100; the VE.Can variant's own id was not verified.
SOLAR_PRODUCT_ID = 0xA050
# Victron's "not discharging" cap for /TimeToGo (venus-dbus.md §2.3).
TIME_TO_GO_CAP_S = 864000


@dataclass(frozen=True, slots=True)
class CellChemistry:
    """Voltage figures of one cell chemistry; the curve is (SoC %, open-circuit V) points."""

    ocv_curve: tuple[tuple[float, float], ...]
    cvl_per_cell_v: float
    low_cell_v: float
    min_cell_alarm_v: float
    max_cell_alarm_v: float
    cell_resistance_ohm: float


CHEMISTRIES: dict[str, CellChemistry] = {
    # LFP is flat between 20 and 90 % and steep at both ends; the knee above 98 % is why the
    # aggregator sees one high cell run away near full.
    "lfp": CellChemistry(
        ocv_curve=(
            (0.0, 2.90),
            (2.0, 3.05),
            (5.0, 3.15),
            (10.0, 3.21),
            (20.0, 3.25),
            (30.0, 3.27),
            (40.0, 3.285),
            (50.0, 3.295),
            (60.0, 3.30),
            (70.0, 3.31),
            (80.0, 3.325),
            (90.0, 3.34),
            (95.0, 3.37),
            (98.0, 3.42),
            (100.0, 3.60),
        ),
        cvl_per_cell_v=3.45,
        low_cell_v=2.90,
        min_cell_alarm_v=3.00,
        max_cell_alarm_v=3.60,
        cell_resistance_ohm=0.0004,
    ),
    "lto": CellChemistry(
        ocv_curve=(
            (0.0, 1.90),
            (5.0, 2.10),
            (10.0, 2.20),
            (20.0, 2.27),
            (30.0, 2.31),
            (40.0, 2.34),
            (50.0, 2.37),
            (60.0, 2.40),
            (70.0, 2.43),
            (80.0, 2.47),
            (90.0, 2.52),
            (95.0, 2.57),
            (100.0, 2.70),
        ),
        cvl_per_cell_v=2.60,
        low_cell_v=1.90,
        min_cell_alarm_v=2.00,
        max_cell_alarm_v=2.75,
        cell_resistance_ohm=0.0006,
    ),
}

# (SoC at or above, fraction of the spec CCL); first match wins. Stepwise like the drivers'
# SoC tables, so CCL does not change every tick.
CCL_SOC_STEPS: tuple[tuple[float, float], ...] = ((98.0, 0.05), (95.0, 0.25), (90.0, 0.5))
# (SoC below, fraction of the spec DCL); first match wins.
DCL_SOC_STEPS: tuple[tuple[float, float], ...] = ((5.0, 0.05), (10.0, 0.25), (20.0, 0.5))


def ocv_v(curve: Sequence[tuple[float, float]], soc_pct: float) -> float:
    """Open-circuit cell voltage at ``soc_pct`` by linear interpolation, clamped to the curve."""
    if soc_pct <= curve[0][0]:
        return curve[0][1]
    for (s0, v0), (s1, v1) in itertools.pairwise(curve):
        if soc_pct <= s1:
            return v0 + (v1 - v0) * (soc_pct - s0) / (s1 - s0)
    return curve[-1][1]


def spread_pattern(cells: int, spread_v: float) -> tuple[float, ...]:
    """Fixed per-cell offsets spanning ``spread_v``; a stride walk so neighbours differ."""
    if cells <= 1:
        return (0.0,) * cells
    # 7 is coprime with the usual 4, 8, 16 and 24 cell counts, so the offsets are a permutation.
    return tuple(spread_v * (((k * 7 + 3) % cells) / (cells - 1) - 0.5) for k in range(cells))


def sine_profile(
    amplitude_a: float = 50.0, period_s: float = 600.0, offset_a: float = 0.0
) -> Profile:
    """Bank current swinging between charge (+) and discharge (-)."""

    def profile(t_s: float) -> float:
        return offset_a + amplitude_a * math.sin(2.0 * math.pi * t_s / period_s)

    return profile


def constant_profile(current_a: float) -> Profile:
    """A current that never changes."""

    def profile(t_s: float) -> float:
        return current_a

    return profile


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


@dataclass(frozen=True, slots=True)
class PackSpec:
    """What a simulated dbus-serialbattery pack is; ``name`` is its port (service suffix)."""

    name: str
    cells: int = 16
    capacity_ah: float = 280.0
    chemistry: Chemistry = "lfp"
    soc_pct: float = 50.0
    cell_spread_v: float = 0.005
    high_cell_offset_v: float = 0.0
    high_cell: int = 1  # 1-based, like the driver's "C<n>" ids
    layout: Layout = "v2"
    serial: str | None = None  # None: derived from name
    custom_name: str | None = None  # None: the driver's default, the product name
    ccl_a: float = 140.0
    dcl_a: float = 200.0
    cvl_per_cell_v: float | None = None  # None: the chemistry's
    float_cell_v: float | None = None  # None: CVL stays put in Float
    device_instance: int = 1
    temperature_c: float = 25.0
    cell_resistance_ohm: float | None = None  # None: the chemistry's
    bms_type: str = "Jkbms"
    all_cells_change: bool = False  # load benchmark: every cell voltage differs every step
    # A real BMS publishes V with 2 decimals, cells with 3, A and SoC with 1, and reads exactly
    # 0 A inside its current dead band: at rest such a pack shows no change at all for hours
    # (the full-precision default changes every step).  Under load its current reading
    # flickers by one digit, as a shunt's ADC does.
    quantized: bool = False
    cell_jitter_v: float = 0.0  # cell 1 flickers by this much every other step (a noisy ADC)
    charge_mode: str | None = None  # start in this mode; None: Float at 100 % SoC, else Bulk

    def __post_init__(self) -> None:
        if not 1 <= self.cells <= 64:
            raise ValueError(f"cells must be 1..64, not {self.cells}")
        if self.capacity_ah <= 0:
            raise ValueError(f"capacity_ah must be positive, not {self.capacity_ah}")
        if not 0.0 <= self.soc_pct <= 100.0:
            raise ValueError(f"soc_pct must be 0..100, not {self.soc_pct}")
        if not 1 <= self.high_cell <= self.cells:
            raise ValueError(f"high_cell must be 1..{self.cells}, not {self.high_cell}")
        if not 0.0 <= self.cell_jitter_v <= 0.1:
            raise ValueError(f"cell_jitter_v must be 0..0.1 V, not {self.cell_jitter_v}")
        if self.chemistry not in CHEMISTRIES:
            raise ValueError(f"unknown chemistry {self.chemistry!r}")
        if self.layout not in ("v2", "v014"):
            raise ValueError(f"unknown layout {self.layout!r}")

    @property
    def service_name(self) -> str:
        """The D-Bus name the real driver would claim for this port."""
        return f"com.victronenergy.battery.{self.name}"

    @property
    def product_name(self) -> str:
        """ProductName as v0.14 to v2.0 publish it."""
        return f"SerialBattery({self.bms_type})"


def default_pack_specs(
    n: int,
    *,
    layout: Layout | Literal["mixed"] = "v2",
    cells: int = 16,
    capacity_ah: float = 280.0,
    chemistry: Chemistry = "lfp",
    soc_pct: float = 50.0,
    all_cells_change: bool = False,
) -> list[PackSpec]:
    """``n`` packs on ttyUSB0.. with instances 1..n; "mixed" alternates v2 and v014."""
    specs: list[PackSpec] = []
    for i in range(n):
        pack_layout: Layout = ("v2" if i % 2 == 0 else "v014") if layout == "mixed" else layout
        specs.append(
            PackSpec(
                name=f"ttyUSB{i}",
                cells=cells,
                capacity_ah=capacity_ah,
                chemistry=chemistry,
                # Slightly different SoCs, so packs are told apart and the spread shows.
                soc_pct=_clamp(soc_pct - 2.0 * i, 0.0, 100.0),
                layout=pack_layout,
                device_instance=i + 1,
                all_cells_change=all_cells_change,
            )
        )
    return specs


class DeviceModel(Protocol):
    """Anything the services module can publish."""

    @property
    def service_name(self) -> str: ...

    def values(self) -> dict[str, Value]: ...


@dataclass(slots=True)
class _History:
    ah_drawn: float = 0.0
    charged_kwh: float = 0.0
    discharged_kwh: float = 0.0
    deepest_discharge_ah: float = 0.0
    last_discharge_ah: float = 0.0
    min_voltage_v: float = math.inf
    max_voltage_v: float = -math.inf
    min_cell_v: float = math.inf
    max_cell_v: float = -math.inf
    full_discharges: int = 0
    since_full_s: float = 0.0
    low_voltage_alarms: int = 0
    high_voltage_alarms: int = 0


class PackModel:
    """State of one simulated pack; ``step`` moves it, ``values`` shows it the driver's way."""

    def __init__(self, spec: PackSpec) -> None:
        self.spec = spec
        chem = CHEMISTRIES[spec.chemistry]
        self.chem = chem
        self.cvl_per_cell_v = (
            spec.cvl_per_cell_v if spec.cvl_per_cell_v is not None else chem.cvl_per_cell_v
        )
        self.resistance_ohm = (
            spec.cell_resistance_ohm
            if spec.cell_resistance_ohm is not None
            else chem.cell_resistance_ohm
        )
        self._pattern = list(spread_pattern(spec.cells, spec.cell_spread_v))
        self._pattern[spec.high_cell - 1] += spec.high_cell_offset_v
        self.soc_pct = spec.soc_pct
        self.current_a = 0.0
        self.current_avg_a = 0.0
        self.elapsed_s = 0.0
        self.custom_name = spec.custom_name if spec.custom_name is not None else spec.product_name
        self.charge_mode = spec.charge_mode or ("Float" if spec.soc_pct >= 100.0 else "Bulk")
        self.steps = 0
        self.charge_blocked = False
        self.discharge_blocked = False
        self.balancing_disabled = False
        self._history = _History()
        self._overrides: dict[str, Value] = {}
        self._frozen: dict[str, Value] | None = None
        self._cells: list[float] = []
        self._last_full_at_s = 0.0
        self._update_cells()
        self._update_history(0.0)

    # -- physics -------------------------------------------------------------------------

    def step(self, dt_s: float, current_a: float) -> None:
        """Advance ``dt_s`` seconds with ``current_a`` into the pack (+ charging)."""
        if dt_s < 0:
            raise ValueError(f"dt_s must not be negative, not {dt_s}")
        cap = self.spec.capacity_ah
        soc_before = self.soc_pct
        self.soc_pct = _clamp(self.soc_pct + current_a * dt_s / 3600.0 / cap * 100.0, 0.0, 100.0)
        # Only the charge that actually moved counts, so a full pack stops gaining Ah.
        moved_ah = (self.soc_pct - soc_before) / 100.0 * cap
        self.current_a = current_a
        # Exponential average with a 60 s time constant, the order of the driver's window.
        alpha = dt_s / (60.0 + dt_s) if dt_s > 0 else 0.0
        self.current_avg_a += alpha * (current_a - self.current_avg_a)
        self.elapsed_s += dt_s
        self.steps += 1
        self._update_cells()
        self._update_charge_mode()
        self._update_history(moved_ah)

    def _update_cells(self) -> None:
        base = ocv_v(self.chem.ocv_curve, self.soc_pct) + self.current_a * self.resistance_ohm
        cells = [base + off for off in self._pattern]
        if self.spec.cell_jitter_v and self.steps % 2:
            cells[0] += self.spec.cell_jitter_v
        if self.spec.all_cells_change and self._cells:
            # Published cells have 3 decimals: nudge a cell by 1 mV whenever it would round to
            # the value it showed last time, so each step changes every cell on the bus.
            # The nudged value sits on the 3-decimal grid, so rounding cannot undo it.
            for k, v in enumerate(cells):
                shown = round(v, 3)
                if shown == round(self._cells[k], 3):
                    cells[k] = shown + 0.001
        self._cells = cells

    def _update_charge_mode(self) -> None:
        max_cell = max(self._cells)
        if self.charge_mode == "Bulk":
            if self.soc_pct >= 99.0 or max_cell >= self.cvl_per_cell_v:
                self.charge_mode = "Absorption"
        elif self.soc_pct < 95.0 and max_cell < self.cvl_per_cell_v:
            # Discharged well below full (from Absorption or Float): a new charge starts in Bulk.
            self.charge_mode = "Bulk"
        elif self.charge_mode == "Absorption" and self.soc_pct >= 100.0:
            self.charge_mode = "Float"

    def _update_history(self, moved_ah: float) -> None:
        h = self._history
        voltage = self.voltage_v
        if moved_ah < 0:
            h.ah_drawn += -moved_ah
            h.discharged_kwh += -moved_ah * voltage / 1000.0
        else:
            h.charged_kwh += moved_ah * voltage / 1000.0
        consumed = self.spec.capacity_ah - self.remaining_ah
        h.deepest_discharge_ah = max(h.deepest_discharge_ah, consumed)
        if moved_ah < 0:
            h.last_discharge_ah = max(h.last_discharge_ah, consumed)
        elif self.soc_pct >= 100.0:
            h.last_discharge_ah = 0.0
        h.min_voltage_v = min(h.min_voltage_v, voltage)
        h.max_voltage_v = max(h.max_voltage_v, voltage)
        h.min_cell_v = min(h.min_cell_v, min(self._cells))
        h.max_cell_v = max(h.max_cell_v, max(self._cells))
        if self.soc_pct <= 0.0 and moved_ah < 0:
            h.full_discharges += 1
        # Before any full charge it counts from the start of the simulation.
        if self.soc_pct >= 100.0:
            self._last_full_at_s = self.elapsed_s
        h.since_full_s = self.elapsed_s - self._last_full_at_s

    # -- derived quantities ----------------------------------------------------------------

    @property
    def cells(self) -> tuple[float, ...]:
        """Cell voltages in V, cell 1 first."""
        return tuple(self._cells)

    @property
    def voltage_v(self) -> float:
        """Pack voltage: the sum of the cells."""
        return sum(self._cells)

    @property
    def remaining_ah(self) -> float:
        """Charge left in the pack."""
        return self.spec.capacity_ah * self.soc_pct / 100.0

    @property
    def allow_to_charge(self) -> bool:
        """Whether the BMS lets current in."""
        return not self.charge_blocked

    @property
    def allow_to_discharge(self) -> bool:
        """Whether the BMS lets current out."""
        return not self.discharge_blocked

    @property
    def cvl_v(self) -> float:
        """Charge voltage limit; drops to the float voltage in Float when one is configured."""
        per_cell = self.cvl_per_cell_v
        if self.spec.layout == "v2" and self.charge_mode == "Float" and self.spec.float_cell_v:
            per_cell = self.spec.float_cell_v
        return self.spec.cells * per_cell

    def _ccl_factor(self) -> float:
        return next((f for soc, f in CCL_SOC_STEPS if self.soc_pct >= soc), 1.0)

    def _dcl_factor(self) -> float:
        return next((f for soc, f in DCL_SOC_STEPS if self.soc_pct < soc), 1.0)

    @property
    def ccl_a(self) -> float:
        """Charge current limit: the spec's, reduced near full, 0 while charging is blocked."""
        return 0.0 if self.charge_blocked else self.spec.ccl_a * self._ccl_factor()

    @property
    def dcl_a(self) -> float:
        """Discharge current limit: the spec's, reduced near empty, 0 while blocked."""
        return 0.0 if self.discharge_blocked else self.spec.dcl_a * self._dcl_factor()

    @property
    def service_name(self) -> str:
        """The D-Bus name of this pack's service."""
        return self.spec.service_name

    # -- fault injection -------------------------------------------------------------------

    def set_override(self, path: str, value: Value) -> None:
        """Publish ``value`` at ``path`` whatever the model says (None, NaN, wrong types...)."""
        self._overrides[path] = value

    def clear_override(self, path: str) -> None:
        """Let the model drive ``path`` again."""
        self._overrides.pop(path, None)

    def clear_overrides(self) -> None:
        """Drop every override."""
        self._overrides.clear()

    @property
    def overrides(self) -> dict[str, Value]:
        """A copy of the active overrides."""
        return dict(self._overrides)

    def freeze(self) -> None:
        """Stop the published values changing, like a BMS that stopped answering (v0.14).

        The pack itself keeps integrating; only what ``values()`` shows is held.
        """
        if self._frozen is None:
            self._frozen = self._computed_values()

    def unfreeze(self) -> None:
        """Show live values again."""
        self._frozen = None

    @property
    def frozen(self) -> bool:
        """Whether ``freeze()`` is in force."""
        return self._frozen is not None

    def block_charge(self, blocked: bool = True) -> None:
        """The BMS forbids charging: AllowToCharge 0, CCL 0, one module blocking charge."""
        self.charge_blocked = blocked

    def block_discharge(self, blocked: bool = True) -> None:
        """The BMS forbids discharging: AllowToDischarge 0, DCL 0."""
        self.discharge_blocked = blocked

    # -- publication -------------------------------------------------------------------------

    def values(self) -> dict[str, Value]:
        """Every path the driver publishes for this layout, overrides applied last."""
        out = dict(self._frozen) if self._frozen is not None else self._computed_values()
        out.update(self._overrides)
        return out

    def _quantize(self, values: dict[str, Value]) -> None:
        for path, value in values.items():
            if not isinstance(value, float):
                continue
            places = _RESOLUTION.get(path)
            if places is None and path.startswith("/Voltages/Cell"):
                places = 3
            if places is not None:
                values[path] = round(value, places)

    def _computed_values(self) -> dict[str, Value]:
        spec = self.spec
        v2 = spec.layout == "v2"
        cells = self._cells
        voltage = self.voltage_v
        current = self.current_a
        max_cell = max(cells)
        min_cell = min(cells)
        max_id = cells.index(max_cell) + 1
        min_id = cells.index(min_cell) + 1
        diff = max_cell - min_cell
        remaining = self.remaining_ah
        consumed = spec.capacity_ah - remaining
        temp = spec.temperature_c + 0.01 * abs(current)
        allow_balance = self.soc_pct >= 90.0 and not self.balancing_disabled
        balancing = allow_balance and diff >= 0.010
        chem = self.chem
        n = spec.cells

        def alarm(warn: bool, bad: bool = False) -> int:
            return 2 if bad else 1 if warn else 0

        values: dict[str, Value] = {
            "/Mgmt/ProcessName": (
                "/data/apps/dbus-serialbattery/dbus-serialbattery.py"
                if v2
                else "/opt/victronenergy/dbus-serialbattery/dbus-serialbattery.py"
            ),
            "/Mgmt/ProcessVersion": "Python 3.12.3" if v2 else "Python 3.8.13",
            "/Mgmt/Connection": f"Serial /dev/{spec.name}",
            "/DeviceInstance": spec.device_instance,
            "/ProductId": SERIALBATTERY_PRODUCT_ID if v2 else 0x0,
            "/ProductName": spec.product_name,
            "/FirmwareVersion": "2.0.20250729" if v2 else "0.14.3",
            "/HardwareVersion": f"JKBMS {n}S",
            "/Connected": 1,
            "/CustomName": self.custom_name,
            "/Dc/0/Voltage": voltage,
            "/Dc/0/Current": current,
            "/Dc/0/Power": voltage * current,
            "/Dc/0/Temperature": temp,
            "/Soc": self.soc_pct,
            "/Capacity": remaining,
            "/InstalledCapacity": spec.capacity_ah,
            # v2.0 changed the sign to Victron's convention; v0.14 counts up from 0.
            "/ConsumedAmphours": -consumed if v2 else consumed,
            "/Info/BatteryLowVoltage": n * chem.low_cell_v,
            "/Info/MaxChargeVoltage": self.cvl_v,
            "/Info/MaxChargeCurrent": self.ccl_a,
            "/Info/MaxDischargeCurrent": self.dcl_a,
            "/Io/AllowToCharge": int(self.allow_to_charge),
            "/Io/AllowToDischarge": int(self.allow_to_discharge),
            "/System/NrOfCellsPerBattery": n,
            "/System/NrOfModulesOnline": 1,
            "/System/NrOfModulesOffline": 0,
            "/System/NrOfModulesBlockingCharge": int(self.charge_blocked),
            "/System/NrOfModulesBlockingDischarge": int(self.discharge_blocked),
            "/System/MinCellVoltage": min_cell,
            "/System/MaxCellVoltage": max_cell,
            "/System/MinVoltageCellId": f"C{min_id}",
            "/System/MaxVoltageCellId": f"C{max_id}",
            "/System/MinCellTemperature": temp,
            "/System/MaxCellTemperature": temp + 1.0,
            "/Balancing": int(balancing),
            "/Alarms/LowVoltage": alarm(voltage < n * chem.min_cell_alarm_v),
            "/Alarms/HighVoltage": alarm(voltage > n * chem.max_cell_alarm_v),
            "/Alarms/LowCellVoltage": alarm(min_cell < chem.min_cell_alarm_v),
            "/Alarms/HighCellVoltage": alarm(max_cell > chem.max_cell_alarm_v),
            "/Alarms/LowSoc": alarm(self.soc_pct < 10.0),
            "/Alarms/HighChargeCurrent": alarm(current > spec.ccl_a),
            "/Alarms/HighDischargeCurrent": alarm(-current > spec.dcl_a),
            "/Alarms/CellImbalance": alarm(diff > 0.1, diff > 0.2),
            "/Alarms/InternalFailure": 0,
            "/Alarms/HighChargeTemperature": 0,
            "/Alarms/LowChargeTemperature": 0,
            "/Alarms/HighTemperature": 0,
            "/Alarms/LowTemperature": 0,
            "/History/ChargeCycles": int(self._history.ah_drawn / spec.capacity_ah),
            # v0.14 passes the BMS counter through (positive); mr-manuel uses Victron's sign.
            "/History/TotalAhDrawn": (-1.0 if v2 else 1.0) * self._history.ah_drawn,
        }
        for k, cell in enumerate(cells, start=1):
            values[f"/Voltages/Cell{k}"] = cell
        for k in range(1, n + 1):
            values[f"/Balances/Cell{k}"] = int(balancing and k == max_id)
        values["/Voltages/Sum"] = voltage
        values["/Voltages/Diff"] = diff
        if v2:
            values.update(self._v2_values(temp, current, remaining, allow_balance))
        if spec.quantized:
            values["/Dc/0/Current"] = self._current_reading(current)
            self._quantize(values)
        return values

    def _current_reading(self, current: float) -> float:
        if abs(current) < CURRENT_DEAD_BAND_A:
            return 0.0
        return current + 0.1 * (self.steps % 3 - 1)

    def _v2_values(
        self, temp: float, current: float, remaining: float, allow_balance: bool
    ) -> dict[str, Value]:
        spec = self.spec
        h = self._history
        if abs(current) < 0.1:
            time_to_go: Value = None
        elif current < 0:
            time_to_go = int(abs(remaining / current * 3600.0))
        else:
            time_to_go = int(abs((spec.capacity_ah - remaining) / current * 3600.0))
        ccl_limited = self.charge_blocked or self._ccl_factor() < 1.0
        dcl_limited = self.discharge_blocked or self._dcl_factor() < 1.0
        return {
            "/Serial": spec.serial if spec.serial is not None else f"SIM-{spec.name}",
            "/DeviceName": f"JK-{spec.name}",
            "/Manufacturer": spec.bms_type,
            "/Family": None,
            "/State": 9,
            "/ErrorCode": 0,
            "/ConnectionInformation": "Connected",
            "/Soh": 100.0,
            "/TimeToGo": time_to_go,
            "/CurrentAvg": self.current_avg_a,
            "/Info/MaxChargeCellVoltage": self.cvl_v / spec.cells,
            "/Info/ChargeMode": self.charge_mode,
            "/Info/ChargeModeDebug": "",
            "/Info/ChargeModeDebugFloat": "",
            "/Info/ChargeModeDebugBulk": "",
            "/Info/ChargeLimitation": (
                "BMS" if self.charge_blocked else "SoC" if ccl_limited else ""
            ),
            "/Info/DischargeLimitation": (
                "BMS" if self.discharge_blocked else "SoC" if dcl_limited else ""
            ),
            "/Io/AllowToBalance": int(allow_balance),
            "/Io/ForceChargingOff": int(self.charge_blocked),
            "/Io/ForceDischargingOff": int(self.discharge_blocked),
            "/Io/TurnBalancingOff": int(self.balancing_disabled),
            "/System/MinTemperatureCellId": "Temp 1",
            "/System/MaxTemperatureCellId": "Temp 2",
            "/System/MOSTemperature": temp + 2.0,
            "/System/Temperature1": temp,
            "/System/Temperature1Name": "Temp 1",
            "/System/Temperature2": temp + 1.0,
            "/System/Temperature2Name": "Temp 2",
            "/System/Temperature3": None,
            "/System/Temperature3Name": None,
            "/System/Temperature4": None,
            "/System/Temperature4Name": None,
            "/Alarms/StateOfHealth": 0,
            "/Alarms/BmsCable": 0,
            "/Alarms/HighInternalTemperature": 0,
            "/Alarms/FuseBlown": 0,
            "/History/DeepestDischarge": -h.deepest_discharge_ah,
            "/History/LastDischarge": -h.last_discharge_ah,
            "/History/AverageDischarge": -h.last_discharge_ah,
            "/History/FullDischarges": h.full_discharges,
            "/History/MinimumVoltage": h.min_voltage_v,
            "/History/MaximumVoltage": h.max_voltage_v,
            "/History/MinimumCellVoltage": h.min_cell_v,
            "/History/MaximumCellVoltage": h.max_cell_v,
            "/History/TimeSinceLastFullCharge": int(h.since_full_s),
            "/History/LowVoltageAlarms": h.low_voltage_alarms,
            "/History/HighVoltageAlarms": h.high_voltage_alarms,
            "/History/MinimumTemperature": spec.temperature_c,
            "/History/MaximumTemperature": spec.temperature_c + 1.0,
            "/History/DischargedEnergy": h.discharged_kwh,
            "/History/ChargedEnergy": h.charged_kwh,
            "/History/Clear": 0,
            "/History/CanBeCleared": 1,
            "/Settings/HasTemperature": 1,
            "/Settings/HasSettings": 1,
            "/Settings/ResetSoc": 0,
        }


# Below this a quantized pack reads exactly 0 A (many BMS have a dead band of this order).
CURRENT_DEAD_BAND_A = 0.2
# Decimals a driver publishes, for PackSpec.quantized (cells: 3, see _quantize).
_RESOLUTION: dict[str, int] = {
    "/Dc/0/Voltage": 2,
    "/Dc/0/Current": 1,
    "/Dc/0/Power": 0,
    "/Dc/0/Temperature": 1,
    "/Soc": 1,
    "/Capacity": 2,
    "/ConsumedAmphours": 2,
    "/CurrentAvg": 1,
    "/System/MinCellVoltage": 3,
    "/System/MaxCellVoltage": 3,
    "/System/MinCellTemperature": 1,
    "/System/MaxCellTemperature": 1,
    "/System/MOSTemperature": 1,
    "/System/Temperature1": 1,
    "/System/Temperature2": 1,
    "/Voltages/Sum": 2,
    "/Voltages/Diff": 3,
    "/History/TotalAhDrawn": 2,
    "/History/DeepestDischarge": 2,
    "/History/LastDischarge": 2,
    "/History/AverageDischarge": 2,
    "/History/MinimumVoltage": 2,
    "/History/MaximumVoltage": 2,
    "/History/MinimumCellVoltage": 3,
    "/History/MaximumCellVoltage": 3,
    "/History/ChargedEnergy": 3,
    "/History/DischargedEnergy": 3,
    "/Info/MaxChargeCurrent": 1,
    "/Info/MaxDischargeCurrent": 1,
    "/Info/MaxChargeVoltage": 2,
}


def _mgmt(name: str, process: str) -> dict[str, Value]:
    return {
        "/Mgmt/ProcessName": process,
        "/Mgmt/ProcessVersion": "simulated",
        "/Mgmt/Connection": f"VE.Direct port /dev/{name}",
        "/Connected": 1,
    }


@dataclass(slots=True)
class MultiModel:
    """A VE.Bus Multi; ``current_a`` is DC into the battery (+ charging)."""

    name: str = "ttyS4"
    device_instance: int = 276
    current_a: float = 0.0
    voltage_v: float = 52.0
    soc_pct: float = 50.0

    @property
    def service_name(self) -> str:
        """com.victronenergy.vebus.<port>."""
        return f"com.victronenergy.vebus.{self.name}"

    def values(self) -> dict[str, Value]:
        """What the vebus driver publishes that the aggregator and systemcalc read."""
        # VE.Bus states: 3 bulk (charging), 9 inverting, 8 passthru when the DC side idles.
        state = 3 if self.current_a > 1.0 else 9 if self.current_a < -1.0 else 8
        return {
            **_mgmt(self.name, "mk2-dbus"),
            "/Mgmt/Connection": f"VE.Bus /dev/{self.name}",
            "/DeviceInstance": self.device_instance,
            "/ProductId": MULTI_PRODUCT_ID,
            "/ProductName": MULTI_PRODUCT_NAME,
            "/FirmwareVersion": 510,
            "/HardwareVersion": None,
            "/CustomName": "",
            "/Dc/0/Current": self.current_a,
            "/Dc/0/Voltage": self.voltage_v,
            "/Dc/0/Power": self.current_a * self.voltage_v,
            "/Dc/0/Temperature": None,
            "/Soc": self.soc_pct,
            "/State": state,
            "/Mode": 3,
        }


@dataclass(slots=True)
class SolarChargerModel:
    """A solar charger; ``current_a`` is its battery-side output (>= 0)."""

    name: str = "ttyS5"
    device_instance: int = 278
    current_a: float = 0.0
    voltage_v: float = 52.0

    @property
    def service_name(self) -> str:
        """com.victronenergy.solarcharger.<port>."""
        return f"com.victronenergy.solarcharger.{self.name}"

    def values(self) -> dict[str, Value]:
        """Charging current, voltage and PV power (a few % above the output, for losses)."""
        producing = self.current_a > 0.05
        return {
            **_mgmt(self.name, "vedirect-dbus"),
            "/DeviceInstance": self.device_instance,
            "/ProductId": SOLAR_PRODUCT_ID,
            "/ProductName": SOLAR_PRODUCT_NAME,
            "/FirmwareVersion": 0x0164,
            "/HardwareVersion": None,
            "/CustomName": "",
            "/Dc/0/Current": self.current_a,
            "/Dc/0/Voltage": self.voltage_v,
            "/Yield/Power": self.current_a * self.voltage_v / 0.97,
            "/Pv/V": 150.0 if producing else 0.0,
            "/State": 3 if producing else 0,
            "/Mode": 1,
        }


@dataclass(slots=True)
class ShuntModel:
    """A SmartShunt, as a battery monitor (``mode="battery"``) or DC load meter ("dcload").

    In battery mode it counts its own SoC over ``capacity_ah`` from the current it measures;
    it never publishes ``/Info/*``, so it is no BMS.
    """

    mode: ShuntMode = "battery"
    name: str = "ttyS6"
    device_instance: int = 277
    capacity_ah: float = 560.0
    soc_pct: float = 50.0
    current_a: float = 0.0
    voltage_v: float = 52.0

    @property
    def service_name(self) -> str:
        """com.victronenergy.battery.<port> or com.victronenergy.dcload.<port>."""
        return f"com.victronenergy.{self.mode}.{self.name}"

    def step(self, dt_s: float, current_a: float, voltage_v: float) -> None:
        """Measure ``current_a`` (battery mode: + charging; dcload: + consumed) for ``dt_s``."""
        self.current_a = current_a
        self.voltage_v = voltage_v
        if self.mode == "battery":
            delta = current_a * dt_s / 3600.0 / self.capacity_ah * 100.0
            self.soc_pct = _clamp(self.soc_pct + delta, 0.0, 100.0)

    def values(self) -> dict[str, Value]:
        """DC values; battery mode adds SoC, consumed Ah and time to go."""
        out: dict[str, Value] = {
            **_mgmt(self.name, "vedirect-dbus"),
            "/DeviceInstance": self.device_instance,
            "/ProductId": SHUNT_PRODUCT_ID,
            "/ProductName": SHUNT_PRODUCT_NAME,
            "/FirmwareVersion": 0x0407,
            "/HardwareVersion": None,
            "/CustomName": "",
            "/Dc/0/Current": self.current_a,
            "/Dc/0/Voltage": self.voltage_v,
            "/Dc/0/Power": self.current_a * self.voltage_v,
        }
        if self.mode == "battery":
            remaining = self.capacity_ah * self.soc_pct / 100.0
            if self.current_a < -0.1:
                ttg = min(int(remaining / -self.current_a * 3600.0), TIME_TO_GO_CAP_S)
            else:
                ttg = TIME_TO_GO_CAP_S
            out["/Soc"] = self.soc_pct
            out["/ConsumedAmphours"] = -(self.capacity_ah - remaining)
            out["/TimeToGo"] = ttg
        return out


@dataclass(slots=True)
class Bank:
    """Packs in parallel plus the Victron devices around them, driven by current profiles.

    ``profile(t_s)`` is the wanted bank current (+ charging). It is split between the packs in
    proportion to capacity; a pack whose BMS blocks that direction takes none. ``loads(t_s)`` is
    the DC load current and ``solar(t_s)`` the MPPT output (None: 60 % of what the bank and the
    loads need while charging). The Multi makes up the rest, so at every step
    ``solar + multi == bank + loads``.
    """

    packs: list[PackModel]
    profile: Profile = field(default_factory=sine_profile)
    loads: Profile = field(default_factory=lambda: constant_profile(5.0))
    solar: Profile | None = None
    respect_limits: bool = False  # clamp the bank current to the packs' CCL/DCL sums
    multi: MultiModel = field(default_factory=MultiModel)
    solar_charger: SolarChargerModel = field(default_factory=SolarChargerModel)
    battery_shunt: ShuntModel = field(default_factory=ShuntModel)
    dcload_shunt: ShuntModel = field(
        default_factory=lambda: ShuntModel(mode="dcload", name="ttyS7", device_instance=279)
    )
    t_s: float = 0.0
    current_a: float = 0.0
    load_current_a: float = 0.0

    def __post_init__(self) -> None:
        total_ah = self.capacity_ah
        if total_ah > 0:
            self.battery_shunt.capacity_ah = total_ah
            self.battery_shunt.soc_pct = (
                sum(p.soc_pct * p.spec.capacity_ah for p in self.packs) / total_ah
            )
        self._sync_devices(0.0)

    @property
    def capacity_ah(self) -> float:
        """Installed capacity of the packs present."""
        return sum(p.spec.capacity_ah for p in self.packs)

    @property
    def voltage_v(self) -> float:
        """Bus voltage: capacity-weighted mean of the pack voltages (0 with no packs)."""
        total = self.capacity_ah
        if total <= 0:
            return 0.0
        return sum(p.voltage_v * p.spec.capacity_ah for p in self.packs) / total

    def split_current(self, total_a: float) -> list[float]:
        """Per-pack currents for ``total_a``: by capacity among packs that accept it."""
        if total_a > 0:
            takers = [p.allow_to_charge for p in self.packs]
        elif total_a < 0:
            takers = [p.allow_to_discharge for p in self.packs]
        else:
            return [0.0] * len(self.packs)
        if self.respect_limits:
            limits = [
                (p.ccl_a if total_a > 0 else p.dcl_a)
                for p, ok in zip(self.packs, takers, strict=True)
                if ok
            ]
            total_a = _clamp(total_a, -sum(limits), sum(limits))
        weight = sum(p.spec.capacity_ah for p, ok in zip(self.packs, takers, strict=True) if ok)
        if weight <= 0:
            return [0.0] * len(self.packs)
        return [
            total_a * p.spec.capacity_ah / weight if ok else 0.0
            for p, ok in zip(self.packs, takers, strict=True)
        ]

    def step(self, dt_s: float) -> None:
        """Advance every pack and device by ``dt_s`` seconds."""
        self.t_s += dt_s
        currents = self.split_current(self.profile(self.t_s))
        for pack, current in zip(self.packs, currents, strict=True):
            pack.step(dt_s, current)
        self.current_a = sum(currents)
        self._sync_devices(dt_s)

    def _sync_devices(self, dt_s: float) -> None:
        voltage = self.voltage_v
        loads = max(0.0, self.loads(self.t_s))
        need = self.current_a + loads
        solar = max(0.0, self.solar(self.t_s)) if self.solar is not None else max(0.0, need) * 0.6
        self.load_current_a = loads
        self.solar_charger.current_a = solar
        self.solar_charger.voltage_v = voltage
        self.multi.current_a = need - solar
        self.multi.voltage_v = voltage
        self.battery_shunt.step(dt_s, self.current_a, voltage)
        self.dcload_shunt.step(dt_s, loads, voltage)
        self.multi.soc_pct = self.battery_shunt.soc_pct

    def add_pack(self, pack: PackModel | PackSpec) -> PackModel:
        """Connect another pack; it carries current from the next step."""
        model = pack if isinstance(pack, PackModel) else PackModel(pack)
        self.packs.append(model)
        self.battery_shunt.capacity_ah = self.capacity_ah
        return model

    def remove_pack(self, index: int) -> PackModel:
        """Disconnect pack ``index``; the others take its share from the next step."""
        model = self.packs.pop(index)
        if self.packs:
            self.battery_shunt.capacity_ah = self.capacity_ah
        return model

    @property
    def devices(self) -> tuple[DeviceModel, ...]:
        """The Victron devices: Multi, solar charger, battery shunt, dcload shunt."""
        return (self.multi, self.solar_charger, self.battery_shunt, self.dcload_shunt)
