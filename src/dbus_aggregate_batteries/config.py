"""Configuration: one YAML file validated by pydantic v2.

Policy: every number has a range, unknown keys are rejected at every level, and a chemistry
preset (``lfp`` or ``lto``) fills the cell-voltage keys the file leaves out.  Loading collects
*all* problems and raises one :class:`ConfigError` that names the file, the key path and the
reason for each, so the CLI can print them and exit 2 before touching the bus.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dbus_aggregate_batteries.core.venus import custom_name_problem

# Cell-voltage defaults per chemistry.  LFP values are the original program's defaults; LTO
# values are its example LTO configuration (upstream.md 2.2).
PRESETS: dict[str, dict[str, Any]] = {
    "lfp": {
        "max_cell_voltage_v": 3.45,
        "min_cell_voltage_v": 2.90,
        "min_cell_hysteresis_v": 0.10,
        "balancing_voltage_v": 3.40,
        "charge_cell_voltage_v": [
            3.55, 3.50, 3.50, 3.45, 3.40, 3.40, 3.40, 3.40, 3.45, 3.50, 3.50, 3.55
        ],
        "cell_diff_max_v": 0.025,
        "soc_full_cell_voltage_v": 3.45,
        "soc_empty_cell_voltage_v": 2.90,
        # No charge at or below 0 °C, reduced up to 10 °C, full to 45 °C, none from 55 °C;
        # discharge from -20 °C to 60 °C (typical LFP datasheet windows).
        "charge_temperature_table": {
            "temperature_c": [0.0, 1.0, 10.0, 45.0, 55.0],
            "factor": [0.0, 0.2, 1.0, 1.0, 0.0],
        },
        "discharge_temperature_table": {
            "temperature_c": [-20.0, -10.0, 0.0, 50.0, 60.0],
            "factor": [0.0, 0.3, 1.0, 1.0, 0.0],
        },
    },
    "lto": {
        "max_cell_voltage_v": 2.60,
        "min_cell_voltage_v": 1.90,
        "min_cell_hysteresis_v": 0.30,
        "balancing_voltage_v": 2.50,
        "charge_cell_voltage_v": [
            2.50, 2.45, 2.45, 2.40, 2.35, 2.35, 2.35, 2.35, 2.40, 2.45, 2.45, 2.50
        ],
        "cell_diff_max_v": 0.025,
        "soc_full_cell_voltage_v": 2.50,
        "soc_empty_cell_voltage_v": 1.90,
        # LTO charges well below freezing: none at or below -30 °C, full from -20 °C.
        "charge_temperature_table": {
            "temperature_c": [-30.0, -20.0, 45.0, 55.0],
            "factor": [0.0, 1.0, 1.0, 0.0],
        },
        "discharge_temperature_table": {
            "temperature_c": [-40.0, -30.0, 55.0, 65.0],
            "factor": [0.0, 1.0, 1.0, 0.0],
        },
    },
}

CELL_V = Field(ge=0.5, le=5.0)
# The default charge table reaches 0 this far above max_cell_voltage_v.
CHARGE_BACKSTOP_V = 0.05

# Bounds that make a hostile or mistaken file fail fast with one clear line. A real config is
# ~8 kB with ~150 YAML nodes (every list at its longest would still stay below 1000): limits
# on the file size, the number of YAML nodes, every string's and every list's length. D-Bus
# names and object paths are at most 255 characters.
MAX_FILE_BYTES = 256 * 1024
MAX_NODES = 2_000
MAX_TEXT = 255
MAX_LIST = 64
MAX_PROBLEMS = 20
MAX_DIR_PATH = 1024


class ConfigError(Exception):
    """A configuration file is unreadable or invalid; ``problems`` lists every issue found."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class DiscoveryConfig(_Base):
    """Which D-Bus services are packs, shunts, inverter/chargers and solar chargers."""

    battery_service_prefix: str = Field(
        "com.victronenergy.battery", min_length=1, max_length=MAX_TEXT
    )
    battery_product_names: list[str] = Field(
        default_factory=lambda: ["SerialBattery"], min_length=1, max_length=MAX_LIST
    )
    exclude_services: list[str] = Field(default_factory=list, max_length=MAX_LIST)
    exclude_serials: list[str] = Field(default_factory=list, max_length=MAX_LIST)
    name_path: str = Field("/CustomName", pattern=r"^/[A-Za-z0-9_/]+$", max_length=MAX_TEXT)
    expected_count: int = Field(0, ge=0, le=64)
    smartshunt_product_names: list[str] = Field(
        default_factory=lambda: ["SmartShunt"], max_length=MAX_LIST
    )
    dcload_service_prefix: str = Field(
        "com.victronenergy.dcload", min_length=1, max_length=MAX_TEXT
    )
    # An empty prefix would match every service; "no Multi" is ``current.use_multi: false``.
    multi_service_prefix: str = Field("com.victronenergy.vebus", min_length=1, max_length=MAX_TEXT)
    solarcharger_service_prefix: str = Field(
        "com.victronenergy.solarcharger", min_length=1, max_length=MAX_TEXT
    )
    rescan_interval_s: float = Field(2.0, ge=0.1, le=600)

    @field_validator("battery_product_names", "smartshunt_product_names")
    @classmethod
    def _non_empty_keywords(cls, value: list[str]) -> list[str]:
        if any(not item for item in value):
            raise ValueError("keywords must not be empty strings (an empty keyword matches all)")
        return _short_items(value)

    @field_validator("exclude_services", "exclude_serials")
    @classmethod
    def _non_empty_excludes(cls, value: list[str]) -> list[str]:
        if any(not item for item in value):
            raise ValueError("entries must not be empty strings")
        return _short_items(value)


