"""Closed-loop physics of a bank of packs in parallel and a DVCC charger (pure).

No D-Bus, asyncio or clock: every ``step`` takes ``dt_s``.  Shared by the in-process loop
(``sim.closedloop``) and the bus form (``sim.closedloop_bus``).  The public API is small:

* :class:`Cell`, :class:`Pack` (cells in series + BMS + balancer + thermal state),
  :class:`Bank` (packs in parallel: :meth:`Bank.solve` splits a bank current),
  :class:`Charger` (a Multi + MPPT pair obeying CVL/CCL/DCL),
  :func:`pack_paths` (what dbus-serialbattery would publish for a pack).

Model, per cell: terminal voltage = OCV(SoC) + I * R0 + V_rc, with one RC polarization pair
(V_rc relaxes towards I * R1 with time constant tau).  The SoC integrates the current over the
cell's own capacity; the OCV curves continue steeply beyond 100 % so that over-charging shows.
Sign convention everywhere: current > 0 charges.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from dbus_aggregate_batteries.core.venus import Value

# (SoC %, open-circuit cell volts).  LFP: flat from 20 to 95 %, then the knee: 3.35 V to
# 3.60 V within the last 3 %; the points beyond 100 % make over-charge visible.
OCV_LFP: tuple[tuple[float, float], ...] = (
    (-2.0, 2.00), (0.0, 2.50), (1.0, 2.90), (3.0, 3.05), (6.0, 3.15), (10.0, 3.20),
    (20.0, 3.25), (30.0, 3.27), (40.0, 3.285), (50.0, 3.295), (60.0, 3.30), (70.0, 3.31),
    (80.0, 3.325), (90.0, 3.335), (95.0, 3.345), (97.0, 3.36), (98.0, 3.38), (99.0, 3.42),
    (99.5, 3.48), (100.0, 3.60), (101.0, 3.90), (102.0, 4.20),
)
OCV_LTO: tuple[tuple[float, float], ...] = (
    (-2.0, 1.40), (0.0, 1.70), (1.0, 1.90), (5.0, 2.10), (10.0, 2.20), (20.0, 2.27),
    (30.0, 2.31), (40.0, 2.34), (50.0, 2.37), (60.0, 2.40), (70.0, 2.43), (80.0, 2.46),
    (90.0, 2.49), (95.0, 2.51), (98.0, 2.54), (99.0, 2.57), (100.0, 2.65), (101.0, 2.85),
    (102.0, 3.05),
)
SOC_MIN_PCT = -2.0
SOC_MAX_PCT = 102.0


_XS: dict[int, list[float]] = {}


def interp(points: Sequence[tuple[float, float]], x: float) -> float:
    """Piecewise-linear lookup in (x, y) points sorted by x, flat beyond both ends."""
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    xs = _XS.get(id(points))
    if xs is None or len(xs) != len(points):
        xs = [p[0] for p in points]
        if isinstance(points, tuple):
            _XS[id(points)] = xs  # tuples are immutable: the x list can be kept
    i = bisect.bisect_left(xs, x)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True, slots=True)
class BmsParams:
    """What a JK/Daly BMS and dbus-serialbattery do with a pack (per-cell volts, amps, °C).

    The current tables (x, factor) are modelled on dbus-serialbattery's defaults: the CCL falls
    with the highest cell and with temperature, the DCL with the lowest cell and temperature.
    """

    ccl_a: float = 150.0
    dcl_a: float = 200.0
    cvl_cell_v: float = 3.45
    ovp_v: float = 3.65
    ovp_release_v: float = 3.50
    uvp_v: float = 2.80
    uvp_release_v: float = 3.00
    trip_delay_s: float = 2.0
    ccl_cell_table: tuple[tuple[float, float], ...] = (
        (3.30, 1.0), (3.45, 0.5), (3.50, 0.05), (3.55, 0.0)
    )
    dcl_cell_table: tuple[tuple[float, float], ...] = (
        (2.70, 0.0), (2.80, 0.1), (2.90, 0.5), (3.10, 1.0)
    )
    ccl_temp_table: tuple[tuple[float, float], ...] = (
        (0.0, 0.0), (2.0, 0.1), (5.0, 0.2), (10.0, 0.4), (15.0, 0.8), (20.0, 1.0),
        (35.0, 1.0), (40.0, 0.4), (55.0, 0.0),
    )
    dcl_temp_table: tuple[tuple[float, float], ...] = (
        (-20.0, 0.0), (0.0, 0.2), (5.0, 0.3), (10.0, 0.4), (15.0, 1.0), (45.0, 1.0),
        (55.0, 0.0),
    )
    cell_voltage_control: bool = True  # the driver lowers its CVL by the cells' overshoot
    balancer: str = "active"  # "active", "passive" or "none"
    balance_current_a: float = 1.0
    balance_start_v: float = 3.40
    balance_trigger_v: float = 0.010


LFP_BMS = BmsParams()
LTO_BMS = BmsParams(
    cvl_cell_v=2.60,
    ovp_v=2.80,
    ovp_release_v=2.65,
    uvp_v=1.80,
    uvp_release_v=2.00,
    ccl_cell_table=((2.45, 1.0), (2.60, 0.5), (2.65, 0.05), (2.70, 0.0)),
    dcl_cell_table=((1.70, 0.0), (1.80, 0.1), (1.90, 0.5), (2.10, 1.0)),
    ccl_temp_table=((-20.0, 0.0), (-10.0, 0.5), (0.0, 1.0), (40.0, 1.0), (55.0, 0.0)),
    dcl_temp_table=((-30.0, 0.0), (-20.0, 0.5), (0.0, 1.0), (50.0, 1.0), (60.0, 0.0)),
    balance_start_v=2.50,
)


@dataclass(slots=True)
class Cell:
    """One cell: charge in Ah over its own capacity, and the RC pair's voltage."""

    capacity_ah: float
    soc_pct: float
    r0_ohm: float = 0.0003
    r1_ohm: float = 0.0003
    tau_s: float = 60.0
    v_rc: float = 0.0

    def step(self, dt_s: float, current_a: float) -> None:
        """Integrate ``current_a`` for ``dt_s``; the RC voltage relaxes exactly (no dt limit)."""
        self.soc_pct += current_a * dt_s / 36.0 / self.capacity_ah
        self.soc_pct = min(SOC_MAX_PCT, max(SOC_MIN_PCT, self.soc_pct))
        target = current_a * self.r1_ohm
        self.v_rc = target + (self.v_rc - target) * math.exp(-dt_s / self.tau_s)

    def open_circuit_v(self, ocv: Sequence[tuple[float, float]]) -> float:
        """Voltage with no current flowing now (OCV plus the RC pair still relaxing)."""
        return interp(ocv, self.soc_pct) + self.v_rc


