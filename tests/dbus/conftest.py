"""A private dbus-daemon for the D-Bus tests; never the machine's system or session bus."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dbus_aggregate_batteries._dbus import MessageBus, connect, disconnect


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # pytest ignores a pytestmark in a conftest; mark every test in this directory here so that
    # `-m "not dbus"` skips them all, including modules added later.
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.dbus)


# Self-contained: no include of the system config, so the machine's policy does not matter.
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={directory}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

MakeBus = Callable[[], Awaitable[MessageBus]]


@pytest.fixture(scope="session")
def bus_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a private dbus-daemon for the session and yield its address."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("dbus-daemon is not installed (it is required in CI)")
        pytest.skip("dbus-daemon is not installed")
    directory = tmp_path_factory.mktemp("dbus")
    config = directory / "bus.conf"
    config.write_text(BUS_CONFIG.format(directory=directory))
    proc = subprocess.Popen(
        [daemon, "--nofork", "--print-address", f"--config-file={config}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        if not address:
            pytest.fail(f"dbus-daemon did not print an address (exit code {proc.poll()})")
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


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
