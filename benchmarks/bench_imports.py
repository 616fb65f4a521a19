"""What each import of the ``run`` command costs: resident memory and time.

    python benchmarks/bench_imports.py [--repeat 3] [--no-lean]

Every repeat is a fresh interpreter that imports, in the order the service does, the stages
below and prints VmRSS after each (and the time the import took). ``--no-lean`` leaves out
what the ``run`` command does first (``cli._lean_process``: no ``ssl``, no ``_hashlib``), to show
what that saves. ``DAB_DBUS_LIBRARY`` picks the D-Bus library, as for the service. Figures are
medians over the repeats; MB are 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence

STAGES: list[tuple[str, str]] = [
    ("asyncio", "import asyncio"),
    ("yaml", "import yaml"),
    ("pydantic", "import pydantic"),
    ("D-Bus library", "from dbus_aggregate_batteries.shell import _dbus"),
    ("config (builds the pydantic models)", "import dbus_aggregate_batteries.config"),
    ("core.engine (the pure core)", "import dbus_aggregate_batteries.core.engine"),
    ("shell.app (the rest of the shell)", "import dbus_aggregate_batteries.shell.app"),
]

CHILD = r"""
import json, os, sys, time
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
out = [["interpreter", rss(), 0.0]]
if LEAN:
    from dbus_aggregate_batteries.cli import _lean_process
    _lean_process()
for label, stmt in STAGES:
    t = time.perf_counter()
    exec(stmt)
    out.append([label, rss(), (time.perf_counter() - t) * 1e3])
out.append(["ssl loaded", "ssl" in sys.modules and sys.modules["ssl"] is not None, 0.0])
print(json.dumps(out))
"""


def run_once(lean: bool) -> list[list[object]]:
    code = f"LEAN = {lean!r}\nSTAGES = {STAGES!r}\n{CHILD}"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=os.environ
    )
    result: list[list[object]] = json.loads(out.stdout)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-lean", action="store_true", help="without cli._lean_process")
    args = p.parse_args(argv)
    runs = [run_once(not args.no_lean) for _ in range(args.repeat)]
    print(f"library: {os.environ.get('DAB_DBUS_LIBRARY', 'auto')}, lean: {not args.no_lean}, "
          f"{args.repeat} runs, ssl loaded: {runs[0][-1][1]}")
    print("| import | RSS after, MB | RSS added, MB | ms |")
    print("|---|---|---|---|")
    previous = 0.0
    for i, row in enumerate(runs[0][:-1]):
        rss = statistics.median(float(r[i][1]) for r in runs)  # type: ignore[arg-type]
        ms = statistics.median(float(r[i][2]) for r in runs)  # type: ignore[arg-type]
        tail = f"{rss - previous:.1f} | {ms:.0f}" if i else " | "
        print(f"| {row[0]} | {rss:.1f} | {tail} |")
        previous = rss
    return 0


if __name__ == "__main__":
    sys.exit(main())