@dataclass(slots=True)
class Pack:
    """Cells in series behind a BMS, with a cable/contact resistance and a temperature."""

    name: str
    cells: list[Cell]
    ocv: Sequence[tuple[float, float]]
    bms: BmsParams = LFP_BMS
    extra_r_ohm: float = 0.002  # cables, fuse, shunt, FETs
    thermal_r_c_per_w: float = 0.3
    thermal_tau_s: float = 1800.0
    temperature_c: float = 25.0
    current_a: float = 0.0
    charge_tripped: bool = False
    discharge_tripped: bool = False
    charge_trips: int = 0
    discharge_trips: int = 0
    _over_s: float = 0.0
    _under_s: float = 0.0
    voltages: list[float] = field(default_factory=list)
    _ocvs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._refresh()

    def _refresh(self) -> None:
        self._ocvs = [c.open_circuit_v(self.ocv) for c in self.cells]
        self.voltages = self.cell_voltages(self.current_a)

    @property
    def resistance_ohm(self) -> float:
        """Series resistance seen by the bus: the cells' R0 plus the pack's extra."""
        return sum(c.r0_ohm for c in self.cells) + self.extra_r_ohm

    def emf_v(self) -> float:
        """Open-circuit pack voltage (what the pack shows with no current)."""
        return sum(self._ocvs)

    def cell_voltages(self, current_a: float) -> list[float]:
        """Cell terminal voltages at ``current_a`` (the extra resistance is outside cells)."""
        return [v + current_a * c.r0_ohm for v, c in zip(self._ocvs, self.cells, strict=True)]

    @property
    def soc_pct(self) -> float:
        """True SoC: charge over capacity, summed over the cells (a mean, not the weakest)."""
        charge = sum(c.soc_pct * c.capacity_ah for c in self.cells)
        return charge / sum(c.capacity_ah for c in self.cells)

    @property
    def capacity_ah(self) -> float:
        """Nominal capacity: the mean cell capacity (cells are in series)."""
        return sum(c.capacity_ah for c in self.cells) / len(self.cells)

    def accepts_charge(self) -> bool:
        """The charge FET is on."""
        return not self.charge_tripped

    def accepts_discharge(self) -> bool:
        """The discharge FET is on."""
        return not self.discharge_tripped

    def step(self, dt_s: float, current_a: float, ambient_c: float, heat_w: float = 0.0) -> None:
        """Carry ``current_a`` for ``dt_s``: cells, balancer, temperature, then protection."""
        self.current_a = current_a
        for cell in self.cells:
            cell.step(dt_s, current_a)
        self._refresh()
        self._balance(dt_s)
        loss_w = current_a * current_a * self.resistance_ohm + heat_w
        steady = ambient_c + loss_w * self.thermal_r_c_per_w
        self.temperature_c = steady + (self.temperature_c - steady) * math.exp(
            -dt_s / self.thermal_tau_s
        )
        self._refresh()
        self._protect(dt_s)

    def _balance(self, dt_s: float) -> None:
        bms = self.bms
        if bms.balancer == "none" or len(self.cells) < 2:
            return
        volts = self.cell_voltages(self.current_a)
        high = max(volts)
        low = min(volts)
        if high < bms.balance_start_v or high - low < bms.balance_trigger_v:
            return
        moved_ah = bms.balance_current_a * dt_s / 3600.0
        if bms.balancer == "active":
            hi = volts.index(high)
            lo = volts.index(low)
            self.cells[hi].soc_pct -= moved_ah / self.cells[hi].capacity_ah * 100.0
            self.cells[lo].soc_pct += moved_ah / self.cells[lo].capacity_ah * 100.0
        else:
            for cell, v in zip(self.cells, volts, strict=True):
                if v - low >= bms.balance_trigger_v:
                    cell.soc_pct -= moved_ah / cell.capacity_ah * 100.0

    def _protect(self, dt_s: float) -> None:
        # Trip after the delay, release with hysteresis; each trip counts once.
        bms = self.bms
        high = max(self.voltages)
        low = min(self.voltages)
        self._over_s = self._over_s + dt_s if high >= bms.ovp_v else 0.0
        self._under_s = self._under_s + dt_s if low <= bms.uvp_v else 0.0
        if not self.charge_tripped and self._over_s >= bms.trip_delay_s:
            self.charge_tripped = True
            self.charge_trips += 1
        elif self.charge_tripped and high <= bms.ovp_release_v:
            self.charge_tripped = False
        if not self.discharge_tripped and self._under_s >= bms.trip_delay_s:
            self.discharge_tripped = True
            self.discharge_trips += 1
        elif self.discharge_tripped and low >= bms.uvp_release_v:
            self.discharge_tripped = False

    # -- what the driver publishes ------------------------------------------------------------

    def ccl_a(self) -> float:
        """The driver's CCL: spec x cell factor x temperature factor; 0 while tripped."""
        if self.charge_tripped:
            return 0.0
        b = self.bms
        return (
            b.ccl_a
            * interp(b.ccl_cell_table, max(self.voltages))
            * interp(b.ccl_temp_table, self.temperature_c)
        )

    def dcl_a(self) -> float:
        """The driver's DCL: spec x cell factor x temperature factor; 0 while tripped."""
        if self.discharge_tripped:
            return 0.0
        b = self.bms
        return (
            b.dcl_a
            * interp(b.dcl_cell_table, min(self.voltages))
            * interp(b.dcl_temp_table, self.temperature_c)
        )

    def cvl_v(self) -> float:
        """The driver's CVL: cells x max cell voltage, minus the cells' overshoot if enabled."""
        b = self.bms
        cvl = len(self.cells) * b.cvl_cell_v
        if b.cell_voltage_control:
            cvl -= sum(max(0.0, v - b.cvl_cell_v) for v in self.voltages)
        return cvl


