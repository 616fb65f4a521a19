"""The closed loop: physics that obeys the limits an aggregator publishes, and its figures.

:class:`ClosedLoop` is the plant (packs, bank, charger, scenario signals and events) plus the
figures it measures; it does not care who computes the limits.  :func:`run_inprocess` closes
the loop with our pure engine (no bus, time is a parameter, so it runs as fast as the CPU
allows); ``sim.closedloop_bus`` closes it over D-Bus with any aggregator.

A limits mode is a dict of configuration overrides (:data:`MODES`): adding a mode to the
benchmark is one entry there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dbus_aggregate_batteries.config import Config, parse_config
from dbus_aggregate_batteries.core.engine import EngineState, step
from dbus_aggregate_batteries.core.model import AuxSnapshot, PackSnapshot, pack_from_values
from dbus_aggregate_batteries.core.venus import Value, round_for_path
from dbus_aggregate_batteries.sim.physics import Bank, Charger, DvccLimits, Pack, pack_paths
from dbus_aggregate_batteries.sim.scenario import Scenario, signal_at

# Limits modes of the control benchmark: configuration overrides merged over the defaults
# (and under the scenario's own ``config``).  One entry per mode.
MODES: dict[str, dict[str, Any]] = {
    "bms min x N": {"limits": {"mode": "bms", "bms": {"currents": "min_times_n"}}},
    "bms sum": {"limits": {"mode": "bms", "bms": {"currents": "sum"}}},
    "bms share": {"limits": {"mode": "bms", "bms": {"currents": "share"}}},
    "own": {"limits": {"mode": "own"}},
    "own, upstream CVL": {"limits": {"mode": "own", "own": {"cvl_control": "upstream"}}},
    "own, pack limits ignored": {"limits": {"mode": "own", "own": {"pack_limits": "ignore"}}},
}
# A pack over its own limit by more than this counts as over-limit (issue 10 §3).
OVER_LIMIT_FACTOR = 1.05
OVER_LIMIT_MARGIN_A = 0.5  # below this nobody could measure the difference
# CVL moves smaller than this (3 mV per cell of a 16-cell pack) are dither of a 10 mV
# published resolution, not reversals.
CVL_STEP_V = 0.05
SETTLE_S = 300.0

Recorder = Callable[[dict[str, Any]], None]


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of two config dicts; ``over`` wins."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def scenario_config(scn: Scenario, mode: Mapping[str, Any] | str) -> Config:
    """The aggregator configuration for ``scn`` in limits mode ``mode`` (name or overrides)."""
    overrides = MODES[mode] if isinstance(mode, str) else mode
    data = merge(merge({"chemistry": scn.chemistry}, overrides), scn.config)
    data = merge(data, {"discovery": {"expected_count": len(scn.packs)}})
    return parse_config(data, f"{scn.name} config")


@dataclass(slots=True)
class Figures:
    """What the benchmark reports for one run."""

    scenario: str
    mode: str
    max_cell_v: float = 0.0
    reference_v: float = 0.0
    trips: int = 0
    over_limit_s: float = 0.0
    time_to_full_s: float | None = None
    cvl_reversals_per_min: float | None = None
    cvl_peak_to_peak_v: float | None = None
    soc_error_max_pct: float | None = None
    soc_error_end_pct: float | None = None
    charged_kwh: float = 0.0
    final_soc_pct: list[float] = field(default_factory=list)
    cycles_done: int = 0
    duration_s: float = 0.0

    @property
    def overshoot_mv(self) -> float:
        """How far the highest cell went above the configured maximum (0 if it did not)."""
        return max(0.0, (self.max_cell_v - self.reference_v) * 1000.0)


class ClosedLoop:
    """Plant and measurement; :meth:`advance` moves it by one physics step."""

    def __init__(self, scn: Scenario, *, reference_v: float, mode: str = "") -> None:
        self.scn = scn
        self.packs: list[Pack] = scn.build_packs()
        self.bank = Bank(self.packs)
        self.charger = Charger(scn.charger_params())
        self.t_s = 0.0
        self.visible = [True] * len(self.packs)
        self._events = sorted(scn.events, key=lambda e: e.at_s)
        self.gain = 1.0 + scn.current_gain_error
        self.figures = Figures(scn.name, mode, reference_v=reference_v)
        self.figures.max_cell_v = max(max(p.voltages) for p in self.packs)
        self._cvl: list[tuple[float, float]] = []
        self._soc_err: list[float] = []
        self.phase = "charge"
        self._phase_start = 0.0
        self._tail_since: float | None = None
        self.charge_w = 0.0
        self.load_w = 0.0

    # -- the plant's outputs ----------------------------------------------------------------

    def pack_values(self, index: int) -> dict[str, Value]:
        """Pack ``index``'s driver paths as published (rounded like on the bus)."""
        raw = pack_paths(self.packs[index], current_gain=self.gain)
        return {path: round_for_path(path, value) for path, value in raw.items()}

    @property
    def true_soc_pct(self) -> float:
        """Bank SoC: charge over nominal capacity, over every pack."""
        total = sum(p.capacity_ah for p in self.packs)
        return sum(p.soc_pct * p.capacity_ah for p in self.packs) / total

    @property
    def done(self) -> bool:
        """The scenario is over (its duration, or all its cycles)."""
        cycles = self.scn.cycles
        if cycles is not None and self.figures.cycles_done >= cycles.count:
            return True
        return self.t_s >= self.scn.duration_s

    # -- one physics step -----------------------------------------------------------------------

    def advance(self, dt_s: float, limits: DvccLimits) -> None:
        """Apply events, run the charger on ``limits``, move every pack by ``dt_s``."""
        scn = self.scn
        while self._events and self._events[0].at_s <= self.t_s:
            event = self._events.pop(0)
            if event.pack < len(self.packs):
                self.visible[event.pack] = event.action == "return"
        self._signals(limits)
        current = self.charger.step(
            dt_s, limits, self.bank, charge_w=self.charge_w, load_w=self.load_w
        )
        bus_v, currents = self.bank.solve(current)
        ambient = signal_at(scn.ambient_c, self.t_s)
        for pack, spec, amps in zip(self.packs, scn.packs, currents, strict=True):
            pack.step(
                dt_s,
                amps,
                ambient + signal_at(spec.ambient_offset_c, self.t_s),
                signal_at(spec.heat_w, self.t_s),
            )
        self.t_s += dt_s
        self._measure(dt_s, bus_v, currents)

    def _signals(self, limits: DvccLimits) -> None:
        scn = self.scn
        cycles = scn.cycles
        if cycles is None:
            self.charge_w = signal_at(scn.charge_w, self.t_s)
            self.load_w = signal_at(scn.load_w, self.t_s)
            return
        # Cycling: charge until the bank takes no more than the tail current, then discharge
        # until it gives no more, whatever the mode publishes.
        tail = cycles.tail_c * sum(p.capacity_ah for p in self.packs)
        amps = self.charger.current_a
        in_phase = self.t_s - self._phase_start
        small = abs(amps) < tail and in_phase > 600.0
        self._tail_since = (self._tail_since or self.t_s) if small else None
        ended = (
            self._tail_since is not None and self.t_s - self._tail_since >= cycles.hold_s
        ) or in_phase >= cycles.max_phase_s
        if ended:
            if self.phase == "discharge":
                self.figures.cycles_done += 1
            self.phase = "discharge" if self.phase == "charge" else "charge"
            self._phase_start = self.t_s
            self._tail_since = None
        if self.phase == "charge":
            self.charge_w, self.load_w = cycles.charge_w, 0.0
        else:
            self.charge_w, self.load_w = 0.0, cycles.load_w

    def _measure(self, dt_s: float, bus_v: float, currents: list[float]) -> None:
        fig = self.figures
        over = False
        for pack, amps in zip(self.packs, currents, strict=True):
            fig.max_cell_v = max(fig.max_cell_v, max(pack.voltages))
            limit = pack.ccl_a() if amps > 0 else pack.dcl_a()
            if abs(amps) > limit * OVER_LIMIT_FACTOR + OVER_LIMIT_MARGIN_A:
                over = True
        if over:
            fig.over_limit_s += dt_s
        fig.trips = sum(p.charge_trips + p.discharge_trips for p in self.packs)
        total = sum(currents)
        if total > 0:
            fig.charged_kwh += bus_v * total * dt_s / 3.6e6
        if fig.time_to_full_s is None and all(
            p.soc_pct >= self.scn.full_soc_pct for p in self.packs
        ):
            fig.time_to_full_s = self.t_s
        fig.duration_s = self.t_s

    def observe(self, limits: DvccLimits, soc_pct: float | None) -> None:
        """Record what the aggregator published at one of its ticks."""
        if limits.cvl_v is not None:
            self._cvl.append((self.t_s, limits.cvl_v))
        if soc_pct is not None:
            self._soc_err.append(abs(soc_pct - self.true_soc_pct))

    def truth(self) -> dict[str, Any]:
        """One JSON-able record of everything the plant knows now."""
        return {
            "t_s": round(self.t_s, 3),
            "charger_a": round(self.charger.current_a, 3),
            "limits": [self.charger.limits.cvl_v, self.charger.limits.ccl_a,
                       self.charger.limits.dcl_a],
            "charge_w": self.charge_w,
            "load_w": self.load_w,
            "phase": self.phase if self.scn.cycles is not None else None,
            "soc_pct": round(self.true_soc_pct, 4),
            "packs": [
                {
                    "name": p.name,
                    "visible": visible,
                    "current_a": round(p.current_a, 3),
                    "ccl_a": round(p.ccl_a(), 2),
                    "dcl_a": round(p.dcl_a(), 2),
                    "cvl_v": round(p.cvl_v(), 3),
                    "soc_pct": round(p.soc_pct, 4),
                    "temperature_c": round(p.temperature_c, 2),
                    "charge_tripped": p.charge_tripped,
                    "discharge_tripped": p.discharge_tripped,
                    "trips": p.charge_trips + p.discharge_trips,
                    "cells_v": [round(v, 4) for v in p.voltages],
                }
                for p, visible in zip(self.packs, self.visible, strict=True)
            ],
        }

    def finish(self) -> Figures:
        """Close the figures: CVL oscillation after settling, SoC error, final SoCs."""
        fig = self.figures
        fig.final_soc_pct = [round(p.soc_pct, 2) for p in self.packs]
        if self._soc_err:
            fig.soc_error_max_pct = max(self._soc_err)
            fig.soc_error_end_pct = self._soc_err[-1]
        fig.cvl_reversals_per_min, fig.cvl_peak_to_peak_v = cvl_oscillation(self._cvl)
        return fig


