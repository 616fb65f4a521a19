#!/bin/sh
# Install or upgrade dbus-aggregate-batteries on Venus OS (v3.60 or later).
#
#   sh install.sh [--dry-run] [--verbose] [--no-start] [--root DIR] [TARBALL]
#
# Run it from the unpacked release tarball (or give the tarball as argument).  It:
#   1. unpacks the bundled wheels for this machine's python3 into a temporary folder and checks
#      the configuration with the NEW code (`check-config`): if that fails nothing is changed,
#      the running service is left alone and the exit status is non-zero;
#   2. brings /data/apps/dbus-aggregate-batteries up to date: src/, lib/<arch>/, service/, bin/
#      and a few files are made exact copies of the bundle (only files that differ are written,
#      so a second run changes nothing), then compiled; config.yaml (created from
#      config.example.yaml on the first install) and state/ belong to the owner and are never
#      overwritten;
#   3. adds one marked line to /data/rc.local (created executable if missing; other lines are
#      kept) that links /service/dbus-aggregate-batteries to the app's service/ at every boot;
#   4. links the service now and starts it, or restarts it when anything changed.
# --dry-run prints what would change and changes nothing; --verbose lists every file.
# --no-start leaves the service as it is.  --root DIR works on DIR/data,
# DIR/service and DIR/var/log instead (for tests) and never touches a running service.
# POSIX sh: runs under BusyBox ash (Venus OS) and dash.  Needs python3 (always on Venus OS).

set -u

NAME=dbus-aggregate-batteries
APP_DEV=/data/apps/$NAME               # paths as seen on the device (written into rc.local)
SERVICE_DEV=/service/$NAME
MARK="# added by $NAME install.sh (uninstall.sh removes this line)"
BOOT_LINE="if [ -d $APP_DEV/service ]; then ln -sfn $APP_DEV/service $SERVICE_DEV; fi  $MARK"

ROOT=
DRY_RUN=0
VERBOSE=0
START=1
TARBALL=
PYTHON=${PYTHON:-python3}

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || die "--root needs a folder"; ROOT=$2; shift ;;
        --root=*) ROOT=${1#--root=} ;;
        -n|--dry-run) DRY_RUN=1 ;;
        -v|--verbose) VERBOSE=1 ;;
        --no-start) START=0 ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$TARBALL" ] || die "only one tarball, please"; TARBALL=$1 ;;
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

