"""Incremental pack snapshots: re-check only the paths that changed since the last tick.

``core.model.pack_from_values`` validates every path of a pack on every call, so a tick costs
the same whether one value or all of them changed. :class:`SnapshotCache` keeps each path's
checked value (and its rejection, if any) and, per tick, re-checks only the changed paths,
then assembles the snapshot from the cached results. A change to a path the snapshot does not
read (most cells in BMS mode, history, settings) costs nothing at all.

It must give exactly what ``pack_from_values`` gives for the same values: the per-path checks
are ``core.model``'s own, the assembly below mirrors the cross-path rules (cell count against
pack voltage, extreme cells from the cells, pack-voltage ranges from the cells in series: those
four paths are checked at every assembly), and a property test compares both on random
change sequences; another test fails when ``pack_from_values`` starts reading a path this
table does not know.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterable, Mapping, Set

# The per-path checks are core.model's (private) reader: one implementation of "what is a
# trusted value", used by both the full and the incremental build.
from dbus_aggregate_batteries.core.model import (
    CELL_RANGE,
    EXCLUSIVE_LOW,
    INT_RANGES,
    MAX_CELLS,
    MAX_TEXT_CHARS,
    PER_CELL_PATHS,
    RANGES,
    BadValue,
    PackSnapshot,
    _Reader,
    check_cell_count,
)
from dbus_aggregate_batteries.core.venus import ALARM_PATHS, Value

_NUM, _INT, _TEXT = 0, 1, 2
CELLS_PER_BATTERY = "/System/NrOfCellsPerBattery"
_CELL_PREFIX = "/Voltages/Cell"
_CUT = len(_CELL_PREFIX)
# Inputs of the cross-path rules; their snapshot fields are derived in _assemble.
_N_CELLS, _MAX_CELL, _MIN_CELL = "_n_cells", "_max_cell", "_min_cell"

# Every path pack_from_values reads (cells apart: /Voltages/Cell<n>): how it is checked and
# which PackSnapshot field it fills.
_TABLE: dict[str, tuple[int, str]] = {
    "/Dc/0/Voltage": (_NUM, "voltage_v"),
    "/Dc/0/Current": (_NUM, "current_a"),
    "/Dc/0/Power": (_NUM, "power_w"),
    "/Dc/0/Temperature": (_NUM, "temperature_c"),
    "/Soc": (_NUM, "soc_pct"),
    "/Capacity": (_NUM, "capacity_ah"),
    "/InstalledCapacity": (_NUM, "installed_capacity_ah"),
    "/ConsumedAmphours": (_NUM, "consumed_ah"),
    "/TimeToGo": (_NUM, "time_to_go_s"),
    "/System/MaxCellVoltage": (_NUM, _MAX_CELL),
    "/System/MinCellVoltage": (_NUM, _MIN_CELL),
    "/System/MaxVoltageCellId": (_TEXT, "max_cell_id"),
    "/System/MinVoltageCellId": (_TEXT, "min_cell_id"),
    "/System/MaxCellTemperature": (_NUM, "max_cell_temp_c"),
    "/System/MinCellTemperature": (_NUM, "min_cell_temp_c"),
    "/System/MaxTemperatureCellId": (_TEXT, "max_temp_id"),
    "/System/MinTemperatureCellId": (_TEXT, "min_temp_id"),
    "/Voltages/Sum": (_NUM, "voltages_sum_v"),
    CELLS_PER_BATTERY: (_INT, _N_CELLS),
    "/System/NrOfModulesOnline": (_INT, "modules_online"),
    "/System/NrOfModulesOffline": (_INT, "modules_offline"),
    "/System/NrOfModulesBlockingCharge": (_INT, "blocking_charge"),
    "/System/NrOfModulesBlockingDischarge": (_INT, "blocking_discharge"),
    "/Io/AllowToCharge": (_INT, "allow_to_charge"),
    "/Io/AllowToDischarge": (_INT, "allow_to_discharge"),
    "/Io/AllowToBalance": (_INT, "allow_to_balance"),
    "/Balancing": (_INT, "balancing"),
    "/Info/MaxChargeVoltage": (_NUM, "cvl_v"),
    "/Info/MaxChargeCurrent": (_NUM, "ccl_a"),
    "/Info/MaxDischargeCurrent": (_NUM, "dcl_a"),
    "/Info/BatteryLowVoltage": (_NUM, "battery_low_voltage_v"),
    "/Info/ChargeMode": (_TEXT, "charge_mode"),
}
_ALARM_INDEX = {path: i for i, path in enumerate(ALARM_PATHS)}
KINDS: dict[str, int] = {
    **{path: kind for path, (kind, _) in _TABLE.items()},
    **dict.fromkeys(ALARM_PATHS, _INT),
}
# Pack-voltage paths: their range follows the cells in series (known only at assembly), so
# they are checked there, every time the snapshot is assembled.
_DERIVED = frozenset(
    ("service", "label", "max_cell_v", "min_cell_v", "cells", "cells_per_battery",
     *(_TABLE[path][1] for path in PER_CELL_PATHS))
)

# Ranges as core.model applies them: a path without one accepts any finite value.
_NUM_RANGES = {
    path: RANGES.get(path, (-math.inf, math.inf)) for path, (kind, _) in _TABLE.items()
    if kind == _NUM
}
_INT_RANGES = {path: INT_RANGES.get(path, (-(2**31), 2**31 - 1)) for path in KINDS
               if KINDS[path] == _INT}

_Checked = tuple[object, BadValue | None]
_ABSENT: _Checked = (None, None)
_GONE = object()  # no value at all (None is a value: invalid)
# The build loop's inline check of a float (no pack-voltage path: those are checked at
# assembly): infinite bounds narrowed to the largest finite float, so that one chained
# comparison also rejects NaN and infinity, as core.model's reader does.
_FINITE_RANGES = {
    path: (max(low, -sys.float_info.max), min(high, sys.float_info.max))
    for path, (low, high) in _NUM_RANGES.items()
    if path not in EXCLUSIVE_LOW
}

# Cells as pack_from_values names them (no sign, no leading 0), by number; it reads no cell
# past MAX_CELLS (the largest valid count), so a higher one changes nothing.
_CELL_NUMBERS: dict[str, int] = {f"{_CELL_PREFIX}{i}": i for i in range(1, MAX_CELLS + 1)}
_CELL_PATHS = frozenset(_CELL_NUMBERS)
# Every other path a snapshot reads: a changed path outside both sets costs nothing.
_READ_PATHS = frozenset(KINDS)

# Where a changed path goes, by path (memoised: a pack has a fixed set of paths).
_UNREAD, _FIELD, _INPUT, _ALARM, _CELL, _PER_CELL = range(6)
_Route = tuple[int, int, object]  # (where, how it is checked, field name / index)
_ROUTES: dict[str, _Route] = {}
_MAX_ROUTES = 4096  # a misbehaving service inventing paths must not grow it without bound


def _route(path: str) -> _Route:
    entry = _TABLE.get(path)
    route: _Route
    if path in PER_CELL_PATHS:
        route = (_PER_CELL, _NUM, None)
    elif entry is not None:
        route = (_INPUT if entry[1][0] == "_" else _FIELD, entry[0], entry[1])
    elif path in _ALARM_INDEX:
        route = (_ALARM, _INT, _ALARM_INDEX[path])
    else:
        index = cell_index(path)
        route = (_UNREAD, 0, None) if index is None else (_CELL, 0, index)
    if len(_ROUTES) < _MAX_ROUTES:
        _ROUTES[path] = route
    return route


def _per_cell(values: Mapping[str, Value], path: str, cells: int | None,
              bad: list[BadValue]) -> float | None:
    # A pack voltage, checked as core.model's reader does with ``cells`` in series; the
    # healthy case (a float in range) without building a reader.
    raw = values.get(path)
    if raw is None:
        return None
    if type(raw) is float:
        low, high = _NUM_RANGES[path]
        if cells is not None:
            high = cells * CELL_RANGE[1]
        above_low = low < raw if path in EXCLUSIVE_LOW else low <= raw
        if above_low and raw <= high and math.isfinite(raw):
            return raw
    reader = _Reader({path: raw})
    value = reader.num(path, cells)
    bad.extend(reader.bad)
    return value


# PackSnapshot is a frozen dataclass of ~37 fields: its __init__ sets each one through
# object.__setattr__, which costs more than the rest of an incremental build. The snapshot is
# filled through its slots instead, which is what __init__ does minus the lookups; only when
# __init__ does nothing else (no __post_init__, every field an init field), else __init__ runs.
_SETTERS = tuple(
    (name, PackSnapshot.__dict__[name].__set__) for name in PackSnapshot.__dataclass_fields__
) if (
    "__slots__" in PackSnapshot.__dict__
    and not hasattr(PackSnapshot, "__post_init__")
    and all(f.init for f in dataclasses.fields(PackSnapshot))
) else ()


def _new_snapshot(fields: Mapping[str, object]) -> PackSnapshot:
    if not _SETTERS:
        return PackSnapshot(**fields)  # type: ignore[arg-type]
    snap: PackSnapshot = object.__new__(PackSnapshot)
    for name, set_slot in _SETTERS:
        set_slot(snap, fields[name])
    return snap


def _check(kind: int, path: str, raw: Value) -> _Checked:
    # Fast paths for what a healthy pack sends (a plain value of the right type, in range);
    # anything else goes through core.model's reader, which also words the rejection.
    if kind == _NUM:
        if type(raw) is float or type(raw) is int:
            number = float(raw)
            low, high = _NUM_RANGES[path]
            above_low = low < number if path in EXCLUSIVE_LOW else low <= number
            if above_low and number <= high and math.isfinite(number):
                return number, None
    elif kind == _INT:
        if type(raw) is int:
            low_i, high_i = _INT_RANGES[path]
            if low_i <= raw <= high_i:
                return raw, None
    elif type(raw) is str and len(raw) <= MAX_TEXT_CHARS and raw.isprintable():
        return raw, None
    reader = _Reader({path: raw})
    if kind == _NUM:
        value: object = reader.num(path)
    elif kind == _INT:
        value = reader.integer(path)
    else:
        value = reader.text(path)
    return value, (reader.bad[0] if reader.bad else None)


def _check_cell(path: str, raw: Value) -> _Checked:
    if type(raw) is float and CELL_RANGE[0] < raw <= CELL_RANGE[1]:
        return raw, None
    reader = _Reader({path: raw})
    value = reader.cell(path)
    return value, (reader.bad[0] if reader.bad else None)


def cell_index(path: str) -> int | None:
    """n for ``/Voltages/Cell<n>`` as pack_from_values spells it (no sign, no leading 0)."""
    if not path.startswith(_CELL_PREFIX):
        return None
    digits = path[_CUT:]
    if not digits.isdigit() or digits[0] == "0" or not digits.isascii():
        return None
    return int(digits)


class SnapshotCache:
    """One pack's checked values; :meth:`build` re-checks only what changed."""

    __slots__ = (
        "_alarms", "_bad", "_cells", "_cells_stale", "_fields", "_inputs", "_reads_cells",
        "_snapshot", "label", "with_cells",
    )

    def __init__(self, *, with_cells: bool) -> None:
        self.with_cells = with_cells
        self.label: str | None = None
        # The snapshot's fields as keyword arguments, kept up to date path by path.
        self._fields: dict[str, object] = {
            name: None for name in PackSnapshot.__dataclass_fields__ if name not in _DERIVED
        }
        self._alarms: list[int | None] = [None] * len(ALARM_PATHS)
        self._fields["alarms"] = tuple(self._alarms)
        self._inputs: dict[str, object] = {_N_CELLS: None, _MAX_CELL: None, _MIN_CELL: None}
        self._bad: dict[str, BadValue] = {}
        # Present cells by number; None until checked (a cell is checked when it is read).
        self._cells: dict[int, _Checked | None] = {}
        # Set when cells changed while they were not read: _cells is rebuilt before use.
        self._cells_stale = False
        self._reads_cells = True  # whether the last snapshot was built from the cells
        self._snapshot: tuple[PackSnapshot, tuple[BadValue, ...]] | None = None

    @property
    def last(self) -> tuple[PackSnapshot, tuple[BadValue, ...]] | None:
        """What the last :meth:`build` returned (the same object while nothing changed)."""
        return self._snapshot

    def build(
        self,
        service: str,
        label: str,
        values: Mapping[str, Value],
        changed: Iterable[str] | None,
    ) -> tuple[PackSnapshot, tuple[BadValue, ...]]:
        """The snapshot of ``values``; ``changed`` lists the paths changed since the last call.

        ``changed=None`` re-checks everything (the first build). Returns the cached snapshot
        when nothing it reads changed and the label is the same.
        """
        dirty = alarms = False
        fields = self._fields
        inputs = self._inputs
        bad = self._bad
        if changed is None:
            keys = values.keys()
            paths: Set[str] = keys & _READ_PATHS
            cell_paths: Set[str] = keys & _CELL_PATHS
            self._cells = {_CELL_NUMBERS[path]: None for path in cell_paths}
            self._cells_stale = False
            dirty = True
        else:
            if not isinstance(changed, (set, frozenset)):
                changed = set(changed)
            # Set intersections run in C: most changed paths (history, unread cells) end here.
            paths = changed & _READ_PATHS
            if not self._reads_cells:
                # BMS mode with extreme cells given: whatever changed, the cells are only
                # checked again if they are ever read (without even looking which changed).
                if len(paths) < len(changed):
                    self._cells_stale = True
            elif cell_paths := changed & _CELL_PATHS:
                # Checked when read: only the changed cells lose their checked value.
                cells = self._cells
                for path in cell_paths:
                    if path in values:
                        cells[_CELL_NUMBERS[path]] = None
                    else:
                        cells.pop(_CELL_NUMBERS[path], None)
                dirty = True
        for path in paths:
            what, kind, key = _ROUTES.get(path) or _route(path)
            if what == _PER_CELL:
                dirty = True  # checked at assembly, against the cells in series
                continue
            raw = values.get(path, _GONE)
            if raw is _GONE:
                value, rejected = _ABSENT
            elif kind == _NUM and type(raw) is float and (
                (bounds := _FINITE_RANGES.get(path)) is not None
                and bounds[0] <= raw <= bounds[1]
            ):
                value, rejected = raw, None  # the usual case, without a call
            else:
                value, rejected = _check(kind, path, raw)  # type: ignore[arg-type]
            if rejected is None:
                if bad:
                    bad.pop(path, None)
            else:
                bad[path] = rejected
            if what == _ALARM:
                self._alarms[key] = value  # type: ignore[call-overload]
                alarms = True
            else:
                (inputs if what == _INPUT else fields)[key] = value  # type: ignore[index]
            dirty = True
        if alarms:
            fields["alarms"] = tuple(self._alarms)
        if not dirty and self._snapshot is not None and label == self.label:
            return self._snapshot
        self.label = label
        self._snapshot = self._assemble(service, label, values)
        return self._snapshot

    def _cells_read(self, n_cells: int | None, values: Mapping[str, Value]) -> list[_Checked]:
        if self._cells_stale:
            self._cells = {i: None for path, i in _CELL_NUMBERS.items() if path in values}
            self._cells_stale = False
        cells = self._cells
        read: list[_Checked] = []
        last = n_cells if n_cells is not None else MAX_CELLS
        for i in range(1, last + 1):
            if i not in cells:
                if n_cells is None:
                    break  # without a count, cells are read as far as they are present
                read.append(_ABSENT)
                continue
            got = cells[i]
            if got is None:
                path = f"{_CELL_PREFIX}{i}"
                got = cells[i] = _check_cell(path, values[path])
            read.append(got)
        return read

    def _assemble(
        self, service: str, label: str, values: Mapping[str, Value]
    ) -> tuple[PackSnapshot, tuple[BadValue, ...]]:
        inputs = self._inputs
        n_cells: int | None = inputs[_N_CELLS]  # type: ignore[assignment]
        max_cell: float | None = inputs[_MAX_CELL]  # type: ignore[assignment]
        min_cell: float | None = inputs[_MIN_CELL]  # type: ignore[assignment]
        bad = list(self._bad.values()) if self._bad else []
        max_cell = max_cell if max_cell is None or max_cell > 0 else None
        min_cell = min_cell if min_cell is None or min_cell > 0 else None
        # As pack_from_values: the count is checked against the voltage before anything uses it.
        n_cells, wrong_count = check_cell_count(values, n_cells, max_cell, min_cell)
        if wrong_count is not None:
            bad.append(wrong_count)
        cells: list[float | None] = []
        self._reads_cells = self.with_cells or max_cell is None or min_cell is None
        if self._reads_cells:
            for value, rejected in self._cells_read(n_cells, values):
                cells.append(value)  # type: ignore[arg-type]
                if rejected is not None:
                    bad.append(rejected)
        # As pack_from_values: the pack voltages' range scales with the cells in series (the
        # count, else the cells read, else RANGES' fixed bound).
        present = sum(1 for c in cells if c is not None) if cells else 0
        range_cells = n_cells if n_cells is not None else present or None
        voltage = _per_cell(values, "/Dc/0/Voltage", range_cells, bad)
        voltages_sum = _per_cell(values, "/Voltages/Sum", range_cells, bad)
        cvl = _per_cell(values, "/Info/MaxChargeVoltage", range_cells, bad)
        low_voltage = _per_cell(values, "/Info/BatteryLowVoltage", range_cells, bad)
        if cells:
            known = [c for c in cells if c is not None]
            if max_cell is None and known:
                max_cell = max(known)
            if min_cell is None and known:
                min_cell = min(known)
        fields = self._fields
        fields["service"] = service
        fields["label"] = label
        fields["max_cell_v"] = max_cell
        fields["min_cell_v"] = min_cell
        fields["cells"] = tuple(cells) if cells else ()
        fields["cells_per_battery"] = n_cells
        fields["voltage_v"] = voltage
        fields["voltages_sum_v"] = voltages_sum
        fields["cvl_v"] = cvl
        fields["battery_low_voltage_v"] = low_voltage
        return _new_snapshot(fields), tuple(bad)
