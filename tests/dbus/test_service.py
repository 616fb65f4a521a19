"""The whole service on a private bus, against simulated packs that are real D-Bus services."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from dbus_aggregate_batteries.config import Config, parse_config
from dbus_aggregate_batteries.core.engine import EngineState, step
from dbus_aggregate_batteries.core.model import AuxSnapshot, pack_from_values
from dbus_aggregate_batteries.core.venus import round_for_path
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.app import Application
from dbus_aggregate_batteries.shell.persist import StateFile
from dbus_aggregate_batteries.sim.model import (
    PackModel,
    PackSpec,
    constant_profile,
    default_pack_specs,
)
from dbus_aggregate_batteries.sim.services import SimBank, pack_service

AGG = "com.victronenergy.battery.aggregate"
MakeBus = Callable[[], Awaitable[_dbus.MessageBus]]


def test_config(**extra: Any) -> Config:
    base: dict[str, Any] = {
        "discovery": {"rescan_interval_s": 0.1},
        "fault": {"startup_window_s": 5.0},
        "publish": {"tick_s": 0.1},
        "service": {"summary_interval_s": 0},
    }
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value}
    return parse_config(base)


test_config.__test__ = False  # type: ignore[attr-defined]


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``pred`` until it holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


class SignalRecorder:
    """Collect the aggregate's signals on a client connection."""

    def __init__(self, bus: _dbus.MessageBus) -> None:
        self.bus = bus
        self.items: list[dict[str, Any]] = []
        self.properties: list[str] = []

    async def start(self, owner: str) -> None:
        await _dbus.add_match(self.bus, f"type='signal',sender='{owner}'")
        self.bus.add_message_handler(self._on)

    def _on(self, msg: _dbus.Message) -> None:
        if msg.message_type != _dbus.MessageType.SIGNAL:
            return
        if msg.member == "ItemsChanged":
            self.items.append(msg.body[0])
        elif msg.member == "PropertiesChanged":
            self.properties.append(msg.path)

    async def barrier(self, owner: str) -> None:
        # Messages from one sender to one receiver stay in order: after a Ping round trip,
        # every signal the service sent before it has been handled here.
        await _dbus.call(self.bus, owner, "/", "Ping", "org.freedesktop.DBus.Peer")


@pytest.fixture
async def sim(bus_address: str) -> AsyncIterator[SimBank]:
    bank = SimBank(default_pack_specs(2, layout="mixed"), profile=constant_profile(-20.0))
    await bank.start(bus_address)
    await bank.tick(1.0)
    yield bank
    await bank.stop()


@pytest.fixture
async def app(make_bus: MakeBus, sim: SimBank, tmp_path: Path) -> AsyncIterator[Application]:
    application = Application(test_config(), await make_bus(), state_dir=tmp_path)
    await application.start()
    yield application
    await application.shutdown()


async def get_items(bus: _dbus.MessageBus, name: str) -> dict[str, Any]:
    reply = await _dbus.call(bus, name, "/", "GetItems")
    return {path: _dbus.unwrap(item["Value"]) for path, item in reply[0].items()}


async def test_published_values_equal_engine_result(
    app: Application, sim: SimBank, make_bus: MakeBus
) -> None:
    client = await make_bus()
    await sim.tick(1.0)
    # Read the packs as an independent client would, and run the engine on that.
    pack_values = [await get_items(client, name) for name in sim.pack_names]
    await wait_until(
        lambda: all(
            app.state.services[n].values.get("/Dc/0/Voltage") == v["/Dc/0/Voltage"]
            for n, v in zip(sim.pack_names, pack_values, strict=True)
        )
    )
    app.tick()
    published = await get_items(client, AGG)
    snaps = [
        pack_from_values(name, app.state.services[name].label("/CustomName"), values)[0]
        for name, values in zip(sim.pack_names, pack_values, strict=True)
    ]
    expected = step(app.cfg, EngineState(), snaps, AuxSnapshot(), now_s=0.0,
                    today=date.today()).values
    for path in ("/Dc/0/Voltage", "/Dc/0/Current", "/Soc", "/InstalledCapacity",
                 "/Info/MaxChargeVoltage", "/Info/MaxChargeCurrent", "/Info/MaxDischargeCurrent",
                 "/System/MaxCellVoltage", "/System/MinVoltageCellId", "/System/NrOfBatteries",
                 "/Voltages/Diff", "/Alarms/HighCellVoltage"):
        assert published[path] == round_for_path(path, expected[path]), path
    assert published["/System/NrOfBatteries"] == 2
    assert published["/Connected"] == 1 and published["/DeviceInstance"] == 99


