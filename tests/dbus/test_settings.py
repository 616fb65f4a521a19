"""Identity, CustomName and the PV feed-in setting through a simulated localsettings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from test_faults import start_app, tick_until
from test_service import AGG, get_items

from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.persist import StateFile
from dbus_aggregate_batteries.sim.model import constant_profile, default_pack_specs
from dbus_aggregate_batteries.sim.services import SimBank
from dbus_aggregate_batteries.sim.settings import SimSettings

MakeBus = Callable[[], Awaitable[_dbus.MessageBus]]
FEED_IN = "/Settings/CGwacs/OvervoltageFeedIn"
BASE = "/Settings/Devices/aggregatebatteries"


@pytest.fixture
async def settings(bus_address: str) -> AsyncIterator[SimSettings]:
    # Another device already holds battery:99, the instance we are configured for.
    sim = SimSettings({"/Settings/Devices/other/ClassAndVrmInstance": "battery:99"})
    await sim.start(bus_address)
    yield sim
    await sim.stop()


@pytest.fixture
async def bank(bus_address: str) -> AsyncIterator[SimBank]:
    sim = SimBank(default_pack_specs(2), profile=constant_profile(0.0))
    await sim.start(bus_address)
    await sim.tick(1.0)
    yield sim
    await sim.stop()


async def test_instance_is_bumped_and_stable(
    settings: SimSettings, bank: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    client = await make_bus()
    app = await start_app(make_bus, tmp_path)
    try:
        assert settings[f"{BASE}/ClassAndVrmInstance"] == "battery:100"
        assert (await get_items(client, AGG))["/DeviceInstance"] == 100
    finally:
        await app.shutdown()
    again = await start_app(make_bus, tmp_path)
    try:
        assert again.device_instance == 100  # same key, same instance after a restart
    finally:
        await again.shutdown()


async def test_custom_name_is_persisted(
    settings: SimSettings, bank: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    client = await make_bus()
    app = await start_app(make_bus, tmp_path)
    try:
        reply = await _dbus.call(client, AGG, "/CustomName", "SetValue", signature="v",
                                 body=(_dbus.Variant("s", "Garage bank"),))
        assert reply[0] == 0
        rejected = await _dbus.call(client, AGG, "/Soc", "SetValue", signature="v",
                                    body=(_dbus.Variant("d", 5.0),))
        assert rejected[0] == 1
    finally:
        await app.shutdown()  # waits for the settings write
    assert settings[f"{BASE}/CustomName"] == "Garage bank"
    again = await start_app(make_bus, tmp_path)
    try:
        assert (await get_items(client, AGG))["/CustomName"] == "Garage bank"
    finally:
        await again.shutdown()


async def test_without_settings_service_falls_back_to_config(
    bank: SimBank, make_bus: MakeBus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = await start_app(make_bus, tmp_path, publish={"device_instance": 42})
    try:
        assert app.device_instance == 42 and app.service["/DeviceInstance"] == 42
        assert "no localsettings service" in caplog.text
    finally:
        await app.shutdown()


async def test_feed_in_disabled_on_high_cell_and_restored_after_restart(
    settings: SimSettings, bank: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    own = {"limits": {"mode": "own"}}
    app = await start_app(make_bus, tmp_path, **own)
    try:
        assert settings[FEED_IN] == 1
        bank.packs[0].set_override("/Voltages/Cell2", 3.52)
        bank.packs[0].set_override("/System/MaxCellVoltage", 3.52)
        await bank.tick(1.0)
        await tick_until(app, lambda: settings[FEED_IN] == 0)
        assert app.engine.feed_in.saved_value == 1
    finally:
        await app.shutdown()  # the remembered owner value is saved with the state
    # Restart in the middle of the episode; then the cell comes down and the cells balance.
    bank.packs[0].clear_overrides()
    await bank.tick(1.0)
    saved = StateFile(tmp_path).load()
    assert saved is not None and saved.feed_in_saved == 1
    assert settings[FEED_IN] == 0
    again = await start_app(make_bus, tmp_path, **own)
    try:
        await tick_until(again, lambda: settings[FEED_IN] == 1)
        assert again.engine.feed_in.saved_value is None
    finally:
        await again.shutdown()


async def test_feed_in_left_alone_when_owner_has_it_off(
    settings: SimSettings, bank: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    settings.set(FEED_IN, 0)
    app = await start_app(make_bus, tmp_path, limits={"mode": "own"})
    try:
        bank.packs[0].set_override("/System/MaxCellVoltage", 3.52)
        await bank.tick(1.0)
        await tick_until(app, lambda: app.engine.high_cell)
        for _ in range(5):
            app.tick()
        assert settings[FEED_IN] == 0 and app.engine.feed_in.saved_value is None
    finally:
        await app.shutdown()


async def test_localsettings_restart_is_followed(
    bus_address: str, bank: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    # localsettings restarts (a new unique name): the feed-in setting is still followed, and
    # the service's own writes still land.
    first = SimSettings()
    await first.start(bus_address)
    app = await start_app(make_bus, tmp_path, limits={"mode": "own"})
    second = SimSettings({FEED_IN: 0})
    try:
        assert app.settings.feed_in == 1
        await first.stop()
        await second.start(bus_address)
        await tick_until(app, lambda: app.settings.feed_in == 0)  # read again from the new one
        second.set(FEED_IN, 1)  # the owner changes it in the GUI
        await tick_until(app, lambda: app.settings.feed_in == 1)
        bank.packs[0].set_override("/Voltages/Cell2", 3.52)
        bank.packs[0].set_override("/System/MaxCellVoltage", 3.52)
        await bank.tick(1.0)
        await tick_until(app, lambda: second[FEED_IN] == 0)  # our write reached the new one
    finally:
        await app.shutdown()
        await second.stop()
        await first.stop()