class CurrentConfig(_Base):
    """Where the bank current comes from."""

    source: Literal["bms", "victron", "smartshunt"] = "bms"
    use_multi: bool = True
    smartshunts: Literal["none", "all"] | list[int | str] = "none"
    smartshunt_name_path: str = Field(
        "/CustomName", pattern=r"^/[A-Za-z0-9_/]+$", max_length=MAX_TEXT
    )
    invert_smartshunts: bool = False
    fallback_to_bms: bool = True

    @field_validator("smartshunts", mode="before")
    @classmethod
    def _shunt_items(cls, value: Any) -> Any:
        # Checked before the union so that one mistake gives one clear line, not one per branch.
        if isinstance(value, bool):
            raise ValueError("write 'all' or 'none' (or a list of shunts), not true/false")
        if isinstance(value, str):
            if value not in ("none", "all"):
                raise ValueError("must be 'none', 'all' or a list of VRM instances / names")
            return value
        if not isinstance(value, list):
            raise ValueError("must be 'none', 'all' or a list of VRM instances / names")
        if len(value) > MAX_LIST:
            raise ValueError(f"at most {MAX_LIST} shunts, this list has {len(value)}")
        for index, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise ValueError(
                    f"item {index}: list items must be VRM instances (int) or names (str)"
                )
            if isinstance(item, int) and not 0 <= item <= 1023:
                raise ValueError(f"item {index}: a VRM instance must be in 0..1023")
            if isinstance(item, str) and not item:
                raise ValueError(f"item {index}: a shunt name must not be empty")
            if isinstance(item, str) and len(item) > MAX_TEXT:
                raise ValueError(f"item {index}: a shunt name has at most {MAX_TEXT} characters")
        return value


class SocConfig(_Base):
    """State of charge: from the packs' BMS, or from our own Coulomb counter."""

    source: Literal["bms", "own"] = "bms"
    battery_efficiency: float = Field(0.98, gt=0.5, le=1.0)
    max_gap_s: float = Field(30.0, ge=1.0, le=3600.0)
    full_cell_voltage_v: float = CELL_V
    empty_cell_voltage_v: float = CELL_V
    reset_to_zero_at_empty: bool = False
    full_reset_max_current_c: float = Field(0.05, ge=0.0, le=10.0)
    save_every_fraction: float = Field(0.0025, ge=0.0001, le=0.1)
    min_save_interval_s: float = Field(60.0, ge=1.0, le=86400.0)
    time_to_go_min_current_a: float = Field(0.1, ge=0.0, le=1000.0)

    @field_validator("empty_cell_voltage_v")
    @classmethod
    def _order(cls, value: float, info: ValidationInfo) -> float:
        # A field validator (not a model validator) so that it runs, and names this key, even
        # when another key of the section is broken.
        full = info.data.get("full_cell_voltage_v")
        if full is not None and value >= full:
            raise ValueError(f"must be below soc.full_cell_voltage_v ({full:g} V)")
        return value


