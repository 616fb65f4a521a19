"""service/run of an installed bundle starts the service as supervise would, on a private bus."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import APP_REL, NAME, Scripts, clean_env, need

from dbus_aggregate_batteries.sim.privatebus import private_bus

# Stand-in for daemontools' softlimit when it is not installed: the same limits with ulimit.
SOFTLIMIT_SHIM = """#!/bin/sh
while [ $# -gt 0 ]; do
    case $1 in
        -d) ulimit -d $(($2 / 1024)); shift 2 ;;
        -s) ulimit -s $(($2 / 1024)); shift 2 ;;
        -a) ulimit -v $(($2 / 1024)); shift 2 ;;
        *) break ;;
    esac
done
exec "$@"
"""


def stop(proc: subprocess.Popen[str]) -> int:
    """SIGTERM, wait (kill after 15 s); the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture
def system_bus(tmp_path: Path) -> Iterator[str]:
    """A private dbus-daemon standing in for the system bus."""
    need("dbus-daemon", "the private test bus", "dbus")
    directory = tmp_path / "bus"
    directory.mkdir()
    with private_bus(directory) as address:
        yield address


class Output:
    """The lines a process prints, read by a thread (select() misses what a buffered reader
    already holds)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def close(self) -> int:
        """Stop the process, let the reader reach the end, close the pipe; the exit status."""
        code = stop(self.proc)
        self._thread.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def until(self, needle: str, timeout_s: float) -> str:
        """Wait for a line that contains ``needle``; return the output so far."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if needle in line:
                return "".join(self.seen)
        pytest.fail(f"no line with {needle!r} within {timeout_s} s; output:\n{''.join(self.seen)}")


@pytest.mark.timeout(120)
def test_service_run_as_supervise_starts_it(
    host_bundle_dir: Path, isolated_python: Path, tmp_path: Path, system_bus: str
) -> None:
    root = tmp_path / "root"
    for d in ("data", "service", "var/log"):
        (root / d).mkdir(parents=True)
    scripts = Scripts([need("dash", "a strict POSIX sh")], host_bundle_dir, isolated_python)
    res = scripts.install(root)
    assert res.returncode == 0, res.stderr

    bindir = tmp_path / "bin"
    bindir.mkdir()
    if shutil.which("softlimit") is None:
        (bindir / "softlimit").write_text(SOFTLIMIT_SHIM)
        (bindir / "softlimit").chmod(0o755)
    # python3 on PATH is the interpreter without site-packages: only the vendored lib/<arch>.
    (bindir / "python3").symlink_to(isolated_python)
    path = os.pathsep.join([str(bindir), "/usr/local/bin", "/usr/bin", "/bin"])

    sim = Output(subprocess.Popen(
        [sys.executable, "-m", "dbus_aggregate_batteries.sim", "--bus", system_bus,
         "--batteries", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ))
    service: Output | None = None
    try:
        sim.until("READY", 30)
        # exactly as supervise does it: cwd /service/<name> (the symlink), then ./run
        service = Output(subprocess.Popen(
            ["./run"], cwd=root / "service" / NAME,
            env=clean_env(PATH=path, DBUS_SYSTEM_BUS_ADDRESS=system_bus),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
        out = service.until("com.victronenergy.battery.aggregate registered", 60)
        assert "2 pack(s)" in out
        assert "running with dbus_next" in service.until("running with", 10)
        stop(service.proc)
        assert "stopped (exit code 0)" in service.until("stopped", 10)
        assert service.close() == 0
        service = None
    finally:
        if service is not None:
            service.close()
        sim.close()
    assert (root / APP_REL / "state").is_dir()
