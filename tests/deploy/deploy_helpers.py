"""Helpers shared by the Venus OS packaging tests (tests/deploy)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_BUNDLE = REPO / "deploy" / "build-bundle"
NAME = "dbus-aggregate-batteries"
APP_REL = f"data/apps/{NAME}"
ON_CI = os.environ.get("CI", "").lower() == "true"


def need(tool: str, why: str, package: str | None = None) -> str:
    """Path of ``tool``; skip the test without it, except on CI, where it must be there."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is missing ({why}): apt-get install -y {package or tool}"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def build_bundle(out: Path, cache: Path, *args: str) -> Path:
    """Run deploy/build-bundle; return the tarball it wrote."""
    res = subprocess.run(
        [sys.executable, str(BUILD_BUNDLE), "--out", str(out), "--cache", str(cache), *args],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert res.returncode == 0, f"build-bundle failed:\n{res.stderr[-4000:]}"
    tarball = Path(res.stdout.strip().splitlines()[-1])
    assert tarball.is_file(), res.stdout
    return tarball


def extract(tarball: Path, dest: Path) -> None:
    with tarfile.open(tarball) as tf:
        if hasattr(tarfile, "tar_filter"):  # Python >= 3.11.4 / 3.12
            tf.extractall(dest, filter="tar")
        else:  # pragma: no cover
            tf.extractall(dest)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without PYTHON* and DAB_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAB_"))}
    env.update(extra)
    return env


@dataclass
class Scripts:
    """Runs install.sh / uninstall.sh of the unpacked host bundle in a shell."""

    shell: list[str]
    bundle: Path
    python: Path

    def run(self, script: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.shell, str(script), *args], capture_output=True, text=True,
            env=clean_env(PYTHON=str(self.python)), timeout=120, check=False,
        )

    def install(self, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.bundle / "install.sh", "--root", str(root), *args)

    def uninstall(self, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.bundle / "uninstall.sh", "--root", str(root), *args)


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: mode (type and permissions), size, mtime, inode, link target
    and content hash."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            link = os.readlink(p) if p.is_symlink() else None
            digest = (
                hashlib.sha256(p.read_bytes()).hexdigest()
                if stat.S_ISREG(st.st_mode) else None
            )
            out[str(p.relative_to(root))] = (
                st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, link, digest,
            )
    return out
