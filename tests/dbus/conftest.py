"""A private dbus-daemon for the D-Bus tests; never the machine's system or session bus."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dbus_aggregate_batteries.shell._dbus import MessageBus, connect, disconnect
from dbus_aggregate_batteries.sim.privatebus import BUS_CONFIG, private_bus

__all__ = ["BUS_CONFIG"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # pytest ignores a pytestmark in a conftest; mark every test in this directory here so that
    # `-m "not dbus"` skips them all, including modules added later.
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.dbus)

MakeBus = Callable[[], Awaitable[MessageBus]]


@pytest.fixture(scope="session")
def bus_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a private dbus-daemon for the session and yield its address."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("dbus-daemon is not installed (it is required in CI)")
        pytest.skip("dbus-daemon is not installed")
    with private_bus(tmp_path_factory.mktemp("dbus")) as address:
        yield address


@pytest.fixture
async def make_bus(bus_address: str) -> AsyncIterator[MakeBus]:
    """Yield a factory of connections to the private bus; all are closed at teardown."""
    buses: list[MessageBus] = []

    async def make() -> MessageBus:
        bus = await connect(bus_address)
        buses.append(bus)
        return bus

    yield make
    await asyncio.gather(*(disconnect(bus) for bus in buses))