def pack_paths(pack: Pack, *, current_gain: float = 1.0) -> dict[str, Value]:
    """The dynamic paths dbus-serialbattery publishes for ``pack`` (venus-dbus.md §5.2).

    ``current_gain`` scales the measured current (a shunt's gain error), and the published SoC
    is the BMS's counter, modelled as exact.
    """
    volts = pack.voltages
    n = len(volts)
    high = max(volts)
    low = min(volts)
    voltage = sum(volts) + pack.current_a * pack.extra_r_ohm
    current = pack.current_a * current_gain
    soc = min(100.0, max(0.0, pack.soc_pct))
    cap = pack.capacity_ah
    temp = pack.temperature_c
    hv = 2 if pack.charge_tripped else 1 if high >= pack.bms.ovp_v - 0.05 else 0
    lv = 2 if pack.discharge_tripped else 1 if low <= pack.bms.uvp_v + 0.1 else 0
    values: dict[str, Value] = {
        "/Connected": 1,
        "/Dc/0/Voltage": voltage,
        "/Dc/0/Current": current,
        "/Dc/0/Power": voltage * current,
        "/Dc/0/Temperature": temp,
        "/Soc": soc,
        "/Capacity": cap * soc / 100.0,
        "/InstalledCapacity": cap,
        "/ConsumedAmphours": -cap * (100.0 - soc) / 100.0,
        "/Info/BatteryLowVoltage": n * pack.bms.uvp_release_v,
        "/Info/MaxChargeVoltage": pack.cvl_v(),
        "/Info/MaxChargeCurrent": pack.ccl_a(),
        "/Info/MaxDischargeCurrent": pack.dcl_a(),
        "/Info/ChargeMode": "Bulk" if high < pack.bms.cvl_cell_v else "Absorption",
        "/Io/AllowToCharge": 0 if pack.charge_tripped else 1,
        "/Io/AllowToDischarge": 0 if pack.discharge_tripped else 1,
        "/Io/AllowToBalance": 1,
        "/System/NrOfCellsPerBattery": n,
        "/System/NrOfModulesOnline": 1,
        "/System/NrOfModulesOffline": 0,
        "/System/NrOfModulesBlockingCharge": int(pack.charge_tripped),
        "/System/NrOfModulesBlockingDischarge": int(pack.discharge_tripped),
        "/System/MaxCellVoltage": high,
        "/System/MinCellVoltage": low,
        "/System/MaxVoltageCellId": f"C{volts.index(high) + 1}",
        "/System/MinVoltageCellId": f"C{volts.index(low) + 1}",
        "/System/MaxCellTemperature": temp,
        "/System/MinCellTemperature": temp,
        "/Voltages/Sum": sum(volts),
        "/Voltages/Diff": high - low,
        "/Balancing": int(pack.bms.balancer != "none" and high - low >= 0.01),
        "/Alarms/HighCellVoltage": hv,
        "/Alarms/LowCellVoltage": lv,
        "/Alarms/HighVoltage": hv,
        "/Alarms/LowVoltage": lv,
        "/Alarms/HighChargeCurrent": 0,
        "/Alarms/HighDischargeCurrent": 0,
        "/Alarms/LowSoc": 0,
        "/Alarms/CellImbalance": 0,
        "/Alarms/InternalFailure": 0,
        "/Alarms/HighChargeTemperature": 0,
        "/Alarms/LowChargeTemperature": 0,
        "/Alarms/HighTemperature": 0,
        "/Alarms/LowTemperature": 0,
    }
    for k, v in enumerate(volts, start=1):
        values[f"/Voltages/Cell{k}"] = v
    return values


