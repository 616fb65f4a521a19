"""deploy/venus/install.sh and uninstall.sh in a temporary root, under BusyBox sh and dash."""

from __future__ import annotations

import os
import platform
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from deploy_helpers import APP_REL, NAME, REPO, Scripts, clean_env, snapshot

MARK = f"# added by {NAME} install.sh (uninstall.sh removes this line)"
BOOT_LINE = (
    f"if [ -d /{APP_REL}/service ]; then ln -sfn /{APP_REL}/service /service/{NAME}; fi  {MARK}"
)
ARCH = platform.machine()
CUSTOM_CONFIG = """\
# my bank: two packs, own SoC counter
chemistry: lfp
discovery:
  expected_count: 2
soc:
  source: own
"""
INVALID_CONFIG = "chemistry: banana\nno_such_key: 1\n"


def ok(res: subprocess.CompletedProcess[str]) -> str:
    """Assert a script run succeeded; return its stdout."""
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def marked_lines(rc_local: Path) -> list[str]:
    return [line for line in rc_local.read_text().splitlines() if MARK in line]


def is_executable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXUSR)


def test_fresh_install(scripts: Scripts, venus_root: Path) -> None:
    out = ok(scripts.install(venus_root))
    app = venus_root / APP_REL
    assert "installed in" in out
    assert (app / "src/dbus_aggregate_batteries/__init__.py").is_file()
    assert any((app / "src").glob("dbus_aggregate_batteries-*.dist-info"))
    lib = app / "lib" / ARCH
    for pkg in ("pydantic", "pydantic_core", "yaml", "dbus_next", "typing_extensions.py"):
        assert (lib / pkg).exists(), pkg
    assert [p.name for p in (app / "lib").iterdir()] == [ARCH]
    assert (lib / "pydantic/__pycache__").is_dir()  # compiled at install time
    for run in (app / "service/run", app / "service/log/run"):
        assert is_executable(run)
        assert run.read_text().startswith("#!/bin/sh\n")
    assert "multilog t s25000 n4 /var/log/dbus-aggregate-batteries" in (
        app / "service/log/run").read_text()
    assert is_executable(app / "uninstall.sh")
    assert (app / "config.yaml").read_bytes() == (REPO / "config.example.yaml").read_bytes()
    assert (app / "state").is_dir()
    assert (venus_root / "var/log" / NAME).is_dir()
    link = venus_root / "service" / NAME
    assert link.is_symlink()
    assert link.resolve() == (app / "service").resolve()
    rc_local = venus_root / "data/rc.local"
    assert is_executable(rc_local)
    assert rc_local.read_text() == f"#!/bin/sh\n{BOOT_LINE}\n"


