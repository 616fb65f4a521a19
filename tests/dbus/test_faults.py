"""Fault injection on a real bus: packs vanish, freeze, lie, block; the bus itself dies."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BUS_CONFIG
from test_service import AGG, get_items, test_config, wait_until

from dbus_aggregate_batteries.core.health import Health
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.app import Application
from dbus_aggregate_batteries.shell.persist import StateFile
from dbus_aggregate_batteries.shell.state import Kind
from dbus_aggregate_batteries.sim.model import PackSpec, constant_profile, default_pack_specs
from dbus_aggregate_batteries.sim.services import SimBank

MakeBus = Callable[[], Awaitable[_dbus.MessageBus]]
PACK_PATH_NAMES = ("/Dc/0/Voltage", "/Dc/0/Current", "/Soc", "/Voltages/Cell3")


@pytest.fixture
async def sim3(bus_address: str) -> AsyncIterator[SimBank]:
    bank = SimBank(default_pack_specs(3, layout="v2"), profile=constant_profile(-30.0))
    await bank.start(bus_address)
    await bank.tick(1.0)
    yield bank
    await bank.stop()


async def start_app(make_bus: MakeBus, tmp_path: Path, **cfg: Any) -> Application:
    app = Application(test_config(**cfg), await make_bus(), state_dir=tmp_path)
    await app.start()
    return app


def packs_of(app: Application) -> list[str]:
    return [s.name for s in app.state.of_kind(Kind.PACK)]


async def tick_until(app: Application, pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Tick (as the scheduler would) until ``pred`` holds."""
    async with asyncio.timeout(timeout):
        while True:
            app.tick()
            if pred():
                return
            await asyncio.sleep(0.02)


