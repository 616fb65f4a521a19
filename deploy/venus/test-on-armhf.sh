#!/usr/bin/env bash
# Run the release bundle on 32-bit ARM (armv7l, as on a Cerbo GX / Ekrano / Raspberry Pi) with
# qemu-user, in a Debian armhf root made with debootstrap.  Not part of the default test run.
#
#   sudo deploy/venus/test-on-armhf.sh [--workdir DIR] [--suite bookworm] [--fresh]
#
# Steps: debootstrap a minimal armhf root (python3, dbus, busybox, daemontools) once into
# WORKDIR/<suite>-armhf; build an armv7l bundle for that root's Python with deploy/build-bundle
# (bookworm has CPython 3.11, Venus OS v3.60+ has 3.12: same wheels, other tags); then, inside
# the root under qemu-arm (test-on-armhf-inside.sh), with a system dbus-daemon and svscan on
# /service as on Venus OS: install.sh under BusyBox sh (the service starts under supervise,
# logs through multilog and registers with simulated packs), a second install.sh (changes
# nothing, no restart), import pydantic_core, check-config, a 5-second demo, and
# uninstall.sh --purge.  The summary lands in WORKDIR/result.txt.
#
# Needs root, Debian's debootstrap, qemu-user-static and binfmt-support (installed when
# missing), a binfmt_misc the kernel lets us register qemu-arm in, and network access to the
# Debian mirror and PyPI.  Takes about 3 minutes the first time, 1 minute after.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORKDIR=/var/tmp/dab-armhf
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
FRESH=0
PYTHON=${PYTHON:-}

while [ $# -gt 0 ]; do
    case $1 in
        --workdir) WORKDIR=$2; shift ;;
        --suite) SUITE=$2; shift ;;
        --fresh) FRESH=1 ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

step() { printf '\n== %s\n' "$*"; }
fail() { echo "test-on-armhf: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, chroot, binfmt_misc)"
if [ -z "$PYTHON" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi

step "host tools"
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
[ -x /usr/bin/qemu-arm-static ] || [ -x /usr/bin/qemu-arm ] || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
        fail "cannot mount binfmt_misc (mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc)"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-arm ]; then
    update-binfmts --enable qemu-arm || fail "cannot register qemu-arm in binfmt_misc"
fi
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-arm || fail "qemu-arm binfmt is disabled"
echo "binfmt_misc: qemu-arm $(sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-arm)"

ROOTFS=$WORKDIR/$SUITE-armhf
mkdir -p "$WORKDIR"
cleanup() {
    for m in "$ROOTFS/proc" "$ROOTFS/service"; do
        if mountpoint -q "$m" 2>/dev/null; then umount "$m" || umount -l "$m" || true; fi
    done
}
trap cleanup EXIT
if [ "$FRESH" = 1 ] && [ -d "$ROOTFS" ]; then
    cleanup
    rm -rf "$ROOTFS"
fi
if [ ! -x "$ROOTFS/usr/bin/python3" ] || [ ! -x "$ROOTFS/bin/busybox" ] ||
        [ ! -x "$ROOTFS/usr/bin/svscan" ]; then
    step "debootstrap $SUITE armhf into $ROOTFS"
    rm -rf "$ROOTFS"
    debootstrap --arch=armhf --variant=minbase --include=python3,dbus,busybox,daemontools \
        "$SUITE" "$ROOTFS" "$MIRROR" > "$WORKDIR/debootstrap.log" 2>&1 ||
        { tail -20 "$WORKDIR/debootstrap.log" >&2; fail "debootstrap (log: $WORKDIR/debootstrap.log)"; }
fi
mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
# /service is a tmpfs on Venus OS too.  Here it must be: svscan (32-bit, no large-file
# support) cannot read an ext4 folder under qemu-user, whose 64-bit directory offsets
# do not fit ("svscan: warning: unable to read directory: unknown error", EOVERFLOW).
mkdir -p "$ROOTFS/service"
mountpoint -q "$ROOTFS/service" || mount -t tmpfs -o size=1m,mode=755 tmpfs "$ROOTFS/service"
MACHINE=$(chroot "$ROOTFS" uname -m)
PYVER=$(chroot "$ROOTFS" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
echo "chroot: uname -m = $MACHINE, python3 = $PYVER, $(chroot "$ROOTFS" python3 -c \
    'import sysconfig; print("EXT_SUFFIX", sysconfig.get_config_var("EXT_SUFFIX"))')"
[ "$MACHINE" = armv7l ] || fail "uname -m in the chroot is $MACHINE, not armv7l"

step "build the armv7l bundle for CPython $PYVER"
rm -rf "$WORKDIR/dist"
TARBALL=$("$PYTHON" "$REPO/deploy/build-bundle" --arch armv7l --python-version "$PYVER" \
    --out "$WORKDIR/dist" 2> "$WORKDIR/build.log" | tail -n 1) ||
    { tail -20 "$WORKDIR/build.log" >&2; fail "build-bundle"; }
grep '^build-bundle: armv7l: ' "$WORKDIR/build.log" || true
rm -rf "$ROOTFS/tmp/bundle" && mkdir -p "$ROOTFS/tmp/bundle"
cp "$TARBALL" "$ROOTFS/tmp/bundle/"

step "inside the armhf root (qemu-arm): install, import, check-config, demo, uninstall"
cp "$REPO/deploy/venus/test-on-armhf-inside.sh" "$ROOTFS/tmp/bundle/inside.sh"
touch "$ROOTFS/tmp/bundle/.armhf-test-root"
START=$(date +%s)
chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    /bin/sh /tmp/bundle/inside.sh 2>&1 | tee "$WORKDIR/inside.log"
status=${PIPESTATUS[0]}
ELAPSED=$(( $(date +%s) - START ))
{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "host: $(uname -m), kernel $(uname -r), $(qemu-arm-static --version 2>/dev/null | head -n 1)"
    echo "root: Debian $SUITE armhf (debootstrap --variant=minbase), python3 $PYVER, uname -m $MACHINE"
    echo "bundle: $(basename "$TARBALL")"
    grep '^build-bundle: armv7l: .*\.whl$' "$WORKDIR/build.log" | sed 's/^build-bundle: armv7l: /  wheel: /'
    grep -E '^(service|svstat|pydantic|  from|yaml|import time|check-config|demo|INSIDE)' "$WORKDIR/inside.log" || true
    echo "inside the root: exit $status after ${ELAPSED} s"
} > "$WORKDIR/result.txt"
step "result ($WORKDIR/result.txt)"
cat "$WORKDIR/result.txt"
[ "$status" = 0 ] || fail "inside the armhf root (log: $WORKDIR/inside.log)"
echo "test-on-armhf: PASSED"
