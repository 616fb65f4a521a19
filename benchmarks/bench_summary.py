"""Medians and spread of repeated ``bench_service.py`` runs, as a Markdown table.

    python benchmarks/bench_summary.py results-a.json [results-b.json ...]

Groups the runs by library, packs, update rate, variant and how the floor was measured. CPU
figures are from schedstat (ns, per thread) in % of one core. Every run's ratio is taken
against the floor measured in its own window (the default), or, for runs made with
``--floor-apart`` (variant shown as "... floor apart"), against the floor measured after it in
the same repeat; the table shows the median and min..max. The original program's runs
(``--original``) use neither library: with a floor in their window their ratio is shown too.
Every other run is also compared with the original's run of the same repeat, size and rate in
the same file ("/ original").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path


def _cell(values: list[float], spec: str = ".2f") -> str:
    if not values:
        return "--"
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, spec)
    return f"{format(med, spec)} ({format(min(values), spec)}..{format(max(values), spec)})"


def summarise(paths: Sequence[Path]) -> str:
    groups: dict[tuple[str, int, float, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for path in paths:
        doc = json.loads(path.read_text())
        floor: float | None = None
        floor_lib = ""
        originals = {
            (r.get("repeat"), r["packs"], r.get("rate", 1.0)): (
                r["service"]["window"]["service"]["cpu_pct_schedstat"]
            )
            for r in doc["results"]
            if r.get("variant") == "original" and "error" not in r
        }
        for r in doc["results"]:
            if "error" in r:
                continue
            apart = False
            if "floor" in r:
                floor = r["floor"]["window"]["floor"]["cpu_pct_schedstat"]
                floor_lib = r["library"]
                apart = not r["floor"].get("same_window", False)
            elif floor is not None and r.get("variant") != "original":
                apart = True  # a later variant of a --floor-apart run (the original has none)
            svc = r["service"]
            cpu = svc["window"]["service"]["cpu_pct_schedstat"]
            variant = r.get("variant", "new") + (" floor apart" if apart else "")
            if "floor" in r and r["floor"].get("library", r["library"]) != r["library"]:
                # The original uses neither library: its floor is that of the run's library.
                variant += f" (floor {r['floor']['library']})"
            key = (r["library"], r["packs"], r.get("rate", 1.0), variant)
            g = groups[key]
            g["service"].append(cpu)
            g["rss"].append(svc["peak_rss_mb"])
            if svc["missed_ticks"] is not None:
                g["missed"].append(svc["missed_ticks"])
            if floor and r["library"] == floor_lib:
                g["floor"].append(floor)
                g["ratio"].append(cpu / floor)
            original = originals.get((r.get("repeat"), r["packs"], r.get("rate", 1.0)))
            if original and r.get("variant") != "original":
                g["vs_original"].append(cpu / original)
            cons = svc.get("consumer")
            if cons:
                g["consumer"].append(cons["cpu_pct_schedstat"] if "cpu_pct_schedstat" in cons
                                     else svc["window"]["consumer"]["cpu_pct_schedstat"])
                g["consumer_signals"].append(cons["signals_per_s"])
    head = (
        "| library | packs | updates/s | variant | runs | service CPU % | floor CPU % "
        "| service / floor | service / original | consumer CPU % | consumer signals/s "
        "| peak RSS MB | missed ticks |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    order = {"new": 0, "new-pc": 1, "old": 2, "original": 3, "min-tick": 4, "no-tick": 5}
    for key in sorted(
        groups, key=lambda k: (k[0], k[1], k[2], order.get(k[3].split()[0], 9), k[3])
    ):
        lib, packs, rate, variant = key
        g = groups[key]
        rows.append(
            f"| {lib} | {packs} | {rate:g} | {variant} | {len(g['service'])} "
            f"| {_cell(g['service'])} | {_cell(g['floor'])} | {_cell(g['ratio'])} "
            f"| {_cell(g['vs_original'])} "
            f"| {_cell(g['consumer'], '.3f')} | {_cell(g['consumer_signals'], '.1f')} "
            f"| {_cell(g['rss'], '.1f')} | {sum(g['missed']) if g['missed'] else '--'} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("json", type=Path, nargs="+")
    args = p.parse_args(argv)
    print(summarise(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
