"""Builders with healthy defaults for the pure-core tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dbus_aggregate_batteries.config import Config, parse_config
from dbus_aggregate_batteries.core.model import PackSnapshot
from dbus_aggregate_batteries.core.venus import ALARM_PATHS


def pack(name: str = "A", cells: int = 16, cell_v: float = 3.30, **kw: Any) -> PackSnapshot:
    """A healthy LFP pack; keyword arguments override any field."""
    cell_list = kw.pop("cell_list", None) or [cell_v] * cells
    base = PackSnapshot(
        service=f"com.victronenergy.battery.{name}",
        label=name,
        voltage_v=sum(cell_list),
        current_a=10.0,
        power_w=sum(cell_list) * 10.0,
        temperature_c=20.0,
        soc_pct=50.0,
        capacity_ah=140.0,
        installed_capacity_ah=280.0,
        consumed_ah=-140.0,
        time_to_go_s=None,
        max_cell_v=max(cell_list),
        min_cell_v=min(cell_list),
        max_cell_id=f"C{cell_list.index(max(cell_list)) + 1}",
        min_cell_id=f"C{cell_list.index(min(cell_list)) + 1}",
        max_cell_temp_c=22.0,
        min_cell_temp_c=18.0,
        max_temp_id="T1",
        min_temp_id="T2",
        voltages_sum_v=sum(cell_list),
        cells=tuple(cell_list),
        cells_per_battery=len(cell_list),
        modules_online=1,
        modules_offline=0,
        blocking_charge=0,
        blocking_discharge=0,
        alarms=tuple(0 for _ in ALARM_PATHS),
        allow_to_charge=1,
        allow_to_discharge=1,
        allow_to_balance=1,
        balancing=0,
        cvl_v=len(cell_list) * 3.45,
        ccl_a=100.0,
        dcl_a=150.0,
        battery_low_voltage_v=len(cell_list) * 2.9,
        charge_mode="Bulk",
    )
    return replace(base, **kw)


def config(**sections: Any) -> Config:
    """A validated config from keyword sections, e.g. config(limits={"mode": "own"})."""
    return parse_config(sections)