async def test_pack_vanishes_and_returns_twice(
    sim3: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    # min x N: stateless, so the limits are back in the tick the pack is (the share rule
    # would raise them smoothly over seconds).
    app = await start_app(make_bus, tmp_path, limits={"bms": {"currents": "min_times_n"}})
    client = await make_bus()
    try:
        normal = app.tick().limits
        assert normal.ccl_a > 0 and app.tick().values["/System/NrOfBatteries"] == 3
        for _ in range(2):
            spec = sim3.packs[1].spec
            await sim3.remove_pack(1, release_name=False)  # a crashed driver
            gone = spec.service_name
            await wait_until(lambda gone=gone: gone not in app.state.services)  # type: ignore[misc]
            # Within 2 ticks the limits are at the policy value; they never rise while away.
            first = app.tick().limits
            second = app.tick().limits
            assert first.ccl_a <= normal.ccl_a * 2 / 3 + 1e-9
            assert first.dcl_a <= normal.dcl_a * 2 / 3 + 1e-9
            for _ in range(5):
                await sim3.tick(1.0)
                away = app.tick()
                assert away.limits.ccl_a <= second.ccl_a + 1e-9
                assert away.limits.dcl_a <= second.dcl_a + 1e-9
            published = await get_items(client, AGG)
            assert published["/Alarms/BmsCable"] == 1
            assert published["/System/NrOfModulesOffline"] == 1
            assert published["/Info/MaxChargeVoltage"] is not None
            await sim3.add_pack(spec)
            await sim3.tick(1.0)
            await tick_until(app, lambda: app.last_result is not None
                             and app.last_result.values["/System/NrOfBatteries"] == 3)
            back = app.tick()
            assert back.values["/Alarms/BmsCable"] == 0
            assert back.limits.ccl_a == pytest.approx(normal.ccl_a, rel=0.05)
    finally:
        await app.shutdown()


async def test_frozen_pack_goes_frozen(sim3: SimBank, make_bus: MakeBus, tmp_path: Path) -> None:
    stale_after = 2.0
    app = await start_app(make_bus, tmp_path,
                          fault={"stale_after_s": stale_after, "probe_after_s": 1.0})
    try:
        name = sim3.pack_names[0]
        sim3.packs[0].freeze()
        frozen_at = time.monotonic()
        deadline = frozen_at + stale_after + 2 * app.cfg.publish.tick_s + 0.5
        while app.counters.health.get(name) is not Health.FROZEN:
            assert time.monotonic() < deadline, "frozen pack not marked frozen in time"
            await sim3.tick(1.0)  # the other packs keep moving
            app.tick()
            await asyncio.sleep(app.cfg.publish.tick_s)
        result = app.tick()
        assert result.values["/System/NrOfBatteries"] == 2
        assert result.values["/Alarms/BmsCable"] == 1
        sim3.packs[0].unfreeze()
        await sim3.tick(1.0)
        await tick_until(app, lambda: app.counters.health.get(name) is Health.ACTIVE)
    finally:
        await app.shutdown()


@pytest.mark.parametrize("bad", [None, "12.5", -3.0, 1e9, float("nan"), float("inf")])
async def test_bad_values_never_reach_the_bus(
    sim3: SimBank, make_bus: MakeBus, tmp_path: Path, bad: object
) -> None:
    app = await start_app(make_bus, tmp_path)
    client = await make_bus()
    try:
        before = app.tick().values
        pack_bus = sim3.pack_service(0).bus
        assert pack_bus is not None
        for path in PACK_PATH_NAMES:
            # Sent raw, as a misbehaving driver would (export would clean NaN up itself).
            body = {"Value": _variant(bad), "Text": _dbus.Variant("s", str(bad))}
            pack_bus.send(_dbus.Message(
                message_type=_dbus.MessageType.SIGNAL, path=path,
                interface="com.victronenergy.BusItem", member="PropertiesChanged",
                signature="a{sv}", body=[body]))
        await _dbus.call(pack_bus, app.bus.unique_name, "/", "Ping", "org.freedesktop.DBus.Peer")
        result = app.tick()
        published = await get_items(client, AGG)
        for path in ("/Dc/0/Voltage", "/Dc/0/Current", "/Soc", "/System/MinCellVoltage",
                     "/Info/MaxChargeCurrent", "/Info/MaxDischargeCurrent"):
            value = published[path]
            assert value is None or (isinstance(value, float) and math.isfinite(value)), path
        # The bad pack's voltage is treated as missing: it is out of the merge (BMS offline),
        # so nothing it sent can have reached the bank's numbers.
        if bad is not None:
            assert app.counters.bad_values >= 1
        assert published["/Info/MaxChargeCurrent"] <= before["/Info/MaxChargeCurrent"] + 1e-9
        assert result.values["/Soc"] is not None and 0 <= result.values["/Soc"] <= 100
    finally:
        await app.shutdown()


def _variant(value: object) -> Any:
    if value is None:
        return _dbus.Variant("ai", [])
    if isinstance(value, str):
        return _dbus.Variant("s", value)
    return _dbus.Variant("d", value)


@pytest.mark.parametrize("mode", ["bms", "own"])
async def test_pack_blocking_charge_zeroes_ccl(
    sim3: SimBank, make_bus: MakeBus, tmp_path: Path, mode: str
) -> None:
    app = await start_app(make_bus, tmp_path, limits={"mode": mode})
    try:
        assert app.tick().limits.ccl_a > 0
        sim3.packs[2].block_charge(True)
        await sim3.tick(1.0)
        await tick_until(app, lambda: app.last_result is not None
                         and app.last_result.limits.ccl_a == 0.0)
        assert app.service["/Io/AllowToCharge"] == 0
        assert app.service["/Info/MaxChargeCurrent"] == 0.0
        assert (app.service["/Info/MaxDischargeCurrent"] or 0) > 0
        sim3.packs[2].block_charge(False)
        await sim3.tick(1.0)
        await tick_until(app, lambda: app.last_result is not None
                         and app.last_result.limits.ccl_a > 0)
    finally:
        await app.shutdown()


async def test_all_packs_vanish(sim3: SimBank, make_bus: MakeBus, tmp_path: Path) -> None:
    app = await start_app(make_bus, tmp_path, fault={"grace_s": 0.0})
    client = await make_bus()
    try:
        cvl = app.tick().limits.cvl_v
        for _ in range(3):
            await sim3.remove_pack(0)
        await wait_until(lambda: not packs_of(app))
        result = app.tick()
        assert result.limits.ccl_a == 0.0 and result.limits.dcl_a == 0.0
        assert result.limits.cvl_v == cvl  # held
        published = await get_items(client, AGG)
        assert published["/Info/MaxChargeCurrent"] == 0.0
        assert published["/Info/MaxDischargeCurrent"] == 0.0
        assert published["/Alarms/BmsCable"] == 2
        assert published["/Connected"] == 1  # still on the bus
    finally:
        await app.shutdown()


async def test_corrupt_state_file_starts_with_warning(
    sim3: SimBank, make_bus: MakeBus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state.json").write_text('{"version": 1, "charge_ah": 12')
    app = await start_app(make_bus, tmp_path, soc={"source": "own"})
    try:
        assert "unusable" in caplog.text
        assert list(tmp_path.glob("state.json.bad-*"))
        result = app.tick()
        # Re-initialised from the capacity-weighted BMS SoC.
        assert result.values["/Soc"] == pytest.approx(
            sum(p.soc_pct for p in sim3.packs) / 3, abs=0.5)
    finally:
        await app.shutdown()
    assert StateFile(tmp_path).load() is not None


def test_daemon_death_exits_nonzero_with_state_saved(tmp_path: Path) -> None:
    daemon = shutil.which("dbus-daemon")
    assert daemon is not None
    (tmp_path / "bus.conf").write_text(BUS_CONFIG.format(directory=tmp_path, extra=""))
    bus = subprocess.Popen([daemon, "--nofork", "--print-address",
                            f"--config-file={tmp_path / 'bus.conf'}"],
                           stdout=subprocess.PIPE, text=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().strip()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dbus_aggregate_batteries.sim", "--bus", address,
             "--batteries", "2"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env))
        cfg = tmp_path / "config.yaml"
        cfg.write_text("soc: {source: own}\nfault: {startup_window_s: 5}\n")
        log_path = tmp_path / "service.log"
        with log_path.open("wb") as log_file:
            service = subprocess.Popen(
                [sys.executable, "-m", "dbus_aggregate_batteries", "run", "--config", str(cfg),
                 "--bus", address, "--state-dir", str(tmp_path / "state")],
                stdout=log_file, stderr=subprocess.STDOUT, env=env)
            procs.append(service)
            deadline = time.monotonic() + 20
            while b"registered" not in log_path.read_bytes():
                assert time.monotonic() < deadline, log_path.read_text()
                assert service.poll() is None, log_path.read_text()
                time.sleep(0.05)
            bus.kill()
            bus.wait()
            killed = time.monotonic()
            code = service.wait(timeout=10)
            elapsed = time.monotonic() - killed
        assert code != 0, log_path.read_text()
        assert elapsed < 5.0
        saved = StateFile(tmp_path / "state").load()
        assert saved is not None and saved.charge_ah is not None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if bus.poll() is None:
            bus.kill()
            bus.wait()
        if bus.stdout is not None:
            bus.stdout.close()


async def test_pack_joins_late_and_v014_rescan(
    bus_address: str, make_bus: MakeBus, tmp_path: Path
) -> None:
    bank = SimBank([PackSpec(name="ttyUSB3", layout="v014", device_instance=4)],
                   v014_path_delay_s=0.5)
    app = await start_app(make_bus, tmp_path, fault={"startup_window_s": 0.2})
    try:
        assert app.tick().values["/System/NrOfBatteries"] == 0
        await bank.start(bus_address)  # name first, paths half a second later
        await bank.tick(1.0)
        await tick_until(app, lambda: app.last_result is not None
                         and app.last_result.values["/System/NrOfBatteries"] == 1)
        assert (app.last_result.values["/Dc/0/Voltage"] or 0) > 40
    finally:
        await app.shutdown()
        await bank.stop()


async def test_consecutive_tick_failures_exit_nonzero(
    sim3: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    app = await start_app(make_bus, tmp_path, service={"max_consecutive_failures": 3},
                          publish={"tick_s": 0.05})

    def broken() -> Any:
        raise RuntimeError("injected")

    app.tick = broken  # type: ignore[method-assign]
    try:
        async with asyncio.timeout(5):
            code = await app.run()
        assert code == 1
        assert app.counters.tick_failures == 3
        assert app.service["/Connected"] == 1  # still on the bus until the process exits
    finally:
        await app.shutdown()


BLOCKER = """
import asyncio, sys, time
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.app import Application
from dbus_aggregate_batteries.config import parse_config

async def main() -> int:
    cfg = parse_config({"service": {"watchdog_s": 2}, "soc": {"source": "own"},
                        "publish": {"tick_s": 0.5},
                        "fault": {"startup_window_s": 5}})
    app = Application(cfg, await _dbus.connect(sys.argv[1]), state_dir=sys.argv[2])
    await app.start()
    print("started", flush=True)
    app.tick = lambda: time.sleep(60)  # a hung tick blocks the whole event loop
    return await app.run()

sys.exit(asyncio.run(main()))
"""


async def test_watchdog_exits_when_the_loop_is_blocked(
    bus_address: str, sim3: SimBank, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BLOCKER, bus_address, str(tmp_path / "state"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(20):
            assert proc.stdout is not None
            while b"started" not in (line := await proc.stdout.readline()):
                assert line, "the service did not start"
            started = time.monotonic()
            out = await proc.stdout.read()
            code = await proc.wait()
        assert code == 1, out.decode()
        assert time.monotonic() - started < 6
        assert b"no tick completed" in out
        assert StateFile(tmp_path / "state").load() is not None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_returning_pack_keeps_its_block_until_healthy(
    sim3: SimBank, make_bus: MakeBus, tmp_path: Path
) -> None:
    app = await start_app(make_bus, tmp_path)
    try:
        sim3.packs[1].block_charge(True)
        await sim3.tick(1.0)
        await tick_until(app, lambda: app.last_result is not None
                         and app.last_result.limits.ccl_a == 0.0)
        spec = sim3.packs[1].spec
        await sim3.remove_pack(1, release_name=False)
        name = spec.service_name
        await wait_until(lambda: name not in app.state.services)
        assert app.tick().limits.ccl_a == 0.0  # its last known block still holds
        # The driver comes back, but without its BMS yet (no valid voltage): not healthy.
        model = await sim3.add_pack(spec)
        model.set_override("/Dc/0/Voltage", None)
        await sim3.tick(1.0)
        await wait_until(lambda: name in app.state.services
                         and app.state.services[name].kind is Kind.PACK
                         and app.state.services[name].values.get("/Dc/0/Voltage") is None)
        assert app.tick().limits.ccl_a == 0.0
        assert app.counters.health[name] is Health.BMS_OFFLINE
        # Healthy and no longer blocking: charging is allowed again.
        model.clear_override("/Dc/0/Voltage")
        await sim3.tick(1.0)
        await tick_until(app, lambda: app.last_result is not None
                         and app.last_result.limits.ccl_a > 0.0)
        assert app.counters.health[name] is Health.ACTIVE
    finally:
        await app.shutdown()


@contextlib.asynccontextmanager
async def one_pack_process(
    bus_address: str, make_bus: MakeBus, tmp_path: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Application, str]]:
    """One simulated pack in a process of its own (stopped with SIGSTOP to look hung) and a
    service probing it after 1 s of silence (silence alone would take 60 s to count)."""
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dbus_aggregate_batteries.sim", "--bus", bus_address,
        "--batteries", "1", "--tick", "0.2", stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    app = None
    try:
        assert sim.stdout is not None
        async with asyncio.timeout(20):
            assert b"READY" in await sim.stdout.readline()
        app = await start_app(make_bus, tmp_path,
                              fault={"stale_after_s": 60.0, "probe_after_s": 1.0})
        name = packs_of(app)[0]
        assert app.counters.health[name] is Health.ACTIVE
        yield sim, app, name
    finally:
        if app is not None:
            await app.shutdown()
        if sim.returncode is None:
            sim.send_signal(signal.SIGCONT)
            sim.terminate()
            await sim.wait()


async def test_pack_slow_to_answer_one_probe_stays_healthy(
    bus_address: str, make_bus: MakeBus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A driver busy reading a slow BMS misses the first probe's 2 s but answers the retry.
    async with one_pack_process(bus_address, make_bus, tmp_path) as (sim, app, name):
        seen: set[Health] = set()

        def first_probe_missed() -> bool:
            seen.add(app.counters.health[name])
            return "asking once more" in caplog.text

        caplog.set_level("INFO")
        sim.send_signal(signal.SIGSTOP)
        await tick_until(app, first_probe_missed, timeout=10)
        await asyncio.sleep(0.5)  # the retry is waiting for its answer
        sim.send_signal(signal.SIGCONT)
        await tick_until(app, lambda: app.monitor.probes_pending == 0, timeout=10)
        for _ in range(5):
            app.tick()
            seen.add(app.counters.health[name])
            await asyncio.sleep(0.05)
        assert seen == {Health.ACTIVE}
        assert "did not answer a liveness probe" not in caplog.text


async def test_hung_pack_process_fails_the_probe(
    bus_address: str, make_bus: MakeBus, tmp_path: Path
) -> None:
    async with one_pack_process(bus_address, make_bus, tmp_path) as (sim, app, name):
        sim.send_signal(signal.SIGSTOP)  # alive but not answering: a hung driver
        hung_at = time.monotonic()
        await tick_until(app, lambda: app.counters.health.get(name) is Health.STALE,
                         timeout=10)
        assert time.monotonic() - hung_at < 8
        assert app.tick().values["/Alarms/BmsCable"] == 2  # no healthy pack left
        sim.send_signal(signal.SIGCONT)
        await tick_until(app, lambda: app.counters.health.get(name) is Health.ACTIVE,
                         timeout=10)


async def test_short_lived_owners_leave_no_match_rules_behind(tmp_path: Path) -> None:
    # Drivers that claim a name and die at once (a crash loop) must not leave match rules on
    # the daemon: it keeps a departed sender's rules until they are removed and refuses more
    # past its per-connection limit (1024 on Venus OS), after which no pack could be read.
    # Here the limit is 16: the NameOwnerChanged rule plus a few services' worth.
    from dbus_aggregate_batteries.sim.privatebus import private_bus

    with private_bus(tmp_path, limits={"max_match_rules_per_connection": 16}) as address:
        app = Application(test_config(), await _dbus.connect(address), state_dir=tmp_path)
        await app.monitor.start()
        try:
            for k in range(60):
                ghost = await _dbus.connect(address)
                await ghost.request_name(f"com.victronenergy.battery.ttyGhost{k % 7}")
                await _dbus.disconnect(ghost)
                if k % 3 == 0:
                    await asyncio.sleep(0.005)
            await wait_until(
                lambda: not any("Ghost" in n for n in app.state.services), timeout=10.0
            )
            await asyncio.sleep(0.3)  # the removals still in flight reach the daemon
            bank = SimBank(default_pack_specs(2), profile=constant_profile(-5.0))
            await bank.start(address)
            try:
                await bank.tick(1.0)
                await wait_until(lambda: len(packs_of(app)) == 2, timeout=10.0)
                await bank.tick(1.0)
                for name in packs_of(app):
                    svc = app.state.services[name]
                    await wait_until(lambda svc=svc: svc.last_signal_s is not None)  # type: ignore[misc]
            finally:
                await bank.stop()
        finally:
            await app.monitor.stop()
            await _dbus.disconnect(app.bus)
