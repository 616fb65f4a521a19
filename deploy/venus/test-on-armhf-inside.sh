#!/bin/sh
# The part of test-on-armhf.sh that runs INSIDE the Debian armhf root (under qemu-arm).
# Never run it on a real machine: it deletes /data, /service and /var/log/dbus-aggregate-batteries.
set -eu

[ -f /tmp/bundle/.armhf-test-root ] || { echo "not in the armhf test root: refusing" >&2; exit 2; }
APP=/data/apps/dbus-aggregate-batteries
LOG=/var/log/dbus-aggregate-batteries/current
rm -rf /data /var/log/dbus-aggregate-batteries /service/*
mkdir -p /data /service /run/dbus
cd /tmp/bundle
tar -xzf ./*.tar.gz
BUNDLE=$(dirname /tmp/bundle/*/BUNDLE-INFO)

# As on Venus OS: an open system-bus policy for root, and daemontools' svscan on /service.
printf '%s\n' '<busconfig><policy user="root"><allow own="*"/><allow send_destination="*"/></policy></busconfig>' \
    > /etc/dbus-1/system.d/venus-like.conf
rm -f /run/dbus/pid /run/dbus/system_bus_socket
dbus-daemon --system --fork
svscan /service > /tmp/bundle/svscan.log 2>&1 &
SVSCAN=$!
SIM=
stop_all() {
    if [ -d $APP/service ]; then  # after a failure: stop supervise and the service
        svc -dx $APP/service $APP/service/log 2>/dev/null || true
        sleep 2
    fi
    kill "$SVSCAN" 2>/dev/null || true
    [ -z "$SIM" ] || kill "$SIM" 2>/dev/null || true
    [ ! -f /run/dbus/pid ] || kill "$(cat /run/dbus/pid)" 2>/dev/null || true
}
trap stop_all EXIT
wait_log() {  # wait_log TEXT SECONDS
    i=0
    until grep -q "$1" "$LOG" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt "$2" ]; then
            echo "no '$1' in $LOG after $2 s:"
            cat "$LOG" 2>/dev/null || true
            return 1
        fi
        sleep 1
    done
}

echo "-- install.sh (busybox sh), svscan running"
busybox sh $BUNDLE/install.sh
PYTHONPATH=$APP/lib/armv7l:$APP/src
export PYTHONPATH
python3 -s -m dbus_aggregate_batteries.sim --bus system --batteries 2 > /tmp/bundle/sim.log 2>&1 &
SIM=$!
wait_log "battery.aggregate registered" 180
echo "service log: $(grep -c . "$LOG") lines; $(grep -o 'running with [a-z_]*' "$LOG" | head -n 1)"
grep 'registered' "$LOG" | head -n 1 | tai64nlocal
STAT1=$(svstat /service/dbus-aggregate-batteries)
echo "svstat: $STAT1"

echo "-- second install.sh: must change nothing and not restart"
busybox sh $BUNDLE/install.sh | tee /tmp/bundle/second.out
grep -q 'nothing changed' /tmp/bundle/second.out
PID1=$(echo "$STAT1" | grep -o 'pid [0-9]*')
svstat /service/dbus-aggregate-batteries | grep -q "$PID1" || { echo "the service was restarted"; exit 1; }
echo "service not restarted: OK ($PID1)"

echo "-- boot: /service emptied (a tmpfs on Venus OS), /data/rc.local re-links the service"
svc -dx /service/dbus-aggregate-batteries /service/dbus-aggregate-batteries/log
rm /service/dbus-aggregate-batteries
i=0
while kill -s 0 "${PID1#pid }" 2>/dev/null; do
    i=$((i + 1)); [ "$i" -le 20 ] || { echo "the service did not stop"; exit 1; }
    sleep 1
done
/data/rc.local
i=0
until svstat /service/dbus-aggregate-batteries 2>/dev/null | grep -q ': up'; do
    i=$((i + 1)); [ "$i" -le 30 ] || { echo "svscan did not start the re-linked service"; exit 1; }
    sleep 1
done
PID1=$(svstat /service/dbus-aggregate-batteries | grep -o 'pid [0-9]*')
i=0
until [ "$(grep -c 'battery.aggregate registered' "$LOG")" -ge 2 ]; do
    i=$((i + 1)); [ "$i" -le 180 ] || { echo "the service did not register again"; exit 1; }
    sleep 1
done
echo "service after boot: up ($PID1) and registered again: OK"

echo "-- upgrade: a changed module restarts the service"
echo '# upgraded' >> $BUNDLE/src/dbus_aggregate_batteries/core/charge.py
busybox sh $BUNDLE/install.sh | tee /tmp/bundle/upgrade.out
grep -q 'restarting the service' /tmp/bundle/upgrade.out
svstat /service/dbus-aggregate-batteries | grep -q "$PID1" && { echo "the service was not restarted"; exit 1; }
PID1=$(svstat /service/dbus-aggregate-batteries | grep -o 'pid [0-9]*')
echo "service restarted after the upgrade: OK ($PID1)"

echo "-- imports"
python3 -s -c '
import platform, time
from importlib.metadata import version
t = time.monotonic()
import pydantic_core, pydantic, yaml, dbus_next
from dbus_aggregate_batteries import cli
from dbus_aggregate_batteries.shell import app
print("import time under qemu: %.1f s" % (time.monotonic() - t))
print("machine", platform.machine(), "python", platform.python_version())
print("pydantic", pydantic.VERSION, "pydantic_core", pydantic_core.__version__)
print("  from", pydantic_core._pydantic_core.__file__)
print("yaml", yaml.__version__, "C loader:", yaml.__with_libyaml__, "dbus_next", version("dbus-next"))
'

echo "-- check-config"
python3 -s -m dbus_aggregate_batteries check-config $APP/config.yaml > /tmp/bundle/effective.yaml
echo "check-config: OK ($(wc -l < /tmp/bundle/effective.yaml) lines of effective config)"
printf 'chemistry: banana\n' > /tmp/bundle/bad.yaml
if python3 -s -m dbus_aggregate_batteries check-config /tmp/bundle/bad.yaml 2> /tmp/bundle/bad.err; then
    echo "check-config accepted an invalid file"
    exit 1
fi
echo "check-config of an invalid file: refused: $(sed -n 2p /tmp/bundle/bad.err)"

echo "-- demo --batteries 3 --duration 5"
python3 -s -m dbus_aggregate_batteries demo --batteries 3 --duration 5 > /tmp/bundle/demo.out 2>&1 ||
    { cat /tmp/bundle/demo.out; exit 1; }
tail -n 6 /tmp/bundle/demo.out
grep -q '^aggregate ' /tmp/bundle/demo.out
echo "demo: OK"

echo "-- uninstall.sh --purge"
busybox sh $APP/uninstall.sh --purge
[ ! -e $APP ] && [ ! -e /service/dbus-aggregate-batteries ] && [ ! -e /data/rc.local ]
sleep 2
if kill -s 0 "${PID1#pid }" 2>/dev/null; then
    echo "the service ($PID1) still runs"
    exit 1
fi
echo "service stopped: OK"
echo "INSIDE: ALL OK"
