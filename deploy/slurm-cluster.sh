#!/usr/bin/env bash
# A real Slurm test cluster on this machine: munged, slurmctld and N slurmd
# "virtual nodes" (slurmd -N nX, all on 127.0.0.1, one port each).
#
#   deploy/slurm-cluster.sh start [N] [CPUS]   # defaults 8 nodes x 2 CPUs
#   deploy/slurm-cluster.sh stop
#   deploy/slurm-cluster.sh status
#
# N and CPUS default to $QCG_TEST_SLURM_NODES / $QCG_TEST_SLURM_CPUS, else 8 / 2;
# arguments win over the environment.
#
# Must run as root, without systemd: every daemon is started directly. The
# PIDs of the daemons this script starts are recorded in $STATE_DIR/pids and
# `stop` signals only those (TERM, then KILL after a timeout). `start` is
# idempotent: a running cluster with the same configuration is reused; with a
# different configuration, only the daemons this script started are
# restarted. `start` returns once `sinfo` shows all N nodes idle, or fails
# with "slurm-cluster.sh: ERROR: <reason>" and the tail of the relevant logs.
#
# Environment:
#   QCG_TEST_SLURM_NODES, QCG_TEST_SLURM_CPUS   cluster size (see above)
#   QCG_TEST_SLURM_TIMEOUT   seconds to wait for idle nodes (default 60)
#   QCG_TEST_SLURM_STATE     state directory (default /run/qcg-test-slurm)
#   QCG_TEST_SLURM_NO_INSTALL=1   never call apt-get
set -euo pipefail

PROG="slurm-cluster.sh"
STATE_DIR="${QCG_TEST_SLURM_STATE:-/run/qcg-test-slurm}"
PIDS="$STATE_DIR/pids"                  # lines: name pid starttime
CONF=/etc/slurm/slurm.conf
CONF_MARK="# Written by deploy/slurm-cluster.sh (QCG-PilotJob test cluster)."
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
CTLD_PORT=6817
NODE_PORT_BASE=17000
IDLE_TIMEOUT="${QCG_TEST_SLURM_TIMEOUT:-60}"
STOP_TIMEOUT=10

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# alive PID STARTTIME: the same process still runs (zombies count as dead).
alive() {
    local st
    st=$(proc_state "$1") || return 1
    [ "$st" != Z ] && [ "$st" != X ] || return 1
    [ "$(proc_starttime "$1")" = "$2" ]
}

record_pid() {   # record_pid NAME PID
    local st
    st=$(proc_starttime "$2") || die "$1 (pid $2) exited right after it started"
    mkdir -p "$STATE_DIR"
    grep -v "^$1 " "$PIDS" 2>/dev/null > "$PIDS.tmp" || true
    echo "$1 $2 $st" >> "$PIDS.tmp"
    mv "$PIDS.tmp" "$PIDS"
}

recorded() {     # recorded NAME -> "pid starttime" if recorded and alive
    local name pid st
    [ -f "$PIDS" ] || return 1
    while read -r name pid st; do
        if [ "$name" = "$1" ] && alive "$pid" "$st"; then
            echo "$pid $st"
            return 0
        fi
    done < "$PIDS"
    return 1
}

