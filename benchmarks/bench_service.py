"""Load benchmark of the running service against simulated packs on a private dbus-daemon.

For each D-Bus library and each pack count this starts, all on a fresh private bus:

1. ``dbus-daemon`` with its own busconfig in a temporary directory (as tests/dbus/conftest.py);
2. the simulator (``python -m dbus_aggregate_batteries.sim``): N packs x 24 cells,
   ``--all-cells-change`` so that every cell voltage and the current change every tick;
3. the service (``python -m dbus_aggregate_batteries run``), a subprocess with its own config;

then waits for ``com.victronenergy.battery.aggregate``, warms up, and measures over
``--duration`` seconds:

* CPU of the service, in % of one core: time on CPU of its threads from
  /proc/<pid>/task/*/schedstat (nanoseconds). The utime+stime of /proc/<pid>/stat count in
  10 ms clock ticks: over a 45 s window at 1 update/s the floor uses about 12 of them, so one
  tick more or less moved its ratio by 8 %. That figure is kept as ``cpu_pct_ticks``;
* peak RSS (VmHWM from /proc/<pid>/status);
* missed ticks (from the service's periodic summary line "missed ticks N", bracketing the
  window), cross-checked by gaps between the aggregate's ItemsChanged signals;
* latency from a pack's change to the aggregate change that reflects it: an in-process client
  subscribes (per-sender match rules) to every pack's PropertiesChanged on /Dc/0/Current and to
  the aggregate's ItemsChanged. For each change of pack 0 (the first pack the simulator
  publishes in a tick, so the worst case) the latency is the time until the first aggregate
  ItemsChanged whose /Dc/0/Current equals the sum of the pack currents as they were at some
  instant at or after that change (the service sums one consistent snapshot per tick).
  Service and simulator both tick every second on their own clocks, so within one run the
  latency is nearly constant: the phase offset between the two (0..1 tick, set by when the
  service happened to start) plus the service's own delay; ``p99 - min`` ("jitter") is what
  the service adds on top of the phase, and the worst case over all phases is about one tick
  plus that jitter.

The FLOOR: ``benchmarks/floor_subscriber.py`` with the same library adds the same per-sender
match rules for every pack and only receives and unwraps the signals. It runs next to the
service and is measured in the SAME window (started before the service, so its warm-up is
done): the machine's slow and fast phases then hit both alike. Before the fourth pass of
issue 12 it ran after the service had stopped, in a window of its own, which ``--floor-apart``
still does; between two such windows the floor alone moved by up to 28 %. Its signal counter
gives the real signal rate.

Every child is started in its own process group (Ctrl-C reaches only this script, which then
stops them in order) and with PR_SET_PDEATHSIG, so even a killed benchmark leaves nothing
behind. Every wait has a timeout and every run has an overall time limit.

    python benchmarks/bench_service.py --sizes 1,4,8,16 --duration 60 \
        --libs dbus_fast,dbus_next --out benchmarks/results.json
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import bisect
import contextlib
import hashlib
import importlib
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from dbus_aggregate_batteries.core.venus import BUSITEM
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.sim.privatebus import BUS_CONFIG

HERE = Path(__file__).resolve().parent
FLOOR_SCRIPT = HERE / "floor_subscriber.py"
TICK_PROBE_SCRIPT = HERE / "tick_probe.py"
CONSUMER_SCRIPT = HERE / "consumer_subscriber.py"
# What runs as "the service": this tree as it is (ItemsChanged only), the same with
# publish.properties_changed (ItemsChanged plus PropertiesChanged, the wire behaviour before
# issue 12), or another source tree given by --old-src (e.g. a `git archive` of an older
# commit) with its own defaults. "original" is the original program (dbus-python + GLib),
# started from the directory given by --original (see ORIGINAL_LAUNCHER). "no-tick" and
# "min-tick" are this tree with its tick replaced (tick_probe.py): what the service costs
# without its tick, and with the least tick an aggregator built like it does.
VARIANTS = ("new", "new-pc", "old", "original", "no-tick", "min-tick")
TICK_PROBES = {"no-tick": "none", "min-tick": "minimal"}
AGGREGATE = "com.victronenergy.battery.aggregate"
CURRENT = "/Dc/0/Current"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK_S = 1.0
# Targets of issue 12, checked at 8 packs for dbus_fast (and, against the original program
# when --original runs it, for dbus_next). Peak RSS: no higher than before the issue.
TARGET_PACKS = 8
TARGET_LIB = "dbus_fast"
TARGET_RATIO = 1.5  # at 1 update/s per pack
TARGET_RATIO_FAST = 1.2  # at 10 updates/s per pack
TARGET_RSS_MB = 40.0  # the issue: "Peak RSS is ~40 MB" when it was filed
TARGET_P99_MS = 1000.0 * TICK_S

# Runs before exec in every child: die with us (PR_SET_PDEATHSIG = 1, SIGTERM), and do not
# start at all if we are already gone. The setting survives execv.
LAUNCHER = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 15, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(70)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

# Starts the original program's main script (DIR/dab.py) with the bank's size: its settings
# module (a module of constants in the harness) is imported first and the two numbers that
# must match the simulated bank are set, so that the script's own `import settings` finds them.
# Arguments: DIR, packs, cells.
ORIGINAL_LAUNCHER = (
    "import runpy, sys\n"
    "d = sys.argv[1]\n"
    "sys.path.insert(0, d)\n"
    "import settings\n"
    "settings.NR_OF_BATTERIES = int(sys.argv[2])\n"
    "settings.NR_OF_CELLS_PER_BATTERY = int(sys.argv[3])\n"
    "sys.argv = [d + '/dab.py']\n"
    "runpy.run_path(d + '/dab.py', run_name='__main__')\n"
)
# The original waits for com.victronenergy.settings before it looks for packs; the simulator
# has none, so for that variant a simulated localsettings runs in its own process.
SETTINGS_LAUNCHER = (
    "import asyncio, sys\n"
    "from dbus_aggregate_batteries.sim.settings import SimSettings\n"
    "async def main():\n"
    "    s = SimSettings()\n"
    "    await s.start(sys.argv[1])\n"
    "    print('READY', flush=True)\n"
    "    await asyncio.Event().wait()\n"
    "asyncio.run(main())\n"
)

SUMMARY_RE = re.compile(r"missed ticks (\d+), tick failures (\d+)")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- processes


class Child:
    """A subprocess whose merged stdout/stderr is collected with receive timestamps."""

    registry: list[Child] = []  # noqa: RUF012 - deliberately shared: cleaned up at exit

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.argv = list(argv)
        self.lines: list[tuple[float, str]] = []
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("w", encoding="utf-8")
        self.popen = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(os.getpid()), *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=0,  # Ctrl-C in the terminal reaches only us; we stop the children
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        Child.registry.append(self)
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            self._log.write(line)
            self._log.flush()
        self._log.close()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 15) -> str:
        return "\n".join(text for _, text in self.lines[-n:])

    async def wait_line(self, pred: Callable[[str], bool], timeout: float, start: int = 0) -> str:
        """The first line (from index ``start``) satisfying ``pred``; fail on exit or timeout."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.lines):
                text = self.lines[i][1]
                i += 1
                if pred(text):
                    return text
            if not self.alive():
                await asyncio.sleep(0.2)  # let the reader drain the pipe
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no expected line in {timeout} s:\n{self.tail()}")
            await asyncio.sleep(0.05)

    def signal(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL; returns the exit code (negative: killed by a signal)."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {timeout} s: killing it")
                self.popen.kill()
                self.popen.wait()
        self._reader.join(2.0)
        if self in Child.registry:
            Child.registry.remove(self)
        return self.popen.returncode

    async def astop(self, timeout: float = 10.0) -> int | None:
        return await asyncio.to_thread(self.stop, timeout)


