"""Incremental pack snapshots: re-check only the paths that changed since the last tick.

``core.model.pack_from_values`` validates every path of a pack on every call, so a tick costs
the same whether one value or all of them changed. :class:`SnapshotCache` keeps each path's
checked value (and its rejection, if any) and, per tick, re-checks only the changed paths,
then assembles the snapshot from the cached results. A change to a path the snapshot does not
read (most cells in BMS mode, history, settings) costs nothing at all.

It must give exactly what ``pack_from_values`` gives for the same values: the per-path checks
are ``core.model``'s own, the assembly below mirrors the cross-path rules (cell count against
pack voltage, extreme cells from the cells), and a property test compares both on random
change sequences; another test fails when ``pack_from_values`` starts reading a path this
table does not know.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# The per-path checks are core.model's (private) reader: one implementation of "what is a
# trusted value", used by both the full and the incremental build.
from dbus_aggregate_batteries.core.model import (
    CELL_COUNT_TOLERANCE_V,
    INT_RANGES,
    MAX_CELLS,
    RANGES,
    BadValue,
    PackSnapshot,
    _Reader,
)
from dbus_aggregate_batteries.core.venus import ALARM_PATHS, Value

_NUM, _INT, _TEXT = 0, 1, 2
CELLS_PER_BATTERY = "/System/NrOfCellsPerBattery"
_CELL_PREFIX = "/Voltages/Cell"
_CUT = len(_CELL_PREFIX)

# Every path pack_from_values reads, by how it is checked (cells apart: /Voltages/Cell<n>).
KINDS: dict[str, int] = {
    **dict.fromkeys(RANGES, _NUM),
    **{path: _INT for path in INT_RANGES if path != "/Connected"},
    **dict.fromkeys(
        (
            "/System/MaxVoltageCellId",
            "/System/MinVoltageCellId",
            "/System/MaxTemperatureCellId",
            "/System/MinTemperatureCellId",
            "/Info/ChargeMode",
        ),
        _TEXT,
    ),
}

_Checked = tuple[object, BadValue | None]
_ABSENT: _Checked = (None, None)


def _check(kind: int, path: str, raw: Value) -> _Checked:
    reader = _Reader({path: raw})
    if kind == _NUM:
        value: object = reader.num(path)
    elif kind == _INT:
        value = reader.integer(path)
    else:
        value = reader.text(path)
    return value, (reader.bad[0] if reader.bad else None)


def _check_cell(path: str, raw: Value) -> _Checked:
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

    __slots__ = ("_cells", "_checked", "_reads_cells", "_snapshot", "label", "with_cells")

    def __init__(self, *, with_cells: bool) -> None:
        self.with_cells = with_cells
        self.label: str | None = None
        self._checked: dict[str, _Checked] = {}
        self._cells: dict[int, _Checked] = {}
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
        dirty = False
        checked = self._checked
        cells = self._cells
        for path in values if changed is None else changed:
            kind = KINDS.get(path)
            if kind is not None:
                checked[path] = _check(kind, path, values[path]) if path in values else _ABSENT
                dirty = True
                continue
            index = cell_index(path)
            if index is not None:
                if path in values:
                    cells[index] = _check_cell(path, values[path])
                else:
                    cells.pop(index, None)
                # Unread cells (BMS mode, extreme cells given) only need to be up to date.
                dirty = dirty or self._reads_cells
        if not dirty and self._snapshot is not None and label == self.label:
            return self._snapshot
        self.label = label
        self._snapshot = self._assemble(service, label)
        return self._snapshot

    def _cells_read(self, n_cells: int | None) -> list[tuple[int, _Checked]]:
        cells = self._cells
        if n_cells is not None:
            return [(i, cells.get(i, _ABSENT)) for i in range(1, n_cells + 1)]
        read = []
        for i in range(1, MAX_CELLS + 1):
            got = cells.get(i)
            if got is None:
                break
            read.append((i, got))
        return read

    def _assemble(self, service: str, label: str) -> tuple[PackSnapshot, tuple[BadValue, ...]]:
        checked = self._checked
        bad = [b for _, b in checked.values() if b is not None]

        # The checks of KINDS give float | None for _NUM, int | None for _INT, str | None
        # for _TEXT paths.
        def num(path: str) -> float | None:
            return checked.get(path, _ABSENT)[0]  # type: ignore[return-value]

        def integer(path: str) -> int | None:
            return checked.get(path, _ABSENT)[0]  # type: ignore[return-value]

        def text(path: str) -> str | None:
            return checked.get(path, _ABSENT)[0]  # type: ignore[return-value]

        n_cells = integer(CELLS_PER_BATTERY)
        max_cell = num("/System/MaxCellVoltage")
        min_cell = num("/System/MinCellVoltage")
        max_cell = max_cell if max_cell is None or max_cell > 0 else None
        min_cell = min_cell if min_cell is None or min_cell > 0 else None
        cells: list[float | None] = []
        self._reads_cells = self.with_cells or max_cell is None or min_cell is None
        if self._reads_cells:
            for _, (value, rejected) in self._cells_read(n_cells):
                cells.append(value)  # type: ignore[arg-type]
                if rejected is not None:
                    bad.append(rejected)
        voltage = num("/Dc/0/Voltage")
        if n_cells is not None and voltage is not None and max_cell is not None and (
            min_cell is not None
        ):
            # Same rule as pack_from_values: a wrong cell count would scale derived voltages.
            per_cell = voltage / n_cells
            if not (
                min_cell - CELL_COUNT_TOLERANCE_V <= per_cell <= max_cell + CELL_COUNT_TOLERANCE_V
            ):
                bad.append(
                    BadValue(
                        CELLS_PER_BATTERY,
                        str(n_cells),
                        f"{voltage:.2f} V / {n_cells} cells = {per_cell:.3f} V per cell, outside"
                        f" the cells' {min_cell:.3f}..{max_cell:.3f} V",
                    )
                )
                n_cells = None
        known = [c for c in cells if c is not None]
        if max_cell is None and known:
            max_cell = max(known)
        if min_cell is None and known:
            min_cell = min(known)
        snap = PackSnapshot(
            service=service,
            label=label,
            voltage_v=voltage,
            current_a=num("/Dc/0/Current"),
            power_w=num("/Dc/0/Power"),
            temperature_c=num("/Dc/0/Temperature"),
            soc_pct=num("/Soc"),
            capacity_ah=num("/Capacity"),
            installed_capacity_ah=num("/InstalledCapacity"),
            consumed_ah=num("/ConsumedAmphours"),
            time_to_go_s=num("/TimeToGo"),
            max_cell_v=max_cell,
            min_cell_v=min_cell,
            max_cell_id=text("/System/MaxVoltageCellId"),
            min_cell_id=text("/System/MinVoltageCellId"),
            max_cell_temp_c=num("/System/MaxCellTemperature"),
            min_cell_temp_c=num("/System/MinCellTemperature"),
            max_temp_id=text("/System/MaxTemperatureCellId"),
            min_temp_id=text("/System/MinTemperatureCellId"),
            voltages_sum_v=num("/Voltages/Sum"),
            cells=tuple(cells),
            cells_per_battery=n_cells,
            modules_online=integer("/System/NrOfModulesOnline"),
            modules_offline=integer("/System/NrOfModulesOffline"),
            blocking_charge=integer("/System/NrOfModulesBlockingCharge"),
            blocking_discharge=integer("/System/NrOfModulesBlockingDischarge"),
            alarms=tuple(integer(p) for p in ALARM_PATHS),
            allow_to_charge=integer("/Io/AllowToCharge"),
            allow_to_discharge=integer("/Io/AllowToDischarge"),
            allow_to_balance=integer("/Io/AllowToBalance"),
            balancing=integer("/Balancing"),
            cvl_v=num("/Info/MaxChargeVoltage"),
            ccl_a=num("/Info/MaxChargeCurrent"),
            dcl_a=num("/Info/MaxDischargeCurrent"),
            battery_low_voltage_v=num("/Info/BatteryLowVoltage"),
            charge_mode=text("/Info/ChargeMode"),
        )
        return snap, tuple(bad)
