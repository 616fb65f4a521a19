"""A quiet bank is a healthy bank; a frozen pack in a moving bank is caught (issue 9, point 1).

The service runs in-process on a private bus against simulated packs that publish at a real
BMS's resolution; its clock is injected and moved one second per tick, so half an hour of
simulated time takes a few seconds.  Default thresholds: stale_after_s 30, probe_after_s 10,
frozen_current_a 5.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_service import AGG, get_items, test_config

from dbus_aggregate_batteries.core.engine import StepResult
from dbus_aggregate_batteries.core.health import Health
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.app import Application
from dbus_aggregate_batteries.sim.model import PackSpec, constant_profile
from dbus_aggregate_batteries.sim.services import SimBank

MakeBus = Callable[[], Awaitable[_dbus.MessageBus]]
STALE_AFTER_S = 30


class SimClock:
    """Monotonic time plus whatever the test has skipped ahead."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped


def quiet_specs(**kw: Any) -> list[PackSpec]:
    """Three packs at a BMS's resolution: v2, v0.14 (signals nothing when steady), v2 jittering."""
    return [
        PackSpec(name="ttyUSB0", device_instance=1, quantized=True, **kw),
        PackSpec(name="ttyUSB1", device_instance=2, quantized=True, layout="v014", **kw),
        PackSpec(name="ttyUSB2", device_instance=3, quantized=True, cell_jitter_v=0.001, **kw),
    ]


@pytest.fixture
async def clock() -> SimClock:
    return SimClock()


async def started(
    sim: SimBank, bus_address: str, make_bus: MakeBus, tmp_path: Path, clock: SimClock,
    **cfg: Any,
) -> Application:
    await sim.start(bus_address)
    await sim.tick(1.0)
    app = Application(test_config(publish={"tick_s": 1.0}, **cfg), await make_bus(),
                      state_dir=tmp_path, clock=clock)
    await app.start()
    await sim.sync(app.bus.unique_name)
    return app


async def second(app: Application, sim: SimBank, clock: SimClock, *, sync: bool = False
                 ) -> StepResult:
    """One simulated second: the bank moves, the service ticks, probes get their answers."""
    clock.skipped += 1.0
    await sim.tick(1.0)
    if sync:
        await sim.sync(app.bus.unique_name)
    result = app.tick()
    async with asyncio.timeout(5):
        while app.monitor.probes_pending:
            await asyncio.sleep(0.001)
    return result


@pytest.fixture
async def sims() -> AsyncIterator[list[SimBank]]:
    banks: list[SimBank] = []
    yield banks
    for bank in banks:
        await bank.stop()


@pytest.mark.parametrize("scene", ["rest", "float"])
async def test_quiet_bank_for_30_minutes_raises_nothing(
    scene: str, bus_address: str, make_bus: MakeBus, tmp_path: Path, clock: SimClock,
    sims: list[SimBank],
) -> None:
    if scene == "rest":
        # Night, no load: nothing flows, every value steady (one cell flickers by 1 mV).
        sim = SimBank(quiet_specs(), profile=constant_profile(0.0), loads=constant_profile(0.0))
        cfg: dict[str, Any] = {}
    else:
        # Float at the top: the charger holds the voltage, PV covers the AC loads through the
        # Multi (20 A in from the MPPT, 19.7 A out through the Multi), 0.1 A into each pack.
        sim = SimBank(quiet_specs(soc_pct=97.0, charge_mode="Float", float_cell_v=3.40),
                      victron=True, profile=constant_profile(0.3),
                      loads=constant_profile(0.0), solar=constant_profile(20.0))
        cfg = {"current": {"source": "victron"}}
    sims.append(sim)
    app = await started(sim, bus_address, make_bus, tmp_path, clock, **cfg)
    client = await make_bus()
    try:
        first = app.tick()
        ccl, dcl = first.limits.ccl_a, first.limits.dcl_a
        assert ccl > 0 and dcl > 0
        for k in range(1, 1801):
            result = await second(app, sim, clock)
            assert set(app.counters.health.values()) == {Health.ACTIVE}, k
            assert result.values["/Alarms/BmsCable"] == 0, k
            assert result.values["/System/NrOfModulesOnline"] == 3, k
            assert (result.limits.ccl_a, result.limits.dcl_a) == (ccl, dcl), k
            if k % 300 == 0:  # what a GUI or systemcalc reads
                published = await get_items(client, AGG)
                assert published["/Alarms/BmsCable"] == 0
                assert published["/System/NrOfModulesOnline"] == 3
                assert published["/System/NrOfModulesOffline"] == 0
                assert published["/Info/MaxChargeCurrent"] == ccl
                assert published["/Info/MaxDischargeCurrent"] == dcl
        # Probes kept the quiet packs alive; at rest the v0.14 pack sent nothing at all.
        v014 = app.state.services["com.victronenergy.battery.ttyUSB1"]
        assert v014.last_answer_s is not None and v014.last_answer_s > clock() - 15
        if scene == "rest":
            assert v014.last_signal_s is None
        assert app.counters.ticks >= 1801
    finally:
        await app.shutdown()


