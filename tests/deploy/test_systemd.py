"""deploy/systemd: the unit for Linux hosts other than Venus OS, and its D-Bus policy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from deploy_helpers import REPO

UNIT = REPO / "deploy/systemd/dbus-aggregate-batteries.service"
POLICY = REPO / "deploy/systemd/dbus-aggregate-batteries.conf"
EXE = "/opt/dbus-aggregate-batteries/bin/dbus-aggregate-batteries"


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_unit_contents() -> None:
    d = directives(UNIT.read_text())
    (start,) = d["Service.ExecStart"]
    assert start.startswith(f"{EXE} run ") and "--bus system" in start
    assert "--state-dir ${STATE_DIRECTORY}" in start
    assert d["Service.ExecStartPre"] == [
        f"{EXE} check-config ${{CONFIGURATION_DIRECTORY}}/config.yaml"]
    assert d["Service.RestartPreventExitStatus"] == ["2"]
    assert "dbus.service" in d["Unit.After"][0]
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictAddressFamilies": "AF_UNIX",
        "CapabilityBoundingSet": "", "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }.items():
        assert d[f"Service.{key}"] == [value], key
    assert d["Install.WantedBy"] == ["multi-user.target"]


def test_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts it (with the venv's command as ExecStart)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).with_name("dbus-aggregate-batteries")
    if not exe.exists():
        pytest.skip(f"{exe} is missing (the package is not installed in this environment)")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(EXE, str(exe)))
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60, check=False, cwd=tmp_path)
    problems = [line for line in res.stderr.splitlines() if UNIT.name in line]
    assert res.returncode == 0 and not problems, res.stderr


def test_dbus_policy() -> None:
    root = ET.parse(POLICY).getroot()
    assert root.tag == "busconfig"
    owns = [a.attrib for p in root.iter("policy") if p.get("user") == "root"
            for a in p.iter("allow")]
    assert {"own_prefix": "com.victronenergy.battery"} in owns