def stop_all() -> None:
    """Terminate every child still running: all get SIGTERM at once, then SIGKILL after 5 s."""
    children = list(reversed(Child.registry))
    for child in children:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    for child in children:
        try:
            child.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait()
    Child.registry.clear()


atexit.register(stop_all)


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()  # fields from 3 ("state") on
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    return sum(cpu_times(pid))


def context_switches(pid: int) -> int:
    """Voluntary context switches of every live thread (about: wake-ups from a wait)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with (
            contextlib.suppress(FileNotFoundError, ProcessLookupError),
            open(f"/proc/{pid}/task/{task}/status", encoding="ascii") as f,
        ):
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def cpu_ns_seconds(pid: int) -> float:
    """Time on CPU of every live thread of a process, from schedstat (ns resolution), in s.

    A cross-check of :func:`cpu_seconds` (whose unit is a 10 ms clock tick); threads that have
    exited are not counted here.
    """
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with (
            contextlib.suppress(FileNotFoundError, ProcessLookupError),
            open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f,
        ):
            total += int(f.read().split()[0])
    return total / 1e9


def host_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(x) for x in f.readline().split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values)
    return total - idle, total


def memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak RSS) and VmRSS, in MB (10^6 bytes)."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(rest.split()[0]) * 1024 / 1e6
    return out


class CpuWindow:
    """CPU use of some processes between ``start()`` and ``stop()``, plus 1 s samples."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0 = 0.0
        self.c0: dict[str, float] = {}
        self.ns0: dict[str, float] = {}
        self.times0: dict[str, tuple[float, float]] = {}
        self.switches0: dict[str, int] = {}
        self.host0 = (0.0, 0.0)
        self.samples: dict[str, list[float]] = {k: [] for k in pids}
        self._last: dict[str, float] = {}
        self._last_t = 0.0

    def start(self) -> None:
        self.t0 = self._last_t = time.monotonic()
        self.c0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self.ns0 = {k: cpu_ns_seconds(p) for k, p in self.pids.items()}
        self.times0 = {k: cpu_times(p) for k, p in self.pids.items()}
        self.switches0 = {k: context_switches(p) for k, p in self.pids.items()}
        self.host0 = host_cpu()
        self._last = dict(self.c0)

    def sample(self) -> None:
        now = time.monotonic()
        for k, p in self.pids.items():
            c = cpu_seconds(p)
            self.samples[k].append(100.0 * (c - self._last[k]) / (now - self._last_t))
            self._last[k] = c
        self._last_t = now

    def stop(self) -> dict[str, Any]:
        now = time.monotonic()
        busy1, total1 = host_cpu()
        busy0, total0 = self.host0
        out: dict[str, Any] = {
            "wall_s": now - self.t0,
            # How busy the whole machine was (other work shares these cores): % of all CPUs.
            "host_busy_pct": 100.0 * (busy1 - busy0) / max(1, total1 - total0),
            "loadavg_1min": os.getloadavg()[0],
        }
        for k, p in self.pids.items():
            used = cpu_seconds(p) - self.c0[k]
            used_ns = cpu_ns_seconds(p) - self.ns0[k]
            (u1, s1), (u0, s0) = cpu_times(p), self.times0[k]
            wall = now - self.t0
            out[k] = {
                "cpu_s": used,
                # schedstat's nanoseconds; the 10 ms clock ticks of /proc/<pid>/stat beside it.
                "cpu_pct": 100.0 * used_ns / wall,
                "cpu_pct_ticks": 100.0 * used / wall,
                "user_pct": 100.0 * (u1 - u0) / wall,
                "system_pct": 100.0 * (s1 - s0) / wall,
                "cpu_pct_schedstat": 100.0 * used_ns / wall,
                "cpu_1s_max_pct": max(self.samples[k], default=None),
                "wakeups_per_s": (context_switches(p) - self.switches0[k]) / wall,
            }
        return out

    async def run(self, duration: float, alive: Callable[[], bool]) -> dict[str, Any]:
        self.start()
        end = self.t0 + duration
        next_sample = self.t0 + 1.0
        while (now := time.monotonic()) < end:
            if not alive():
                raise RuntimeError("a measured process exited during the window")
            await asyncio.sleep(min(next_sample, end) - now)
            if time.monotonic() >= next_sample:
                self.sample()
                next_sample += 1.0
        return self.stop()


# ---------------------------------------------------------------------------- latency probe