# stop_recorded PATTERN: TERM, wait, KILL the recorded daemons whose name
# matches the (extended) regex PATTERN; forget them.
stop_recorded() {
    local pattern=$1 name pid st victims=() left deadline
    [ -f "$PIDS" ] || return 0
    while read -r name pid st; do
        [[ "$name" =~ ^($pattern)$ ]] || continue
        if alive "$pid" "$st"; then
            kill -TERM "$pid" 2>/dev/null || true
            victims+=("$pid:$st:$name")
        fi
    done < "$PIDS"
    deadline=$(( SECONDS + STOP_TIMEOUT ))
    while :; do
        left=()
        for v in "${victims[@]}"; do
            IFS=: read -r pid st name <<<"$v"
            alive "$pid" "$st" && left+=("$v")
        done
        [ "${#left[@]}" -eq 0 ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            for v in "${left[@]}"; do
                IFS=: read -r pid st name <<<"$v"
                warn "$name (pid $pid) ignored TERM for ${STOP_TIMEOUT}s; sending KILL"
                kill -KILL "$pid" 2>/dev/null || true
            done
            sleep 0.2
            break
        fi
        sleep 0.1
        victims=("${left[@]}")
    done
    grep -Ev "^($pattern) " "$PIDS" > "$PIDS.tmp" || true
    mv "$PIDS.tmp" "$PIDS"
}

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

# ----------------------------------------------------------------- install
have_all() {
    local c
    for c in slurmctld slurmd sinfo srun salloc scontrol munged munge unmunge; do
        command -v "$c" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null 2>&1 || return 1
    done
}

install_packages() {
    export PATH="$PATH:/usr/sbin:/sbin"
    have_all && return 0
    [ "${QCG_TEST_SLURM_NO_INSTALL:-0}" = 1 ] && die "Slurm/munge are not installed and QCG_TEST_SLURM_NO_INSTALL=1"
    [ "$(id -u)" = 0 ] || die "Slurm/munge are not installed and installing needs root"
    local pkgs=(slurmctld slurmd slurm-client munge)
    apt_install "${pkgs[@]}"
    have_all || die "apt-get installed ${pkgs[*]} but some commands are still missing"
}

# ------------------------------------------------------------------- munge
start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 0600 /etc/munge/munge.key
    fi
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0                          # ours (recorded) or someone else's: reuse
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    rm -f /run/munge/munged.pid
    # A stale socket from a killed munged makes the new one refuse to start.
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 9>&- \
        || die "munged did not start (see /var/log/munge/munged.log): $(tail -n 3 /var/log/munge/munged.log 2>/dev/null | tr '\n' ' ')"
    local pid="" i
    for i in $(seq 50); do
        pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
        [ -n "$pid" ] && break
        sleep 0.1
    done
    [ -n "$pid" ] || die "munged wrote no pid file /run/munge/munged.pid"
    record_pid munged "$pid"
    for i in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munged runs (pid $pid) but 'munge -n | unmunge' fails: $(tail -n 3 /var/log/munge/munged.log 2>/dev/null | tr '\n' ' ')"
}

# ------------------------------------------------------------------ config
real_cpus() {    # what slurmd itself detects, else nproc
    local c
    c=$(slurmd -C 2>/dev/null | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -n1)
    [ -n "$c" ] || c=$(nproc --all 2>/dev/null || nproc)
    echo "$c"
}

real_mem_mb() {
    local m
    m=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
    [ -n "$m" ] || m=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
    echo "$m"
}

write_conf() {   # write_conf N CPUS FILE
    local n=$1 cpus=$2 file=$3 real mem overrides=""
    real=$(real_cpus)
    mem=$(real_mem_mb)
    [ "$mem" -gt 2000 ] && mem=2000
    if [ "$cpus" -gt "$real" ]; then
        overrides="SlurmdParameters=config_overrides"
    fi
    cat > "$file" <<EOF
$CONF_MARK
# $n virtual nodes x $cpus CPUs (this machine has $real CPUs).
ClusterName=local
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
KillWait=5
$overrides
NodeName=n[1-$n] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$((NODE_PORT_BASE + 1))-$((NODE_PORT_BASE + n))] CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# ----------------------------------------------------------------- daemons
start_slurmctld() {
    mkdir -p "$RUN_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
    rm -f "$RUN_DIR/slurmctld.pid"
    # -c: start from a clean state (jobs and nodes of an earlier cluster are gone).
    slurmctld -c </dev/null >/dev/null 2>&1 9>&- || fail_logs "slurmctld did not start" "$LOG_DIR/slurmctld.log"
    local pid="" i
    for i in $(seq 100); do
        pid=$(cat "$RUN_DIR/slurmctld.pid" 2>/dev/null || true)
        [ -n "$pid" ] && break
        sleep 0.05
    done
    [ -n "$pid" ] || fail_logs "slurmctld exited without starting (no pid file after 5s)" "$LOG_DIR/slurmctld.log"
    record_pid slurmctld "$pid"
}