@dataclass(slots=True)
class Bank:
    """Packs in parallel on one bus bar: one terminal voltage, currents by EMF and resistance."""

    packs: list[Pack]

    def pack_current(self, pack: Pack, bus_v: float) -> float:
        """Current into ``pack`` at bus voltage ``bus_v``; an open FET passes one way only."""
        return _clip(pack, (bus_v - pack.emf_v()) / pack.resistance_ohm)

    def current_at(self, bus_v: float) -> float:
        """Total bank current when the bus is held at ``bus_v`` (CV regulation)."""
        return sum(self.pack_current(p, bus_v) for p in self.packs)

    def solve(self, total_a: float) -> tuple[float, list[float]]:
        """Bus voltage and per-pack currents for ``total_a`` into the bank.

        Exact: the packs conducting in their direction form a linear network
        (V = (I + sum E/R) / sum 1/R); a pack whose FET blocks its current's direction is
        taken out and the rest solved again.  If no pack can take ``total_a``'s direction the
        bank takes nothing (see :meth:`accepts`) and the bus floats at the mean EMF.
        """
        packs = self.packs
        if not packs:
            return 0.0, []
        emfs = [p.emf_v() for p in packs]
        if not self.accepts(total_a):
            return sum(emfs) / len(emfs), [0.0] * len(packs)
        conductances = [1.0 / p.resistance_ohm for p in packs]
        active = [True] * len(packs)
        bus_v = sum(emfs) / len(emfs)
        for _ in range(2 * len(packs) + 1):
            g = sum(c for c, a in zip(conductances, active, strict=True) if a)
            if g <= 0.0:
                break
            bus_v = (
                total_a
                + sum(e * c for e, c, a in zip(emfs, conductances, active, strict=True) if a)
            ) / g
            changed = False
            for i, pack in enumerate(packs):
                raw = (bus_v - emfs[i]) * conductances[i]
                ok = _clip(pack, raw) == raw
                if ok != active[i]:
                    active[i] = ok
                    changed = True
            if not changed:
                break
        currents = [
            (bus_v - e) * c if a else 0.0
            for e, c, a in zip(emfs, conductances, active, strict=True)
        ]
        return bus_v, currents

    def accepts(self, total_a: float) -> bool:
        """Whether any pack can carry current in the direction of ``total_a``."""
        if total_a > 0.0:
            return any(p.accepts_charge() for p in self.packs)
        if total_a < 0.0:
            return any(p.accepts_discharge() for p in self.packs)
        return True


