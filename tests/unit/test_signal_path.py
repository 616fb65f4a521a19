"""Discovery's inlined PropertiesChanged path does exactly what ``ServiceState.apply_one`` does.

The per-signal work is inlined in ``Monitor._on_signal`` (hundreds of signals a second); this
property test feeds the same random signals to it and to ``apply_one`` and compares the models.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dbus_aggregate_batteries.config import parse_config
from dbus_aggregate_batteries.core.venus import BUSITEM, Value
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.discovery import Monitor
from dbus_aggregate_batteries.shell.export import wrap
from dbus_aggregate_batteries.shell.state import BusState, ServiceState

NAME = "com.victronenergy.battery.ttyUSB0"
OWNER = ":1.7"
PATHS = ("/Dc/0/Voltage", "/Soc", "/Voltages/Cell1", "/CustomName", "/Io/AllowToCharge")

values_st: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.sampled_from([53.2, 53.2, 0.0, -0.0, 1.0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 1, 2**40]),
    st.booleans(),  # type: ignore[arg-type]
    st.sampled_from(["", "Pack A", "Pack A"]),
    st.just([]),  # type: ignore[arg-type]
)


def signal(path: str, value: Value, sender: str = OWNER) -> Any:
    return _dbus.Message(
        message_type=_dbus.MessageType.SIGNAL, sender=sender, path=path, interface=BUSITEM,
        member="PropertiesChanged", signature="a{sv}",
        body=[{"Value": wrap(value), "Text": _dbus.Variant("s", "")}],
    )


def observable(svc: ServiceState) -> tuple[Any, ...]:
    # repr: NaN is not equal to itself, and 1 == 1.0 == True would hide a type change.
    return (
        {path: (type(v), repr(v)) for path, v in svc.values.items()},
        set(svc.changed), set(svc.signalled), svc.last_signal_s, svc.probe_failed,
    )


@settings(max_examples=300, deadline=None, database=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(PATHS), values_st, st.booleans(), st.booleans()), max_size=30
    ),
    scanning=st.booleans(),
)
def test_inlined_signal_path_equals_apply_one(
    steps: list[tuple[str, Value, bool, bool]], scanning: bool,
) -> None:
    now = [0.0]
    state = BusState()
    monitor = Monitor(None, state, parse_config({}), own_name="x", clock=lambda: now[0])
    fed = state.add(NAME, OWNER, 0.0)
    reference = ServiceState(name=NAME, owner=OWNER, first_seen_s=0.0)
    if scanning:  # a GetItems scan in flight: the signalled paths are remembered for it
        fed.scan_started()
        reference.scan_started()
    for i, (path, value, probe_failed, consume) in enumerate(steps, start=1):
        now[0] = float(i)
        fed.probe_failed = reference.probe_failed = probe_failed
        msg = signal(path, value)
        monitor._on_signal(msg)
        reference.apply_one(path, _dbus.unwrap(msg.body[0]["Value"]), now[0])
        assert observable(fed) == observable(reference)
        if consume:  # a tick took the changes
            fed.changed.clear()
            reference.changed.clear()
    # Another sender's signal changes nothing.
    before = observable(fed)
    monitor._on_signal(signal("/Soc", 12.5, sender=":1.99"))
    assert observable(fed) == before


def items_changed(changes: dict[str, Value], sender: str = OWNER) -> Any:
    return _dbus.Message(
        message_type=_dbus.MessageType.SIGNAL, sender=sender, path="/", interface=BUSITEM,
        member="ItemsChanged", signature="a{sa{sv}}",
        body=[{p: {"Value": wrap(v), "Text": _dbus.Variant("s", "")} for p, v in changes.items()}],
    )


def test_a_service_sending_both_streams_is_read_from_both() -> None:
    # velib: a batched update is one ItemsChanged, a single assignment or an accepted SetValue
    # (the GUI renaming a pack) one PropertiesChanged; a driver may do both.
    state = BusState()
    monitor = Monitor(None, state, parse_config({}), own_name="x", clock=lambda: 1.0)
    svc = state.add(NAME, OWNER, 0.0)
    monitor._on_signal(items_changed({"/Soc": 50.0, "/Io/AllowToCharge": 1}))
    monitor._on_signal(signal("/Io/AllowToCharge", 0))
    monitor._on_signal(signal("/CustomName", "Pack A"))
    monitor._on_signal(items_changed({"/Soc": 51.0}))
    assert svc.values == {"/Soc": 51.0, "/Io/AllowToCharge": 0, "/CustomName": "Pack A"}
    assert svc.changed == {"/Soc", "/Io/AllowToCharge", "/CustomName"}


def test_a_scan_keeps_what_was_signalled_while_it_was_asked() -> None:
    svc = ServiceState(name=NAME, owner=OWNER, first_seen_s=0.0)
    svc.apply_one("/Soc", 50.0, 1.0)  # before the request: older than any reply
    svc.scan_started()
    svc.apply_one("/Dc/0/Voltage", 53.4, 2.0)  # read in the batch before the reply resumes
    svc.apply_scan({"/Soc": 51.0, "/Dc/0/Voltage": 53.1, "/Dc/0/Current": 4.0}, 2.0)
    svc.scan_ended()
    assert svc.values == {"/Soc": 51.0, "/Dc/0/Voltage": 53.4, "/Dc/0/Current": 4.0}
    # With no scan in flight nothing is remembered, and the next scan is believed.
    assert not svc.signalled
    svc.apply_one("/Dc/0/Voltage", 53.5, 3.0)
    assert not svc.signalled
    svc.scan_started()
    svc.apply_scan({"/Dc/0/Voltage": 53.6}, 4.0)
    svc.scan_ended()
    assert svc.values["/Dc/0/Voltage"] == 53.6
    # Two scans in flight: what was signalled is kept until the last one is done.
    svc.scan_started()
    svc.scan_started()
    svc.apply_signal({"/Soc": 52.0}, 5.0)
    svc.apply_scan({"/Soc": 49.0}, 5.0)
    svc.scan_ended()
    svc.apply_scan({"/Soc": 48.0}, 5.0)
    svc.scan_ended()
    assert svc.values["/Soc"] == 52.0 and not svc.signalled and svc.scanning == 0