start_slurmd() {   # start_slurmd NODE
    local node=$1 pid="" i
    mkdir -p "/var/spool/slurmd/$node"
    rm -f "$RUN_DIR/slurmd-$node.pid"
    slurmd -N "$node" </dev/null >/dev/null 2>&1 9>&- || fail_logs "slurmd -N $node did not start" "$LOG_DIR/slurmd-$node.log"
    for i in $(seq 100); do
        pid=$(cat "$RUN_DIR/slurmd-$node.pid" 2>/dev/null || true)
        [ -n "$pid" ] && break
        sleep 0.05
    done
    [ -n "$pid" ] || fail_logs "slurmd -N $node exited without starting (no pid file after 5s)" "$LOG_DIR/slurmd-$node.log"
    record_pid "slurmd-$node" "$pid"
}

fail_logs() {    # fail_logs MESSAGE LOGFILE...
    local msg=$1 f
    shift
    for f in "$@"; do
        if [ -f "$f" ]; then
            echo "----- tail of $f" >&2
            tail -n 15 "$f" >&2
        fi
    done
    die "$msg"
}

# foreign_daemons: Slurm daemons that run but were not started by this script.
foreign_daemons() {
    local pid ppid comm out=""
    for pid in $(pgrep -x 'slurmctld|slurmd' 2>/dev/null || true); do
        [ "$(proc_state "$pid" 2>/dev/null)" = Z ] && continue
        # a short-lived child that one of our daemons forked is ours too
        ppid=$(proc_ppid "$pid" 2>/dev/null || echo 0)
        grep -q " $ppid " "$PIDS" 2>/dev/null && continue
        if ! grep -q " $pid $(proc_starttime "$pid" 2>/dev/null)\$" "$PIDS" 2>/dev/null; then
            comm=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
            out="$out pid $pid ($comm);"
        fi
    done
    echo "$out"
}

# node_states: "node state" lines from sinfo (empty when slurmctld does not answer)
node_states() {
    # `scontrol ping` fails at once when slurmctld is down; sinfo retries ~10s.
    timeout 10 scontrol ping >/dev/null 2>&1 || return 0
    timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true
}

resume_stuck_nodes() {
    # A cluster kept running between runs may hold nodes an earlier run left drained or down (a step that
    # did not end with its signals drains its node): they are the test cluster's, so they go back to work.
    local node state
    node_states | awk '$2 ~ /drain|down/ {print $1, $2}' | while read -r node state; do
        if timeout 10 scontrol update nodename="$node" state=resume >/dev/null 2>&1; then
            log "node $node was $state: resumed"
        else
            log "node $node is $state and could not be resumed"
        fi
    done
}

