"""Hostile configuration files end fast, with exit 2 and a short message naming the limit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dbus_aggregate_batteries.cli import main
from dbus_aggregate_batteries.config import (
    MAX_FILE_BYTES,
    MAX_LIST,
    MAX_NODES,
    MAX_PROBLEMS,
    MAX_TEXT,
    ConfigError,
    load_config,
)

# No timing assertions beyond a generous sanity bound: each case takes milliseconds.
SANITY_S = 5.0


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    start = time.monotonic()
    code = main(["check-config", str(path)])
    assert time.monotonic() - start < SANITY_S
    out, err = capsys.readouterr()
    return code, out, err


def test_50_mb_product_name_is_refused_by_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.yaml"
    with path.open("w") as f:
        f.write("publish:\n  product_name: ")
        f.write("x" * 50_000_000)
        f.write("\n")
    code, out, err = check_config(path, capsys)
    assert code == 2 and out == ""
    assert str(path) in err and f"larger than {MAX_FILE_BYTES // 1024} KiB" in err
    assert len(err) < 500


def test_a_million_unknown_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("".join(f"k{i}: 1\n" for i in range(1_000_000)))
    code, out, err = check_config(path, capsys)
    assert code == 2 and out == "" and "larger than" in err and len(err) < 500


def test_many_unknown_keys_within_the_size_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.yaml"
    text = "".join(f"k{i}: 1\n" for i in range(25_000))
    assert len(text) <= MAX_FILE_BYTES
    path.write_text(text)
    code, _, err = check_config(path, capsys)
    assert code == 2 and f"more than {MAX_NODES} values" in err and "line " in err
    assert len(err.splitlines()) <= 3


def test_unknown_keys_below_the_node_limit_print_a_bounded_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("".join(f"k{i}: 1\n" for i in range(500)))
    code, _, err = check_config(path, capsys)
    assert code == 2
    assert "k0: unknown key" in err and f"first {MAX_PROBLEMS} shown" in err
    assert "500 problems" in err
    assert len(err.splitlines()) <= MAX_PROBLEMS + 3


def test_a_huge_unknown_key_is_shortened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "key.yaml"
    path.write_text("publish:\n  ? " + "k" * 200_000 + "\n  : 1\n")
    code, _, err = check_config(path, capsys)
    assert code == 2 and "publish.'kkkk" in err and "unknown key" in err
    assert len(err) < 500


@pytest.mark.parametrize(
    ("yaml_text", "key", "limit"),
    [
        ("publish:\n  product_name: " + "p" * 100_000, "publish.product_name", f"{MAX_TEXT}"),
        ("publish:\n  custom_name: " + "c" * 33, "publish.custom_name", "at most 32"),
        ('publish:\n  custom_name: "bad\\x1b[2J"', "publish.custom_name", "non-printable"),
        ('publish:\n  product_name: "a\\x07b"', "publish.product_name", "printable"),
        ("discovery:\n  name_path: /" + "a" * 300, "discovery.name_path", f"{MAX_TEXT}"),
        ("discovery:\n  battery_service_prefix: " + "b" * 300,
         "discovery.battery_service_prefix", f"{MAX_TEXT}"),
        ("discovery:\n  exclude_serials: [" + "s" * 300 + "]",
         "discovery.exclude_serials", f"at most {MAX_TEXT} characters"),
        ("discovery:\n  exclude_services: [" + ", ".join(["x"] * (MAX_LIST + 1)) + "]",
         "discovery.exclude_services", f"at most {MAX_LIST} items"),
        ("current:\n  smartshunts: [" + "n" * 300 + "]", "current.smartshunts",
         f"at most {MAX_TEXT} characters"),
        ("service:\n  state_dir: /" + "d" * 2000, "service.state_dir", "1024"),
    ],
    ids=["product_name", "custom_name_long", "custom_name_escape", "product_name_bell",
         "name_path", "prefix", "exclude_serials_item", "exclude_services_count",
         "shunt_name", "state_dir"],
)
def test_every_string_and_list_is_bounded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml_text: str, key: str, limit: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text + "\n")
    code, _, err = check_config(path, capsys)
    assert code == 2, err
    line = next(line for line in err.splitlines() if key in line)
    assert limit in line and str(path) in line
    assert len(err) < 1000


def test_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    lines.append("discovery:\n  exclude_services: *a9")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.monotonic() - start < SANITY_S
    assert "aliases" in str(info.value) and "line 2" in str(info.value)


def test_a_device_file_is_read_only_up_to_the_limit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/dev/zero")
    assert "larger than" in str(info.value)


def test_the_example_config_is_well_inside_every_limit() -> None:
    example = Path(__file__).parents[2] / "config.example.yaml"
    assert example.stat().st_size < MAX_FILE_BYTES / 8
    load_config(example)
