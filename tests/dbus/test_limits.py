"""Shadow mode, limit reasons and the share rule on a private bus with simulated packs."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_service import AGG, MakeBus, get_items, test_config, wait_until

from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.app import Application
from dbus_aggregate_batteries.sim.model import constant_profile, default_pack_specs
from dbus_aggregate_batteries.sim.services import SimBank

DVCC_PATHS = ("/Info/MaxChargeVoltage", "/Info/MaxChargeCurrent", "/Info/MaxDischargeCurrent")


@pytest.fixture
async def bank(bus_address: str) -> AsyncIterator[SimBank]:
    sim = SimBank(default_pack_specs(2, layout="v2"), profile=constant_profile(30.0))
    await sim.start(bus_address)
    await sim.tick(1.0)
    yield sim
    await sim.stop()


async def _app(make_bus: MakeBus, tmp_path: Path, **extra: Any) -> Application:
    application = Application(test_config(**extra), await make_bus(), state_dir=tmp_path)
    await application.start()
    return application


async def test_shadow_mode_publishes_no_valid_dvcc_limits(
    bank: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    app = await _app(make_bus, tmp_path, publish={"mode": "shadow"})
    client = await make_bus()
    seen: list[dict[str, Any]] = []

    def on_signal(msg: _dbus.Message) -> None:
        if msg.message_type == _dbus.MessageType.SIGNAL and msg.member == "ItemsChanged":
            seen.append(msg.body[0])

    await _dbus.add_match(client, f"type='signal',sender='{app.bus.unique_name}'")
    client.add_message_handler(on_signal)
    try:
        for _ in range(5):
            await bank.tick(1.0)
            await asyncio.sleep(0.05)
            app.tick()
        items = await get_items(client, AGG)
        for path in (*DVCC_PATHS, "/Info/BatteryLowVoltage"):
            assert items[path] is None, path
            # On the wire: velib's invalid value, an empty int32 array, as systemcalc reads it.
            raw = await _dbus.call(client, AGG, path, "GetValue")
            assert raw[0].signature == "ai" and raw[0].value == []
        # The would-be limits, next to the merged values.
        assert isinstance(items["/Shadow/MaxChargeVoltage"], float)
        assert items["/Shadow/MaxChargeCurrent"] == pytest.approx(app.tick().limits.ccl_a, abs=0.05)
        assert isinstance(items["/Dc/0/Voltage"], float) and isinstance(items["/Soc"], float)
        assert items["/Info/ChargeLimitation"]
        # No tick ever signalled a valid DVCC limit.
        for change in seen:
            for path in DVCC_PATHS:
                if path in change:
                    assert _dbus.unwrap(change[path]["Value"]) is None
    finally:
        await app.shutdown()


async def test_reason_paths_name_the_binding_pack(
    bank: SimBank, make_bus: MakeBus, tmp_path: Path, bus_address: str
) -> None:
    app = await _app(make_bus, tmp_path, limits={"bms": {"currents": "min_times_n"}})
    client = await make_bus()
    try:
        low = bank.pack_names[1]
        label = app.state.services[low].label("/CustomName")
        bank.packs[1].set_override("/Info/MaxChargeCurrent", 25.0)
        await bank.tick(1.0)
        await wait_until(lambda: app.state.services[low].values.get("/Info/MaxChargeCurrent")
                         == 25.0)
        app.tick()
        items = await get_items(client, AGG)
        assert items["/Info/MaxChargeCurrent"] == pytest.approx(50.0)
        assert items["/Info/ChargeLimitation"] == f"{label} CCL 25 A x 2 packs (min x N)"
        assert str(items["/Info/ChargeModeDebug"]).endswith(" V")
        assert "(min x N)" in str(items["/Info/DischargeLimitation"])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dbus_aggregate_batteries", "status", "--bus", bus_address,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        head = out.decode().splitlines()[:3]
        assert head[1].startswith("CCL") and head[1].endswith(f"{label} CCL 25 A x 2 packs"
                                                             " (min x N)")
    finally:
        await app.shutdown()


async def test_share_rule_on_the_bus_follows_the_measured_currents(
    bank: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    app = await _app(make_bus, tmp_path, limits={"bms": {"currents": "share"}})
    client = await make_bus()
    try:
        for _ in range(3):
            await bank.tick(1.0)
            await asyncio.sleep(0.05)
            app.tick()
        snaps = [app.state.services[n].values for n in bank.pack_names]
        currents = [float(v["/Dc/0/Current"]) for v in snaps]  # type: ignore[arg-type]
        ccls = [float(v["/Info/MaxChargeCurrent"]) for v in snaps]  # type: ignore[arg-type]
        total = sum(currents)
        assert total > 5.0
        expected = min(c / (i / total) for c, i in zip(ccls, currents, strict=True)) * 0.9
        result = app.tick()
        items = await get_items(client, AGG)
        assert "% share" in str(items["/Info/ChargeLimitation"])
        assert result.limits.ccl_a <= expected + 0.05
        # every pack, at its measured share of the published bank CCL, stays inside its CCL
        for c, i in zip(ccls, currents, strict=True):
            assert result.limits.ccl_a * i / total <= c + 0.05
    finally:
        await app.shutdown()


async def test_log_summary_has_reasons_and_shadow_limits_next_to_the_packs(
    bank: SimBank, make_bus: MakeBus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dbus_aggregate_batteries.shell.app")
    app = await _app(make_bus, tmp_path, publish={"mode": "shadow"},
                     service={"summary_interval_s": 0.1})
    try:
        await asyncio.sleep(0.15)
        result = app.tick()
        messages = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("shadow mode: no limits are offered to DVCC") for m in messages)
        summary = [m for m in messages if m.startswith("packs ") and "healthy" in m][-1]
        assert f"SHADOW, would set CVL {result.limits.cvl_v:.2f} V" in summary
        why = f"why: CVL {result.reasons.cvl.text} | CCL {result.reasons.ccl.text}"
        assert any(m.startswith(why) for m in messages)
        packs_line = [m for m in messages if m.startswith("packs' own BMS limits: ")][-1]
        for name in bank.pack_names:
            label = app.state.services[name].label("/CustomName")
            assert f"{label} CVL " in packs_line
        # changes of the binding constraint are logged only once they held for a few seconds
        assert len([m for m in messages if m.startswith("CCL now set by: ")]) <= 1
    finally:
        await app.shutdown()
