"""Pack health (pure): decided from timestamps and values, never from the bus directly.

- OFFLINE: the pack's service left the bus (decided by the shell, which keeps its last values);
- STALE: no change signalled for ``stale_after_s`` (a live BMS always has some value moving:
  cell voltages, current), or the pack did not answer a liveness probe;
- BMS_OFFLINE: the driver is alive but says its BMS is gone: no valid pack voltage,
  /System/NrOfModulesOnline 0, /Connected 0 or /Alarms/BmsCable at alarm level;
- ACTIVE otherwise.  Only ACTIVE packs are merged; the others' last known values still count
  towards the limits (see engine.py).
"""

from __future__ import annotations

from enum import Enum

from dbus_aggregate_batteries.core.model import PackSnapshot
from dbus_aggregate_batteries.core.venus import ALARM_PATHS

_BMS_CABLE = ALARM_PATHS.index("/Alarms/BmsCable")


class Health(Enum):
    """A pack's state as far as the bank is concerned."""

    ACTIVE = "active"
    STALE = "stale"
    BMS_OFFLINE = "bms-offline"
    OFFLINE = "offline"


def pack_health(
    snap: PackSnapshot,
    *,
    now_s: float,
    last_change_s: float,
    probe_failed: bool,
    stale_after_s: float,
    connected: object = 1,
    needs_limits: bool = False,
) -> tuple[Health, str]:
    """Classify one present pack; returns the health and a reason for the log.

    A pack that lacks what the bank's limits are computed from (its extreme cells; with
    ``needs_limits`` its CVL, CCL and DCL) is not healthy: merging it without them would let
    its share of the limits rise.  Its last known values are used instead (engine.py).
    """
    if probe_failed:
        return Health.STALE, "did not answer a liveness probe"
    age = now_s - last_change_s
    if age > stale_after_s:
        return Health.STALE, f"no new data for {age:.0f} s"
    if connected == 0:
        return Health.BMS_OFFLINE, "/Connected is 0"
    if snap.voltage_v is None:
        return Health.BMS_OFFLINE, "no valid pack voltage"
    if snap.modules_online == 0:
        return Health.BMS_OFFLINE, "the driver reports its BMS offline"
    if snap.alarms[_BMS_CABLE] == 2:
        return Health.BMS_OFFLINE, "BMS cable alarm"
    if snap.max_cell_v is None or snap.min_cell_v is None:
        return Health.BMS_OFFLINE, "no valid cell voltages"
    if needs_limits and None in (snap.cvl_v, snap.ccl_a, snap.dcl_a):
        return Health.BMS_OFFLINE, "no valid charge limits (/Info/*)"
    return Health.ACTIVE, "ok"
