"""``BusItemService.publish`` rounds and words values exactly as the plain definitions do.

publish() inlines ``round_for_path`` for plain floats and keeps each leaf's precision and text
renderer (looked up once per path); this property test publishes random value sequences and
compares every stored value, and the text GetText would give, with ``_normalise`` and
``text_for_path`` of the same value. No bus: an unregistered service stores but sends nothing.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from dbus_aggregate_batteries.core.venus import PRECISION, TEXT, Value, text_for_path
from dbus_aggregate_batteries.shell.export import BusItemService, _normalise

PATHS = (
    *sorted(PRECISION)[:12], *sorted(TEXT)[:12], "/Voltages/Cell7", "/Voltages/Sum",
    "/Unknown/Path", "/Soc", "/ProductId", "/TimeToGo",
)

value_st: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.0049, -0.0049, 2.675, 53.125, 1e300]),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.booleans(),  # type: ignore[arg-type]
    st.sampled_from(["", "x", "Pack A"]),
)


def same(a: Value, b: Value) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return math.copysign(1.0, a) == math.copysign(1.0, b) and (a == b or (a != a and b != b))
    return a == b


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(PATHS), value_st, max_size=8), max_size=6))
def test_publish_rounds_and_words_like_the_plain_definitions(
    ticks: list[dict[str, Value]],
) -> None:
    service = BusItemService(object(), "com.victronenergy.battery.offline")
    expected: dict[str, Value] = {}
    for values in ticks:
        changed = service.publish(values)
        count = 0
        for path, raw in values.items():
            want = _normalise(path, raw)
            if path not in expected or not same(expected[path], want):
                count += 1
                expected[path] = want
        assert changed == count
        for path, want in expected.items():
            got = service[path]
            assert same(got, want), (path, got, want)
            assert service._leaves[path].text(got) == text_for_path(path, want)
