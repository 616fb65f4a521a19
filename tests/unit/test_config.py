"""Configuration: every kind of broken file is rejected with the right key, presets, CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from dbus_aggregate_batteries.cli import main
from dbus_aggregate_batteries.config import (
    PRESETS,
    Config,
    ConfigError,
    dump_config,
    load_config,
    parse_config,
    parse_config_text,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.yaml"

# A commented-out key in the example is "# key: value" at the key's own indentation; prose
# comments start with "##", so they never match.
COMMENTED_KEY = re.compile(r"^(\s*)# (\s*[a-z_]+:.*)$", re.MULTILINE)


def problems_of(text: str) -> list[str]:
    """The problem lines of a config that must be rejected."""
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "test.yaml")
    assert info.value.path == "test.yaml"
    assert info.value.problems, "a ConfigError must carry at least one problem"
    return info.value.problems


def line_for(problems: list[str], key: str) -> str:
    """The problem line that is about ``key`` (the line starts with "key: ")."""
    matching = [p for p in problems if p.startswith(f"{key}: ")]
    assert matching, f"no problem names {key!r}: {problems}"
    return matching[0]


# (id, YAML text, dotted key the problem must be reported against, text the line must contain)
BROKEN: list[tuple[str, str, str, str]] = [
    ("unknown-top-level-key", "colour: red\n", "colour", "unknown key"),
    (
        "unknown-nested-key",
        "limits:\n  own:\n    max_cell_volt: 3.4\n",
        "limits.own.max_cell_volt",
        "unknown key",
    ),
    (
        "unknown-key-named-like-a-type",
        "publish:\n  int: 3\n",
        "publish.int",
        "unknown key",
    ),
    ("nan", "soc:\n  battery_efficiency: .nan\n", "soc.battery_efficiency", "finite"),
    (
        "infinity",
        "limits:\n  max_charge_current_a: .inf\n",
        "limits.max_charge_current_a",
        "finite",
    ),
    (
        "minus-infinity-in-a-table",
        "limits:\n  own:\n    discharge_table:\n"
        "      cell_voltage_v: [-.inf, 3.0]\n      factor: [0, 1]\n",
        "limits.own.discharge_table.cell_voltage_v[0]",
        "finite",
    ),
    ("string-for-a-number", "publish:\n  tick_s: fast\n", "publish.tick_s", "number"),
    ("quoted-number", "publish:\n  tick_s: '1.0'\n", "publish.tick_s", "number"),
    ("maybe-for-a-bool", "current:\n  use_multi: maybe\n", "current.use_multi", "boolean"),
    ("bool-for-a-float", "publish:\n  tick_s: true\n", "publish.tick_s", "number"),
    (
        "bool-for-an-int",
        "discovery:\n  expected_count: yes\n",
        "discovery.expected_count",
        "integer",
    ),
    (
        "float-for-an-int",
        "publish:\n  device_instance: 99.5\n",
        "publish.device_instance",
        "integer",
    ),
    (
        "negative-current",
        "limits:\n  own:\n    max_charge_current_a: -5\n",
        "limits.own.max_charge_current_a",
        "greater than 0",
    ),
    ("tick-too-short", "publish:\n  tick_s: 0.01\n", "publish.tick_s", "0.05"),
    ("tick-too-long", "publish:\n  tick_s: 11\n", "publish.tick_s", "10"),
    (
        "min-cell-not-below-balancing",
        "limits:\n  own:\n    min_cell_voltage_v: 3.40\n",
        "limits.own.balancing_voltage_v",
        "limits.own.min_cell_voltage_v",
    ),
    (
        "balancing-above-max-cell",
        "limits:\n  own:\n    balancing_voltage_v: 3.50\n",
        "limits.own.balancing_voltage_v",
        "limits.own.max_cell_voltage_v",
    ),
    (
        "hysteresis-zero",
        "limits:\n  own:\n    min_cell_hysteresis_v: 0\n",
        "limits.own.min_cell_hysteresis_v",
        "greater than 0",
    ),
    (
        "hysteresis-reaching-max",
        "limits:\n  own:\n    min_cell_hysteresis_v: 0.6\n",
        "limits.own.min_cell_hysteresis_v",
        "limits.own.max_cell_voltage_v",
    ),
    (
        "table-not-strictly-ascending",
        "limits:\n  own:\n    charge_table:\n"
        "      cell_voltage_v: [2.9, 3.0, 3.0, 3.4, 3.45]\n      factor: [0.2, 1, 1, 0.1, 0]\n",
        "limits.own.charge_table.cell_voltage_v",
        "strictly ascending",
    ),
    (
        "table-lengths-differ",
        "limits:\n  own:\n    discharge_table:\n"
        "      cell_voltage_v: [2.9, 3.0, 3.1]\n      factor: [0, 1]\n",
        "limits.own.discharge_table.factor",
        "cell_voltage_v has 3",
    ),
    (
        "factor-above-one",
        "limits:\n  own:\n    discharge_table:\n"
        "      cell_voltage_v: [2.9, 3.0]\n      factor: [0, 1.5]\n",
        "limits.own.discharge_table.factor",
        "0..1",
    ),
    (
        "eleven-monthly-voltages",
        "limits:\n  own:\n    charge_cell_voltage_v: [3.5, 3.5, 3.5, 3.5, 3.5, 3.5,"
        " 3.5, 3.5, 3.5, 3.5, 3.5]\n",
        "limits.own.charge_cell_voltage_v",
        "12 monthly",
    ),
    (
        "monthly-voltage-out-of-range",
        "limits:\n  own:\n    charge_cell_voltage_v: 7\n",
        "limits.own.charge_cell_voltage_v",
        "0.5..5.0",
    ),
    (
        "integer-too-large-for-a-float",
        "limits:\n  own:\n    min_cell_voltage_v: 1" + "0" * 400 + "\n",
        "limits.own.min_cell_voltage_v",
        "number",
    ),
    (
        "monthly-voltage-too-large-for-a-float",
        "limits:\n  own:\n    charge_cell_voltage_v: [1" + "0" * 400 + ", 3, 3, 3, 3, 3, 3,"
        " 3, 3, 3, 3, 3]\n",
        "limits.own.charge_cell_voltage_v",
        "item 0",
    ),
    ("wrong-chemistry", "chemistry: nmc\n", "chemistry", "'lfp' or 'lto'"),
    (
        "empty-product-name-keyword",
        "discovery:\n  battery_product_names: ['']\n",
        "discovery.battery_product_names",
        "empty",
    ),
    (
        "no-product-name-keyword",
        "discovery:\n  battery_product_names: []\n",
        "discovery.battery_product_names",
        "at least 1",
    ),
    (
        "empty-exclude-entry",
        "discovery:\n  exclude_services: ['']\n",
        "discovery.exclude_services",
        "empty",
    ),
    (
        "empty-multi-prefix",
        "discovery:\n  multi_service_prefix: ''\n",
        "discovery.multi_service_prefix",
        "at least 1",
    ),
    ("name-path-without-slash", "discovery:\n  name_path: CustomName\n", "discovery.name_path", ""),
    ("reserved-product-id", "publish:\n  product_id: 0xB00A\n", "publish.product_id", "0xB00A"),
    (
        "product-id-too-large",
        "publish:\n  product_id: 0x10000\n",
        "publish.product_id",
        "65535",
    ),
    (
        "smartshunts-list-with-a-bool",
        "current:\n  smartshunts: [278, true]\n",
        "current.smartshunts",
        "item 1",
    ),
    ("smartshunts-true", "current:\n  smartshunts: true\n", "current.smartshunts", "'all'"),
    (
        "smartshunts-instance-out-of-range",
        "current:\n  smartshunts: [5000]\n",
        "current.smartshunts",
        "0..1023",
    ),
    ("top-level-list", "- chemistry\n- lfp\n", "(top level)", "mapping"),
    ("top-level-scalar", "lfp\n", "(top level)", "mapping"),
    ("section-not-a-mapping", "fault: 5\n", "fault", "dictionary"),
    ("non-text-key", "limits:\n  3: own\n", "limits.3", "keys must be text"),
    (
        "soc-empty-not-below-full",
        "soc:\n  empty_cell_voltage_v: 3.5\n",
        "soc.empty_cell_voltage_v",
        "soc.full_cell_voltage_v",
    ),
    ("bad-log-level", "logging:\n  level: VERBOSE\n", "logging.level", "INFO"),
    ("bad-policy", "fault:\n  policy: panic\n", "fault.policy", "derate"),
    (
        "derived-table-invalid",
        "limits:\n  own:\n    max_cell_voltage_v: 4.98\n",
        "limits.own.charge_table.cell_voltage_v",
        "set limits.own.charge_table yourself",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "needle"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_broken_config_names_the_key(text: str, key: str, needle: str) -> None:
    line = line_for(problems_of(text), key)
    assert needle in line


def test_at_least_twenty_kinds_of_broken_config() -> None:
    assert len({case[0] for case in BROKEN}) == len(BROKEN) >= 20


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        # the unclosed list runs into the next line; the parser stops at "fault:"'s colon
        ("publish:\n  tick_s: 1.0\n  product_name: [a, b\nfault: {}\n", 4, 6),
        # a key indented deeper than its siblings
        ("soc:\n  source: own\n   max_gap_s: 3\n", 3, 13),
        # a repeated key would silently replace the first one
        ("limits:\n  mode: own\n  mode: bms\n", 3, 3),
        # PyYAML reads this as a date and cannot build it
        ("service:\n  state_dir: 2024-13-45\n", 2, 14),
        ("publish:\n  tick_s: !!float fast\n", 2, 11),
    ],
    ids=["unclosed-list", "bad-indent", "duplicate-key", "impossible-date", "bad-tag"],
)
def test_yaml_errors_give_line_and_column(text: str, line: int, column: int) -> None:
    problems = problems_of(text)
    assert len(problems) == 1
    assert f"line {line}, column {column}" in problems[0]


def test_duplicate_key_is_named() -> None:
    (problem,) = problems_of("limits:\n  mode: own\nlimits:\n  mode: bms\n")
    assert "duplicate key 'limits'" in problem


def test_deep_nesting_is_a_config_error() -> None:
    (problem,) = problems_of("[" * 5000 + "]" * 5000)
    assert "nested too deeply" in problem


def test_control_character_is_a_config_error() -> None:
    (problem,) = problems_of("chemistry: lfp\x00\n")
    assert "YAML error" in problem


def test_wrong_chemistry_is_the_only_problem() -> None:
    # The preset cannot fill the cell voltages; that must not show up as "missing" noise.
    assert problems_of("chemistry: LTO\n") == [
        "chemistry: Input should be 'lfp' or 'lto' (got 'LTO')"
    ]


def test_broken_source_voltage_hides_derived_table_noise() -> None:
    problems = problems_of("limits:\n  own:\n    min_cell_voltage_v: low\n")
    assert [p.split(":")[0] for p in problems] == ["limits.own.min_cell_voltage_v"]


def test_all_errors_are_reported_at_once() -> None:
    text = (
        "publish:\n  tick_s: 0\n"
        "soc:\n  battery_efficiency: 2\n"
        "limits:\n  own:\n    charge_table:\n"
        "      cell_voltage_v: [3.0, 2.9]\n      factor: [1, 0]\n"
    )
    problems = problems_of(text)
    assert len(problems) == 3
    assert {p.split(": ")[0] for p in problems} == {
        "publish.tick_s",
        "soc.battery_efficiency",
        "limits.own.charge_table.cell_voltage_v",
    }


def test_error_message_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("publish:\n  tick_s: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: publish.tick_s: ")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("publish:\n  product_name: Café\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["the file is not UTF-8 text"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("cannot read the file")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.problems[0].startswith("cannot read the file")


# --- valid files ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n", "~\n"])
def test_empty_file_means_defaults(text: str) -> None:
    cfg = parse_config_text(text)
    assert cfg == parse_config({})
    assert cfg.chemistry == "lfp"
    assert cfg.limits.mode == "bms"
    assert cfg.soc.source == "bms"
    assert cfg.discovery.expected_count == 0


def test_sections_with_every_key_commented_out_mean_defaults() -> None:
    text = "discovery:\n  # expected_count: 2\nlimits:\n  bms:\n  own:\n  # mode: own\nfault:\n"
    assert parse_config_text(text) == parse_config({})


def test_lfp_preset_matches_the_original_defaults() -> None:
    # upstream.md 2.2: the defaults of config.default.ini
    cfg = parse_config_text("chemistry: lfp\n")
    own = cfg.limits.own
    assert own.max_cell_voltage_v == pytest.approx(3.45)
    assert own.min_cell_voltage_v == pytest.approx(2.90)
    assert own.min_cell_hysteresis_v == pytest.approx(0.1)
    assert own.balancing_voltage_v == pytest.approx(3.40)
    assert own.charge_cell_voltage_v == pytest.approx(
        [3.55, 3.50, 3.50, 3.45, 3.40, 3.40, 3.40, 3.40, 3.45, 3.50, 3.50, 3.55]
    )
    assert own.cell_diff_max_v == pytest.approx(0.025)
    assert cfg.soc.full_cell_voltage_v == pytest.approx(3.45)
    assert cfg.soc.empty_cell_voltage_v == pytest.approx(2.90)
    # The charge table is ours (README, control benchmark): full current up to the maximum,
    # 0 at maximum + 0.05 V; the discharge table is the original's (upstream.md 2.2 and 5.6).
    assert own.charge_table.cell_voltage_v == pytest.approx([2.90, 2.95, 3.45, 3.50])
    assert own.charge_table.factor == pytest.approx([0.2, 1.0, 1.0, 0.0])
    assert own.cvl_control == "regulate"
    assert own.discharge_table.cell_voltage_v == pytest.approx([2.90, 3.00, 3.10])
    assert own.discharge_table.factor == pytest.approx([0.0, 0.05, 1.0])
    # other defaults of the original
    assert own.balancing_repetition_days == 10
    assert own.max_charge_current_a == pytest.approx(200.0)
    assert own.max_discharge_current_a == pytest.approx(200.0)
    assert cfg.soc.battery_efficiency == pytest.approx(0.98)
    assert cfg.soc.save_every_fraction == pytest.approx(0.0025)
    assert cfg.publish.device_instance == 99
    assert cfg.publish.product_id == 0xBA44
    assert cfg.service.summary_interval_s == pytest.approx(300.0)


def test_default_chemistry_is_lfp() -> None:
    assert parse_config_text("") == parse_config_text("chemistry: lfp\n")


def test_lto_preset_matches_the_original_lto_example() -> None:
    # upstream.md 2.2: config_LTO.ini
    cfg = parse_config_text("chemistry: lto\n")
    own = cfg.limits.own
    assert own.max_cell_voltage_v == pytest.approx(2.60)
    assert own.min_cell_voltage_v == pytest.approx(1.90)
    assert own.min_cell_hysteresis_v == pytest.approx(0.3)
    assert own.balancing_voltage_v == pytest.approx(2.50)
    assert own.charge_cell_voltage_v == pytest.approx(
        [2.50, 2.45, 2.45, 2.40, 2.35, 2.35, 2.35, 2.35, 2.40, 2.45, 2.45, 2.50]
    )
    assert cfg.soc.full_cell_voltage_v == pytest.approx(2.50)
    assert cfg.soc.empty_cell_voltage_v == pytest.approx(1.90)
    # tables derived from min 1.9 and max 2.6
    assert own.charge_table.cell_voltage_v == pytest.approx([1.90, 1.95, 2.60, 2.65])
    assert own.discharge_table.cell_voltage_v == pytest.approx([1.90, 2.00, 2.10])


def test_explicit_key_overrides_the_preset_and_drives_the_tables() -> None:
    text = (
        "chemistry: lto\n"
        "soc:\n  full_cell_voltage_v: 2.55\n"
        "limits:\n  own:\n    min_cell_voltage_v: 2.0\n    balancing_voltage_v: 2.45\n"
        "    charge_cell_voltage_v: 2.4\n"
    )
    cfg = parse_config_text(text)
    own = cfg.limits.own
    assert own.min_cell_voltage_v == pytest.approx(2.0)
    assert own.balancing_voltage_v == pytest.approx(2.45)
    assert own.max_cell_voltage_v == pytest.approx(2.60)  # still the LTO preset
    assert own.charge_cell_voltage_v == pytest.approx(2.4)
    assert own.charge_cell_voltage_for_month(7) == pytest.approx(2.4)
    assert cfg.soc.full_cell_voltage_v == pytest.approx(2.55)
    assert cfg.soc.empty_cell_voltage_v == pytest.approx(1.90)  # preset
    # [min, min+0.05, max, max+0.05] and [min, min+0.1, min+0.2] from the overridden values
    assert own.charge_table.cell_voltage_v == pytest.approx([2.0, 2.05, 2.60, 2.65])
    assert own.discharge_table.cell_voltage_v == pytest.approx([2.0, 2.1, 2.2])


def test_explicit_table_is_not_replaced() -> None:
    text = (
        "limits:\n  own:\n    min_cell_voltage_v: 3.0\n"
        "    charge_table:\n      cell_voltage_v: [3.0, 3.5]\n      factor: [1, 0]\n"
    )
    own = parse_config_text(text).limits.own
    assert own.charge_table.cell_voltage_v == pytest.approx([3.0, 3.5])
    assert own.charge_table.factor == pytest.approx([1.0, 0.0])
    assert own.discharge_table.cell_voltage_v == pytest.approx([3.0, 3.1, 3.2])


def test_presets_hold_the_documented_numbers() -> None:
    assert PRESETS["lfp"]["balancing_voltage_v"] == pytest.approx(3.40)
    assert PRESETS["lto"]["balancing_voltage_v"] == pytest.approx(2.50)
    assert set(PRESETS) == {"lfp", "lto"}


def test_smartshunt_list_accepts_instances_and_names() -> None:
    cfg = parse_config_text("current:\n  smartshunts: [278, FrontShunt]\n")
    assert cfg.current.smartshunts == [278, "FrontShunt"]


def test_config_is_frozen() -> None:
    cfg = parse_config_text("")
    with pytest.raises(ValueError, match="frozen"):
        cfg.publish.tick_s = 2.0  # type: ignore[misc]


# --- config.example.yaml --------------------------------------------------------------------


def _example_text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


def _field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.add(path)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= _field_paths(annotation, f"{path}.")
    return paths


def _key_paths(data: Any, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}{key}"
            paths.add(path)
            paths |= _key_paths(value, f"{path}.")
    return paths


def test_example_validates_and_equals_the_defaults() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg == parse_config({})


def _assert_model_order(data: dict[str, Any], model: type[BaseModel], where: str) -> None:
    assert list(data) == list(model.model_fields), f"keys of {where or 'the file'} out of order"
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _assert_model_order(data[name], annotation, f"{where}{name}.")


def test_example_mentions_every_option_in_model_order() -> None:
    uncommented = COMMENTED_KEY.sub(r"\1\2", _example_text())
    data = yaml.safe_load(uncommented)
    assert _key_paths(data) == _field_paths(Config)
    _assert_model_order(data, Config, "")


def test_example_commented_keys_are_the_preset_values() -> None:
    text = _example_text()
    uncommented = COMMENTED_KEY.sub(r"\1\2", text)
    assert uncommented != text
    assert parse_config_text(uncommented) == parse_config_text(text)


def test_example_has_a_comment_on_every_option() -> None:
    uncommented = COMMENTED_KEY.sub(r"\1\2", _example_text())
    lines = uncommented.splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^\s*([a-z_]+):", line)
        if not match:
            continue
        has_own = "  # " in line
        previous = lines[index - 1].strip() if index else ""
        has_above = previous.startswith(f"## {match.group(1)}:")
        sections = set(Config.model_fields) | {"bms", "own", "charge_table", "discharge_table"}
        if match.group(1) in sections and line.rstrip().endswith(":"):
            continue  # section header; described by the "##" line above it
        assert has_own or has_above, f"no comment on line {index + 1}: {line!r}"


def test_example_switches_to_lto_with_one_line() -> None:
    text = _example_text()
    assert text.count("\nchemistry: lfp") == 1
    cfg = parse_config_text(text.replace("\nchemistry: lfp", "\nchemistry: lto"))
    assert cfg == parse_config_text("chemistry: lto\n")
    assert cfg.limits.own.max_cell_voltage_v == pytest.approx(2.60)
    assert cfg.soc.empty_cell_voltage_v == pytest.approx(1.90)


def test_example_tells_how_to_validate_it() -> None:
    head = _example_text()[:800]
    assert "dbus-aggregate-batteries check-config config.yaml" in head


def _doc_keys() -> list[tuple[str, str | None]]:
    """Every `section.key` or `section.key: value` in backticks in the settings mapping."""
    text = (ROOT / "docs" / "settings-mapping.md").read_text(encoding="utf-8")
    sections = "|".join(Config.model_fields)
    found: list[tuple[str, str | None]] = []
    for match in re.finditer(rf"`((?:{sections})(?:\.[a-z_]+)+)(?:: ([^`]+))?`", text):
        found.append((match.group(1), match.group(2)))
    return found


def test_settings_mapping_names_only_existing_keys() -> None:
    keys = _doc_keys()
    assert len(keys) > 60
    paths = _field_paths(Config)
    unknown = sorted({key for key, _ in keys if key not in paths})
    assert unknown == []
    # and every option (leaf key) of the model is mapped or explained somewhere
    leaves = {p for p in paths if not any(q.startswith(f"{p}.") for q in paths)}
    assert leaves - {key for key, _ in keys} == {"chemistry"}


def test_settings_mapping_values_are_valid() -> None:
    for key, value in _doc_keys():
        if value is None:
            continue
        document: Any = yaml.safe_load(value)
        for part in reversed(key.split(".")):
            document = {part: document}
        parse_config(document)  # raises ConfigError if the documented value is invalid


# --- check-config ---------------------------------------------------------------------------


def test_check_config_prints_a_config_that_loads_equal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    # the preset-filled keys that are commented out in the example are shown
    for key in ("max_cell_voltage_v: 3.45", "balancing_voltage_v: 3.4", "full_cell_voltage_v"):
        assert key in out
    assert parse_config_text(out) == load_config(EXAMPLE)
    again = tmp_path / "effective.yaml"
    again.write_text(out, encoding="utf-8")
    assert main(["check-config", str(again)]) == 0
    assert capsys.readouterr().out == out


def test_check_config_round_trips_a_non_default_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "chemistry: lto\n"
        "current:\n  source: victron\n  smartshunts: [278, Front]\n"
        "soc:\n  source: own\n"
        "limits:\n  mode: own\n  max_charge_current_a: 150.5\n"
        "  own:\n    charge_cell_voltage_v: 2.45\n"
        "publish:\n  product_id: 0xBA45\n"
    )
    cfg = parse_config_text(text)
    assert cfg != parse_config_text("chemistry: lto\n")
    path = tmp_path / "custom.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out == dump_config(cfg)
    assert parse_config_text(out) == cfg
    assert "product_id: 47685" in out


def test_check_config_subprocess(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dbus_aggregate_batteries", "check-config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert parse_config_text(result.stdout) == load_config(EXAMPLE)


def test_check_config_broken_file_exits_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("publish:\n  tick_s: 0\nfault:\n  policy: panic\n", encoding="utf-8")
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    assert "2 problem(s)" in err
    assert f"{path}: publish.tick_s: " in err
    assert f"{path}: fault.policy: " in err


@pytest.mark.parametrize(
    "content",
    [b"publish: [\n", b"\xff\xfe\x00garbage", b"- a\n- b\n", b"limits:\n  own: {bogus: 1}\n"],
    ids=["syntax", "not-utf8", "list", "unknown-key"],
)
def test_check_config_subprocess_broken_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.yaml"
    path.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "dbus_aggregate_batteries", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert f"{path}: configuration is invalid" in result.stderr


def test_check_config_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["check-config", str(tmp_path / "absent.yaml")]) == 2
    _, err = capsys.readouterr()
    assert "cannot read the file" in err
    assert "Traceback" not in err