@dataclass
class LatencyProbe:
    """Pack-change -> aggregate-change latency, seen by an ordinary client of the bus."""

    pack_owners: list[str]
    aggregate_owner: str
    index: dict[str, int] = field(init=False)
    times: list[list[float]] = field(init=False)
    values: list[list[float]] = field(init=False)
    pending: list[float] = field(default_factory=list)  # times of unreflected pack-0 changes
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (change time, s)
    unmatched: list[float] = field(default_factory=list)
    aggregate_times: list[float] = field(default_factory=list)
    aggregate_items: list[int] = field(default_factory=list)
    pack_signals: int = 0
    tolerance: float = 0.005 + 1e-6  # the aggregate's current is rounded to 0.01 A

    def __post_init__(self) -> None:
        self.index = {owner: i for i, owner in enumerate(self.pack_owners)}
        self.times = [[] for _ in self.pack_owners]
        self.values = [[] for _ in self.pack_owners]

    def rules(self) -> list[str]:
        base = f"type='signal',interface='{BUSITEM}'"
        return [
            f"{base},sender='{owner}',member='PropertiesChanged',path='{CURRENT}'"
            for owner in self.pack_owners
        ] + [f"{base},sender='{self.aggregate_owner}',member='ItemsChanged',path='/'"]

    def on_message(self, msg: Any) -> None:
        now = time.monotonic()
        if msg.message_type != _dbus.MessageType.SIGNAL or msg.interface != BUSITEM:
            return
        if msg.member == "PropertiesChanged" and msg.path == CURRENT:
            i = self.index.get(msg.sender)
            variant = msg.body[0].get("Value")
            if i is None or variant is None:
                return
            value = _dbus.unwrap(variant)
            if not isinstance(value, float | int):
                return
            self.pack_signals += 1
            self.times[i].append(now)
            self.values[i].append(float(value))
            if i == 0 and all(self.times):
                self.pending.append(now)
        elif msg.member == "ItemsChanged" and msg.sender == self.aggregate_owner:
            items = msg.body[0]
            self.aggregate_times.append(now)
            self.aggregate_items.append(len(items))
            item = items.get(CURRENT)
            if item is not None and item.get("Value") is not None:
                value = _dbus.unwrap(item["Value"])
                if isinstance(value, float | int):
                    self._match(now, float(value))
            self._expire(now)

    def _value_at(self, i: int, t: float) -> float | None:
        k = bisect.bisect_right(self.times[i], t) - 1
        return self.values[i][k] if k >= 0 else None

    def _reflects(self, t0: float, ta: float, current: float) -> bool:
        """Does ``current`` equal the pack sum at some instant in [t0, ta]?"""
        cuts = {t0}
        for times in self.times:
            lo = bisect.bisect_left(times, t0)
            hi = bisect.bisect_right(times, ta)
            cuts.update(times[lo:hi])
        for cut in cuts:
            total = 0.0
            for i in range(len(self.times)):
                v = self._value_at(i, cut)
                if v is None:
                    break
                total += v
            else:
                if abs(total - current) <= self.tolerance:
                    return True
        return False

    def _match(self, ta: float, current: float) -> None:
        # If the newest reflected change is k, every older pending change is reflected too.
        for k in range(len(self.pending) - 1, -1, -1):
            if self._reflects(self.pending[k], ta, current):
                self.latencies.extend((t0, ta - t0) for t0 in self.pending[: k + 1])
                del self.pending[: k + 1]
                return

    def _expire(self, now: float, max_age: float = 10.0) -> None:
        while self.pending and now - self.pending[0] > max_age:
            self.unmatched.append(self.pending.pop(0))
        # Keep the histories short; 30 s is far more than any cut window.
        for i, times in enumerate(self.times):
            cut = bisect.bisect_left(times, now - 30.0)
            if cut > 1:
                del times[: cut - 1]
                del self.values[i][: cut - 1]

    def report(self, start: float, end: float) -> dict[str, Any]:
        lat = sorted(1000.0 * d for t0, d in self.latencies if start <= t0 < end)
        agg = [t for t in self.aggregate_times if start <= t < end]
        gaps = [b - a for a, b in itertools.pairwise(agg)]
        p99 = percentile(lat, 99)
        return {
            "samples": len(lat),
            "unmatched": sum(1 for t in self.unmatched if start <= t < end)
            + sum(1 for t in self.pending if start <= t < end),
            "p50_ms": percentile(lat, 50),
            "p99_ms": p99,
            "min_ms": lat[0] if lat else None,
            "max_ms": lat[-1] if lat else None,
            "mean_ms": sum(lat) / len(lat) if lat else None,
            "jitter_ms": p99 - lat[0] if p99 is not None else None,
            "over_one_tick": sum(1 for x in lat if x > 1000.0 * TICK_S),
            "aggregate_signals_per_s": len(agg) / (end - start),
            "aggregate_items_per_s": sum(
                n
                for t, n in zip(self.aggregate_times, self.aggregate_items, strict=True)
                if start <= t < end
            )
            / (end - start),
            "aggregate_gaps_over_1_5_ticks": sum(1 for g in gaps if g > 1.5 * TICK_S),
            "aggregate_max_gap_ms": 1000.0 * max(gaps) if gaps else None,
        }


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * pct / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# ---------------------------------------------------------------------------- one run


@dataclass
class Settings:
    duration: float
    warmup: float
    floor_warmup: float
    cells: int
    summary_interval: float
    log_root: Path
    pyspy_dir: Path | None
    cprofile_dir: Path | None
    rate: float = 1.0
    variant: str = "new"
    old_src: Path | None = None
    original_dir: Path | None = None
    original_python: str = "/usr/bin/python3"
    with_floor: bool = True
    floor_apart: bool = False
    consumer: bool = True


def use_library(lib: str) -> None:
    """Point the project's import site at ``lib`` for this process's probe client.

    ``_dbus`` picks its library at import time from DAB_DBUS_LIBRARY; the children get the
    variable in their environment, and here the module is simply loaded again.
    """
    os.environ["DAB_DBUS_LIBRARY"] = lib
    importlib.reload(_dbus)
    if lib != _dbus.LIBRARY:
        raise RuntimeError(f"asked for {lib}, got {_dbus.LIBRARY}")


def child_env(lib: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DAB_DBUS_LIBRARY"] = lib
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)  # nothing may reach a real bus
    return env


async def start_daemon(work: Path, env: dict[str, str], log_dir: Path) -> tuple[Child, str]:
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        raise RuntimeError("dbus-daemon is not installed")
    sock_dir = work / "bus"
    sock_dir.mkdir()
    config = work / "bus.conf"
    config.write_text(BUS_CONFIG.format(directory=sock_dir, extra=""))
    child = Child(
        "dbus-daemon",
        [daemon, "--nofork", "--print-address", f"--config-file={config}"],
        env,
        log_dir,
    )
    address = await child.wait_line(lambda s: s.startswith("unix:"), 10.0)
    return child, address.strip()


async def name_owner(bus: Any, name: str) -> str | None:
    try:
        reply = await _dbus.call(
            bus,
            _dbus.DBUS_SERVICE,
            _dbus.DBUS_PATH,
            "GetNameOwner",
            _dbus.DBUS_SERVICE,
            "s",
            (name,),
        )
    except _dbus.DBusCallError:
        return None
    owner: str = reply[0]
    return owner


