# Helpers shared by the deploy/ scripts (sourced; the script sets PROG first).

log() { echo "$PROG: $*"; }
warn() { echo "$PROG: WARNING: $*" >&2; }
die() { echo "$PROG: ERROR: $*" >&2; exit 1; }

# proc_field PID N: field N (3 = state, 4 = ppid, 22 = starttime) of /proc/PID/stat.
# The command name (field 2) may hold spaces, so fields are counted after its ")".
proc_field() {
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }                    # drop "pid (comm) "
    read -r -a fields <<< "$stat"        # fields[0] = field 3
    [ "$2" -ge 3 ] && [ $(( $2 - 3 )) -lt ${#fields[@]} ] || return 1
    echo "${fields[$(( $2 - 3 ))]}"
}

# starttime (field 22) identifies a process across PID reuse.
proc_starttime() { proc_field "$1" 22; }
proc_ppid() { proc_field "$1" 4; }
proc_state() { proc_field "$1" 3; }

# apt_install PKG...: install with the current package lists, refreshing them once if that fails;
# on failure print the tail of apt's output and die naming the packages.
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "$* not installed and there is no apt-get"
    log "installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    local out
    out=$(mktemp)
    if ! apt-get install -y -q --no-install-recommends "$@" >"$out" 2>&1; then
        if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "$@"; } >"$out" 2>&1; then
            tail -n 15 "$out" >&2
            rm -f "$out"
            die "apt-get could not install $* (see the lines above)"
        fi
    fi
    rm -f "$out"
}