wait_idle() {    # wait_idle N
    local n=$1 deadline states idle total
    deadline=$(( SECONDS + IDLE_TIMEOUT ))
    while :; do
        states=$(node_states)
        total=$(printf '%s\n' "$states" | grep -c . || true)
        idle=$(printf '%s\n' "$states" | awk '$2 == "idle"' | grep -c . || true)
        [ "$total" -eq "$n" ] && [ "$idle" -eq "$n" ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "----- sinfo -N:" >&2
            printf '%s\n' "${states:-<no answer from slurmctld>}" >&2
            local logs=("$LOG_DIR/slurmctld.log") node
            for node in $(printf '%s\n' "$states" | awk '$2 != "idle" {print $1}' | head -n 3); do
                logs+=("$LOG_DIR/slurmd-$node.log")
            done
            fail_logs "after ${IDLE_TIMEOUT}s only $idle of $n nodes are idle" "${logs[@]}"
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------- commands
cmd_start() {
    local n=${1:-${QCG_TEST_SLURM_NODES:-8}} cpus=${2:-${QCG_TEST_SLURM_CPUS:-2}} t0=$EPOCHREALTIME t1
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "bad number of nodes: '$n'"
    [[ "$cpus" =~ ^[1-9][0-9]*$ ]] || die "bad number of CPUs per node: '$cpus'"
    [ "$n" -le 999 ] || die "at most 999 nodes"
    [ "$(id -u)" = 0 ] || die "must run as root (it starts Slurm daemons as root)"
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/lock"
    flock -w 300 9 || die "another '$PROG' holds $STATE_DIR/lock"

    install_packages
    start_munge

    local new
    new=$(mktemp)
    write_conf "$n" "$cpus" "$new"
    local same=0
    if [ -f "$CONF" ] && cmp -s "$new" "$CONF"; then same=1; fi

    local foreign
    foreign=$(foreign_daemons)
    if [ -n "$foreign" ]; then
        if [ "$same" = 1 ] && [ "$(node_states | awk '$2 == "idle"' | wc -l)" -eq "$n" ] \
           && [ "$(node_states | wc -l)" -eq "$n" ]; then
            rm -f "$new"
            log "reusing a running cluster not started by this script ($n nodes idle)"
            return 0
        fi
        rm -f "$new"
        die "Slurm daemons not started by this script are running with another configuration:$foreign stop them first"
    fi

    if [ "$same" = 0 ]; then
        if recorded slurmctld >/dev/null || grep -q '^slurmd-' "$PIDS" 2>/dev/null; then
            log "configuration changed: restarting the daemons this script started"
        fi
        stop_recorded 'slurmctld|slurmd-.*'
        if [ -f "$CONF" ] && ! grep -qF "$CONF_MARK" "$CONF" && [ ! -f "$CONF.qcg-orig" ]; then
            cp -p "$CONF" "$CONF.qcg-orig"
            log "saved the previous $CONF as $CONF.qcg-orig"
        fi
        mkdir -p /etc/slurm
        mv "$new" "$CONF"
        chmod 0644 "$CONF"
    else
        rm -f "$new"
    fi
    echo "$n $cpus" > "$STATE_DIR/config"

    local started=0 i
    if ! recorded slurmctld >/dev/null; then
        # slurmd of an old slurmctld would register with stale state: restart all.
        stop_recorded 'slurmd-.*'
        start_slurmctld
        started=1
    fi
    for i in $(seq "$n"); do
        if ! recorded "slurmd-n$i" >/dev/null; then
            start_slurmd "n$i"
            started=$(( started + 1 ))
        fi
    done
    if [ "$started" = 0 ]; then
        log "already running: $n nodes x $cpus CPUs"
        resume_stuck_nodes
    else
        log "started $started daemon(s); waiting for $n idle nodes"
    fi
    t1=$EPOCHREALTIME
    wait_idle "$n"
    log "cluster up: $n nodes x $cpus CPUs; $(elapsed "$t0" "$t1")s to start, all idle $(elapsed "$t1" "$EPOCHREALTIME")s later (slurm.conf: $CONF, state: $STATE_DIR)"
}

cmd_stop() {
    [ -f "$PIDS" ] || { log "nothing to stop (no $PIDS)"; return 0; }
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/lock"
    flock -w 60 9 || die "another '$PROG' holds $STATE_DIR/lock"
    if recorded slurmctld >/dev/null; then
        # End running jobs first, so that no job steps outlive their slurmd.
        timeout 10 scancel --quiet --partition debug 2>/dev/null || true
    fi
    local count
    count=$(grep -c . "$PIDS" || true)
    stop_recorded 'slurmd-.*'
    stop_recorded 'slurmctld'
    stop_recorded 'munged'
    rm -f "$PIDS" "$STATE_DIR/config"
    log "stopped ($count recorded daemon(s))"
}

cmd_status() {
    local name pid st rc=0
    if [ -f "$STATE_DIR/config" ]; then
        read -r n cpus < "$STATE_DIR/config"
        echo "configured: $n nodes x $cpus CPUs"
    else
        echo "configured: nothing started by $PROG"
    fi
    if [ -f "$PIDS" ]; then
        while read -r name pid st; do
            if alive "$pid" "$st"; then
                echo "  $name pid $pid running"
            else
                echo "  $name pid $pid NOT running"
                rc=1
            fi
        done < "$PIDS"
    fi
    if command -v sinfo >/dev/null 2>&1; then
        local states
        states=$(node_states)
        if [ -n "$states" ]; then
            echo "nodes (sinfo):"
            printf '%s\n' "$states" | awk '{c[$2]++} END {for (s in c) printf "  %s: %d\n", s, c[s]}'
        else
            echo "slurmctld does not answer"
            rc=1
        fi
    else
        echo "Slurm is not installed"
        rc=1
    fi
    return "$rc"
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start [NODES] [CPUS] | stop | status" >&2; exit 2 ;;
esac