async def wait_owner(bus: Any, name: str, timeout: float, proc: Child) -> str:
    deadline = time.monotonic() + timeout
    while (owner := await name_owner(bus, name)) is None:
        if not proc.alive():
            await asyncio.sleep(0.2)
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not on the bus after {timeout} s:\n{proc.tail()}")
        await asyncio.sleep(0.1)
    return owner


def summary_counts(child: Child, before: float | None = None, after: float | None = None) -> Any:
    """(time, missed ticks, tick failures) of the last summary before / first after a time."""
    found = None
    for t, text in child.lines:
        m = SUMMARY_RE.search(text)
        if m is None:
            continue
        entry = (t, int(m.group(1)), int(m.group(2)))
        if before is not None and t <= before:
            found = entry
        if after is not None and t >= after:
            return entry
    return found


def log_problems(child: Child) -> list[str]:
    return [text for _, text in child.lines if text.startswith(("WARNING", "ERROR", "CRITICAL"))]


async def measure_service(
    lib: str,
    n: int,
    address: str,
    sim_names: list[str],
    env: dict[str, str],
    pids: dict[str, int],
    work: Path,
    log_dir: Path,
    s: Settings,
) -> dict[str, Any]:
    config = work / "service.yaml"
    state_dir = work / "state"
    config.write_text(
        "service:\n"
        f"  summary_interval_s: {s.summary_interval}\n"
        f"  state_dir: {state_dir}\n"
        "logging:\n"
        "  level: INFO\n"
        + ("publish:\n  properties_changed: true\n" if s.variant == "new-pc" else "")
    )
    if s.variant == "old":
        if s.old_src is None:
            raise RuntimeError("variant 'old' needs --old-src")
        env = {**env, "PYTHONPATH": str(s.old_src)}
    if s.variant == "original":
        return await measure_original(n, address, sim_names, env, pids, work, log_dir, s)
    prefix: list[str] = []
    if s.cprofile_dir is not None:
        s.cprofile_dir.mkdir(parents=True, exist_ok=True)
        prefix = ["-m", "cProfile", "-o", str(s.cprofile_dir / f"service-{lib}-{n}.prof")]
    probe_tick = TICK_PROBES.get(s.variant)
    command = (
        ["-m", "dbus_aggregate_batteries"] if probe_tick is None
        else [str(TICK_PROBE_SCRIPT), "--tick", probe_tick]
    )
    argv = [
        sys.executable,
        *prefix,
        *command,
        "run",
        "--config",
        str(config),
        "--bus",
        address,
        "--state-dir",
        str(state_dir),
    ]
    bus = await _dbus.connect(address)
    service: Child | None = None
    profiler: Child | None = None
    consumer: Child | None = None
    try:
        t_start = time.monotonic()
        service = Child("service", argv, env, log_dir)
        aggregate_owner = await wait_owner(bus, AGGREGATE, 60.0, service)
        startup_s = time.monotonic() - t_start
        measured = {"service": service.pid, **pids}
        if s.consumer:
            consumer = Child(
                "consumer",
                [sys.executable, str(CONSUMER_SCRIPT), "--bus", address],
                {k: v for k, v in env.items() if k != "PYTHONPATH"},
                log_dir,
            )
            await consumer.wait_line(lambda t: t.startswith("READY"), 30.0)
            measured["consumer"] = consumer.pid
        pack_owners = []
        for name in sim_names[:n]:
            owner = await name_owner(bus, name)
            if owner is None:
                raise RuntimeError(f"pack {name} is not on the bus")
            pack_owners.append(owner)
        probe = LatencyProbe(pack_owners, aggregate_owner)
        bus.add_message_handler(probe.on_message)
        for rule in probe.rules():
            await _dbus.add_match(bus, rule)
        log(f"  service up in {startup_s:.1f} s; warming up {s.warmup:.0f} s")
        await asyncio.sleep(s.warmup)
        if s.pyspy_dir is not None:
            s.pyspy_dir.mkdir(parents=True, exist_ok=True)
            stem = s.pyspy_dir / f"service-{lib}-{n}"
            profiler = Child(
                "py-spy",
                [
                    shutil.which("py-spy") or "py-spy",
                    "record",
                    "--pid",
                    str(service.pid),
                    "--duration",
                    str(int(s.duration)),
                    "--rate",
                    "1000",
                    "--format",
                    "raw",
                    "--output",
                    f"{stem}.txt",
                    "--nonblocking",
                    "--gil",  # only samples holding the GIL: Python work, not epoll waits
                ],
                env,
                log_dir,
            )
        window = CpuWindow(measured)
        signals0 = probe.pack_signals
        consumed0 = await _count(consumer) if consumer is not None else None
        cpu = await window.run(s.duration, service.alive)
        consumed1 = await _count(consumer) if consumer is not None else None
        pack_signals = probe.pack_signals - signals0
        w_start, w_end = window.t0, window.t0 + cpu["wall_s"]
        mem = memory_mb(service.pid)
        # The summary after the window closes the bracket for the missed-tick count.
        after = summary_counts(service, after=w_end)
        if after is None:
            await service.wait_line(
                lambda text: SUMMARY_RE.search(text) is not None,
                s.summary_interval + 5.0,
                start=len(service.lines),
            )
            after = summary_counts(service, after=w_end)
        before = summary_counts(service, before=w_start)
        await asyncio.sleep(max(0.0, w_end + 2.0 * TICK_S - time.monotonic()))
        latency = probe.report(w_start, w_end)
        bus.remove_message_handler(probe.on_message)
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(profiler.popen.wait, 30.0)
            profiler.stop()
        code = await service.astop()
        problems = log_problems(service)
        consumed: dict[str, Any] | None = None
        if consumer is not None and consumed0 is not None and consumed1 is not None:
            span = consumed1[2] - consumed0[2]
            consumed = {
                "cpu_pct": cpu["consumer"]["cpu_pct"],
                "cpu_pct_schedstat": cpu["consumer"]["cpu_pct_schedstat"],
                "signals_per_s": (consumed1[0] - consumed0[0]) / span,
                "values_per_s": (consumed1[1] - consumed0[1]) / span,
            }
        return {
            "startup_s": startup_s,
            "window": cpu,
            "cpu_pct": cpu["service"]["cpu_pct"],
            "consumer": consumed,
            "peak_rss_mb": mem.get("VmHWM"),
            "rss_end_mb": mem.get("VmRSS"),
            "missed_ticks": (after[1] - (before[1] if before else 0)) if after else None,
            "missed_ticks_total": after[1] if after else None,
            "tick_failures": (after[2] - (before[2] if before else 0)) if after else None,
            "missed_ticks_bracket_s": (after[0] - before[0]) if after and before else None,
            "pack_current_signals_per_s": pack_signals / cpu["wall_s"],
            "latency": latency,
            "exit_code": code,
            "log_warnings": problems[:20],
            "log_warning_count": len(problems),
        }
    finally:
        if profiler is not None:
            profiler.stop()
        if consumer is not None:
            await consumer.astop()
        if service is not None:
            await service.astop()
        await _dbus.disconnect(bus)


