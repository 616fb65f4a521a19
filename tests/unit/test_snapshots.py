"""The incremental pack snapshot equals the full recomputation (``pack_from_values``).

Random change sequences, as signals and scans deliver them, drive a ``ServiceState``; after
each batch its snapshot must equal ``pack_from_values`` of the same values, and the rejected
values must be the same (as a multiset: the order differs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbus_aggregate_batteries.core.model import INT_RANGES, RANGES, pack_from_values
from dbus_aggregate_batteries.core.venus import Value
from dbus_aggregate_batteries.shell.snapshots import KINDS, SnapshotCache, cell_index
from dbus_aggregate_batteries.shell.state import Kind, ServiceState

NAME = "com.victronenergy.battery.ttyUSB0"
TEXTS = (
    "/System/MaxVoltageCellId",
    "/System/MinVoltageCellId",
    "/System/MaxTemperatureCellId",
    "/System/MinTemperatureCellId",
    "/Info/ChargeMode",
    "/CustomName",
    "/Serial",
    "/ProductName",
)
# Paths pack_from_values does not read must change nothing (and cost nothing).
UNREAD = ("/History/MaxCellVoltage", "/Connected", "/Voltages/Cell0", "/Voltages/Cell07")
MAX_TEST_CELLS = 34  # a few past 32, so a count of 32 leaves present cells unread

cell_voltage = st.floats(min_value=2.5, max_value=3.65)
anything: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-5, max_value=200),
    st.booleans(),  # type: ignore[arg-type]
    st.sampled_from(["", "Float │ Linear Mode", "Bulk", "C3", "x", "C\x00", "\n", "é" * 200]),
    st.text(max_size=300),
    st.just([]),  # type: ignore[arg-type]
)


def plausible(path: str) -> st.SearchStrategy[Value]:
    """Mostly values a real pack sends, so the cross-path rules get exercised."""
    if path == "/System/NrOfCellsPerBattery":
        return st.sampled_from([4, 8, 16, 24, 32, 0, 65])
    if path == "/Dc/0/Voltage":
        return st.one_of(st.floats(min_value=10.0, max_value=110.0), st.just(0.0))
    if path in ("/System/MaxCellVoltage", "/System/MinCellVoltage"):
        return st.one_of(cell_voltage, st.just(0.0))
    if path.startswith("/Voltages/Cell"):
        return st.one_of(cell_voltage, st.just(0.0), st.just(5.5))
    if path in RANGES:
        low, high = RANGES[path]
        return st.floats(min_value=max(low, -1e6), max_value=min(high, 1e6))
    if path in INT_RANGES:
        low, high = INT_RANGES[path]
        return st.integers(min_value=low, max_value=min(high, 1000))
    return st.sampled_from(["Pack A", "C1", "Float", "Absorption", "C1" * 80, "Bulk\t"])


PATHS = (
    *sorted(KINDS),
    *TEXTS,
    *UNREAD,
    *(f"/Voltages/Cell{i}" for i in range(1, MAX_TEST_CELLS + 1)),
)


@st.composite
def changes(draw: st.DrawFn) -> dict[str, Value]:
    paths = draw(st.lists(st.sampled_from(PATHS), min_size=0, max_size=12, unique=True))
    out: dict[str, Value] = {}
    for path in paths:
        wild = draw(st.integers(min_value=0, max_value=9)) == 0
        out[path] = draw(anything if wild else plausible(path))
    return out


@st.composite
def full_pack(draw: st.DrawFn) -> dict[str, Value]:
    n = draw(st.sampled_from([4, 16, 24, 32]))
    values: dict[str, Value] = {
        path: draw(plausible(path)) for path in (*sorted(KINDS), *TEXTS) if draw(st.booleans())
    }
    values["/System/NrOfCellsPerBattery"] = n
    for i in range(1, n + 1):
        values[f"/Voltages/Cell{i}"] = draw(cell_voltage)
    return values


def assert_equal_to_full(
    svc: ServiceState, with_cells: bool, name_path: str = "/CustomName"
) -> None:
    label = svc.label(name_path)
    before = svc._snapshots.last if svc._snapshots is not None else None
    snap, bad = svc.snapshot(name_path, with_cells=with_cells)
    full, full_bad = pack_from_values(svc.name, label, svc.values, with_cells=with_cells)
    assert snap == full
    after = svc._snapshots.last if svc._snapshots is not None else None
    if after is not before:  # rebuilt: the rejected values are reported again
        assert Counter(bad) == Counter(full_bad)
    else:
        assert bad == ()


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    start=full_pack(),
    steps=st.lists(
        st.tuples(st.sampled_from(["signal", "one", "scan"]), changes()), max_size=25
    ),
    with_cells=st.booleans(),
    # The label is cached between snapshots: named by a path that changes (a text), or not.
    name_path=st.sampled_from(["/CustomName", "/Info/ChargeMode"]),
)
def test_incremental_snapshot_equals_full_recomputation(
    start: dict[str, Value], steps: list[tuple[str, dict[str, Value]]], with_cells: bool,
    name_path: str,
) -> None:
    svc = ServiceState(name=NAME, owner=":1.7", kind=Kind.PACK)
    svc.apply_scan(start, 0.0)
    assert_equal_to_full(svc, with_cells, name_path)
    for now, (how, batch) in enumerate(steps, start=1):
        if how == "signal":
            svc.apply_signal(batch, float(now))
        elif how == "scan":
            svc.apply_scan(batch, float(now))
        else:
            for path, value in batch.items():
                svc.apply_one(path, value, float(now))
        assert_equal_to_full(svc, with_cells, name_path)
        if now % 5 == 0:
            assert_equal_to_full(svc, with_cells, name_path)  # nothing changed since
    # Switching what is read (BMS <-> own mode) rebuilds from scratch and still agrees.
    assert_equal_to_full(svc, not with_cells, name_path)


def test_unchanged_pack_is_not_rebuilt_and_unread_paths_cost_nothing() -> None:
    values: dict[str, Value] = {
        "/Dc/0/Voltage": 53.0,
        "/System/NrOfCellsPerBattery": 16,
        "/System/MaxCellVoltage": 3.4,
        "/System/MinCellVoltage": 3.3,
        "/Soc": "full",  # rejected: reported on each rebuild only
        **{f"/Voltages/Cell{i}": 3.31 for i in range(1, 17)},
    }
    svc = ServiceState(name=NAME, owner=":1.7", kind=Kind.PACK)
    svc.apply_scan(values, 0.0)
    first, bad = svc.snapshot("/CustomName", with_cells=False)
    assert [b.path for b in bad] == ["/Soc"]
    assert svc.snapshot("/CustomName", with_cells=False) == (first, ())
    # In BMS mode a cell is not read when the pack gives its extreme cells itself.
    svc.apply_one("/Voltages/Cell3", 3.35, 1.0)
    svc.apply_one("/History/ChargeCycles", 12, 1.0)
    again, bad = svc.snapshot("/CustomName", with_cells=False)
    assert again is first and bad == ()
    svc.apply_one("/Dc/0/Current", -4.0, 2.0)
    changed, bad = svc.snapshot("/CustomName", with_cells=False)
    assert changed.current_a == -4.0 and [b.path for b in bad] == ["/Soc"]


class RecordingValues(Mapping[str, Value]):
    """A mapping that remembers every key looked up."""

    def __init__(self, values: dict[str, Value]) -> None:
        self._values = values
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Value:
        self.read.add(key)
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._values

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self._values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("pack_from_values must not depend on iteration order")

    def __len__(self) -> int:
        return len(self._values)


def test_table_knows_every_path_pack_from_values_reads() -> None:
    # Fails when pack_from_values starts reading a path the incremental table would never
    # check again: add it to shell/snapshots.py KINDS (and to the assembly).
    values: dict[str, Value] = {path: None for path in KINDS}
    values.update({f"/Voltages/Cell{i}": None for i in range(1, 65)})
    recorder = RecordingValues(values)
    pack_from_values(NAME, "A", recorder, with_cells=True)
    unknown = {p for p in recorder.read if p not in KINDS and cell_index(p) is None}
    assert unknown == set()


def test_cell_index_spelling() -> None:
    assert cell_index("/Voltages/Cell1") == 1
    assert cell_index("/Voltages/Cell24") == 24
    for path in ("/Voltages/Cell0", "/Voltages/Cell07", "/Voltages/Cell", "/Voltages/Cell-1",
                 "/Voltages/Cell²", "/Voltages/Sum"):
        assert cell_index(path) is None


def test_cache_without_changes_returns_the_same_object() -> None:
    cache = SnapshotCache(with_cells=True)
    values: dict[str, Value] = {"/Dc/0/Voltage": 26.0}
    first = cache.build(NAME, "A", values, None)
    assert cache.build(NAME, "A", values, ()) is first
    assert cache.build(NAME, "B", values, ()) is not first  # the label is part of it


@pytest.mark.parametrize("with_cells", [False, True])
@pytest.mark.parametrize("count", [8, 10, 11])
def test_a_too_low_cell_count_never_costs_the_pack_voltage(count: int, with_cells: bool) -> None:
    # Found by review: the voltage range scaled by a wrong, low count (8 x 5 V = 40 V) rejected
    # a good 53.3 V, and the pack went BMS-offline.  The count is checked first now.
    values: dict[str, Value] = {
        "/Dc/0/Voltage": 53.3, "/System/NrOfCellsPerBattery": count,
        "/System/MaxCellVoltage": 3.34, "/System/MinCellVoltage": 3.32,
        **{f"/Voltages/Cell{i}": 3.33 for i in range(1, 17)},
    }
    full, bad = pack_from_values(NAME, "A", values, with_cells=with_cells)
    assert full.voltage_v == 53.3 and full.cells_per_battery is None
    assert [b.path for b in bad] == ["/System/NrOfCellsPerBattery"]
    svc = ServiceState(name=NAME, owner=":1.7", kind=Kind.PACK)
    svc.apply_scan(values, 0.0)
    cached, cached_bad = svc.snapshot("A", with_cells=with_cells)
    assert cached.voltage_v == 53.3 and cached.cells_per_battery is None
    assert [b.path for b in cached_bad] == ["/System/NrOfCellsPerBattery"]


def test_cells_changed_while_unread_are_read_right_once_needed() -> None:
    # BMS mode with the extreme cells given reads no cell, so cell changes only mark the cell
    # table stale; once an extreme cell goes missing, the cells are read, and must be current.
    values: dict[str, Value] = {
        "/Dc/0/Voltage": 13.3, "/System/NrOfCellsPerBattery": 4,
        "/System/MaxCellVoltage": 3.4, "/System/MinCellVoltage": 3.3,
        **{f"/Voltages/Cell{i}": 3.3 for i in range(1, 5)},
    }
    svc = ServiceState(name=NAME, owner=":1.7", kind=Kind.PACK)
    svc.apply_scan(values, 0.0)
    first, _ = svc.snapshot("/CustomName", with_cells=False)
    assert first.cells == ()
    svc.apply_one("/Voltages/Cell2", 3.45, 1.0)
    svc.apply_one("/Voltages/Cell4", "x", 1.0)
    svc.apply_one("/Voltages/Cell5", 3.3, 1.0)  # beyond the count: never read
    assert svc.snapshot("/CustomName", with_cells=False) == (first, ())
    svc.apply_one("/System/MaxCellVoltage", 0.0, 2.0)  # 0: unknown, so taken from the cells
    snap, bad = svc.snapshot("/CustomName", with_cells=False)
    full, full_bad = pack_from_values(NAME, svc.label("/CustomName"), svc.values,
                                      with_cells=False)
    assert snap == full and Counter(bad) == Counter(full_bad)
    assert snap.cells == (3.3, 3.45, 3.3, None) and snap.max_cell_v == 3.45
    assert [b.path for b in bad] == ["/Voltages/Cell4"]