async def test_root_replies_have_velib_shapes(app: Application, make_bus: MakeBus) -> None:
    client = await make_bus()
    reply = await _dbus.call(client, AGG, "/", "GetValue")
    assert reply[0].signature == "a{sv}"
    assert "Dc/0/Voltage" in reply[0].value and "/Dc/0/Voltage" not in reply[0].value
    text = await _dbus.call(client, AGG, "/", "GetText")
    assert text[0].signature == "a{ss}"
    assert text[0].value["ProductId"] == "0xBA44"
    # Old systemcalc / VeDbusItemImport send calls without an interface header.
    bare = await _dbus.call(client, AGG, "/Info/MaxChargeVoltage", "GetValue", interface=None)
    assert bare[0].signature == "d" and bare[0].value > 40
    items = await _dbus.call(client, AGG, "/", "GetItems", interface=None)
    assert "/Info/MaxChargeCurrent" in items[0]


@pytest.mark.parametrize("properties_changed", [False, True])
async def test_one_items_changed_per_tick_with_only_changes(
    sim: SimBank, make_bus: MakeBus, tmp_path: Path, properties_changed: bool
) -> None:
    cfg = test_config(publish={"properties_changed": properties_changed})
    app = Application(cfg, await make_bus(), state_dir=tmp_path)
    await app.start()
    try:
        await _one_items_changed_per_tick(app, sim, make_bus, properties_changed)
    finally:
        await app.shutdown()


async def _one_items_changed_per_tick(
    app: Application, sim: SimBank, make_bus: MakeBus, properties_changed: bool
) -> None:
    client = await make_bus()
    recorder = SignalRecorder(client)
    owner = app.bus.unique_name
    await recorder.start(owner)
    # Settle: late scan results (the v0.14 pack adds its paths after claiming its name) may
    # still change values; tick until a tick changes nothing.
    async with asyncio.timeout(5):
        while True:
            before = app.counters.published_changes
            app.tick()
            if app.counters.published_changes == before:
                break
            await asyncio.sleep(0.05)
    await recorder.barrier(owner)
    recorder.items.clear()
    recorder.properties.clear()
    app.tick()  # nothing changed on the packs since
    await recorder.barrier(owner)
    assert recorder.items == []
    sim.packs[0].set_override("/Dc/0/Voltage", 51.23)
    await sim.tick(0.0)
    await wait_until(
        lambda: app.state.services[sim.pack_names[0]].values.get("/Dc/0/Voltage") == 51.23
    )
    app.tick()
    await recorder.barrier(owner)
    assert len(recorder.items) == 1
    changed = set(recorder.items[0])
    assert "/Dc/0/Voltage" in changed
    assert "/ProductName" not in changed and "/DeviceInstance" not in changed
    # velib's batched update: by default no PropertiesChanged for the same paths, so every
    # consumer decodes a change once; the option adds them for consumers before Venus v3.0.
    assert sorted(recorder.properties) == (sorted(changed) if properties_changed else [])


async def test_set_value_sends_properties_changed(
    app: Application, make_bus: MakeBus
) -> None:
    # An accepted SetValue keeps velib's lone PropertiesChanged even though ticks send none.
    client = await make_bus()
    recorder = SignalRecorder(client)
    owner = app.bus.unique_name
    await recorder.start(owner)
    reply = await _dbus.call(client, AGG, "/CustomName", "SetValue", signature="v",
                             body=(_dbus.Variant("s", "Shed bank"),))
    assert reply == [0]
    await recorder.barrier(owner)
    assert recorder.properties == ["/CustomName"]
    assert all("/CustomName" not in items for items in recorder.items)


