"""A private dbus-daemon with its own configuration (tests, the demo, the benchmark).

Never the machine's system or session bus: the configuration is self-contained, so the
machine's policy files do not matter, and the socket lives in a directory of the caller's.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

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
{extra}</busconfig>
"""


class DaemonMissingError(RuntimeError):
    """dbus-daemon is not installed."""


@contextlib.contextmanager
def private_bus(directory: Path, *, limits: Mapping[str, int] | None = None) -> Iterator[str]:
    """Start a dbus-daemon listening in ``directory``; yield its address; stop it after.

    ``limits`` sets the daemon's ``<limit>`` entries (e.g. ``max_match_rules_per_connection``).
    """
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        raise DaemonMissingError(
            "dbus-daemon not found: install Debian's dbus package (sudo apt-get install dbus)"
        )
    conf = directory / "bus.conf"
    extra = "".join(
        f'  <limit name="{key}">{value:d}</limit>\n' for key, value in (limits or {}).items()
    )
    conf.write_text(BUS_CONFIG.format(directory=directory, extra=extra))
    proc = subprocess.Popen(
        [daemon, "--nofork", "--print-address", f"--config-file={conf}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # a Ctrl-C in a terminal is the caller's to handle
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        if not address:
            raise RuntimeError(f"dbus-daemon did not start (exit code {proc.poll()})")
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
