"""Pack health states and what the driver itself says about its BMS (pure).

The states (decided in roster.py, which owns the timing rules):

- OFFLINE: the pack's service left the bus; its last values are remembered;
- STALE: the driver process does not answer (a failed liveness probe), or showed no sign of
  life at all for too long;
- FROZEN: the process answers, but its measured values stopped changing while the bank
  visibly carried current that the pack should have shown (v0.14 keeps publishing its last
  values when its BMS is gone);
- BMS_OFFLINE: the driver is alive but says its BMS is gone: no valid pack voltage,
  /System/NrOfModulesOnline 0, /Connected 0 or /Alarms/BmsCable at alarm level, or it lacks
  what the bank's limits are computed from;
- ACTIVE otherwise.  Only ACTIVE packs are merged; the others' last known values still count
  towards the limits (see engine.py).

Steady values alone are never a fault: a bank at rest or in float can hold every value
to the last digit for hours.
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
    FROZEN = "frozen"
    BMS_OFFLINE = "bms-offline"
    OFFLINE = "offline"


def bms_health(
    snap: PackSnapshot, *, connected: object = 1, needs_limits: bool = False
) -> tuple[Health, str]:
    """What the driver's own values say; returns ACTIVE or BMS_OFFLINE and a reason.

    A pack that lacks what the bank's limits are computed from (its extreme cells; with
    ``needs_limits`` its CVL, CCL and DCL) is not healthy: merging it without them would let
    its share of the limits rise.  Its last known values are used instead (engine.py).
    """
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