def cvl_oscillation(series: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """CVL reversals per minute and peak-to-peak after settling.

    Settling starts :data:`SETTLE_S` after the CVL first fell below its starting value (the
    regulation engaged); moves under :data:`CVL_STEP_V` are ignored.  None when the CVL never
    moved or the window is shorter than a minute.
    """
    if not series:
        return None, None
    start_v = series[0][1]
    engaged = next((t for t, v in series if v < start_v - CVL_STEP_V), None)
    if engaged is None:
        return 0.0, 0.0
    window = [(t, v) for t, v in series if t >= engaged + SETTLE_S]
    if len(window) < 2 or window[-1][0] - window[0][0] < 60.0:
        return None, None
    reversals = 0
    direction = 0
    anchor = window[0][1]
    for _, v in window[1:]:
        delta = v - anchor
        if abs(delta) < CVL_STEP_V:
            continue
        sign = 1 if delta > 0 else -1
        if direction and sign != direction:
            reversals += 1
        direction = sign
        anchor = v
    minutes = (window[-1][0] - window[0][0]) / 60.0
    values = [v for _, v in window]
    return reversals / minutes, max(values) - min(values)


class InProcessAggregator:
    """Our pure engine fed the way the shell feeds it: healthy packs, missing packs' last."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.state = EngineState()
        self.last: dict[int, PackSnapshot] = {}

    def tick(self, loop: ClosedLoop) -> tuple[DvccLimits, float | None]:
        """One service tick on the plant's published values; returns limits and SoC."""
        healthy: list[PackSnapshot] = []
        missing: list[PackSnapshot] = []
        for index, pack in enumerate(loop.packs):
            if loop.visible[index]:
                snap, _ = pack_from_values(
                    f"com.victronenergy.battery.{pack.name}", f"Battery {index + 1}",
                    loop.pack_values(index), with_cells=self.cfg.limits.mode == "own",
                )
                self.last[index] = snap
                healthy.append(snap)
            elif index in self.last:
                missing.append(self.last[index])
        result = step(
            self.cfg,
            self.state,
            healthy,
            AuxSnapshot(),
            now_s=loop.t_s,
            today=loop.scn.date,
            missing=missing,
            expected_count=len(loop.packs),
        )
        self.state = result.state
        values = result.values

        def num(path: str) -> float | None:
            value = round_for_path(path, values.get(path))
            return float(value) if isinstance(value, int | float) else None

        limits = DvccLimits(
            num("/Info/MaxChargeVoltage"),
            num("/Info/MaxChargeCurrent"),
            num("/Info/MaxDischargeCurrent"),
        )
        return limits, num("/Soc")


def reference_voltage(scn: Scenario, cfg: Config) -> float:
    """The highest cell voltage a run is judged against."""
    if scn.max_cell_voltage_v is not None:
        return scn.max_cell_voltage_v
    return cfg.limits.own.max_cell_voltage_v


def run_inprocess(
    scn: Scenario,
    mode: str | Mapping[str, Any] = "own",
    *,
    record: Recorder | None = None,
    record_every_s: float = 1.0,
    mode_name: str | None = None,
) -> Figures:
    """Run ``scn`` against our engine in limits mode ``mode``; returns the figures."""
    cfg = scenario_config(scn, mode)
    name = mode_name or (mode if isinstance(mode, str) else "custom")
    loop = ClosedLoop(scn, reference_v=reference_voltage(scn, cfg), mode=name)
    aggregator = InProcessAggregator(cfg)
    limits = DvccLimits(None, None, None)
    next_tick = 0.0
    next_record = record_every_s
    dt = scn.dt_s
    while not loop.done:
        if loop.t_s >= next_tick - 1e-9:
            limits, soc = aggregator.tick(loop)
            loop.observe(limits, soc)
            next_tick += scn.tick_s
        loop.advance(dt, limits)
        if record is not None and loop.t_s >= next_record - 1e-9:
            record(loop.truth())
            next_record += record_every_s
    return loop.finish()


def format_figures(fig: Figures) -> dict[str, str]:
    """One benchmark table row as text."""

    def opt(value: float | None, spec: str, unit: str = "") -> str:
        return "-" if value is None or not math.isfinite(value) else f"{value:{spec}}{unit}"

    return {
        "scenario": fig.scenario,
        "mode": fig.mode,
        "max cell V": f"{fig.max_cell_v:.3f}",
        "over max mV": f"{fig.overshoot_mv:.0f}",
        "trips": str(fig.trips),
        "over-limit s": f"{fig.over_limit_s:.0f}",
        "to full min": opt(None if fig.time_to_full_s is None else fig.time_to_full_s / 60, ".0f"),
        "CVL rev/min": opt(fig.cvl_reversals_per_min, ".2f"),
        "CVL p-p V": opt(fig.cvl_peak_to_peak_v, ".2f"),
        "SoC err max %": opt(fig.soc_error_max_pct, ".2f"),
        "SoC err end %": opt(fig.soc_error_end_pct, ".2f"),
        "kWh in": f"{fig.charged_kwh:.1f}",
        "final SoC %": "/".join(f"{s:.1f}" for s in fig.final_soc_pct),
    }
