"""Packaging metadata: the SPDX licence string, and a build without deprecation warnings."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from deploy_helpers import REPO


def test_license_is_an_spdx_string() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    assert any(r.startswith("setuptools>=77") for r in meta["build-system"]["requires"])


def test_wheel_builds_quietly_with_the_license_expression(tmp_path: Path) -> None:
    """What setup.sh runs builds without setuptools' 20-line licence deprecation notice."""
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    output = res.stdout + res.stderr
    assert "project.license` as a TOML table is deprecated" not in output
    assert "SetuptoolsDeprecationWarning" not in output
    (wheel,) = tmp_path.glob("dbus_aggregate_batteries-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(name).decode()
    assert "License-Expression: MIT" in metadata
