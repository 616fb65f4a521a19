#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh on a fresh Debian machine:
# Debian's dbus-daemon (for the private test/demo bus) and a virtualenv with the package.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: Python >= 3.11 is needed ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi

# Debian packages: dbus-daemon (private bus for the tests and the demo); with --test also
# busybox (the Venus install scripts are tested under BusyBox sh, as on the device).
missing=""
command -v dbus-daemon >/dev/null 2>&1 || missing="dbus"
if [ "${1:-}" = "--test" ] && ! command -v busybox >/dev/null 2>&1; then
    missing="$missing busybox"
fi
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian's$missing" >&2
        apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo apt-get update -qq
        # shellcheck disable=SC2086
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    else
        echo "setup: missing Debian packages: run 'sudo apt-get install$missing', then try again" >&2
        exit 1
    fi
fi

# make_venv DIR: a virtualenv at DIR (Debian's own python3 needs python3-venv for it).
make_venv() {
    if [ -x "$1/bin/python" ]; then
        return
    fi
    if ! "$PYTHON" -m venv "$1"; then
        rm -rf "$1"
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv "$1"
        else
            echo "setup: cannot create a virtualenv: run 'sudo apt-get install python3-venv'" >&2
            exit 1
        fi
    fi
}

VENV="$ROOT/.venv"
make_venv "$VENV"
# pip's own output (progress, notices, the build backend's chatter) goes to a log that is shown
# only when a step fails, so a good set-up prints three lines and a failing one its full error.
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
quiet() {
    local what="$1"
    shift
    if ! "$@" >"$LOG" 2>&1; then
        echo "setup: $what failed; its output:" >&2
        cat "$LOG" >&2
        exit 1
    fi
}
echo "setup: installing dbus-aggregate-batteries and its tools into $VENV"
quiet "upgrading pip" "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    --upgrade pip
quiet "installing the package" "$VENV/bin/python" -m pip install -q \
    --disable-pip-version-check -e "$ROOT[test]"
if [ "${1:-}" = "--test" ]; then
    # The dbus-fast that Venus OS ships (pinned in the "venus-test" extra): the D-Bus tests
    # also run against it, in a second virtualenv so the main one keeps a current dbus-fast.
    VENUS_VENV="$ROOT/.venv-venus"
    make_venv "$VENUS_VENV"
    quiet "installing the package with dbus-fast as on Venus OS" \
        "$VENUS_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -e "$ROOT[venus-test]"
fi
echo "setup: ready ($("$VENV/bin/python" --version), $(dbus-daemon --version | head -n 1))"
