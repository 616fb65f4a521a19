#!/bin/sh
# Remove dbus-aggregate-batteries from Venus OS.
#
#   sh uninstall.sh [--dry-run] [--purge] [--root DIR]
#
# Stops the service, removes /service/dbus-aggregate-batteries and the marked line that
# install.sh added to /data/rc.local (other lines are kept; an rc.local left with nothing but
# "#!/bin/sh" is removed).  /data/apps/dbus-aggregate-batteries (config.yaml, state/, code)
# and the log in /var/log/dbus-aggregate-batteries are kept unless --purge is given.
# --dry-run prints what would change and changes nothing.  --root DIR works on DIR/data,
# DIR/service and DIR/var/log instead (for tests) and never touches a running service.
# The settings the service created in com.victronenergy.settings (/Settings/Devices/...)
# stay; they are harmless, and the GUI can reset them.
# POSIX sh: runs under BusyBox ash (Venus OS) and dash.

set -u

NAME=dbus-aggregate-batteries
APP_DEV=/data/apps/$NAME
SERVICE_DEV=/service/$NAME
MARK="# added by $NAME install.sh (uninstall.sh removes this line)"

ROOT=
DRY_RUN=0
PURGE=0

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
}

die() {
    echo "uninstall.sh: error: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || die "--root needs a folder"; ROOT=$2; shift ;;
        --root=*) ROOT=${1#--root=} ;;
        -n|--dry-run) DRY_RUN=1 ;;
        --purge) PURGE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT: no such folder"
    ROOT=$(cd -P "$ROOT" && pwd -P) || die "cannot enter $ROOT"
    [ "$ROOT" = / ] && ROOT=
fi
APP=$ROOT$APP_DEV
LINK=$ROOT$SERVICE_DEV
LOGDIR=$ROOT/var/log/$NAME
RC=$ROOT/data/rc.local

CHANGES=0
say() {
    CHANGES=$((CHANGES + 1))
    if [ "$DRY_RUN" = 1 ]; then echo "would $*"; else echo "$*"; fi
}
do_() {
    [ "$DRY_RUN" = 1 ] || "$@" || die "failed: $*"
}
LIVE=1  # may we touch the running service?
if [ -n "$ROOT" ] || [ "$DRY_RUN" = 1 ] || ! command -v svc >/dev/null 2>&1; then
    LIVE=0
fi
supervised() {  # is supervise running in folder $1?
    if command -v svok >/dev/null 2>&1; then
        svok "$1"
    else
        svstat "$1" 2>&1 | grep -Eq ': (up|down)'
    fi
}

# --- 1. the service: unlink first (so svscan does not restart it), then stop supervise -------
if [ -L "$LINK" ] || [ -e "$LINK" ]; then
    say "remove $LINK"
    do_ rm -f "$LINK"
fi
if [ -d "$APP/service" ]; then
    if [ "$LIVE" = 1 ]; then
        for dir in "$APP/service" "$APP/service/log"; do
            if supervised "$dir"; then
                echo "stop $dir"
                svc -dx "$dir"
            fi
        done
        i=0
        while supervised "$APP/service" || supervised "$APP/service/log"; do
            i=$((i + 1))
            [ "$i" -gt 10 ] && { echo "uninstall.sh: warning: supervise still runs in $APP/service" >&2; break; }
            sleep 1
        done
    elif [ -z "$ROOT" ] && [ "$DRY_RUN" = 1 ]; then
        echo "would stop the service (svc -dx $APP/service $APP/service/log)"
    fi
fi

# --- 2. /data/rc.local -----------------------------------------------------------------------
if [ -f "$RC" ] && grep -qF "$MARK" "$RC"; then
    TMP=$(mktemp "${TMPDIR:-/tmp}/dab-uninstall.XXXXXX") || die "mktemp failed"
    trap 'rm -f "$TMP"' EXIT
    grep -vF "$MARK" "$RC" > "$TMP"
    if [ -n "$(grep -v '^#!/bin/sh[[:space:]]*$' "$TMP" | grep '[^[:space:]]')" ]; then
        say "remove the $NAME line from $RC (other lines kept)"
        do_ sh -c 'cat "$1" > "$2"' sh "$TMP" "$RC"
    else
        say "remove $RC (it held only the $NAME line)"
        do_ rm -f "$RC"
    fi
fi

# --- 3. data ---------------------------------------------------------------------------------
if [ "$PURGE" = 1 ]; then
    if [ -e "$APP" ]; then
        say "remove $APP/ (code, config.yaml, state/)"
        do_ rm -rf "$APP"
    fi
    if [ -e "$LOGDIR" ]; then
        say "remove $LOGDIR/"
        do_ rm -rf "$LOGDIR"
    fi
    # /data/apps is shared with other add-ons: removed only when we leave it empty
    if [ -d "$ROOT/data/apps" ] && [ -z "$(ls -A "$ROOT/data/apps")" ] && [ "$DRY_RUN" = 0 ]; then
        rmdir "$ROOT/data/apps"
        echo "remove $ROOT/data/apps/ (empty)"
    fi
elif [ -e "$APP" ]; then
    echo "kept $APP (config.yaml, state/) and $LOGDIR; uninstall.sh --purge removes them"
fi

if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: nothing was changed"
elif [ "$CHANGES" = 0 ]; then
    echo "$NAME is not installed: nothing to do"
else
    echo "$NAME uninstalled"
fi
exit 0
