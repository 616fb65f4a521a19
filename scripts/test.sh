#!/usr/bin/env bash
# Lint, type-check and run every test; the D-Bus tests run once per D-Bus library, and once
# more with the dbus-fast version Venus OS ships.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh" --test
cd "$ROOT"
BIN="$ROOT/.venv/bin"
"$BIN/ruff" check src tests benchmarks
"$BIN/mypy" --strict src benchmarks
echo "== all tests, dbus-fast =="
DAB_DBUS_LIBRARY=dbus_fast "$BIN/python" -m pytest -q "$@"
echo "== D-Bus tests, dbus-next =="
DAB_DBUS_LIBRARY=dbus_next "$BIN/python" -m pytest -q -m dbus "$@"
VENUS="$ROOT/.venv-venus/bin"
echo "== D-Bus tests, dbus-fast $("$VENUS/python" -c 'from importlib.metadata import version; print(version("dbus-fast"))') (as on Venus OS) =="
DAB_DBUS_LIBRARY=dbus_fast "$VENUS/python" -m pytest -q -m dbus -p no:cacheprovider tests/dbus "$@"
