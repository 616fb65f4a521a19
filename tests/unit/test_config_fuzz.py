"""Property: any YAML text gives either a Config or a ConfigError with problems; nothing else."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from dbus_aggregate_batteries.config import Config, ConfigError, parse_config_text


def _names(model: type[BaseModel]) -> set[str]:
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _names(annotation)
    return names


SECTIONS = sorted(Config.model_fields)
FIELD_NAMES = sorted(_names(Config))
# Words the config understands as values, so that generated documents often get deep.
WORDS = [
    "lfp", "lto", "bms", "own", "victron", "smartshunt", "none", "all", "min", "float_aware",
    "min_times_n", "sum", "derate", "zero", "INFO", "DEBUG", "/CustomName", "SerialBattery",
]
JUNK_KEYS = ["", "int", "str", "float", "foo[1]", "function-x", "<<", "Chemistry", "limits "]

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

keys = st.one_of(
    st.sampled_from(FIELD_NAMES),
    st.sampled_from(JUNK_KEYS),
    st.text(max_size=8),
    st.integers(-5, 5),
    st.booleans(),
    st.none(),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0.0, max_value=6.0),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=13),
        st.dictionaries(keys, inner, max_size=5),
    ),
    max_leaves=25,
)
# Documents shaped like a config: real section names holding real field names (and junk).
sections = st.dictionaries(
    st.one_of(st.sampled_from(SECTIONS), st.sampled_from(JUNK_KEYS)),
    st.one_of(st.dictionaries(keys, values, max_size=8), values),
    max_size=6,
)
documents = st.one_of(sections, values)

# Text made of YAML-ish tokens: syntax errors, anchors, tags, odd scalars.
TOKENS = [
    ":", ": ", "-", "- ", "[", "]", "{", "}", ",", "\n", "  ", "    ", "#", "'", '"', "&a ",
    "*a", "!!int ", "!!float ", "!!bool ", "!!binary ", "!!timestamp ", "!!set ", "!!omap ",
    "!!python/object:os.system ", "? ", "|", ">", "...", "---", "2024-13-45", "0x1F", ".nan",
    ".inf", "-.inf", "yes", "~", "1e400", "\t", "\x00", "\ufeff", "%YAML 1.1\n", "<<: ",
    *SECTIONS, *FIELD_NAMES[:20], *WORDS[:6],
]
token_text = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)


def check(text: str) -> None:
    """The property itself."""
    try:
        result = parse_config_text(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.path == "fuzz.yaml"
        assert exc.problems
        assert all(isinstance(p, str) and p.strip() for p in exc.problems)
        assert str(exc).startswith("fuzz.yaml: ")
    else:
        assert isinstance(result, Config)


def _dump(document: Any) -> str:
    return yaml.safe_dump(document, allow_unicode=True, default_flow_style=None)


@FAST
@given(documents)
def test_generated_documents(document: Any) -> None:
    check(_dump(document))


@FAST
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    check(text)


@FAST
@given(token_text)
def test_yaml_token_soup(text: str) -> None:
    check(text)


def _paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        paths.append(path)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(_paths(annotation, path))
    return paths


PATHS = _paths(Config)
realistic = st.one_of(
    scalars,
    st.sampled_from([10**400, -(10**400), 2**63, 0, -1, 0.0, 1e-300]),
    st.lists(st.floats(min_value=0.0, max_value=6.0), min_size=1, max_size=13),
    st.lists(st.one_of(st.integers(-2, 2000), st.text(max_size=6), st.booleans()), max_size=4),
)


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    document: Any = value
    for key in reversed(path):
        document = {key: document}
    assert isinstance(document, dict)
    return document


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["lfp", "lto"]), st.sampled_from(PATHS), realistic)
def test_one_real_key_set_to_anything(chemistry: str, path: tuple[str, ...], value: Any) -> None:
    # A valid document with one real key changed: the most realistic kind of mistake.
    check(_dump({"chemistry": chemistry, **_nested(path, value)}))


def test_property_catches_other_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    # The property must be able to fail: an exception other than ConfigError escapes it.
    def broken(text: str, source: str = "<config>") -> Config:
        raise KeyError(text)

    monkeypatch.setattr(sys.modules[__name__], "parse_config_text", broken)
    with pytest.raises(KeyError):
        check("chemistry: lfp\n")


def test_property_rejects_an_empty_problem_list(monkeypatch: pytest.MonkeyPatch) -> None:
    def silent(text: str, source: str = "<config>") -> Config:
        raise ConfigError(source, [])

    monkeypatch.setattr(sys.modules[__name__], "parse_config_text", silent)
    with pytest.raises(AssertionError):
        check("chemistry: lfp\n")