async def measure_original(
    n: int,
    address: str,
    sim_names: list[str],
    env: dict[str, str],
    pids: dict[str, int],
    work: Path,
    log_dir: Path,
    s: Settings,
) -> dict[str, Any]:
    """The original program in place of the service: same bus, packs, window and probes.

    It has no missed-tick counter; the latency probe's gaps between its ItemsChanged are the
    only check that it kept up.
    """
    if s.original_dir is None:
        raise RuntimeError("variant 'original' needs --original")
    state_dir = work / "original-state"
    state_dir.mkdir()
    # -1: no stored charge, so the original starts its counter from the packs' SoC.
    (state_dir / "storedvalue_charge").write_text("-1")
    # The system interpreter with dbus-python and gi: nothing of our venv may leak into it.
    orig_env = {
        k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    orig_env.update(DBUS_SESSION_BUS_ADDRESS=address, DAB_STATE=str(state_dir))
    bus = await _dbus.connect(address)
    settings: Child | None = None
    original: Child | None = None
    consumer: Child | None = None
    try:
        settings = Child(
            "settings", [sys.executable, "-c", SETTINGS_LAUNCHER, address], env, log_dir
        )
        await settings.wait_line(lambda t: t.startswith("READY"), 30.0)
        t_start = time.monotonic()
        original = Child(
            "original",
            [
                s.original_python,
                "-c",
                ORIGINAL_LAUNCHER,
                str(s.original_dir.resolve()),
                str(n),
                str(s.cells),
            ],
            orig_env,
            log_dir,
        )
        aggregate_owner = await wait_owner(bus, AGGREGATE, 60.0, original)
        # It owns the name before it has found the packs; its tick starts a second after.
        await original.wait_line(lambda t: f"> {n} batteries found." in t, 60.0)
        startup_s = time.monotonic() - t_start
        measured = {"service": original.pid, "settings": settings.pid, **pids}
        if s.consumer:
            consumer = Child(
                "consumer",
                [sys.executable, str(CONSUMER_SCRIPT), "--bus", address],
                env,
                log_dir,
            )
            await consumer.wait_line(lambda t: t.startswith("READY"), 30.0)
            measured["consumer"] = consumer.pid
        pack_owners = []
        for name in sim_names[:n]:
            owner = await name_owner(bus, name)
            if owner is None:
                raise RuntimeError(f"pack {name} is not on the bus")
            pack_owners.append(owner)
        probe = LatencyProbe(pack_owners, aggregate_owner)
        bus.add_message_handler(probe.on_message)
        for rule in probe.rules():
            await _dbus.add_match(bus, rule)
        log(f"  original up in {startup_s:.1f} s; warming up {s.warmup:.0f} s")
        await asyncio.sleep(s.warmup)
        window = CpuWindow(measured)
        signals0 = probe.pack_signals
        consumed0 = await _count(consumer) if consumer is not None else None
        cpu = await window.run(s.duration, original.alive)
        consumed1 = await _count(consumer) if consumer is not None else None
        pack_signals = probe.pack_signals - signals0
        w_start, w_end = window.t0, window.t0 + cpu["wall_s"]
        mem = memory_mb(original.pid)
        await asyncio.sleep(max(0.0, w_end + 2.0 * TICK_S - time.monotonic()))
        latency = probe.report(w_start, w_end)
        bus.remove_message_handler(probe.on_message)
        code = await original.astop()
        problems = log_problems(original)
        consumed: dict[str, Any] | None = None
        if consumer is not None and consumed0 is not None and consumed1 is not None:
            span = consumed1[2] - consumed0[2]
            consumed = {
                "cpu_pct": cpu["consumer"]["cpu_pct"],
                "cpu_pct_schedstat": cpu["consumer"]["cpu_pct_schedstat"],
                "signals_per_s": (consumed1[0] - consumed0[0]) / span,
                "values_per_s": (consumed1[1] - consumed0[1]) / span,
            }
        return {
            "program": "original",
            "original_dir": str(s.original_dir),
            "python": s.original_python,
            "startup_s": startup_s,
            "window": cpu,
            "cpu_pct": cpu["service"]["cpu_pct"],
            "consumer": consumed,
            "peak_rss_mb": mem.get("VmHWM"),
            "rss_end_mb": mem.get("VmRSS"),
            "missed_ticks": None,
            "missed_ticks_total": None,
            "tick_failures": None,
            "missed_ticks_bracket_s": None,
            "pack_current_signals_per_s": pack_signals / cpu["wall_s"],
            "latency": latency,
            "exit_code": code,
            "log_warnings": problems[:20],
            "log_warning_count": len(problems),
        }
    finally:
        for child in (consumer, original, settings):
            if child is not None:
                await child.astop()
        await _dbus.disconnect(bus)


async def _count(child: Child) -> tuple[int, int, float]:
    """Ask a subscriber child (floor or consumer) for its counters."""
    mark = len(child.lines)
    child.signal(signal.SIGUSR1)
    line = await child.wait_line(lambda t: t.startswith("COUNT"), 5.0, start=mark)
    _, signals, values, t = line.split()
    return int(signals), int(values), float(t)


def start_floor(
    n: int, address: str, sim_names: list[str], env: dict[str, str], log_dir: Path
) -> Child:
    return Child(
        "floor",
        [
            sys.executable,
            str(FLOOR_SCRIPT),
            "--bus",
            address,
            "--services",
            ",".join(sim_names[:n]),
        ],
        env,
        log_dir,
    )


async def floor_ready(floor: Child, lib: str, n: int, s: Settings) -> None:
    ready = await floor.wait_line(lambda t: t.startswith("READY"), 30.0)
    if ready.split()[1:] != [str(n), lib]:
        raise RuntimeError(f"floor subscriber reports {ready!r}, expected {n} {lib}")
    await asyncio.sleep(s.floor_warmup)


def floor_result(
    cpu: dict[str, Any], c0: tuple[int, int, float], c1: tuple[int, int, float],
    code: int | None, peak_rss_mb: float | None, *, same_window: bool, library: str,
) -> dict[str, Any]:
    """The floor's figures from its counters and a CPU window that measured it."""
    span = c1[2] - c0[2]
    return {
        "window": cpu,
        "same_window": same_window,
        "library": library,
        "cpu_pct": cpu["floor"]["cpu_pct"],
        "peak_rss_mb": peak_rss_mb,
        "signals_per_s": (c1[0] - c0[0]) / span,
        "values_per_s": (c1[1] - c0[1]) / span,
        "exit_code": code,
    }


async def measure_floor(
    lib: str,
    n: int,
    address: str,
    sim_names: list[str],
    env: dict[str, str],
    pids: dict[str, int],
    log_dir: Path,
    s: Settings,
) -> dict[str, Any]:
    """The floor alone, after the service stopped (``--floor-apart``)."""
    floor = start_floor(n, address, sim_names, env, log_dir)
    try:
        await floor_ready(floor, lib, n, s)
        c0 = await _count(floor)
        window = CpuWindow({"floor": floor.pid, **pids})
        cpu = await window.run(s.duration, floor.alive)
        peak = memory_mb(floor.pid).get("VmHWM")
        c1 = await _count(floor)
        code = await floor.astop()
        return floor_result(cpu, c0, c1, code, peak, same_window=False, library=lib)
    finally:
        await floor.astop()


async def run_one(lib: str, n: int, s: Settings) -> dict[str, Any]:
    """One library and pack count: daemon, simulator, service, then the floor."""
    use_library(lib)
    env = child_env(lib)
    log_dir = s.log_root / f"{lib}-{n}"
    log_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "library": lib,
        "packs": n,
        "cells": s.cells,
        "rate": s.rate,
        "variant": s.variant,
        "source_digest": source_digest(
            s.old_src / "dbus_aggregate_batteries"
            if s.variant == "old" and s.old_src is not None else None
        ),
        "git_head": git_head(),
    }
    if s.variant in TICK_PROBES:
        result["probe_digest"] = hashlib.sha256(TICK_PROBE_SCRIPT.read_bytes()).hexdigest()[:16]
    with tempfile.TemporaryDirectory(prefix="dab-bench-") as tmp:
        work = Path(tmp)
        daemon: Child | None = None
        sim: Child | None = None
        try:
            daemon, address = await start_daemon(work, env, log_dir)
            sim_argv = [
                sys.executable,
                "-m",
                "dbus_aggregate_batteries.sim",
                "--bus",
                address,
                "--batteries",
                str(n),
                "--cells",
                str(s.cells),
                "--all-cells-change",
                "--tick",
                str(1.0 / s.rate),
            ]
            result["sim_command"] = " ".join(sim_argv[1:])
            sim = Child("sim", sim_argv, env, log_dir)
            ready = await sim.wait_line(lambda t: t.startswith("READY"), 120.0)
            names = ready.split()[1:]
            if len(names) < n:
                raise RuntimeError(f"simulator announced {names}, expected {n} packs")
            pids = {"sim": sim.pid, "dbus_daemon": daemon.pid}
            log(f"{lib} x {n} packs: bus {address}")
            if s.with_floor and not s.floor_apart:
                # Measured in the service's window (CpuWindow takes every pid in ``pids``).
                floor = start_floor(n, address, names, env, log_dir)
                try:
                    await floor_ready(floor, lib, n, s)
                    c0 = await _count(floor)
                    result["service"] = await measure_service(
                        lib, n, address, names, env, {**pids, "floor": floor.pid}, work,
                        log_dir, s,
                    )
                    c1 = await _count(floor)
                    peak = memory_mb(floor.pid).get("VmHWM")
                    code = await floor.astop()
                    result["floor"] = floor_result(
                        result["service"]["window"], c0, c1, code, peak,
                        same_window=True, library=lib,
                    )
                finally:
                    await floor.astop()
            else:
                result["service"] = await measure_service(
                    lib, n, address, names, env, pids, work, log_dir, s
                )
            log(f"  service {result['service']['cpu_pct']:.2f} %")
            if s.with_floor and s.floor_apart:
                result["floor"] = await measure_floor(
                    lib, n, address, names, env, pids, log_dir, s
                )
            if not sim.alive():
                raise RuntimeError(f"simulator died:\n{sim.tail()}")
        finally:
            for child in (sim, daemon):
                if child is not None:
                    await child.astop()
    svc, flo = result["service"], result.get("floor")
    result["signals_per_s"] = flo["signals_per_s"] if flo else None
    result["ratio"] = svc["cpu_pct"] / flo["cpu_pct"] if flo and flo["cpu_pct"] > 0 else None
    return result


