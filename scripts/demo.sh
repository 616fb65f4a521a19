#!/usr/bin/env bash
# Run the service on a built-in simulated battery bank (private D-Bus, nothing installed
# system-wide except Debian's dbus package when dbus-daemon is missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/dbus-aggregate-batteries" demo "$@"
