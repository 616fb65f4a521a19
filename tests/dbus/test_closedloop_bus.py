"""D-Bus closed loop: our service against the bus form of the simulator, a short scaled charge.

The physics runs 10 simulated seconds per real second and the service runs on a clock scaled
by the same factor, so its one-second tick is one simulated second, as on a real system.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dbus_aggregate_batteries.config import parse_config
from dbus_aggregate_batteries.shell._dbus import MessageBus
from dbus_aggregate_batteries.shell.app import Application
from dbus_aggregate_batteries.sim.closedloop_bus import BusClosedLoop
from dbus_aggregate_batteries.sim.scenario import parse_scenario

MakeBus = Callable[[], Awaitable[MessageBus]]

SPEED = 10.0
VMAX = 3.45

SCENARIO: dict[str, Any] = {
    "name": "bus_short_charge",
    "duration_s": 420,
    "packs": [
        {"soc_pct": 98.0, "weak_cell": {"cell": 5, "capacity_factor": 0.95,
                                         "resistance_factor": 1.5}},
        {"soc_pct": 98.0, "resistance_factor": 1.3},
    ],
    "charge_w": [[0, 6000]],
    "load_w": [[0, 200]],
}


@pytest.mark.timeout(120)
async def test_own_mode_short_charge_no_trip_and_cell_bound(
    bus_address: str, make_bus: MakeBus, tmp_path: Path
) -> None:
    scn = parse_scenario(SCENARIO)
    record = (tmp_path / "truth.jsonl").open("w", encoding="utf-8")
    plant = BusClosedLoop(scn, speed=SPEED, record=record, record_every_s=10.0)
    await plant.start(bus_address)
    cfg = parse_config(
        {
            "limits": {"mode": "own"},
            "discovery": {"expected_count": 2, "rescan_interval_s": 1.0},
            "service": {"summary_interval_s": 0},
        }
    )
    start = time.monotonic()
    app = Application(
        cfg,
        await make_bus(),
        state_dir=tmp_path,
        clock=lambda: start + (time.monotonic() - start) * SPEED,
        today=lambda: scn.date,
        clock_rate=SPEED,
    )
    await app.start()
    runner = asyncio.ensure_future(app.run())
    try:
        figures = await plant.run(asyncio.Event())
    finally:
        app.stopping.set()
        await runner
        await app.shutdown()
        await plant.stop()
        record.close()
    assert plant.reader is not None and plant.reader.changes > 100  # it followed the service
    assert figures.duration_s >= scn.duration_s
    assert figures.trips == 0
    assert figures.max_cell_v >= VMAX - 0.01  # it did charge up to the maximum...
    assert figures.max_cell_v <= VMAX + 0.010  # ...and no further
    lines = (tmp_path / "truth.jsonl").read_text(encoding="utf-8").splitlines()
    truth = [json.loads(line) for line in lines]
    assert len(truth) >= 30
    assert all(t["limits"][0] is not None for t in truth[5:])  # limits came over the bus


def test_closed_loop_cli_runs_a_scenario_file(bus_address: str, tmp_path: Path) -> None:
    # No aggregator on the bus: the charger has no valid limits and must not charge.
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({**SCENARIO, "duration_s": 20}), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "dbus_aggregate_batteries.sim", "--bus", bus_address,
         "--closed-loop", str(path), "--speed", "20", "--record", str(tmp_path / "r.jsonl")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("READY com.victronenergy.battery.ttyUSB0")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["trips"] == 0 and result["charged_kwh"] < 0.001
    assert (tmp_path / "r.jsonl").read_text(encoding="utf-8").count("\n") >= 10
