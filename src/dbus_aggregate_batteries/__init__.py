"""dbus-aggregate-batteries: one virtual Venus OS battery from many dbus-serialbattery packs."""

__version__ = "0.1.0"
