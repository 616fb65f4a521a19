"""Allow ``python -m dbus_aggregate_batteries``."""

from dbus_aggregate_batteries.cli import main

raise SystemExit(main())
