"""The demo stops everything it started on Ctrl-C, SIGTERM and SIGHUP (a closed terminal)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest


def daemons_using(folder: Path) -> list[int]:
    """PIDs of dbus-daemons whose configuration file lies below ``folder``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if cmdline and cmdline[0].endswith(b"dbus-daemon") and any(
            arg.startswith(b"--config-file=" + str(folder).encode()) for arg in cmdline
        ):
            pids.append(int(entry.name))
    return pids


def wait_for(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def start_demo(tmp: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": str(tmp), "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dbus_aggregate_batteries", "demo", "--batteries", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )


def running(tmp: Path) -> bool:
    return any("registered" in log.read_text() for log in tmp.glob("dab-demo-*/demo.log"))


@pytest.mark.parametrize("when", ["running", "starting"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_demo_cleans_up_on_signal(sig: signal.Signals, when: str) -> None:
    # A short folder of our own: pytest's tmp_path plus the demo's folder can exceed the
    # length dbus-daemon allows for its socket path.
    tmp = Path(tempfile.mkdtemp(prefix="dab-sig-"))
    try:
        check_demo_stops(tmp, sig, when)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_demo_stops(tmp: Path, sig: signal.Signals, when: str) -> None:
    proc = start_demo(tmp)
    try:
        if not wait_for(lambda: daemons_using(tmp), 30):
            proc.kill()
            pytest.fail(f"the demo never started its daemon: {proc.communicate()[1][-2000:]}")
        daemons = daemons_using(tmp)
        if when == "running":
            assert wait_for(lambda: running(tmp), 30), "the service never registered"
            time.sleep(0.3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leaked = daemons_using(tmp)
        for pid in leaked:  # never leave a failed run's daemon behind on the machine
            os.kill(pid, signal.SIGTERM)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130), err
    assert daemons and leaked == [], "the demo left its dbus-daemon running"
    assert list(tmp.iterdir()) == [], "the demo left its temporary folder behind"