def _ascending_within(xs: list[float], low: float, high: float, what: str) -> list[float]:
    """A table's x column: finite, within ``low..high`` and strictly ascending."""
    for index, x in enumerate(xs):
        if not math.isfinite(x) or not low <= x <= high:
            raise ValueError(f"item {index}: entries must be within {what}")
    for index, (a, b) in enumerate(pairwise(xs)):
        if b <= a:
            raise ValueError(f"must be strictly ascending (item {index + 1}: {b:g} after {a:g})")
    return xs


def _factors_matching(ys: list[float], info: ValidationInfo, x_name: str) -> list[float]:
    """A table's factor column: within 0..1 and as long as its x column ``x_name``."""
    for index, y in enumerate(ys):
        if not math.isfinite(y) or not 0.0 <= y <= 1.0:
            raise ValueError(f"item {index}: entries must be within 0..1")
    xs = info.data.get(x_name)
    if xs is not None and len(xs) != len(ys):
        raise ValueError(f"has {len(ys)} entries but {x_name} has {len(xs)}; they must match")
    return ys


class Table(_Base):
    """A piecewise-linear factor table over a cell voltage."""

    cell_voltage_v: list[float] = Field(min_length=2, max_length=20)
    factor: list[float] = Field(min_length=2, max_length=20)

    # Field validators rather than one model validator: each problem is reported against the
    # list it is about, and all of them at once.
    @field_validator("cell_voltage_v")
    @classmethod
    def _voltages(cls, xs: list[float]) -> list[float]:
        return _ascending_within(xs, 0.5, 5.0, "0.5..5.0 V")

    @field_validator("factor")
    @classmethod
    def _factors(cls, ys: list[float], info: ValidationInfo) -> list[float]:
        return _factors_matching(ys, info, "cell_voltage_v")


class TemperatureTable(_Base):
    """A piecewise-linear current factor table over a temperature."""

    temperature_c: list[float] = Field(min_length=2, max_length=20)
    factor: list[float] = Field(min_length=2, max_length=20)

    @field_validator("temperature_c")
    @classmethod
    def _temperatures(cls, xs: list[float]) -> list[float]:
        return _ascending_within(xs, -50.0, 120.0, "-50..120 °C")

    @field_validator("factor")
    @classmethod
    def _factors(cls, ys: list[float], info: ValidationInfo) -> list[float]:
        return _factors_matching(ys, info, "temperature_c")


class TemperatureConfig(_Base):
    """Current derating over the lowest and highest pack/cell temperature."""

    own: bool = True
    bms_cap: bool = False
    charge_table: TemperatureTable
    discharge_table: TemperatureTable


class ShareConfig(_Base):
    """The ``share`` currents rule: bank limit from each pack's measured share of the current."""

    min_current_a: float = Field(5.0, ge=0.1, le=1000.0)
    smoothing_s: float = Field(30.0, ge=0.0, le=3600.0)
    unmeasured_margin: float = Field(0.5, ge=0.0, le=10.0)
    headroom: float = Field(0.1, ge=0.0, le=0.5)
    anticipate_s: float = Field(15.0, ge=0.0, le=120.0)
    rise_s: float = Field(5.0, ge=0.0, le=600.0)


class BmsLimitsConfig(_Base):
    """Limits merged from the packs' own /Info/* values."""

    cvl: Literal["min", "float_aware"] = "min"
    currents: Literal["min_times_n", "sum", "share"] = "share"


