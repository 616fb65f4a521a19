"""Closed-loop scenarios: YAML files, validated like the service's configuration.

A scenario says what the bank is (packs, cells, spreads, a weak cell), what happens around it
(charge power, load, ambient temperature as time signals; packs vanishing), and optionally
overrides of the aggregator's configuration (``config``: merged over the benchmark mode's).
The format is documented in README.md ("Closed-loop simulator"); shipped scenarios live in
``sim/scenarios/`` and are found by name.
"""

from __future__ import annotations

import itertools
import random
from datetime import date as Date
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dbus_aggregate_batteries.config import ConfigError, errors_from_validation
from dbus_aggregate_batteries.sim.physics import (
    LFP_BMS,
    LTO_BMS,
    OCV_LFP,
    OCV_LTO,
    BmsParams,
    Cell,
    ChargerParams,
    Pack,
    interp,
)

SCENARIO_PACKAGE = "dbus_aggregate_batteries.sim.scenarios"


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Signal = list[tuple[float, float]]


def _check_signal(points: Signal) -> Signal:
    if not points:
        raise ValueError("a signal needs at least one [time_s, value] point")
    times = [t for t, _ in points]
    if any(b <= a for a, b in itertools.pairwise(times)):
        raise ValueError("signal times must be strictly ascending")
    if times[0] < 0:
        raise ValueError("signal times must not be negative")
    return points


def signal_at(points: Signal, t_s: float) -> float:
    """A signal's value at ``t_s``: linear between points, flat before and after."""
    return interp(points, t_s)


class WeakCell(_Base):
    """One cell that differs: less capacity, more resistance, a different start SoC."""

    cell: int = Field(1, ge=1, le=64)
    capacity_factor: float = Field(1.0, gt=0.3, le=1.5)
    resistance_factor: float = Field(1.0, ge=0.2, le=20.0)
    soc_offset_pct: float = Field(0.0, ge=-50.0, le=50.0)


class PackScenario(_Base):
    """One pack; factors multiply the scenario-wide cell values."""

    capacity_ah: float = Field(280.0, gt=0.0, le=5000.0)
    soc_pct: float = Field(50.0, ge=0.0, le=100.0)
    resistance_factor: float = Field(1.0, ge=0.2, le=20.0)
    weak_cell: WeakCell | None = None
    ambient_offset_c: Signal = Field(default_factory=lambda: [(0.0, 0.0)])
    heat_w: Signal = Field(default_factory=lambda: [(0.0, 0.0)])

    @field_validator("ambient_offset_c", "heat_w")
    @classmethod
    def _signals(cls, value: Signal) -> Signal:
        return _check_signal(value)


class BmsScenario(_Base):
    """Overrides of the chemistry's BMS/driver defaults (see ``physics.BmsParams``)."""

    ccl_a: float | None = Field(None, ge=0.0, le=5000.0)
    dcl_a: float | None = Field(None, ge=0.0, le=5000.0)
    cvl_cell_v: float | None = Field(None, ge=1.0, le=5.0)
    ovp_v: float | None = Field(None, ge=1.0, le=5.0)
    ovp_release_v: float | None = Field(None, ge=1.0, le=5.0)
    balancer: Literal["active", "passive", "none"] | None = None
    balance_current_a: float | None = Field(None, ge=0.0, le=20.0)
    cell_voltage_control: bool | None = None


class ChargerScenario(_Base):
    """The Multi + MPPT pair (see ``physics.ChargerParams``)."""

    tau_s: float = Field(3.0, ge=0.0, le=120.0)
    offset_v: float = Field(0.0, ge=-2.0, le=2.0)
    dvcc_period_s: float = Field(3.0, ge=0.0, le=60.0)
    bms_lost_timeout_s: float = Field(60.0, ge=0.0, le=3600.0)


class PackEvent(_Base):
    """At ``at_s``, pack ``pack`` (0-based) vanishes from the bus or returns.

    A vanished pack stays connected to the bus bar: it still carries current, only its
    driver is gone (a USB adapter unplugged, a driver crash).
    """

    at_s: float = Field(ge=0.0)
    pack: int = Field(ge=0, le=63)
    action: Literal["vanish", "return"]


class Cycles(_Base):
    """Repeat full charge / full discharge ``count`` times instead of following the signals.

    Charge ends when the bank current has stayed below ``tail_c`` x capacity for ``hold_s``
    (or the charge is forbidden that long); discharge ends likewise when the bank cannot give
    more than the tail current.  ``max_phase_s`` bounds each phase.
    """

    count: int = Field(10, ge=1, le=100)
    charge_w: float = Field(ge=0.0, le=1_000_000.0)
    load_w: float = Field(ge=0.0, le=1_000_000.0)
    tail_c: float = Field(0.02, gt=0.0, le=1.0)
    hold_s: float = Field(120.0, ge=1.0, le=36000.0)
    max_phase_s: float = Field(20000.0, ge=60.0, le=1_000_000.0)


