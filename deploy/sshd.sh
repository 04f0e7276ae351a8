#!/usr/bin/env bash
# An sshd on loopback for the tests of the ssh start method, with a key pair
# for the current user.
#
#   deploy/sshd.sh start | stop | status
#
# Files written (state dir, default /run/qcg-test-sshd):
#   sshd_config   the server's own config (Port, ListenAddress 127.0.0.1, keys only)
#   sshd.pid      its PID (the only process `stop` signals)
#   ssh_config    client config: Host n? n?? n??? localhost 127.0.0.1 qcg-test-sshd
#                 -> 127.0.0.1:PORT with the key, no host-key prompts
#                 (`ssh -F FILE n3 cmd`; also Include'd from ~/.ssh/config
#                 while the server runs, so plain `ssh n3 cmd` works)
#   ssh-command   the exact command line to log in
#   env           QCG_TEST_SSH_PORT, QCG_TEST_SSH_KEY, QCG_TEST_SSH_CONFIG,
#                 QCG_TEST_SSH_USER, QCG_TEST_SSH_HOST
#
# Environment: QCG_TEST_SSH_PORT (default 2222), QCG_TEST_SSHD_STATE,
# QCG_TEST_SSH_TIMEOUT (seconds to wait for a working login, default 20),
# QCG_TEST_SSH_NO_INSTALL=1 (never call apt-get).
set -euo pipefail

PROG="sshd.sh"
STATE_DIR="${QCG_TEST_SSHD_STATE:-/run/qcg-test-sshd}"
PORT="${QCG_TEST_SSH_PORT:-2222}"
TIMEOUT="${QCG_TEST_SSH_TIMEOUT:-20}"
USER_NAME="$(id -un)"
SSH_DIR="${HOME:-/root}/.ssh"
KEY="$SSH_DIR/qcg_test_ed25519"
SSHD_CONFIG="$STATE_DIR/sshd_config"
CLIENT_CONFIG="$STATE_DIR/ssh_config"
PIDFILE="$STATE_DIR/sshd.pid"
INCLUDE_BEGIN="# >>> qcg-test-sshd (deploy/sshd.sh) >>>"
INCLUDE_END="# <<< qcg-test-sshd <<<"

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# running: prints the PID of the sshd this script started, if it still runs.
running() {
    local pid st state
    [ -f "$STATE_DIR/pid" ] || return 1
    read -r pid st < "$STATE_DIR/pid"
    state=$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ] || return 1
    [ "$(proc_starttime "$pid")" = "$st" ] || return 1
    echo "$pid"
}

ssh_argv() {     # the login command, without the remote command
    echo "ssh -p $PORT -i $KEY -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=$STATE_DIR/known_hosts -o LogLevel=ERROR $USER_NAME@127.0.0.1"
}

login_works() {
    # shellcheck disable=SC2046
    timeout 10 $(ssh_argv) true </dev/null >/dev/null 2>&1
}

install_packages() {
    export PATH="$PATH:/usr/sbin:/sbin"
    if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1; then
        return 0
    fi
    [ "${QCG_TEST_SSH_NO_INSTALL:-0}" = 1 ] && die "openssh-server is not installed and QCG_TEST_SSH_NO_INSTALL=1"
    [ "$(id -u)" = 0 ] || die "openssh-server is not installed and installing needs root"
    apt_install openssh-server openssh-client
    [ -x /usr/sbin/sshd ] || die "apt-get installed openssh-server but /usr/sbin/sshd is missing"
}

write_files() {
    mkdir -p "$STATE_DIR" "$SSH_DIR"
    chmod 0700 "$SSH_DIR"
    # The user's key pair, authorised once.
    if [ ! -f "$KEY" ]; then
        ssh-keygen -q -t ed25519 -N '' -C "qcg-test-$USER_NAME" -f "$KEY"
    fi
    local pub
    pub=$(cat "$KEY.pub")
    touch "$SSH_DIR/authorized_keys"
    chmod 0600 "$SSH_DIR/authorized_keys"
    grep -qxF "$pub" "$SSH_DIR/authorized_keys" || echo "$pub" >> "$SSH_DIR/authorized_keys"

    local new
    new=$(mktemp)
    cat > "$new" <<EOF
# Written by deploy/sshd.sh: loopback sshd for the QCG-PilotJob tests.
Port $PORT
ListenAddress 127.0.0.1
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile $PIDFILE
AuthorizedKeysFile .ssh/authorized_keys
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
LogLevel INFO
EOF
    if ! cmp -s "$new" "$SSHD_CONFIG" 2>/dev/null; then
        mv "$new" "$SSHD_CONFIG"
        echo changed
    else
        rm -f "$new"
    fi
    cat > "$CLIENT_CONFIG" <<EOF
# Written by deploy/sshd.sh: the virtual Slurm nodes (n1, n2, ...) and
# localhost all reach the loopback sshd with the test key.
Host n? n?? n??? localhost 127.0.0.1 qcg-test-sshd
    HostName 127.0.0.1
    Port $PORT
    User $USER_NAME
    IdentityFile $KEY
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking no
    UserKnownHostsFile $STATE_DIR/known_hosts
    HostKeyAlias qcg-test-sshd
    LogLevel ERROR
EOF
    echo "$(ssh_argv)" > "$STATE_DIR/ssh-command"
    cat > "$STATE_DIR/env" <<EOF
QCG_TEST_SSH_PORT=$PORT
QCG_TEST_SSH_KEY=$KEY
QCG_TEST_SSH_USER=$USER_NAME
QCG_TEST_SSH_HOST=127.0.0.1
QCG_TEST_SSH_CONFIG=$CLIENT_CONFIG
EOF
}

