"""Summarise a ``py-spy record --format raw`` file: inclusive and self share per function.

    python benchmarks/pyspy_summary.py /tmp/prof/service-dbus_fast-8.txt [--top 30]

Each line of the raw format is ``frame;frame;...;leaf COUNT`` (outermost frame first).
"Inclusive" counts a sample once for every distinct function on its stack; "self" counts
only the leaf. Line numbers are dropped so that one function is one row.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def _name(frame: str) -> str:
    return _LINE.sub(")", frame.strip())


def summarise(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";")]
        total += n
        for name in set(frames):
            inclusive[name] += n
        self_[frames[-1]] += n
    return total, inclusive, self_


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw", type=Path)
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)
    total, inclusive, self_ = summarise(args.raw)
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples\n\ninclusive %  self %  function")
    for name, n in inclusive.most_common(args.top):
        print(f"{100.0 * n / total:10.1f}  {100.0 * self_[name] / total:6.1f}  {name}")
    print("\nself %  function (leaf frames)")
    for name, n in self_.most_common(args.top):
        print(f"{100.0 * n / total:6.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
