"""Temperature derating of the current limits (pure).

Each table is a piecewise-linear factor (0..1) over temperature, flat beyond its ends.  The
bank factor is the lowest the table takes anywhere between the bank's lowest and highest
temperature (every pack's /Dc/0/Temperature and min/max cell temperature, missing packs'
last values included: they may still be connected), so a table that cuts both cold and hot
is evaluated at the worse end, and a dip between two breakpoints is not missed.

Only when *no* pack reports any temperature does the unknown temperature count: for charge
as the worst value of the table (charging a freezing LFP cell plates lithium: factor 0 with
the shipped tables); for discharge not at all, because every cell chemistry shipped here can
deliver over a range far wider than any room a GX lives in, and DCL 0 stops an island
inverter: a bank without sensors must not go dark for want of a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dbus_aggregate_batteries.config import TemperatureConfig, TemperatureTable
from dbus_aggregate_batteries.core.limits import piecewise
from dbus_aggregate_batteries.core.model import PackSnapshot
from dbus_aggregate_batteries.core.reasons import Reason, tighter


@dataclass(frozen=True, slots=True)
class Derating:
    """A factor for one direction and why it is what it is."""

    factor: float
    reason: Reason


def factor_at(table: TemperatureTable, t: float) -> float:
    """The temperature table's factor at ``t``."""
    return piecewise(table.temperature_c, table.factor, t)


def bank_temperatures(packs: Sequence[PackSnapshot]) -> tuple[float, float] | None:
    """Lowest and highest temperature any pack reports, or None if none reports one."""
    values = [
        t
        for p in packs
        for t in (p.temperature_c, p.min_cell_temp_c, p.max_cell_temp_c)
        if t is not None
    ]
    if not values:
        return None
    return min(values), max(values)


def derate(
    table: TemperatureTable, span: tuple[float, float] | None, what: str, *,
    unknown_is_worst: bool = True,
) -> Derating:
    """The table's lowest factor over ``span`` (lowest..highest temperature)."""
    if span is None:
        worst = min(table.factor) if unknown_is_worst else 1.0
        return Derating(
            worst,
            Reason("temperature-missing", f"no temperature from any pack ({what} x{worst:g})"),
        )
    lo, hi = span
    # A piecewise-linear function takes its minimum over an interval at an end or a breakpoint.
    points = [lo, hi, *(x for x in table.temperature_c if lo < x < hi)]
    worst_t = min(points, key=lambda t: (factor_at(table, t), t != lo and t != hi))
    factor = factor_at(table, worst_t)
    return Derating(factor, Reason("temperature", f"temperature {worst_t:.1f} °C ({what})"))


def apply_derating(
    cfg: TemperatureConfig,
    packs: Sequence[PackSnapshot],
    ccl: tuple[float, Reason],
    dcl: tuple[float, Reason],
    base: tuple[float, float],
) -> tuple[tuple[float, Reason], tuple[float, Reason]]:
    """min(limit, base x factor) for charge and discharge, with the binding reason."""
    span = bank_temperatures(packs)
    charge = derate(cfg.charge_table, span, "charge table")
    discharge = derate(cfg.discharge_table, span, "discharge table", unknown_is_worst=False)
    return (
        tighter(ccl[0], ccl[1], base[0] * charge.factor, charge.reason),
        tighter(dcl[0], dcl[1], base[1] * discharge.factor, discharge.reason),
    )
