"""Control benchmark: every shipped closed-loop scenario, in-process, for every limits mode.

    python benchmarks/bench_control.py [--scenario NAME ...] [--mode NAME ...] [--markdown]

Runs our pure engine against the closed-loop physics (``sim.closedloop``), no bus, and prints
one row per scenario and mode: the highest cell voltage and its overshoot above the configured
maximum, BMS trips, seconds in which any pack carried more than its own CCL/DCL (+5 %), time to
full (every pack at or above the scenario's full SoC, true), CVL reversals per minute and
peak-to-peak after settling, own-SoC error against the true SoC (max and at the end; only
where the scenario uses the own counter), energy charged and the final true SoC per pack.

A new limits mode is one entry in ``sim.closedloop.MODES``; ``--mode`` also accepts
``name=YAML`` for a one-off, e.g. ``--mode 'own 300 A={limits: {mode: own, own:
{max_charge_current_a: 300}}}'``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import yaml

from dbus_aggregate_batteries.sim.closedloop import MODES, format_figures, run_inprocess
from dbus_aggregate_batteries.sim.scenario import load_scenario, shipped_scenarios


def table(rows: list[dict[str, str]], markdown: bool) -> str:
    """Rows as an aligned text table or a Markdown table."""
    if not rows:
        return ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    if markdown:
        head = "| " + " | ".join(keys) + " |"
        sep = "| " + " | ".join("---" for _ in keys) + " |"
        body = ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
        return "\n".join([head, sep, *body])
    head = "  ".join(k.ljust(widths[k]) for k in keys)
    body = ["  ".join(r[k].ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join([head, "-" * len(head), *body])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", action="append", help="shipped name or file (default: all)")
    p.add_argument("--mode", action="append", help="mode name, or name=YAML overrides")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    modes: dict[str, dict[str, Any]] = {}
    for item in args.mode or list(MODES):
        if "=" in item:
            name, text = item.split("=", 1)
            modes[name] = yaml.safe_load(text)
        else:
            modes[item] = MODES[item]
    rows = []
    for name in args.scenario or shipped_scenarios():
        scn = load_scenario(name)
        for mode_name, overrides in modes.items():
            started = time.perf_counter()
            fig = run_inprocess(scn, overrides, mode_name=mode_name)
            row = format_figures(fig)
            rows.append(row)
            print(
                f"# {scn.name} / {mode_name}: {fig.duration_s:.0f} simulated s in"
                f" {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    print(table(rows, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