class OwnLimitsConfig(_Base):
    """Limits computed here from cell voltages."""

    max_cell_voltage_v: float = CELL_V
    min_cell_voltage_v: float = CELL_V
    min_cell_hysteresis_v: float = Field(gt=0.0, le=1.0)
    balancing_voltage_v: float = CELL_V
    balancing_repetition_days: int = Field(10, ge=1, le=365)
    balancing_tolerance_v: float = Field(0.005, ge=0.0, le=0.1)
    charge_cell_voltage_v: float | list[float]
    cell_diff_max_v: float = Field(ge=0.001, le=0.5)
    max_charge_current_a: float = Field(200.0, gt=0.0, le=10000.0)
    max_discharge_current_a: float = Field(200.0, gt=0.0, le=10000.0)
    charge_table: Table
    discharge_table: Table
    disable_feed_in_on_high_cell: bool = True
    cvl_control: Literal["regulate", "upstream"] = "regulate"
    pack_limits: Literal["ignore", "share"] = "share"

    @field_validator("charge_cell_voltage_v", mode="before")
    @classmethod
    def _monthly(cls, value: Any) -> Any:
        # Checked before the float|list union so that one mistake gives one clear line.
        if isinstance(value, list):
            if len(value) != 12:
                raise ValueError(
                    f"a list needs exactly 12 monthly values (Jan..Dec), this one has {len(value)}"
                )
            values = value
        elif _is_number(value):
            values = [value]
        else:
            raise ValueError("must be a number or a list of 12 monthly numbers (V per cell)")
        for index, v in enumerate(values):
            where = f"item {index}: " if isinstance(value, list) else ""
            if not _is_number(v):
                raise ValueError(f"{where}must be a number (got {_short_repr(v)})")
            v = _finite(v)
            if v is None or not 0.5 <= v <= 5.0:
                raise ValueError(f"{where}must be a finite number within 0.5..5.0 V per cell")
        return value

    # Cross-key checks are field validators on the later key (fields validate in order and
    # ``info.data`` holds the earlier ones that passed): they run, and name a key, even when
    # another key of the section is broken, which a model validator would not.
    @field_validator("min_cell_hysteresis_v")
    @classmethod
    def _hysteresis_order(cls, value: float, info: ValidationInfo) -> float:
        vmin = info.data.get("min_cell_voltage_v")
        vmax = info.data.get("max_cell_voltage_v")
        if vmin is not None and vmax is not None and vmin + value >= vmax:
            raise ValueError(
                f"limits.own.min_cell_voltage_v + this ({vmin:g} + {value:g} V) must stay"
                f" below limits.own.max_cell_voltage_v ({vmax:g} V)"
            )
        return value

    @field_validator("balancing_voltage_v")
    @classmethod
    def _balancing_order(cls, value: float, info: ValidationInfo) -> float:
        vmin = info.data.get("min_cell_voltage_v")
        vmax = info.data.get("max_cell_voltage_v")
        if vmin is not None and value <= vmin:
            raise ValueError(f"must be above limits.own.min_cell_voltage_v ({vmin:g} V)")
        if vmax is not None and value > vmax:
            raise ValueError(f"must not exceed limits.own.max_cell_voltage_v ({vmax:g} V)")
        return value

    def charge_cell_voltage_for_month(self, month: int) -> float:
        """Normal per-cell charge voltage for a month 1..12."""
        value = self.charge_cell_voltage_v
        return value[month - 1] if isinstance(value, list) else value


class LimitsConfig(_Base):
    """Charge voltage and current limits: ``bms`` merges the packs', ``own`` computes them."""

    mode: Literal["bms", "own"] = "bms"
    max_charge_current_a: float | None = Field(None, gt=0.0, le=10000.0)
    max_discharge_current_a: float | None = Field(None, gt=0.0, le=10000.0)
    bms: BmsLimitsConfig = Field(default_factory=BmsLimitsConfig)
    own: OwnLimitsConfig
    share: ShareConfig = Field(default_factory=ShareConfig)
    temperature: TemperatureConfig


