"""deploy/build-bundle: the Venus tarball's wheels and tags, and the layout running on its own."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import platform
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from deploy_helpers import BUILD_BUNDLE, REPO, build_bundle, clean_env

DEPENDENCIES = {"pydantic", "pydantic-core", "pyyaml", "dbus-next"}
ELF_MACHINE = {"armv7l": (1, 40), "aarch64": (2, 183)}  # (EI_CLASS, e_machine): ARM, AArch64


def load_build_bundle() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("build_bundle", str(BUILD_BUNDLE))
    spec = importlib.util.spec_from_loader("build_bundle", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_wheel_tag_check() -> None:
    bb = load_build_bundle()
    fit = bb.tags_fit
    arm = "pydantic_core-2.50.5-cp312-cp312-manylinux2014_armv7l.manylinux_2_17_armv7l.whl"
    assert fit(arm, "armv7l", "3.12")
    assert not fit(arm, "aarch64", "3.12")
    assert not fit(arm, "armv7l", "3.11")
    assert fit("pyyaml-6.0.4-py3-none-any.whl", "armv7l", "3.12")
    assert fit("x-1.0-cp38-abi3-manylinux_2_17_aarch64.whl", "aarch64", "3.12")
    assert not fit("x-1.0-cp313-abi3-manylinux_2_17_aarch64.whl", "aarch64", "3.12")
    assert not fit("x-1.0-cp312-cp312-musllinux_1_2_x86_64.whl", "armv7l", "3.12")
    assert bb.wheel_tags("dbus_next-0.2.3-py3-none-any.whl")[0] == "dbus-next"


def elf_of(data: bytes) -> tuple[int, int]:
    assert data[:4] == b"\x7fELF"
    return data[4], int.from_bytes(data[18:20], "little")


@pytest.mark.timeout(300)
def test_venus_bundle(tmp_path: Path, bundle_cache: Path) -> None:
    tarball = build_bundle(tmp_path, bundle_cache)
    version = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version is not None
    top = f"dbus-aggregate-batteries-{version.group(1)}"
    assert tarball.name == f"{top}-venus.tar.gz"
    with tarfile.open(tarball) as tf:
        members = {m.name: m for m in tf.getmembers()}
        info = tf.extractfile(f"{top}/BUNDLE-INFO").read().decode()  # type: ignore[union-attr]
        wheels = {
            name: tf.extractfile(m).read()  # type: ignore[union-attr]
            for name, m in members.items() if name.endswith(".whl")
        }
        example = tf.extractfile(f"{top}/config.example.yaml").read()  # type: ignore[union-attr]
    assert all(name == top or name.startswith(top + "/") for name in members)
    assert "python=3.12\n" in info and "arches=armv7l aarch64\n" in info
    for script in ("install.sh", "uninstall.sh", "service/run", "service/log/run"):
        assert members[f"{top}/{script}"].mode & 0o111, script
    assert f"{top}/src/dbus_aggregate_batteries/__main__.py" in members
    assert not [n for n in members if "__pycache__" in n or n.endswith(".pyc")]
    assert example == (REPO / "config.example.yaml").read_bytes()

    bb = load_build_bundle()
    for arch in ("armv7l", "aarch64"):
        names = [n.rsplit("/", 1)[1] for n in wheels if f"/wheels/{arch}/" in n]
        dists = {bb.wheel_tags(n)[0]: n for n in names}
        assert dists.keys() >= DEPENDENCIES, (arch, names)
        assert "dbus-fast" not in dists  # the image's own is used
        for name in names:
            assert bb.tags_fit(name, arch, "3.12"), name
            assert "x86_64" not in name, name
        core = dists["pydantic-core"]
        assert "-cp312-cp312-" in core and f"manylinux_2_17_{arch}" in core
        with zipfile.ZipFile(io.BytesIO(wheels[f"{top}/wheels/{arch}/{core}"])) as zf:
            (so,) = [n for n in zf.namelist() if n.endswith(".so")]
            assert so.endswith(".cpython-312-" + (
                "arm-linux-gnueabihf.so" if arch == "armv7l" else "aarch64-linux-gnu.so"))
            assert elf_of(zf.read(so)[:20]) == ELF_MACHINE[arch]
        yaml = dists["pyyaml"]
        with zipfile.ZipFile(io.BytesIO(wheels[f"{top}/wheels/{arch}/{yaml}"])) as zf:
            has_so = any(n.endswith(".so") for n in zf.namelist())
            assert "yaml/__init__.py" in zf.namelist()
        if arch == "armv7l":  # no PyPI wheel: the pure-Python build
            assert yaml.endswith("-py3-none-any.whl") and not has_so
        else:
            assert f"_{arch}" in yaml and has_so


def test_host_bundle_runs_on_its_own(host_bundle_dir: Path, tmp_path: Path) -> None:
    """The bundle's layout (lib/<arch> of unpacked wheels + src) needs no site-packages."""
    arch = platform.machine()
    lib = tmp_path / "lib" / arch
    for wheel in sorted((host_bundle_dir / "wheels" / arch).glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(lib)
    src = host_bundle_dir / "src"
    env = clean_env(PYTHONPATH=f"{lib}:{src}", PYTHONDONTWRITEBYTECODE="1")
    python = [sys.executable, "-S", "-s"]  # no site-packages, no user site

    probe = subprocess.run(
        [*python, "-c", "import sys, dbus_aggregate_batteries.cli, pydantic, pydantic_core, "
         "yaml, dbus_next\nfor m in ('dbus_aggregate_batteries', 'pydantic', 'pydantic_core', "
         "'yaml', 'dbus_next', 'typing_extensions'): print(sys.modules[m].__file__)\n"
         "print('dbus_fast' in sys.modules)"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert probe.returncode == 0, probe.stderr
    *files, fast = probe.stdout.split()
    assert files[0].startswith(str(src))
    assert all(f.startswith(str(lib)) for f in files[1:]), files
    assert fast == "False"

    res = subprocess.run(
        [*python, "-m", "dbus_aggregate_batteries", "check-config",
         str(REPO / "config.example.yaml")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "chemistry: lfp" in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("chemistry: banana\n")
    res = subprocess.run(
        [*python, "-m", "dbus_aggregate_batteries", "check-config", str(bad)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert res.returncode == 2 and "chemistry" in res.stderr