def test_installed_command_line(scripts: Scripts, venus_root: Path) -> None:
    ok(scripts.install(venus_root))
    app = venus_root / APP_REL
    cli = app / "bin" / NAME
    assert is_executable(cli)
    env = clean_env(PATH=f"{scripts.python.parent}:/usr/bin:/bin")  # python3: no site-packages
    res = subprocess.run([str(cli), "check-config", str(app / "config.yaml")], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert "chemistry: lfp" in res.stdout


def test_second_run_and_dry_run_change_nothing(scripts: Scripts, venus_root: Path) -> None:
    before = snapshot(venus_root)
    out = ok(scripts.install(venus_root, "--dry-run"))
    assert "would sync" in out and "would create" in out
    assert snapshot(venus_root) == before

    ok(scripts.install(venus_root))
    installed = snapshot(venus_root)
    out = ok(scripts.install(venus_root))
    assert "already installed, nothing changed" in out
    assert snapshot(venus_root) == installed
    out = ok(scripts.install(venus_root, "--dry-run"))
    assert "nothing would change" in out
    assert snapshot(venus_root) == installed


def test_upgrade_keeps_config_and_state(
    scripts: Scripts, venus_root: Path, tmp_path: Path
) -> None:
    ok(scripts.install(venus_root))
    app = venus_root / APP_REL
    (app / "config.yaml").write_text(CUSTOM_CONFIG)
    (app / "state/soc.json").write_text('{"soc": 55.5}\n')
    (app / "service/down").write_text("")  # the owner's (autostart off): kept
    (app / "service/supervise").mkdir()  # daemontools' own: kept
    (app / "service/supervise/status").write_bytes(b"\0" * 18)
    kept = {p: (app / p).stat().st_mtime_ns for p in (
        "config.yaml", "state/soc.json", "service/down", "service/supervise/status")}
    # What an older version left: a changed module, a dropped module and a stale dependency.
    (app / "src/dbus_aggregate_batteries/core/soc.py").write_text("# old version\n")
    (app / "src/dbus_aggregate_batteries/old_module.py").write_text("x = 1\n")
    (app / "lib" / ARCH / "stale_dep/sub").mkdir(parents=True)
    (app / "lib" / ARCH / "stale_dep/sub/__init__.py").write_text("")
    (app / "lib/armv7l").mkdir()  # another architecture's tree
    (app / "lib/armv7l/thing.py").write_text("")
    (app / "uninstall.sh").chmod(0o644)

    # the new release: the same bundle with one module changed
    new = tmp_path / "new-bundle"
    shutil.copytree(scripts.bundle, new, symlinks=True)
    changed = new / "src/dbus_aggregate_batteries/core/charge.py"
    changed.write_text(changed.read_text() + "\n# 0.1.1\n")
    res = scripts.run(new / "install.sh", "--root", str(venus_root), "--verbose")
    out = ok(res)
    assert f"config: {app}/config.yaml is valid" in out
    assert "update " in out and "remove " in out
    assert (app / "config.yaml").read_text() == CUSTOM_CONFIG
    assert (app / "state/soc.json").read_text() == '{"soc": 55.5}\n'
    for p, mtime in kept.items():
        assert (app / p).stat().st_mtime_ns == mtime, p
    src = app / "src/dbus_aggregate_batteries"
    assert (src / "core/soc.py").read_bytes() == (
        scripts.bundle / "src/dbus_aggregate_batteries/core/soc.py").read_bytes()
    assert (src / "core/charge.py").read_bytes() == changed.read_bytes()
    assert not (src / "old_module.py").exists()
    assert not (app / "lib" / ARCH / "stale_dep").exists()
    assert not (app / "lib/armv7l").exists()
    assert is_executable(app / "uninstall.sh")
    assert len(marked_lines(venus_root / "data/rc.local")) == 1

    installed = snapshot(venus_root)
    out = ok(scripts.run(new / "install.sh", "--root", str(venus_root)))
    assert "nothing changed" in out
    assert snapshot(venus_root) == installed


def test_rc_local_other_lines_kept(scripts: Scripts, venus_root: Path) -> None:
    rc_local = venus_root / "data/rc.local"
    mine = "#!/bin/bash\n# my own boot hooks\n/data/apps/other/enable.sh --boot\n\necho done"
    rc_local.write_text(mine)  # no final newline, and not executable
    rc_local.chmod(0o644)
    out = ok(scripts.install(venus_root))
    assert "chmod +x" in out
    assert is_executable(rc_local)
    assert rc_local.read_text() == mine + "\n" + BOOT_LINE + "\n"

    ok(scripts.install(venus_root))
    assert rc_local.read_text() == mine + "\n" + BOOT_LINE + "\n"

    out = ok(scripts.uninstall(venus_root))
    assert rc_local.read_text() == mine + "\n"
    assert is_executable(rc_local)


def test_rc_local_exit_and_stale_lines(scripts: Scripts, venus_root: Path) -> None:
    rc_local = venus_root / "data/rc.local"
    rc_local.write_text(
        "#!/bin/sh\n"
        f"ln -s /data/old/service /service/{NAME}  {MARK}\n"
        "touch /tmp/booted\n"
        f"ln -s /data/older/service /service/{NAME}  {MARK}\n"
        "exit 0\n"
    )
    rc_local.chmod(0o755)
    ok(scripts.install(venus_root))
    assert rc_local.read_text() == f"#!/bin/sh\ntouch /tmp/booted\n{BOOT_LINE}\nexit 0\n"


def test_invalid_config_stops_the_upgrade(scripts: Scripts, venus_root: Path) -> None:
    ok(scripts.install(venus_root))
    app = venus_root / APP_REL
    (app / "config.yaml").write_text(INVALID_CONFIG)
    (app / "src/dbus_aggregate_batteries/core/soc.py").write_text("# old version\n")
    before = snapshot(venus_root)
    for args in ((), ("--dry-run",)):
        res = scripts.install(venus_root, *args)
        assert res.returncode != 0
        assert "configuration is invalid" in res.stderr
        assert "chemistry" in res.stderr and "no_such_key" in res.stderr
        assert "nothing was changed" in res.stderr
        assert snapshot(venus_root) == before


def test_uninstall_keeps_data_then_purge_leaves_no_trace(
    scripts: Scripts, venus_root: Path
) -> None:
    empty = snapshot(venus_root)
    ok(scripts.install(venus_root))
    app = venus_root / APP_REL
    (app / "state/soc.json").write_text("{}\n")
    installed = snapshot(venus_root)

    out = ok(scripts.uninstall(venus_root, "--dry-run"))
    assert f"would remove {venus_root}/service/{NAME}" in out
    assert snapshot(venus_root) == installed

    out = ok(scripts.uninstall(venus_root))
    assert "uninstalled" in out and "--purge" in out
    assert not (venus_root / "service" / NAME).exists()
    assert not (venus_root / "service" / NAME).is_symlink()
    assert not (venus_root / "data/rc.local").exists()  # it held only our line
    assert (app / "config.yaml").is_file() and (app / "state/soc.json").is_file()

    ok(scripts.uninstall(venus_root, "--purge"))
    assert snapshot(venus_root).keys() == empty.keys()
    out = ok(scripts.uninstall(venus_root, "--purge"))
    assert "not installed" in out


def test_purge_keeps_other_rc_local_lines_and_apps(scripts: Scripts, venus_root: Path) -> None:
    rc_local = venus_root / "data/rc.local"
    rc_local.write_text("#!/bin/sh\nsh /data/apps/dbus-serialbattery/enable.sh --boot\n")
    rc_local.chmod(0o755)
    other = venus_root / "data/apps/dbus-serialbattery/enable.sh"
    other.parent.mkdir(parents=True)
    other.write_text("echo\n")
    before = snapshot(venus_root)
    ok(scripts.install(venus_root))
    ok(scripts.uninstall(venus_root, "--purge"))
    after = snapshot(venus_root)
    assert after.keys() == before.keys()
    assert rc_local.read_text() == "#!/bin/sh\nsh /data/apps/dbus-serialbattery/enable.sh --boot\n"
    assert is_executable(rc_local)
    assert after["data/apps/dbus-serialbattery/enable.sh"] == (
        before["data/apps/dbus-serialbattery/enable.sh"])


def test_install_from_the_tarball(
    scripts: Scripts, venus_root: Path, host_bundle: Path, tmp_path: Path
) -> None:
    script = tmp_path / "install.sh"  # e.g. fetched alone: the tarball has the rest
    shutil.copy(scripts.bundle / "install.sh", script)
    ok(scripts.run(script, "--root", str(venus_root), str(host_bundle)))
    assert (venus_root / APP_REL / "lib" / ARCH / "pydantic_core").is_dir()


def test_refusals(scripts: Scripts, venus_root: Path, tmp_path: Path) -> None:
    not_venus = tmp_path / "plain"
    not_venus.mkdir()
    res = scripts.install(not_venus)
    assert res.returncode != 0 and "not Venus OS" in res.stderr
    assert list(not_venus.iterdir()) == []

    old = tmp_path / "py-bundle"
    shutil.copytree(scripts.bundle, old, symlinks=True)
    info = old / "BUNDLE-INFO"
    info.write_text(info.read_text().replace("python=", "python=3.99\nold_python="))
    res = scripts.run(old / "install.sh", "--root", str(venus_root))
    assert res.returncode != 0 and "for Python 3.99" in res.stderr
    assert not (venus_root / "data/apps").exists()

    ok(scripts.install(venus_root))
    res = scripts.run(venus_root / APP_REL / "uninstall.sh", "--bogus")
    assert res.returncode != 0 and "unknown argument" in res.stderr
    res = scripts.install(venus_root, "--bogus")
    assert res.returncode != 0 and "unknown option" in res.stderr


def test_help(scripts: Scripts) -> None:
    assert "--dry-run" in ok(scripts.run(scripts.bundle / "install.sh", "--help"))
    assert "--purge" in ok(scripts.run(scripts.bundle / "uninstall.sh", "--help"))


def test_scripts_are_posix_sh() -> None:
    """No bashisms that dash would also accept silently (checkbashisms, when installed)."""
    tool = shutil.which("checkbashisms")
    if tool is None:
        pytest.skip("checkbashisms (Debian's devscripts) is not installed")
    venus = REPO / "deploy/venus"
    for script in ("install.sh", "uninstall.sh", "service/run", "service/log/run",
                   f"bin/{NAME}", "test-on-armhf-inside.sh"):
        res = os.spawnv(os.P_WAIT, tool, [tool, str(venus / script)])
        assert res == 0, script