add_include() {
    local cfg="$SSH_DIR/config"
    touch "$cfg"
    chmod 0600 "$cfg"
    grep -qxF "$INCLUDE_BEGIN" "$cfg" && return 0
    # Include must come before any Host block to apply to every host.
    local tmp
    tmp=$(mktemp)
    printf '%s\nInclude %s\n%s\n' "$INCLUDE_BEGIN" "$CLIENT_CONFIG" "$INCLUDE_END" > "$tmp"
    cat "$cfg" >> "$tmp"
    cat "$tmp" > "$cfg"
    rm -f "$tmp"
}

remove_include() {
    local cfg="$SSH_DIR/config"
    [ -f "$cfg" ] || return 0
    grep -qxF "$INCLUDE_BEGIN" "$cfg" || return 0
    sed -i "/^$(printf '%s' "$INCLUDE_BEGIN" | sed 's/[][\.*^$/]/\\&/g')\$/,/^$(printf '%s' "$INCLUDE_END" | sed 's/[][\.*^$/]/\\&/g')\$/d" "$cfg"
}

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        running >/dev/null || return 0
        sleep 0.1
    done
    echo "$PROG: WARNING: sshd (pid $pid) ignored TERM; sending KILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
}

cmd_start() {
    [ "$(id -u)" = 0 ] || die "must run as root (sshd needs it)"
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/lock"
    flock -w 120 9 || die "another '$PROG' holds $STATE_DIR/lock"
    install_packages
    ssh-keygen -A >/dev/null
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
    local changed pid
    changed=$(write_files)
    if pid=$(running); then
        if [ -z "$changed" ] && login_works; then
            add_include
            log "already running (pid $pid)"
            log "login: $(cat "$STATE_DIR/ssh-command") CMD"
            return 0
        fi
        log "restarting sshd (pid $pid): configuration changed or login fails"
        stop_pid "$pid"
    fi
    rm -f "$STATE_DIR/pid" "$PIDFILE"
    local err
    /usr/sbin/sshd -t -f "$SSHD_CONFIG" 2>"$STATE_DIR/sshd.err" || die "sshd rejects $SSHD_CONFIG: $(cat "$STATE_DIR/sshd.err")"
    if ! /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$STATE_DIR/sshd.log" </dev/null >/dev/null 2>"$STATE_DIR/sshd.err" 9>&-; then
        err=$(cat "$STATE_DIR/sshd.err"; tail -n 5 "$STATE_DIR/sshd.log" 2>/dev/null)
        die "sshd did not start: $err"
    fi
    local i
    pid=""
    for i in $(seq 50); do
        pid=$(cat "$PIDFILE" 2>/dev/null || true)
        [ -n "$pid" ] && break
        sleep 0.1
    done
    [ -n "$pid" ] || die "sshd wrote no pid file $PIDFILE: $(tail -n 5 "$STATE_DIR/sshd.log" 2>/dev/null | tr '\n' ' ')"
    echo "$pid $(proc_starttime "$pid")" > "$STATE_DIR/pid"
    local deadline=$(( SECONDS + TIMEOUT ))
    until login_works; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "----- tail of $STATE_DIR/sshd.log" >&2
            tail -n 15 "$STATE_DIR/sshd.log" >&2 || true
            echo "----- $(ssh_argv) true" >&2
            # shellcheck disable=SC2046
            timeout 10 $(ssh_argv) -o LogLevel=INFO true </dev/null 2>&1 | tail -n 5 >&2 || true
            die "sshd runs (pid $pid) but no login within ${TIMEOUT}s"
        fi
        sleep 0.2
    done
    add_include
    log "sshd up on 127.0.0.1:$PORT (pid $pid)"
    log "login: $(cat "$STATE_DIR/ssh-command") CMD"
    log "or: ssh -F $CLIENT_CONFIG n1 CMD   (env: $STATE_DIR/env)"
}

cmd_stop() {
    local pid
    remove_include
    if pid=$(running); then
        stop_pid "$pid"
        log "stopped sshd (pid $pid)"
    else
        log "nothing to stop"
    fi
    rm -f "$STATE_DIR/pid" "$PIDFILE"
}

cmd_status() {
    local pid
    if pid=$(running); then
        if login_works; then
            echo "sshd running (pid $pid) on 127.0.0.1:$PORT; login works"
            echo "login: $(cat "$STATE_DIR/ssh-command") CMD"
            return 0
        fi
        echo "sshd running (pid $pid) on 127.0.0.1:$PORT; login FAILS"
        return 1
    fi
    echo "sshd not running (not started by $PROG)"
    return 1
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start | stop | status" >&2; exit 2 ;;
esac