class PublishConfig(_Base):
    """Identity and behaviour of the published virtual battery."""

    service_suffix: str = Field("aggregate", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    device_instance: int = Field(99, ge=0, le=1023)
    product_id: int = Field(0xBA44, ge=0, le=0xFFFF)
    product_name: str = Field("AggregateBatteries", min_length=1, max_length=MAX_TEXT)
    custom_name: str = "AggregateBatteries"
    send_cell_voltages: bool = False
    tick_s: float = Field(1.0, ge=0.05, le=10.0)
    # Per tick one ItemsChanged on / (velib's batched update); true also sends a
    # PropertiesChanged per changed path, for consumers older than Venus OS v3.0.
    properties_changed: bool = False
    mode: Literal["control", "shadow"] = "control"

    @field_validator("custom_name")
    @classmethod
    def _custom_name(cls, value: str) -> str:
        # The bound the GUI and SetValue('/CustomName') apply (core/venus.py).
        problem = custom_name_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("product_name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be printable text (no control characters)")
        return value

    @field_validator("product_id")
    @classmethod
    def _not_reserved(cls, value: int) -> int:
        if value in RESERVED_PRODUCT_IDS:
            raise ValueError(f"0x{value:04X} triggers DVCC/GUI special behaviour; choose another")
        return value


class FaultConfig(_Base):
    """What to do when packs go missing, freeze or send nonsense."""

    stale_after_s: float = Field(30.0, ge=2.0, le=3600.0)
    probe_after_s: float = Field(10.0, ge=1.0, le=3600.0)
    # Below ~1 A many BMS report exactly 0.0 (dead band) and a Multi idles at 0.5..3 A, so a
    # lower threshold would call quiet packs frozen (docs/failure-modes.md).
    frozen_current_a: float = Field(5.0, ge=1.0, le=1000.0)
    policy: Literal["derate", "zero"] = "derate"
    grace_s: float = Field(30.0, ge=0.0, le=3600.0)
    startup_window_s: float = Field(15.0, ge=0.0, le=600.0)


class ServiceConfig(_Base):
    """Process-level settings."""

    state_dir: str = Field(
        "/data/apps/dbus-aggregate-batteries/state", min_length=1, max_length=MAX_DIR_PATH
    )
    summary_interval_s: float = Field(300.0, ge=0.0, le=86400.0)
    max_consecutive_failures: int = Field(10, ge=1, le=1000)
    watchdog_s: float = Field(30.0, ge=2.0, le=600.0)


class LoggingConfig(_Base):
    """Log level of the service."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(_Base):
    """The whole configuration file."""

    chemistry: Literal["lfp", "lto"] = "lfp"
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    current: CurrentConfig = Field(default_factory=CurrentConfig)
    soc: SocConfig
    limits: LimitsConfig
    publish: PublishConfig = Field(default_factory=PublishConfig)
    fault: FaultConfig = Field(default_factory=FaultConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        return apply_preset(_empty_sections(data))

    @model_validator(mode="after")
    def _timing(self) -> Config:
        # Cross-section rules: each would silently disable a safety mechanism.
        tick = self.publish.tick_s
        problems = []
        if self.soc.max_gap_s < 2 * tick:
            problems.append(
                f"soc.max_gap_s ({self.soc.max_gap_s:g}) must be at least twice publish.tick_s"
                f" ({tick:g}), or the counter would never integrate"
            )
        if self.service.watchdog_s < 3 * tick:
            problems.append(
                f"service.watchdog_s ({self.service.watchdog_s:g}) must be at least three"
                f" times publish.tick_s ({tick:g}), or it would kill a healthy process"
            )
        if self.fault.stale_after_s < 2 * tick:
            problems.append(
                f"fault.stale_after_s ({self.fault.stale_after_s:g}) must be at least twice"
                f" publish.tick_s ({tick:g})"
            )
        if self.fault.probe_after_s >= self.fault.stale_after_s:
            problems.append(
                f"fault.probe_after_s ({self.fault.probe_after_s:g}) must be below"
                f" fault.stale_after_s ({self.fault.stale_after_s:g}), or the probe comes too late"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


RESERVED_PRODUCT_IDS = frozenset(
    {0xB004, 0xB009, 0xB00A, 0xB015, 0xB019, 0xB029, 0xB005, 0xB016, 0xB01A, 0xB01B, 0xB01D,
     0xB01E, 0xB01F, 0xB021, 0xB028, 0xB052, 0xB014, 0xB020, 0xB024, 0xB02A, 0xB02B, 0xB051,
     0xB02E, 0xB02F, 0xB038, 0xB054, 0xB055, 0xB012, 0xBA77}
    | set(range(0xA3E3, 0xA3E8))
)


def _finite(value: Any) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)  # a YAML integer can be too large for a float
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_REPR = reprlib.Repr()
_REPR.maxstring = 40
_REPR.maxother = 40
_REPR.maxlist = 6
_REPR.maxtuple = 6
_REPR.maxset = 6
_REPR.maxdict = 4
_REPR.maxlevel = 2


def _short_repr(value: Any) -> str:
    # Bounded in time and length, even for huge or self-referencing YAML values.
    return _REPR.repr(value)


def _short_items(value: list[str]) -> list[str]:
    for index, item in enumerate(value):
        if len(item) > MAX_TEXT:
            raise ValueError(f"item {index}: at most {MAX_TEXT} characters, got {len(item)}")
    return value


_SECTIONS = ("discovery", "current", "soc", "limits", "publish", "fault", "service", "logging")


def _empty_sections(data: Mapping[str, Any]) -> dict[str, Any]:
    # In YAML a section whose keys are all commented out is null; treat it as empty, i.e. all
    # defaults, instead of rejecting it.
    out = dict(data)
    for key in _SECTIONS:
        if key in out and out[key] is None:
            out[key] = {}
    limits = out.get("limits")
    subs = ("bms", "own", "share", "temperature")
    if isinstance(limits, Mapping) and any(limits.get(k, 0) is None for k in subs):
        out["limits"] = {k: ({} if k in subs and v is None else v) for k, v in limits.items()}
    return out


def apply_preset(data: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the cell-voltage keys missing from ``data`` with the chemistry preset's values.

    Explicit keys always win.  Default interpolation tables are derived from the (possibly
    overridden) min, balancing and max cell voltages, as the original program does.  Values of
    the wrong type are left alone so that validation reports them against the right key.
    """
    out: dict[str, Any] = dict(data)
    chem = out.get("chemistry", "lfp")
    preset = PRESETS.get(chem) if isinstance(chem, str) else None
    if preset is None:
        return out  # validation reports the bad chemistry
    limits = out.get("limits", {})
    soc = out.get("soc", {})
    if not isinstance(limits, Mapping) or not isinstance(soc, Mapping):
        return out
    limits = dict(limits)
    soc = dict(soc)
    own = limits.get("own", {})
    if isinstance(own, Mapping):
        own = dict(own)
        for key in (
            "max_cell_voltage_v",
            "min_cell_voltage_v",
            "min_cell_hysteresis_v",
            "balancing_voltage_v",
            "charge_cell_voltage_v",
            "cell_diff_max_v",
        ):
            own.setdefault(key, preset[key])
        vmin = _finite(own.get("min_cell_voltage_v"))
        vmax = _finite(own.get("max_cell_voltage_v"))
        if "charge_table" not in own and None not in (vmin, vmax):
            assert vmin is not None and vmax is not None
            # Full current up to the maximum cell voltage, where the CVL regulator holds the
            # highest cell; the table only cuts in above it, as a backstop.  The original's
            # table (0.1 at balancing voltage) starved the charge at the LFP knee (README,
            # control benchmark).
            own["charge_table"] = {
                "cell_voltage_v": [
                    round(v, 4) for v in (vmin, vmin + 0.05, vmax, vmax + CHARGE_BACKSTOP_V)
                ],
                "factor": [0.2, 1.0, 1.0, 0.0],
            }
        if "discharge_table" not in own and vmin is not None:
            own["discharge_table"] = {
                "cell_voltage_v": [round(v, 4) for v in (vmin, vmin + 0.1, vmin + 0.2)],
                "factor": [0.0, 0.05, 1.0],
            }
        limits["own"] = own
    temperature = limits.get("temperature", {})
    if isinstance(temperature, Mapping):
        temperature = dict(temperature)
        for key in ("charge_table", "discharge_table"):
            table = preset[key.replace("_table", "_temperature_table")]
            temperature.setdefault(key, {k: list(v) for k, v in table.items()})
        limits["temperature"] = temperature
    soc.setdefault("full_cell_voltage_v", preset["soc_full_cell_voltage_v"])
    soc.setdefault("empty_cell_voltage_v", preset["soc_empty_cell_voltage_v"])
    out["limits"] = limits
    out["soc"] = soc
    return out


_UNION_BRANCHES = frozenset({"int", "str", "float", "bool"})
# Error types whose last location item is a key written in the file, shown verbatim.
_KEY_ERRORS = frozenset({"extra_forbidden", "invalid_key"})

# Keys the chemistry preset fills (or derives) when the file leaves them out.
_OWN_PRESET_KEYS = (
    "max_cell_voltage_v",
    "min_cell_voltage_v",
    "min_cell_hysteresis_v",
    "balancing_voltage_v",
    "charge_cell_voltage_v",
    "cell_diff_max_v",
)
_PRESET_FILLED: frozenset[tuple[str, ...]] = frozenset(
    {("soc",), ("limits",), ("limits", "own"), ("limits", "temperature")}
    | {("soc", "full_cell_voltage_v"), ("soc", "empty_cell_voltage_v")}
    | {("limits", "temperature", "charge_table"), ("limits", "temperature", "discharge_table")}
    | {("limits", "own", key) for key in (*_OWN_PRESET_KEYS, "charge_table", "discharge_table")}
)
_TABLE_SOURCES: dict[str, tuple[str, ...]] = {
    "charge_table": ("min_cell_voltage_v", "max_cell_voltage_v"),
    "discharge_table": ("min_cell_voltage_v",),
}
_TABLE_HINTS = {
    "charge_table": (
        "; this default table is derived from limits.own.min_cell_voltage_v (+0, +0.05) and"
        " max_cell_voltage_v (+0, +0.05): keep max more than 0.05 V above min,"
        " or set limits.own.charge_table yourself"
    ),
    "discharge_table": (
        "; this default table is derived from limits.own.min_cell_voltage_v (+0, +0.1, +0.2):"
        " lower min_cell_voltage_v or set limits.own.discharge_table yourself"
    ),
}


def _clean_loc(loc: tuple[Any, ...], error_type: str) -> tuple[Any, ...]:
    # pydantic names union branches in the location; they are noise to a user.  The last item
    # of an unknown-key error is the user's own key and is kept whatever it looks like.
    last = len(loc) - 1
    kept: list[Any] = []
    for index, item in enumerate(loc):
        if index == last and error_type in _KEY_ERRORS:
            key = item if isinstance(item, str) else str(item)
            kept.append(key if len(key) <= 40 else _short_repr(key))
        elif isinstance(item, int):
            kept.append(item)
        elif not isinstance(item, str):
            kept.append(str(item))
        elif item in _UNION_BRANCHES or "[" in item or item.startswith("function-"):
            continue
        else:
            kept.append(item)
    return tuple(kept)


def _format_clean_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return _format_clean_loc(_clean_loc(loc, ""))


def _error_line(loc: tuple[Any, ...], err: Any) -> str:
    error_type = err["type"]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if error_type == "extra_forbidden":
        msg = "unknown key"
    elif error_type == "missing":
        msg = "required key is missing"
    elif error_type == "invalid_key":
        msg = "keys must be text"
    line = f"{_format_clean_loc(loc)}: {msg}"
    if "input" in err and error_type not in ("extra_forbidden", "missing"):
        shown = _short_repr(err["input"])
        if len(shown) <= 60:
            line += f" (got {shown})"
    return line


def errors_from_validation(exc: ValidationError) -> list[str]:
    """Turn pydantic errors into ``key.path: reason`` lines, one per distinct problem."""
    return _problem_lines(exc, None)


def _given(data: Any, path: tuple[Any, ...]) -> bool:
    node = data
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def _problem_lines(exc: ValidationError, data: Mapping[str, Any] | None) -> list[str]:
    """Error lines; with the raw ``data``, minus the ones that only follow from another error."""
    errors = [
        (_clean_loc(tuple(err["loc"]), err["type"]), err)
        for err in exc.errors(include_url=False)
    ]
    raw = _empty_sections(data) if data is not None else None

    def derived_table(loc: tuple[Any, ...]) -> str | None:
        # The name of the preset-derived table this error is about, if it is about one.
        if raw is None or len(loc) < 3 or loc[:2] != ("limits", "own"):
            return None
        table = loc[2]
        if table not in _TABLE_SOURCES or _given(raw, ("limits", "own", table)):
            return None
        return str(table)

    bad_keys = {loc[:3] for loc, _ in errors}
    lines: list[str] = []
    consequences: list[str] = []
    for loc, err in errors:
        line = _error_line(loc, err)
        table = derived_table(loc)
        if table is not None:
            # A derived table is wrong because its sources are: report those, or explain.
            if any(("limits", "own", key) in bad_keys for key in _TABLE_SOURCES[table]):
                consequences.append(line)
                continue
            if err["type"] != "missing":
                line += _TABLE_HINTS[table]
        if (
            raw is not None
            and err["type"] == "missing"
            and loc in _PRESET_FILLED
            and not _given(raw, loc)
        ):
            # The preset could not fill this key because of another error (a bad chemistry,
            # or a broken voltage that the tables derive from).
            consequences.append(line)
            continue
        if line not in lines:
            lines.append(line)
            if len(lines) > MAX_PROBLEMS:
                break
    if len(lines) > MAX_PROBLEMS:
        # A file with thousands of mistakes is the wrong file: a few lines say so.
        lines[MAX_PROBLEMS:] = [f"... and more: {len(errors)} problems in all, first"
                                f" {MAX_PROBLEMS} shown"]
    return lines or consequences


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate an already-parsed YAML document."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(source, ["(top level): the file must contain a mapping of sections"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problem_lines(exc, data)) from None
    except RecursionError:
        raise ConfigError(source, ["(top level): the document is nested too deeply"]) from None


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML this loader will not read (aliases, too many values)."""


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reports bad tagged values with a position.

    It also refuses aliases (``*name``: a few of them nest into billions of values) and stops
    after MAX_NODES nodes, so that a hostile document ends in milliseconds.
    """

    _nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        problem = None
        if self.check_event(yaml.AliasEvent):
            problem = "aliases (*name) are not supported in this file"
        else:
            self._nodes += 1
            if self._nodes > MAX_NODES:
                problem = f"more than {MAX_NODES} values: not a configuration file for this service"
        if problem is not None:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise _Refused(None, None, problem, mark)
        return super().compose_node(parent, index)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError):
            # e.g. "2024-13-45" (read as a date), "!!int abc", "!!bool maybe": PyYAML's
            # constructors raise plain exceptions for these.
            shown = _short_repr(node.value) if isinstance(node, yaml.ScalarNode) else node.tag
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown} as {node.tag}", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)  # raises a ConstructorError
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {_short_repr(key)} (the earlier one would be ignored)",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def parse_config_text(text: str, source: str = "<config>") -> Config:
    """Parse YAML text and validate it; syntax errors carry the line and column."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(
            source, [f"(top level): the text is longer than {MAX_FILE_BYTES // 1024} KiB"]
        )
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader subclass
    except _Refused as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(source, [f"line {line}: {exc.problem}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(source, [f"YAML syntax error at {where}: {what}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"YAML error: {' '.join(str(exc).split())}"]) from None
    except RecursionError:
        raise ConfigError(source, ["YAML error: the document is nested too deeply"]) from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        # A PyYAML constructor failing outside construct_object (in a deferred step).
        raise ConfigError(source, [f"YAML error: cannot read the document ({exc!r})"]) from None
    return parse_config(data, source)


def load_config(path: str | Path) -> Config:
    """Read and validate the configuration file at ``path``."""
    p = Path(path)
    try:
        with p.open("rb") as file:
            # Never more than the limit is read: a 50 MB file or /dev/zero is refused at once.
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read the file: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            str(p),
            [f"the file is larger than {MAX_FILE_BYTES // 1024} KiB, the limit for"
             " a configuration file (config.example.yaml is about 8 KiB); is it the right file?"],
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(p), ["the file is not UTF-8 text"]) from None
    return parse_config_text(text, str(p))


def dump_config(cfg: Config) -> str:
    """The effective configuration as YAML that is itself a valid config file."""
    data = cfg.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)
