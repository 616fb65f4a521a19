"""Fixtures for the Venus OS packaging tests: bundles built by deploy/build-bundle, shells, a
Python interpreter without site-packages, and a temporary root that looks like Venus OS."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from deploy_helpers import Scripts, build_bundle, extract, need


@pytest.fixture(scope="session")
def bundle_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundle-cache")


@pytest.fixture(scope="session")
def host_bundle(tmp_path_factory: pytest.TempPathFactory, bundle_cache: Path) -> Path:
    """The bundle built for this machine's Python and architecture (``--host-arch``)."""
    return build_bundle(tmp_path_factory.mktemp("host-bundle"), bundle_cache, "--host-arch")


@pytest.fixture(scope="session")
def host_bundle_dir(host_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host bundle unpacked (what the owner gets after ``tar xzf``)."""
    dest = tmp_path_factory.mktemp("host-bundle-unpacked")
    extract(host_bundle, dest)
    (top,) = dest.iterdir()
    return top


@pytest.fixture(scope="session")
def isolated_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``python3`` with no site-packages at all (``-S``): only the stdlib and PYTHONPATH.

    It is the interpreter that built the host bundle, so the wheel tags match; without its
    site-packages, the vendored lib/<arch> must provide every dependency.
    """
    bindir = tmp_path_factory.mktemp("isolated-bin")
    wrapper = bindir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture(params=["busybox", "dash"])
def shell(request: pytest.FixtureRequest) -> list[str]:
    """The shells the scripts must work in: BusyBox ash (as on Venus OS) and dash."""
    if request.param == "busybox":
        return [need("busybox", "Venus OS's /bin/sh is BusyBox ash"), "sh"]
    return [need("dash", "a strict POSIX sh")]


@pytest.fixture
def venus_root(tmp_path: Path) -> Path:
    """A temporary root with the folders Venus OS has: /data, /service, /var/log."""
    root = tmp_path / "root"
    for d in ("data", "service", "var/log"):
        (root / d).mkdir(parents=True)
    return root


@pytest.fixture
def scripts(shell: list[str], host_bundle_dir: Path, isolated_python: Path) -> Scripts:
    return Scripts(shell, host_bundle_dir, isolated_python)