def _clip(pack: Pack, current_a: float) -> float:
    if current_a > 0.0 and not pack.accepts_charge():
        return 0.0
    if current_a < 0.0 and not pack.accepts_discharge():
        return 0.0
    return current_a


@dataclass(frozen=True, slots=True)
class ChargerParams:
    """A Multi + MPPT under DVCC: response lag, measurement offset, limit update period."""

    tau_s: float = 3.0  # first-order response of the output current
    offset_v: float = 0.0  # the charger reads the bus this much higher than it is
    dvcc_period_s: float = 3.0  # DVCC writes new limits to the chargers this often
    bms_lost_timeout_s: float = 60.0  # discharging stops this long after the limits vanish


@dataclass(frozen=True, slots=True)
class DvccLimits:
    """What the BMS (our service) publishes; None = invalid."""

    cvl_v: float | None
    ccl_a: float | None
    dcl_a: float | None

    @property
    def valid(self) -> bool:
        """DVCC only uses a BMS whose three limits are valid numbers."""
        return all(
            v is not None and math.isfinite(v) for v in (self.cvl_v, self.ccl_a, self.dcl_a)
        )


@dataclass(slots=True)
class Charger:
    """Charge power and load in, battery current out, obeying the last limits DVCC passed on.

    Target current: surplus power / voltage, at most CCL and at most what holds the bus at
    CVL (constant-voltage regulation, on the charger's own, offset, measurement); a deficit is
    taken from the bank down to -DCL (the grid covers the rest).  The output follows the
    target with a first-order lag.  Without valid limits it stops charging at once and stops
    discharging after ``bms_lost_timeout_s``.
    """

    params: ChargerParams = field(default_factory=ChargerParams)
    current_a: float = 0.0
    limits: DvccLimits = field(default_factory=lambda: DvccLimits(None, None, None))
    _since_update_s: float = math.inf
    _invalid_s: float = 0.0

    def step(
        self,
        dt_s: float,
        published: DvccLimits,
        bank: Bank,
        *,
        charge_w: float,
        load_w: float,
    ) -> float:
        """Advance ``dt_s``; returns the battery current asked of the bank (+ charging)."""
        p = self.params
        self._since_update_s += dt_s
        if self._since_update_s >= p.dvcc_period_s:
            self.limits = published
            self._since_update_s = 0.0
        lim = self.limits
        bus_v, _ = bank.solve(self.current_a)
        volts = bus_v if bus_v > 1.0 else 1.0
        wanted = (charge_w - load_w) / volts
        if lim.valid:
            assert lim.cvl_v is not None and lim.ccl_a is not None and lim.dcl_a is not None
            self._invalid_s = 0.0
            cv_a = bank.current_at(lim.cvl_v - p.offset_v)
            if wanted >= 0.0:
                # A charger cannot pull the bus down: above CVL it only stops charging.
                target = max(0.0, min(wanted, lim.ccl_a, cv_a))
            else:
                target = max(wanted, -max(0.0, lim.dcl_a))
                target = min(target, max(0.0, cv_a))
        else:
            self._invalid_s += dt_s
            target = min(0.0, wanted)
            if self._invalid_s >= p.bms_lost_timeout_s:
                target = 0.0
        alpha = 1.0 - math.exp(-dt_s / p.tau_s) if p.tau_s > 0 else 1.0
        self.current_a += alpha * (target - self.current_a)
        if not bank.accepts(self.current_a):
            self.current_a = 0.0
        return self.current_a