async def test_pack_frozen_while_the_others_carry_current_is_caught(
    bus_address: str, make_bus: MakeBus, tmp_path: Path, clock: SimClock,
    sims: list[SimBank],
) -> None:
    sim = SimBank(quiet_specs(), profile=constant_profile(0.0), loads=constant_profile(0.0))
    sims.append(sim)
    app = await started(sim, bus_address, make_bus, tmp_path, clock)
    client = await make_bus()
    frozen = sim.pack_names[0]
    try:
        # Frozen at rest it cannot be told from a quiet pack: no alarm, by design.
        sim.packs[0].freeze()
        for _ in range(120):
            result = await second(app, sim, clock)
        assert result.values["/Alarms/BmsCable"] == 0
        # The load comes on: the other two now carry 10 A each, the frozen one still shows 0.
        sim.bank.profile = constant_profile(-30.0)
        result = await second(app, sim, clock, sync=True)
        ticks = 1
        while app.counters.health[frozen] is not Health.FROZEN:
            assert ticks <= STALE_AFTER_S + 1, "frozen pack not caught in stale_after_s + 1 tick"
            result = await second(app, sim, clock, sync=True)
            ticks += 1
        assert ticks >= STALE_AFTER_S - 1  # not before its 30 s either
        assert [app.counters.health[n] for n in sim.pack_names[1:]] == [Health.ACTIVE] * 2
        assert result.values["/Alarms/BmsCable"] == 1
        published = await get_items(client, AGG)
        assert published["/System/NrOfModulesOnline"] == 2
        assert published["/System/NrOfModulesOffline"] == 1
        # Its values move again: healthy at the next tick.
        sim.packs[0].unfreeze()
        await second(app, sim, clock, sync=True)
        assert app.counters.health[frozen] is Health.ACTIVE
    finally:
        await app.shutdown()


async def test_all_packs_frozen_while_the_multi_charges_50_a_are_caught(
    bus_address: str, make_bus: MakeBus, tmp_path: Path, clock: SimClock,
    sims: list[SimBank],
) -> None:
    sim = SimBank(quiet_specs(), victron=True, profile=constant_profile(0.0),
                  loads=constant_profile(0.0), solar=constant_profile(0.0))
    sims.append(sim)
    app = await started(sim, bus_address, make_bus, tmp_path, clock,
                        current={"source": "victron"})
    client = await make_bus()
    try:
        for _ in range(60):
            assert (await second(app, sim, clock)).values["/Alarms/BmsCable"] == 0
        for model in sim.packs:
            model.freeze()
        sim.bank.profile = constant_profile(50.0)
        result = await second(app, sim, clock, sync=True)
        assert sim.multi.current_a == 50.0
        ticks = 1
        while set(app.counters.health.values()) != {Health.FROZEN}:
            assert ticks <= STALE_AFTER_S + 1, "frozen bank not caught in stale_after_s + 1 tick"
            result = await second(app, sim, clock, sync=True)
            ticks += 1
        assert result.limits.ccl_a == 0.0
        published = await get_items(client, AGG)
        assert published["/Alarms/BmsCable"] == 2
        assert published["/System/NrOfModulesOnline"] == 0
        assert published["/Info/MaxChargeCurrent"] == 0.0
    finally:
        await app.shutdown()


async def test_quantized_pack_at_rest_sends_nothing_and_flickers_under_load(
    bus_address: str, make_bus: MakeBus, sims: list[SimBank]
) -> None:
    from test_sim import Recorder

    sim = SimBank([PackSpec(name="ttyUSB5", layout="v014", quantized=True)],
                  profile=constant_profile(0.0), loads=constant_profile(0.0))
    sims.append(sim)
    await sim.start(bus_address)
    client = await make_bus()
    async with Recorder(client, sim.pack_names[0]) as pack:
        for _ in range(60):
            await sim.tick(1.0)
        assert await pack.sync() == []  # a minute at rest: not one signal
        sim.bank.profile = constant_profile(-20.0)
        currents = set()
        for _ in range(3):
            await sim.tick(1.0)
            currents |= {_dbus.unwrap(m.body[0]["Value"]) for m in await pack.sync()
                         if m.path == "/Dc/0/Current"}
        assert currents == {-20.1, -20.0, -19.9}