# ---------------------------------------------------------------------------- report


COLUMNS = (
    ("library", 9),
    ("packs", 5),
    ("rate", 4),
    ("variant", 7),
    ("signals/s", 9),
    ("svc CPU %", 9),
    ("floor CPU %", 11),
    ("ratio", 5),
    ("cons CPU %", 10),
    ("cons sig/s", 10),
    ("peak RSS MB", 11),
    ("missed", 6),
    ("p50 ms", 7),
    ("p99 ms", 7),
)


def _f(value: Any, spec: str) -> str:
    return "--" if value is None else format(value, spec)


def table(results: Sequence[dict[str, Any]]) -> str:
    head = "  ".join(name.rjust(w) for name, w in COLUMNS)
    rows = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            rows.append(f"{r['library']:>9}  {r['packs']:>5}  ERROR: {r['error'].splitlines()[0]}")
            continue
        svc, lat = r["service"], r["service"]["latency"]
        cons = svc.get("consumer") or {}
        cells = (
            r["library"],
            str(r["packs"]),
            _f(r.get("rate"), "g"),
            str(r.get("variant", "")),
            _f(r["signals_per_s"], ".0f"),
            _f(svc["cpu_pct"], ".2f"),
            _f((r.get("floor") or {}).get("cpu_pct"), ".2f"),
            _f(r["ratio"], ".2f"),
            _f(cons.get("cpu_pct"), ".2f"),
            _f(cons.get("signals_per_s"), ".1f"),
            _f(svc["peak_rss_mb"], ".1f"),
            _f(svc["missed_ticks"], "d"),
            _f(lat["p50_ms"], ".0f"),
            _f(lat["p99_ms"], ".0f"),
        )
        rows.append("  ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    return "\n".join(rows)


DETAIL_COLUMNS = (
    ("library", 9),
    ("packs", 5),
    ("svc ns %", 8),
    ("floor ns %", 10),
    ("ratio ns", 8),
    ("svc 1s max", 10),
    ("sim %", 6),
    ("daemon %", 8),
    ("host busy %", 11),
    ("lat min", 7),
    ("lat max", 7),
    ("jitter", 6),
    ("unmatched", 9),
    ("agg gaps", 8),
    ("floor RSS", 9),
    ("svc usr/sys %", 13),
    ("floor usr/sys %", 15),
    ("wake/s svc/floor", 16),
)


def detail_table(results: Sequence[dict[str, Any]]) -> str:
    """Cross-checks: CPU from schedstat (ns), neighbours' CPU, machine load, latency spread."""
    head = "  ".join(name.rjust(w) for name, w in DETAIL_COLUMNS)
    rows = [head, "-" * len(head)]
    for r in results:
        if "error" in r or "floor" not in r:
            continue
        svc, flo = r["service"], r["floor"]
        sw, fw, lat = svc["window"], flo["window"], svc["latency"]
        s_ns = sw["service"]["cpu_pct_schedstat"]
        f_ns = fw["floor"]["cpu_pct_schedstat"]
        cells = (
            r["library"],
            str(r["packs"]),
            _f(s_ns, ".3f"),
            _f(f_ns, ".3f"),
            _f(s_ns / f_ns if f_ns > 0 else None, ".2f"),
            _f(sw["service"]["cpu_1s_max_pct"], ".1f"),
            _f(sw["sim"]["cpu_pct"], ".1f"),
            _f(sw["dbus_daemon"]["cpu_pct"], ".1f"),
            _f(sw["host_busy_pct"], ".0f"),
            _f(lat["min_ms"], ".0f"),
            _f(lat["max_ms"], ".0f"),
            _f(lat["jitter_ms"], ".0f"),
            _f(lat["unmatched"], "d"),
            _f(lat["aggregate_gaps_over_1_5_ticks"], "d"),
            _f(flo["peak_rss_mb"], ".1f"),
            f"{sw['service']['user_pct']:.2f}/{sw['service']['system_pct']:.2f}",
            f"{fw['floor']['user_pct']:.2f}/{fw['floor']['system_pct']:.2f}",
            f"{sw['service']['wakeups_per_s']:.0f}/{fw['floor']['wakeups_per_s']:.0f}",
        )
        rows.append("  ".join(c.rjust(w) for c, (_, w) in zip(cells, DETAIL_COLUMNS, strict=True)))
    return "\n".join(rows)


def _original_of(results: Sequence[dict[str, Any]], r: dict[str, Any]) -> float | None:
    """CPU % of the original program in the same repeat, size and rate as ``r``, if run."""
    for o in results:
        if (
            o.get("variant") == "original"
            and "error" not in o
            and o.get("repeat") == r.get("repeat")
            and o.get("packs") == r.get("packs")
            and o.get("rate") == r.get("rate")
        ):
            cpu: float = o["service"]["cpu_pct"]
            return cpu
    return None


def targets(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 12's goals, for the runs they are about (8 packs, this tree)."""
    out = []
    for r in results:
        if (
            r.get("packs") != TARGET_PACKS
            or r.get("variant", "new") != "new"
            or "error" in r
        ):
            continue
        original = _original_of(results, r)
        if r.get("library") != TARGET_LIB:
            # dbus-next: no worse than the original program at 1 update/s.
            if original is not None and r.get("rate", 1.0) <= 1.0:
                mine = r["service"]["cpu_pct"]
                out.append({
                    f"{r['library']} CPU <= the original's at 1/s (repeat {r.get('repeat')})": {
                        "value": mine / original if original > 0 else None,
                        "ok": mine <= original,
                    }
                })
            continue
        svc = r["service"]
        ratio_target = TARGET_RATIO if r.get("rate", 1.0) <= 1.0 else TARGET_RATIO_FAST
        checks = {
            f"ratio to floor <= {ratio_target} at {r.get('rate', 1.0):g}/s": (
                r["ratio"],
                r["ratio"] is not None and r["ratio"] <= ratio_target,
            ),
            f"peak RSS <= {TARGET_RSS_MB} MB": (
                svc["peak_rss_mb"],
                svc["peak_rss_mb"] <= TARGET_RSS_MB,
            ),
            f"p99 latency <= {TARGET_P99_MS:.0f} ms": (
                svc["latency"]["p99_ms"],
                svc["latency"]["p99_ms"] is not None and svc["latency"]["p99_ms"] <= TARGET_P99_MS,
            ),
        }
        if original is not None and r.get("rate", 1.0) <= 1.0:
            share = svc["cpu_pct"] / original if original > 0 else None
            checks["CPU <= 1/3 of the original at 1/s (value: share)"] = (
                share,
                share is not None and share <= 1.0 / 3.0,
            )
        out.append({k: {"value": v, "ok": ok} for k, (v, ok) in checks.items()})
    return out


def source_digest(package: Path | None = None) -> str:
    """sha256 over the package's sources (this tree's, or ``package``): the code under test is
    edited while benchmarks run, and the digest tells which code a result is from."""
    root = package if package is not None else Path(_dbus.__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_head() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    return ""


def environment() -> dict[str, Any]:
    versions = {}
    for dist in ("dbus-fast", "dbus-next", "dbus-aggregate-batteries"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    daemon_version = ""
    with contextlib.suppress(Exception):
        daemon_version = subprocess.run(
            ["dbus-daemon", "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.splitlines()[0]
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "versions": versions,
        "dbus_daemon": daemon_version,
        "clk_tck": CLK_TCK,
    }


def write_json(path: Path, args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    doc = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "sizes": args.sizes,
            "libs": args.libs,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "cells": args.cells,
            "tick_s": TICK_S,
            "rates": args.rates,
            "variants": args.variants,
            "old_src": str(args.old_src) if args.old_src else None,
            "repeat": args.repeat,
            "summary_interval_s": args.summary_interval,
        },
        "environment": environment(),
        "targets": targets(results),
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------------------- main


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="CPU, memory, missed ticks and latency of the service under simulated load.",
    )
    p.add_argument("--sizes", type=_csv(int), default=[1, 4, 8, 16], help="pack counts")
    p.add_argument("--duration", type=float, default=60.0, help="measuring window, s")
    p.add_argument("--libs", type=_csv(str), default=["dbus_fast", "dbus_next"])
    p.add_argument("--out", type=Path, default=HERE / "results.json")
    p.add_argument("--warmup", type=float, default=5.0, help="s after the aggregate appears")
    p.add_argument("--cells", type=int, default=24, help="cells per pack")
    p.add_argument(
        "--rates", type=_csv(float), default=[1.0],
        help="updates per second of every pack (the simulator's tick rate), e.g. 1,10",
    )
    p.add_argument(
        "--variants", type=_csv(str), default=["new"],
        help="new (this tree), new-pc (this tree with publish.properties_changed: true), "
        "old (the tree given by --old-src), original (the program given by --original), "
        "no-tick and min-tick (this tree with its tick replaced: tick_probe.py)",
    )
    p.add_argument("--old-src", type=Path, default=None,
                   help="src/ directory of another version, for variant old")
    p.add_argument(
        "--original", type=Path, default=None, metavar="DIR",
        help="also run the original program (dbus-python + GLib) from DIR (its dab.py and "
        "modules; see the README) as variant 'original', once per repeat, rate and size, with "
        "the first library's runs",
    )
    p.add_argument("--original-python", default="/usr/bin/python3",
                   help="interpreter for --original (needs dbus-python and gi)")
    p.add_argument("--repeat", type=int, default=1, help="repeat the whole set (interleaved)")
    p.add_argument("--no-floor", action="store_true", help="skip the floor measurement")
    p.add_argument(
        "--floor-apart", action="store_true",
        help="measure the floor after the service stopped, in a window of its own, once per "
        "repeat in the first variant's run (the method before the fourth pass); by default it "
        "runs next to every variant and is measured in the same window",
    )
    p.add_argument("--no-consumer", action="store_true",
                   help="no consumer of the aggregate (benchmarks/consumer_subscriber.py)")
    p.add_argument(
        "--summary-interval",
        type=float,
        default=10.0,
        help="service.summary_interval_s (the missed-tick counter is read from the summary)",
    )
    p.add_argument("--logs", type=Path, default=None, help="keep the children's logs here")
    p.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        help="also run py-spy on the service during the window, raw stacks into this directory "
        "(perturbs the CPU numbers: use for profiling only)",
    )
    p.add_argument(
        "--cprofile",
        type=Path,
        default=None,
        help="run the service under cProfile, one .prof per run into this directory "
        "(inflates the CPU numbers: use for profiling only)",
    )
    return p


async def amain(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, task.cancel)
    for lib in args.libs:
        if lib not in ("dbus_fast", "dbus_next"):
            raise SystemExit(f"unknown library {lib!r}")
    if args.py_spy is not None and shutil.which("py-spy") is None:
        raise SystemExit("--py-spy needs py-spy on PATH (pip install py-spy)")
    for variant in args.variants:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})")
    if "old" in args.variants and args.old_src is None:
        raise SystemExit("variant 'old' needs --old-src")
    if args.original is not None:
        if "original" not in args.variants:
            args.variants = [*args.variants, "original"]
        if not (args.original / "dab.py").is_file():
            raise SystemExit(f"--original {args.original}: no dab.py there")
        probe = subprocess.run(
            [args.original_python, "-c", "import dbus, gi"], capture_output=True, check=False
        )
        if probe.returncode != 0:
            raise SystemExit(
                f"{args.original_python} cannot import dbus and gi (Debian: python3-dbus "
                f"python3-gi): {probe.stderr.decode(errors='replace').strip()}"
            )
    elif "original" in args.variants:
        raise SystemExit("variant 'original' needs --original DIR")
    # Interleaved, so that a slow phase of the shared machine hits every variant alike. The
    # floor is measured in every run's window (with --floor-apart: once per repeat, library,
    # size and rate, after the first variant's run).
    # The original uses neither library: it runs once, with the first library's runs.
    runs = [
        (rep, lib, n, rate, variant)
        for rep in range(args.repeat)
        for lib in args.libs
        for n in args.sizes
        for rate in args.rates
        for variant in args.variants
        if variant != "original" or lib == args.libs[0]
    ]
    per_run_limit = 2.0 * (args.duration + args.warmup) + args.summary_interval + 240.0
    log(f"{len(runs)} run(s), at most {len(runs) * per_run_limit / 60:.0f} min")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dab-bench-logs-") as tmp_logs:
        log_root = args.logs if args.logs is not None else Path(tmp_logs)
        settings = Settings(
            duration=args.duration,
            warmup=args.warmup,
            floor_warmup=min(3.0, args.warmup),
            cells=args.cells,
            summary_interval=args.summary_interval,
            log_root=log_root,
            pyspy_dir=args.py_spy,
            cprofile_dir=args.cprofile,
        )
        for rep, lib, n, rate, variant in runs:
            settings.rate = rate
            settings.variant = variant
            settings.old_src = args.old_src
            settings.original_dir = args.original
            settings.original_python = args.original_python
            settings.floor_apart = args.floor_apart
            settings.with_floor = not args.no_floor and (
                variant == args.variants[0] or not args.floor_apart
            )
            settings.consumer = not args.no_consumer
            try:
                async with asyncio.timeout(per_run_limit):
                    result = await run_one(lib, n, settings)
            except (Exception, TimeoutError) as exc:
                log(f"{lib} x {n} x {rate:g}/s {variant}: FAILED: {exc}")
                result = {
                    "library": lib, "packs": n, "rate": rate, "variant": variant,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            result["repeat"] = rep
            if variant == "original":
                result["library"] = "dbus-python"  # the probe client still used `lib`
            results.append(result)
            write_json(args.out, args, results)
            print(table([result]).splitlines()[-1], flush=True)
    print()
    print(table(results))
    print("\ncross-checks (ns = CPU from /proc/<pid>/task/*/schedstat; % of one core):")
    print(detail_table(results))
    for check in targets(results):
        print(f"\ntargets ({TARGET_PACKS} packs):")
        for name, c in check.items():
            value = c["value"]
            shown = "--" if value is None else f"{value:.2f}"
            print(f"  {'ok  ' if c['ok'] else 'MISS'} {name}: {shown}")
    print(f"\nwritten to {args.out}")
    return 1 if any("error" in r for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted: stopping every child")
        return 130
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