async def test_pack_sending_items_changed_and_properties_changed_is_read_from_both(
    app: Application, make_bus: MakeBus, bus_address: str
) -> None:
    # A driver on velib's batched update sends ItemsChanged, but an accepted SetValue (the GUI
    # renaming the pack) still comes as a lone PropertiesChanged: neither may be lost.
    pack = pack_service(PackModel(PackSpec(name="ttyUSB9", device_instance=10, soc_pct=55.0)))
    pack.signals = "items"
    await pack.start(bus_address)
    try:
        name = pack.name
        await wait_until(lambda: name in app.state.services
                         and app.state.services[name].kind.value == "pack")
        assert pack.service is not None
        assert pack.service.publish({"/Soc": 12.0}) == 1  # one ItemsChanged
        await wait_until(lambda: app.state.services[name].values.get("/Soc") == 12.0)
        client = await make_bus()
        reply = await _dbus.call(client, name, "/CustomName", "SetValue", signature="v",
                                 body=(_dbus.Variant("s", "Shed pack"),))
        assert reply == [0]
        await wait_until(
            lambda: app.state.services[name].values.get("/CustomName") == "Shed pack"
        )
        assert pack.service.publish({"/Soc": 13.0}) == 1
        await wait_until(lambda: app.state.services[name].values.get("/Soc") == 13.0)
    finally:
        await pack.stop()


async def test_pack_joins_and_leaves(app: Application, sim: SimBank) -> None:
    await sim.add_pack(PackSpec(name="ttyUSB7", device_instance=8, soc_pct=60.0))
    await wait_until(lambda: len([s for s in app.state.services.values()
                                  if s.kind.value == "pack"]) == 3)
    await sim.tick(1.0)
    await wait_until(lambda: app.tick().values["/System/NrOfBatteries"] == 3)
    ccl_before = app.tick().limits.ccl_a
    await sim.remove_pack(2)
    await wait_until(lambda: "com.victronenergy.battery.ttyUSB7" not in app.state.services)
    result = app.tick()
    assert result.values["/System/NrOfBatteries"] == 2
    assert result.values["/Alarms/BmsCable"] == 1
    assert result.limits.ccl_a <= ccl_before
    assert app.service["/Info/MaxChargeVoltage"] is not None


async def test_sigterm_saves_state_and_releases_name(
    bus_address: str, sim: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("soc: {source: own}\nfault: {startup_window_s: 5}\n")
    state_dir = tmp_path / "state"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dbus_aggregate_batteries", "run", "--config", str(cfg),
        "--bus", bus_address, "--state-dir", str(state_dir),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    client = await make_bus()
    try:
        async def has_name() -> bool:
            reply = await _dbus.call(client, _dbus.DBUS_SERVICE, _dbus.DBUS_PATH,
                                     "NameHasOwner", _dbus.DBUS_SERVICE, "s", (AGG,))
            return bool(reply[0])

        async with asyncio.timeout(15):
            while not await has_name():
                await asyncio.sleep(0.05)
        # The run command keeps OpenSSL out of the process (cli._lean_process): 5 MB of RSS.
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libssl" not in maps and "libcrypto" not in maps
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode()
    saved = StateFile(state_dir).load()
    assert saved is not None and saved.charge_ah is not None and saved.charge_ah > 0
    assert not await has_name()


async def test_example_config_runs_unchanged_and_status_prints_it(
    sim: SimBank, make_bus: MakeBus, bus_address: str, tmp_path: Path
) -> None:
    from dbus_aggregate_batteries.config import load_config

    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    application = Application(load_config(example), await make_bus(), state_dir=tmp_path)
    await application.start()
    try:
        result = application.tick()
        assert result.values["/System/NrOfBatteries"] == 2
        assert result.limits.cvl_v is not None and result.limits.ccl_a > 0
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dbus_aggregate_batteries", "status", "--bus", bus_address,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        lines = {line.split()[0]: line for line in out.decode().splitlines()}
        assert "/Info/MaxChargeCurrent" in lines and "/DeviceInstance" in lines
        assert lines["/ProductId"].endswith("0xBA44")
    finally:
        await application.shutdown()


def test_demo_runs_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dbus_aggregate_batteries", "demo", "--batteries", "3",
         "--duration", "3"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "120"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "aggregate" in proc.stdout and "USB2" in proc.stdout
    assert "Traceback" not in proc.stderr
