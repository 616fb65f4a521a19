"""In-memory model of the services we read: plain Python values plus monotonic timestamps.

Fed by the D-Bus adapter (discovery) with already-unwrapped values; read by the tick.  No D-Bus
types, no asyncio, no logging: unit-testable on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from dbus_aggregate_batteries.core.model import MAX_TEXT_CHARS, BadValue, PackSnapshot
from dbus_aggregate_batteries.core.venus import Value
from dbus_aggregate_batteries.shell.snapshots import SnapshotCache


class Kind(Enum):
    """What a service is to us."""

    CANDIDATE = "candidate"  # not classified yet (waiting for /ProductName)
    PACK = "pack"
    BATTERY_SHUNT = "battery-shunt"
    DCLOAD_SHUNT = "dcload-shunt"
    MULTI = "multi"
    SOLAR = "solar"
    IGNORED = "ignored"


@dataclass(slots=True, eq=False)
class ServiceState:
    """Last known values of one service and when they last changed."""

    name: str
    owner: str
    kind: Kind = Kind.CANDIDATE
    values: dict[str, Value] = field(default_factory=dict)
    # GetItems scans in flight, and the paths signalled meanwhile: a scan's reply is resumed
    # after signals read in the same batch, so it must not overwrite what they brought.
    # Only tracked while a scan is in flight: a signal received before the request is older
    # than the reply (one sender's messages arrive in order).
    scanning: int = 0
    signalled: set[str] = field(default_factory=set)
    first_seen_s: float = 0.0
    last_signal_s: float | None = None  # any signal, changed value or not: alive, not changed
    last_scan_s: float | None = None  # last scan attempt (answered or not)
    last_answer_s: float | None = None  # last answered GetItems scan or liveness probe
    probe_failed: bool = False
    # Paths whose value changed since the last snapshot: only those are checked again.
    changed: set[str] = field(default_factory=set)
    _snapshots: SnapshotCache | None = None
    # label() of the last snapshot, and the name path it was worked out for.
    _label: str | None = None
    _label_path: str | None = None

    def apply_signal(self, changes: Mapping[str, Value], now_s: float) -> None:
        """Values from ItemsChanged/PropertiesChanged: always authoritative."""
        values = self.values
        for path, value in changes.items():
            if values.get(path, _MISSING) != value or path not in values:
                values[path] = value
                self.changed.add(path)
        if self.scanning:
            self.signalled.update(changes)
        self.last_signal_s = now_s
        self.probe_failed = False

    def apply_one(self, path: str, value: Value, now_s: float) -> None:
        """One PropertiesChanged value (the hot path: no dict building).

        Monitor._on_signal inlines this for speed: a change here must be made there too.
        """
        values = self.values
        self.last_signal_s = now_s
        self.probe_failed = False
        if self.scanning:
            self.signalled.add(path)
        if path in values and values[path] == value and type(values[path]) is type(value):
            return
        values[path] = value
        self.changed.add(path)

    def apply_scan(self, items: Mapping[str, Value], now_s: float) -> None:
        """Values from a GetItems scan: never overwrite a value signalled while it was asked."""
        signalled = self.signalled
        for path, value in items.items():
            if path in signalled:
                continue
            if self.values.get(path, _MISSING) != value:
                self.values[path] = value
                self.changed.add(path)
        self.last_scan_s = now_s
        self.last_answer_s = now_s

    def scan_started(self) -> None:
        """A GetItems request is on its way: signals from now on win over its reply."""
        self.scanning += 1

    def scan_ended(self) -> None:
        """A scan was answered (and applied) or failed."""
        self.scanning = max(self.scanning - 1, 0)
        if not self.scanning:
            self.signalled.clear()

    def answered(self, now_s: float) -> None:
        """The process answered a liveness probe: alive, whatever its values do."""
        self.last_answer_s = now_s
        self.probe_failed = False

    @property
    def alive_s(self) -> float:
        """The last sign of life: a signal, an answered scan or probe, or discovery."""
        # max() of the known ones, without a generator: read for every pack at every tick.
        alive = self.first_seen_s
        signal, answer = self.last_signal_s, self.last_answer_s
        if signal is not None and signal > alive:
            alive = signal
        if answer is not None and answer > alive:
            alive = answer
        return alive

    def has_paths(self, paths: tuple[str, ...]) -> bool:
        """Whether every one of ``paths`` has been seen (with any value)."""
        return all(p in self.values for p in paths)

    def label(self, name_path: str) -> str:
        """The pack's name in cell ids and logs: the configured path, /Serial, or the tty.

        serialbattery v0.14 defaults /CustomName to the product name, which names every pack
        alike; such a value is skipped. So is a name that is too long or not printable: the
        label goes into published cell ids and path names and into log lines.
        """
        product = self.values.get("/ProductName")
        for path in (name_path, "/CustomName", "/Serial"):
            value = self.values.get(path)
            if not isinstance(value, str) or value == product:
                continue
            value = value.strip()
            if value and len(value) <= MAX_TEXT_CHARS and value.isprintable():
                return value
        return self.name.rsplit(".", 1)[-1]

    @property
    def identity(self) -> str:
        """A key that survives a tty rename: the BMS serial when published, else the name."""
        serial = self.values.get("/Serial")
        return f"serial:{serial}" if isinstance(serial, str) and serial else self.name

    def snapshot(
        self, name_path: str, *, with_cells: bool = True
    ) -> tuple[PackSnapshot, tuple[BadValue, ...]]:
        """A trusted snapshot, equal to ``pack_from_values`` of the current values.

        Only the paths changed since the last call are checked again; the rejected values are
        returned when the snapshot was rebuilt, and ``()`` when it is the cached one.
        """
        changed: set[str] | None = self.changed
        label = self._label
        if (
            label is None
            or name_path != self._label_path
            or (changed and (name_path in changed or not changed.isdisjoint(_LABEL_PATHS)))
        ):
            label = self._label = self.label(name_path)
            self._label_path = name_path
        cache = self._snapshots
        if cache is None or cache.with_cells != with_cells:
            cache = self._snapshots = SnapshotCache(with_cells=with_cells)
            changed = None
        previous = cache.last
        if not changed and changed is not None and previous is not None and (
            label == cache.label
        ):
            return previous[0], ()  # nothing changed: the cached snapshot, for nothing
        result = cache.build(self.name, label, self.values, changed)
        self.changed.clear()
        if result is previous:
            return result[0], ()
        return result


# Paths label() reads besides the configured name path.
_LABEL_PATHS = frozenset(("/ProductName", "/CustomName", "/Serial"))


class _Missing:
    pass


# No value at all (None is a value: invalid); compares unequal to everything but itself.
MISSING = _MISSING = _Missing()


class BusState:
    """All services we track, by well-known name and by unique owner name."""

    def __init__(self) -> None:
        self.services: dict[str, ServiceState] = {}
        self.by_owner: dict[str, list[ServiceState]] = {}
        self._by_name: list[ServiceState] | None = None  # services sorted by name, cached

    def add(self, name: str, owner: str, now_s: float) -> ServiceState:
        """Start tracking a service (replacing an older owner of the same name)."""
        self.remove(name)
        svc = ServiceState(name=name, owner=owner, first_seen_s=now_s)
        self.services[name] = svc
        self._by_name = None
        self.by_owner.setdefault(owner, []).append(svc)
        return svc

    def remove(self, name: str) -> ServiceState | None:
        """Stop tracking a service; returns it so its last values can be kept."""
        svc = self.services.pop(name, None)
        if svc is not None:
            self._by_name = None
            lst = self.by_owner.get(svc.owner, [])
            if svc in lst:
                lst.remove(svc)
            if not lst:
                self.by_owner.pop(svc.owner, None)
        return svc

    def of_kind(self, kind: Kind) -> list[ServiceState]:
        """Services of one kind, sorted by name for a stable order."""
        # Sorted once per change of membership, not per tick (kinds change without it).
        by_name = self._by_name
        if by_name is None:
            by_name = self._by_name = sorted(self.services.values(), key=_name)
        return [s for s in by_name if s.kind is kind]


def _name(svc: ServiceState) -> str:
    return svc.name