TMP=$(mktemp -d "${TMPDIR:-/tmp}/dab-install.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM
: > "$TMP/changes"

# --- the bundle ------------------------------------------------------------------------------
if [ -n "$TARBALL" ]; then
    [ -f "$TARBALL" ] || die "$TARBALL: no such file"
    mkdir "$TMP/tarball" && tar -xzf "$TARBALL" -C "$TMP/tarball" || die "cannot unpack $TARBALL"
    set -- "$TMP/tarball"/*/BUNDLE-INFO
    [ -f "$1" ] || die "$TARBALL is not a $NAME release tarball"
    BUNDLE=${1%/BUNDLE-INFO}
else
    BUNDLE=$(cd -P "$(dirname "$0")" && pwd -P) || die "cannot find the bundle"
fi
[ -f "$BUNDLE/BUNDLE-INFO" ] && [ -d "$BUNDLE/src" ] && [ -d "$BUNDLE/wheels" ] ||
    die "run install.sh from the unpacked release tarball ($BUNDLE is not one)"
if [ -d "$APP" ] && [ "$BUNDLE" = "$(cd -P "$APP" && pwd -P)" ]; then
    die "this is the installed copy: run install.sh from the unpacked release tarball"
fi
info() { sed -n "s/^$1=//p" "$BUNDLE/BUNDLE-INFO"; }
VERSION=$(info version)
WANT_PY=$(info python)

# --- the machine -----------------------------------------------------------------------------
[ -d "$ROOT/data" ] || die "$ROOT/data is missing: this is not Venus OS (use --root DIR for a test tree)"
[ -d "$ROOT/service" ] || die "$ROOT/service is missing: this is not Venus OS (see deploy/systemd for other Linux)"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
# Python X.Y and the architecture of Python's own build (not `uname -m`: a 32-bit userland on
# a 64-bit kernel says aarch64 there); service/run and bin/ work it out the same way.
PYINFO=$("$PYTHON" -c '
import platform, sys, sysconfig
t = (sysconfig.get_config_var("MULTIARCH") or "").split("-")[0]
a = {"arm": "armv7l", "aarch64": "aarch64", "x86_64": "x86_64"}.get(t, platform.machine())
print("%d.%d" % sys.version_info[:2], a)
') || die "$PYTHON does not run"
HAVE_PY=${PYINFO% *}
ARCH=${PYINFO#* }
[ -d "$BUNDLE/wheels/$ARCH" ] ||
    die "this bundle has no wheels for $ARCH (it has: $(info arches))"
[ "$HAVE_PY" = "$WANT_PY" ] ||
    die "this bundle is for Python $WANT_PY (Venus OS v3.60 or later); $PYTHON is Python $HAVE_PY"

# --- helpers ---------------------------------------------------------------------------------
say() {  # record and print one change
    echo "$*" >> "$TMP/changes"
    if [ "$DRY_RUN" = 1 ]; then echo "would $*"; else echo "$*"; fi
}
detail() {  # a per-file change: printed with --verbose (counted by the caller)
    echo "$*" >> "$TMP/changes"
    if [ "$VERBOSE" = 1 ]; then
        if [ "$DRY_RUN" = 1 ]; then echo "  would $*"; else echo "  $*"; fi
    fi
}
do_() {  # run a command unless --dry-run
    [ "$DRY_RUN" = 1 ] || "$@" || die "failed: $*"
}
same_file() {
    if command -v cmp >/dev/null 2>&1; then
        cmp -s "$1" "$2"
    else
        "$PYTHON" -c 'import filecmp, sys; sys.exit(not filecmp.cmp(sys.argv[1], sys.argv[2], False))' "$1" "$2"
    fi
}
write_file() {  # write_file SRC DST: copy contents into DST, keeping its inode and mode
    cat "$1" > "$2"
}

# sync_tree SRC DST KEEP: make DST an exact copy of SRC, writing only what differs.
# Never removes __pycache__ (compiled here or at run time); with KEEP=svc also keeps the
# supervise/ folders and a down file that daemontools and the owner put in service/.
sync_tree() {
    st_src=$1 st_dst=$2 st_keep=$3 st_add=0 st_upd=0 st_rm=0
    (cd "$st_src" && find . -type d ! -name .) > "$TMP/dirs" || die "cannot read $st_src"
    (cd "$st_src" && find . -type f) > "$TMP/files" || die "cannot read $st_src"
    if [ -d "$st_dst" ]; then
        (cd "$st_dst" && find . ! -name .) > "$TMP/have" || die "cannot read $st_dst"
    else
        : > "$TMP/have"
        detail "create $st_dst/"
        do_ mkdir -p "$st_dst"
    fi
    while IFS= read -r p; do
        p=${p#./}
        if [ ! -d "$st_dst/$p" ]; then
            detail "create $st_dst/$p/"
            do_ mkdir -p "$st_dst/$p"
        fi
    done < "$TMP/dirs"
    while IFS= read -r p; do
        p=${p#./}
        if [ ! -f "$st_dst/$p" ]; then
            detail "add $st_dst/$p"
            do_ cp "$st_src/$p" "$st_dst/$p"
            st_add=$((st_add + 1))
            continue
        fi
        if ! same_file "$st_src/$p" "$st_dst/$p"; then
            detail "update $st_dst/$p"
            do_ write_file "$st_src/$p" "$st_dst/$p"
            st_upd=$((st_upd + 1))
        fi
        if [ -x "$st_src/$p" ] && [ ! -x "$st_dst/$p" ]; then
            detail "chmod 755 $st_dst/$p"
            do_ chmod 755 "$st_dst/$p"
        elif [ ! -x "$st_src/$p" ] && [ -x "$st_dst/$p" ]; then
            detail "chmod 644 $st_dst/$p"
            do_ chmod 644 "$st_dst/$p"
        fi
    done < "$TMP/files"
    st_gone=
    while IFS= read -r p; do
        p=${p#./}
        if [ -n "$st_gone" ]; then
            case $p in "$st_gone"/*) continue ;; esac
        fi
        case /$p/ in */__pycache__/*) continue ;; esac
        if [ "$st_keep" = svc ]; then
            case /$p/ in */supervise/*|/down/) continue ;; esac
        fi
        [ -e "$st_src/$p" ] && continue
        detail "remove $st_dst/$p"
        do_ rm -rf "$st_dst/$p"
        st_gone=$p
        st_rm=$((st_rm + 1))
    done < "$TMP/have"
    if [ $((st_add + st_upd + st_rm)) -gt 0 ]; then
        say "sync $st_dst/: $st_add added, $st_upd updated, $st_rm removed"
    fi
}

sync_file() {  # sync_file SRC DST MODE
    if [ ! -f "$2" ]; then
        say "add $2"
        do_ cp "$1" "$2"
        do_ chmod "$3" "$2"
    elif ! same_file "$1" "$2"; then
        say "update $2"
        do_ write_file "$1" "$2"
    fi
    if [ -f "$2" ]; then
        if { [ "$3" = 755 ] && [ ! -x "$2" ]; } || { [ "$3" = 644 ] && [ -x "$2" ]; }; then
            say "chmod $3 $2"
            do_ chmod "$3" "$2"
        fi
    fi
}

# --- 1. unpack the wheels and check the configuration with the new code ----------------------
echo "$NAME $VERSION for $ARCH (Python $HAVE_PY) from $BUNDLE"
STAGE=$TMP/lib/$ARCH
mkdir -p "$STAGE" || die "mkdir $STAGE failed"
set -- "$BUNDLE/wheels/$ARCH"/*.whl
[ -f "$1" ] || die "no wheels in $BUNDLE/wheels/$ARCH"
"$PYTHON" -c '
import sys, zipfile
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(sys.argv[1])
' "$STAGE" "$@" || die "cannot unpack the wheels"

if [ -f "$APP/config.yaml" ]; then
    CONFIG=$APP/config.yaml
else
    CONFIG=$BUNDLE/config.example.yaml
fi
if PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$STAGE:$BUNDLE/src" \
        "$PYTHON" -m dbus_aggregate_batteries check-config "$CONFIG" \
        > /dev/null 2> "$TMP/check.err"; then
    echo "config: $CONFIG is valid"
else
    rc=$?
    cat "$TMP/check.err" >&2
    if [ "$rc" = 2 ]; then
        die "$CONFIG is invalid for $NAME $VERSION (see above): fix it and run install.sh again; nothing was changed and the running service was left alone"
    fi
    die "$NAME $VERSION does not run with $PYTHON on this machine (exit $rc, see above); nothing was changed"
fi

# --- 2. the app folder -----------------------------------------------------------------------
if [ ! -d "$APP" ]; then
    say "create $APP/"
    do_ mkdir -p "$APP"
fi
sync_tree "$BUNDLE/src" "$APP/src" none
sync_tree "$TMP/lib" "$APP/lib" none
sync_tree "$BUNDLE/service" "$APP/service" svc
sync_tree "$BUNDLE/bin" "$APP/bin" none
sync_file "$BUNDLE/BUNDLE-INFO" "$APP/BUNDLE-INFO" 644
sync_file "$BUNDLE/config.example.yaml" "$APP/config.example.yaml" 644
[ -f "$BUNDLE/INSTALL.md" ] && sync_file "$BUNDLE/INSTALL.md" "$APP/INSTALL.md" 644
sync_file "$BUNDLE/uninstall.sh" "$APP/uninstall.sh" 755
if [ ! -e "$APP/config.yaml" ]; then
    say "create $APP/config.yaml from config.example.yaml"
    do_ cp "$BUNDLE/config.example.yaml" "$APP/config.yaml"
    do_ chmod 644 "$APP/config.yaml"
fi
if [ ! -d "$APP/state" ]; then
    say "create $APP/state/"
    do_ mkdir -p "$APP/state"
fi
if [ ! -d "$LOGDIR" ]; then
    say "create $LOGDIR/"
    do_ mkdir -p "$LOGDIR"
fi
if [ "$DRY_RUN" = 0 ]; then
    # Compile now rather than at the first start (slow on a Cortex-A7, and it would write to
    # /data then).  Up-to-date .pyc files are left alone, so a second run writes nothing.
    "$PYTHON" -m compileall -q "$APP/src" "$APP/lib/$ARCH" > "$TMP/compile.log" 2>&1 ||
        echo "install.sh: warning: compileall reported problems (harmless):" \
            "$(head -n 3 "$TMP/compile.log")" >&2
fi

# --- 3. /data/rc.local -----------------------------------------------------------------------
rc_want() {  # rc.local without our marked lines, with BOOT_LINE before a final "exit"
    awk -v line="$BOOT_LINE" -v mark="$MARK" '
        index($0, mark) { next }
        { buf[n++] = $0 }
        END {
            if (n == 0) buf[n++] = "#!/bin/sh"
            ins = n
            for (i = n - 1; i >= 0; i--) if (buf[i] !~ /^[ \t]*$/) break
            if (i >= 0 && buf[i] ~ /^[ \t]*exit([ \t]+0)?[ \t]*(#.*)?$/) ins = i
            for (i = 0; i < n; i++) { if (i == ins) print line; print buf[i] }
            if (ins == n) print line
        }' "$1"
}
if [ ! -e "$RC" ]; then
    say "create $RC"
    printf '#!/bin/sh\n%s\n' "$BOOT_LINE" > "$TMP/rc.local"
    do_ cp "$TMP/rc.local" "$RC"
    do_ chmod 755 "$RC"
else
    rc_want "$RC" > "$TMP/rc.local" || die "cannot read $RC"
    if ! same_file "$TMP/rc.local" "$RC"; then
        say "update $RC (boot line of $NAME; other lines kept)"
        do_ write_file "$TMP/rc.local" "$RC"
    fi
    if [ ! -x "$RC" ]; then
        say "chmod +x $RC (it is not run at boot otherwise)"
        do_ chmod +x "$RC"
    fi
fi

# --- 4. the service link, and (re)start ------------------------------------------------------
NEW_LINK=0
if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$APP/service" ]; then
    :
elif [ -L "$LINK" ] || [ ! -e "$LINK" ]; then
    say "link $LINK -> $APP/service"
    do_ ln -sfn "$APP/service" "$LINK"
    NEW_LINK=1
else
    die "$LINK exists and is not a link made by install.sh: stop it (svc -dx $LINK $LINK/log), remove it, and run install.sh again"
fi

CHANGES=$(wc -l < "$TMP/changes" | tr -d ' ')
if [ "$DRY_RUN" = 1 ]; then
    if [ "$CHANGES" = 0 ]; then echo "dry run: nothing would change"; else echo "dry run: nothing was changed"; fi
    exit 0
fi
if [ "$CHANGES" = 0 ]; then
    echo "$NAME $VERSION: already installed, nothing changed"
else
    echo "$NAME $VERSION installed in $APP"
fi
if [ -n "$ROOT" ] || [ "$START" = 0 ]; then
    echo "not starting the service (--root or --no-start)"
    exit 0
fi
if ! command -v svc >/dev/null 2>&1 || ! command -v svstat >/dev/null 2>&1; then
    echo "install.sh: warning: daemontools (svc, svstat) not found: start the service by hand" >&2
    exit 0
fi
supervised() {
    if command -v svok >/dev/null 2>&1; then
        svok "$LINK"
    else
        svstat "$LINK" 2>&1 | grep -Eq ': (up|down)'
    fi
}
i=0
while ! supervised; do  # svscan looks at /service every 5 seconds
    i=$((i + 1))
    if [ "$i" -gt 20 ]; then
        echo "install.sh: warning: svscan has not started $LINK after 20 s; check svstat $LINK" >&2
        exit 0
    fi
    sleep 1
done
if [ "$CHANGES" != 0 ] && [ "$NEW_LINK" = 0 ]; then
    echo "restarting the service"
    svc -t "$LINK"
fi
svc -u "$LINK"
sleep 2
svstat "$LINK"
echo "log: tail -F $LOGDIR/current | tai64nlocal"
exit 0