class Scenario(_Base):
    """A whole closed-loop scenario."""

    name: str = Field(min_length=1)
    description: str = ""
    chemistry: Literal["lfp", "lto"] = "lfp"
    cells: int = Field(16, ge=1, le=64)
    duration_s: float = Field(3600.0, gt=0.0, le=10_000_000.0)
    dt_s: float = Field(1.0, ge=0.05, le=30.0)
    tick_s: float = Field(1.0, ge=0.05, le=30.0)
    date: Date = Date(2026, 4, 15)
    seed: int = 1
    packs: list[PackScenario] = Field(min_length=1, max_length=16)
    cell_capacity_spread_pct: float = Field(1.0, ge=0.0, le=30.0)
    cell_soc_spread_pct: float = Field(0.5, ge=0.0, le=30.0)
    cell_r0_ohm: float = Field(0.0003, gt=0.0, le=0.1)
    cell_r1_ohm: float = Field(0.0003, ge=0.0, le=0.1)
    cell_tau_s: float = Field(60.0, gt=0.0, le=36000.0)
    pack_extra_r_ohm: float = Field(0.002, ge=0.0, le=1.0)
    thermal_r_c_per_w: float = Field(0.3, ge=0.0, le=100.0)
    thermal_tau_s: float = Field(1800.0, gt=0.0, le=1_000_000.0)
    bms: BmsScenario = Field(default_factory=BmsScenario)
    charger: ChargerScenario = Field(default_factory=ChargerScenario)
    charge_w: Signal = Field(default_factory=lambda: [(0.0, 0.0)])
    load_w: Signal = Field(default_factory=lambda: [(0.0, 0.0)])
    ambient_c: Signal = Field(default_factory=lambda: [(0.0, 25.0)])
    events: list[PackEvent] = Field(default_factory=list)
    cycles: Cycles | None = None
    current_gain_error: float = Field(0.0, ge=-0.2, le=0.2)
    max_cell_voltage_v: float | None = Field(None, ge=1.0, le=5.0)
    full_soc_pct: float = Field(98.5, ge=50.0, le=100.0)
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("charge_w", "load_w", "ambient_c")
    @classmethod
    def _signals(cls, value: Signal) -> Signal:
        return _check_signal(value)

    def bms_params(self) -> BmsParams:
        """The chemistry's BMS defaults with this scenario's overrides."""
        base = LFP_BMS if self.chemistry == "lfp" else LTO_BMS
        changes = {k: v for k, v in self.bms.model_dump().items() if v is not None}
        return base.__class__(**{**_fields(base), **changes})

    def charger_params(self) -> ChargerParams:
        """The charger's parameters."""
        return ChargerParams(**self.charger.model_dump())

    def build_packs(self) -> list[Pack]:
        """Fresh packs in the scenario's start state (deterministic for a seed)."""
        rng = random.Random(self.seed)
        ocv = OCV_LFP if self.chemistry == "lfp" else OCV_LTO
        bms = self.bms_params()
        packs: list[Pack] = []
        for index, spec in enumerate(self.packs):
            cells: list[Cell] = []
            for k in range(1, self.cells + 1):
                spread = rng.uniform(-0.5, 0.5) * self.cell_capacity_spread_pct / 100.0
                cap = spec.capacity_ah * (1.0 + spread)
                soc = spec.soc_pct + rng.uniform(-0.5, 0.5) * self.cell_soc_spread_pct
                r_factor = spec.resistance_factor
                weak = spec.weak_cell
                if weak is not None and weak.cell == k:
                    cap *= weak.capacity_factor
                    r_factor *= weak.resistance_factor
                    soc += weak.soc_offset_pct
                cells.append(
                    Cell(
                        capacity_ah=cap,
                        soc_pct=min(100.0, max(0.0, soc)),
                        r0_ohm=self.cell_r0_ohm * r_factor,
                        r1_ohm=self.cell_r1_ohm * r_factor,
                        tau_s=self.cell_tau_s,
                    )
                )
            packs.append(
                Pack(
                    name=f"ttyUSB{index}",
                    cells=cells,
                    ocv=ocv,
                    bms=bms,
                    extra_r_ohm=self.pack_extra_r_ohm * spec.resistance_factor,
                    thermal_r_c_per_w=self.thermal_r_c_per_w,
                    thermal_tau_s=self.thermal_tau_s,
                    temperature_c=signal_at(self.ambient_c, 0.0)
                    + signal_at(spec.ambient_offset_c, 0.0),
                )
            )
        return packs


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate an already-parsed scenario document."""
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): a scenario must be a mapping"])
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, errors_from_validation(exc)) from None


def shipped_scenarios() -> list[str]:
    """Names of the scenarios that come with the package."""
    folder = resources.files(SCENARIO_PACKAGE)
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name, or a scenario file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
        source = str(path)
    else:
        resource = resources.files(SCENARIO_PACKAGE) / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(
                str(name_or_path),
                [f"no such scenario; shipped ones: {', '.join(shipped_scenarios())}"],
            )
        text = resource.read_text(encoding="utf-8")
        source = f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"YAML error: {' '.join(str(exc).split())}"]) from None
    return parse_scenario(data, source)
