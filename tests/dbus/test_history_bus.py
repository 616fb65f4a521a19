"""Bank history on a real bus: published, cleared by /History/Clear, kept across a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from test_service import AGG, get_items, test_config, wait_until

from dbus_aggregate_batteries.core.venus import BUSITEM
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell._dbus import Variant
from dbus_aggregate_batteries.shell.app import Application
from dbus_aggregate_batteries.shell.persist import StateFile
from dbus_aggregate_batteries.sim.model import constant_profile, default_pack_specs
from dbus_aggregate_batteries.sim.services import SimBank

MakeBus = Callable[[], Awaitable[_dbus.MessageBus]]
# A slow clock of our own: 60 s per tick makes the integrals visible at the published precision;
# nothing goes stale or leaves the counter's step bound at that pace.
CFG = {"soc": {"max_gap_s": 120.0}, "fault": {"stale_after_s": 3600.0, "probe_after_s": 1800.0}}
STEP_S = 60.0


@pytest.fixture
async def sim(bus_address: str) -> AsyncIterator[SimBank]:
    bank = SimBank(default_pack_specs(2, layout="mixed"), profile=constant_profile(-20.0))
    await bank.start(bus_address)
    await bank.tick(1.0)
    yield bank
    await bank.stop()


async def set_value(client: _dbus.MessageBus, path: str, variant: Variant) -> int:
    reply = await _dbus.call(client, AGG, path, "SetValue", BUSITEM, "v", (variant,))
    return int(reply[0])


async def test_history_published_cleared_and_restored(
    sim: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    clock = [1000.0]
    app = Application(test_config(**CFG), await make_bus(), state_dir=tmp_path,
                      clock=lambda: clock[0])
    await app.start()
    client = await make_bus()
    try:
        for _ in range(3):
            clock[0] += STEP_S
            result = app.tick()
        current = result.values["/Dc/0/Current"]
        voltage = result.values["/Dc/0/Voltage"]
        assert isinstance(current, float) and current < 0.0
        assert isinstance(voltage, float)
        items = await get_items(client, AGG)
        # Three steps of 60 s at the bank current the sim holds (-20 A): -1.0 Ah drawn.
        drawn = current * 3 * STEP_S / 3600.0
        assert app.engine.history.total_ah_drawn == pytest.approx(drawn)
        assert items["/History/TotalAhDrawn"] == round(drawn, 1) == pytest.approx(-1.0)
        assert items["/History/DischargedEnergy"] == round(-drawn * voltage / 1000.0, 2)
        assert items["/History/ChargedEnergy"] == 0.0
        assert items["/History/MinimumVoltage"] == round(voltage, 2)
        assert items["/History/MaximumCellVoltage"] == items["/System/MaxCellVoltage"]
        assert items["/History/DeepestDischarge"] == items["/ConsumedAmphours"]
        assert items["/History/ChargeCycles"] == 0
        assert items["/History/AverageDischarge"] is None  # no cycle yet
        assert items["/History/CanBeCleared"] == 1 and items["/History/Clear"] == 0
        assert items["/Settings/HasTemperature"] == 1
        text = await _dbus.call(client, AGG, "/History/DischargedEnergy", "GetText")
        assert text[0].endswith("kWh")

        # Only the GUI's value clears; anything else gets velib's answers and changes nothing.
        assert await set_value(client, "/History/Clear", Variant("i", 2)) == 2
        assert await set_value(client, "/History/Clear", Variant("s", "yes")) == 1
        assert await set_value(client, "/History/Clear", Variant("i", 0)) == 0  # no change
        assert app.engine.history.total_ah_drawn == pytest.approx(drawn)
        writes = app.counters.state_writes
        assert await set_value(client, "/History/Clear", Variant("i", 1)) == 0
        app.tick()  # same instant: nothing new integrated
        items = await get_items(client, AGG)
        assert items["/History/TotalAhDrawn"] == 0.0
        assert items["/History/DischargedEnergy"] == 0.0
        assert items["/History/Clear"] == 0  # reads back 0, so the next press is a change again
        # Refilled from the present values by the tick after the clear.
        assert items["/History/MinimumVoltage"] == round(voltage, 2)
        # A clear is saved at once, not when the charge has moved.
        await wait_until(lambda: app.counters.state_writes > writes)
        saved = StateFile(tmp_path).load()
        assert saved is not None and saved.history is not None
        assert saved.history.total_ah_drawn == 0.0

        for _ in range(2):
            clock[0] += STEP_S
            app.tick()
        before = await get_items(client, AGG)
        assert before["/History/TotalAhDrawn"] == pytest.approx(round(current * 2 / 60.0, 1))
    finally:
        await app.shutdown()

    # A new process: the history comes back from the state file and is published at once.
    again = Application(test_config(**CFG), await make_bus(), state_dir=tmp_path,
                        clock=lambda: 50.0)
    await again.start()
    try:
        after = await get_items(client, AGG)
        for path in ("/History/TotalAhDrawn", "/History/DischargedEnergy",
                     "/History/MinimumVoltage", "/History/MaximumCellVoltage",
                     "/History/DeepestDischarge", "/History/ChargeCycles"):
            assert after[path] == before[path], path
    finally:
        await again.shutdown()


async def test_counted_alarm_is_saved_without_charge_movement_but_rate_limited(
    sim: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    clock = [1000.0]
    app = Application(test_config(**CFG), await make_bus(), state_dir=tmp_path,
                      clock=lambda: clock[0])
    await app.start()
    name = sim.pack_names[0]
    state_file = StateFile(tmp_path)

    async def alarm(level: int) -> None:
        sim.packs[0].set_override("/Alarms/LowVoltage", level)
        await sim.tick(0.0)
        await wait_until(lambda: app.state.services[name].values.get("/Alarms/LowVoltage") == level)

    async def settle() -> None:
        # A save runs in a worker thread; give it time to finish before looking.
        await asyncio.sleep(0.1)
        if app._save_task is not None:
            await app._save_task

    try:
        await wait_until(lambda: app.counters.state_writes >= 1)  # the first tick saves
        writes = app.counters.state_writes
        # 61 s later the counter moved 0.34 Ah, less than save_every_fraction of 560 Ah: no save.
        clock[0] += 61.0
        app.tick()
        await settle()
        assert app.counters.state_writes == writes
        # A counted alarm is saved at the next tick.
        await alarm(2)
        clock[0] += 1.0
        app.tick()
        await settle()
        assert app.counters.state_writes == writes + 1
        saved = state_file.load()
        assert saved is not None and saved.history is not None
        assert saved.history.low_voltage_alarms == 1
        # A second alarm within soc.min_save_interval_s waits for the interval.
        await alarm(0)
        app.tick()
        await alarm(2)
        clock[0] += 1.0
        app.tick()
        await settle()
        assert app.engine.history.low_voltage_alarms == 2
        assert app.counters.state_writes == writes + 1
        clock[0] += 60.0
        app.tick()
        await settle()
        assert app.counters.state_writes == writes + 2
        saved = state_file.load()
        assert saved is not None and saved.history is not None
        assert saved.history.low_voltage_alarms == 2
    finally:
        sim.packs[0].clear_override("/Alarms/LowVoltage")
        await app.shutdown()
