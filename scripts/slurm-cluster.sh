#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests and CI.
#
#   scripts/slurm-cluster.sh [start]   start munged, slurmctld and slurmd (idempotent)
#   scripts/slurm-cluster.sh status    exit 0 if the cluster answers and the node takes jobs
#   scripts/slurm-cluster.sh stop      stop the daemons this script started
#
# Needs root and Debian's packages:  apt-get install -y slurm-wlm munge
# (Slurm 22.05).  No systemd and no cgroups: munged runs as the munge user,
# slurmctld and slurmd run as root in the background, proctrack/linuxproc,
# task/none, no accounting database (sacct does not work; use scontrol show job).
# The node is called "localhost" (127.0.0.1) whatever the hostname is, so slurmd
# is started with -N localhost.  State, spool, logs and pid files live under
# $FITSERVE_SLURM_DIR (default /tmp/fitserve-slurm); the configuration is
# written there and installed as /etc/slurm/slurm.conf, so sbatch/squeue work
# without SLURM_CONF.  Partition: "debug" (default).
set -euo pipefail

DIR="${FITSERVE_SLURM_DIR:-/tmp/fitserve-slurm}"
CONF="$DIR/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
PARTITION=debug
CPUS="${FITSERVE_SLURM_CPUS:-$(nproc)}"
action="${1:-start}"

log() { echo "slurm-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

node_ready() {
    # the controller answers and the node is idle/mixed/allocated (not down, drained or unknown)
    scontrol ping 2>/dev/null | grep -q "is UP" || return 1
    local state
    state="$(sinfo -h -N -n localhost -o '%T' 2>/dev/null | head -1)"
    case "$state" in
        idle*|mix*|alloc*|completing*) return 0 ;;
        *) return 1 ;;
    esac
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

write_conf() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
    cat >"$CONF.new" <<EOF
# written by scripts/slurm-cluster.sh: a single-node test cluster
ClusterName=fitserve
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    if ! cmp -s "$CONF.new" "$CONF" 2>/dev/null; then
        mv "$CONF.new" "$CONF"
    else
        rm -f "$CONF.new"
    fi
    mkdir -p "$(dirname "$ETC_CONF")"
    if ! cmp -s "$CONF" "$ETC_CONF" 2>/dev/null; then
        cp "$CONF" "$ETC_CONF"
    fi
}

start_munge() {
    if [ -S /run/munge/munge.socket.2 ] && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    id munge >/dev/null 2>&1 || die "no munge user: apt-get install -y munge"
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        fi
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    chmod 0400 /etc/munge/munge.key
    # a stale socket/pid from a killed munged blocks a new one
    if ! pgrep -u munge -x munged >/dev/null 2>&1; then
        rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
    fi
    runuser -u munge -- /usr/sbin/munged --force  # daemonizes itself
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munged did not start (see /var/log/munge/munged.log)"
}

start() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as root and munge)"
    command -v slurmctld >/dev/null 2>&1 || die "slurmctld not found: apt-get install -y slurm-wlm munge"
    write_conf
    start_munge
    if node_ready; then
        log "already running ($(sinfo -h -o '%P %D %T' | head -1))"
        return 0
    fi
    if ! pid_alive "$DIR/run/slurmctld.pid"; then
        log "starting slurmctld"
        # -i: ignore unreadable state (a previous run's state dir is fine to drop)
        SLURM_CONF="$CONF" slurmctld -i -f "$CONF" >>"$DIR/log/slurmctld.out" 2>&1 \
            || die "slurmctld failed to start; see $DIR/log/slurmctld.log"
    fi
    for _ in $(seq 100); do
        scontrol ping 2>/dev/null | grep -q "is UP" && break
        sleep 0.2
    done
    scontrol ping 2>/dev/null | grep -q "is UP" || die "slurmctld does not answer; see $DIR/log/slurmctld.log"
    if ! pid_alive "$DIR/run/slurmd.pid"; then
        log "starting slurmd -N localhost"
        SLURM_CONF="$CONF" slurmd -N localhost -f "$CONF" >>"$DIR/log/slurmd.out" 2>&1 \
            || die "slurmd failed to start; see $DIR/log/slurmd.log"
    fi
    for i in $(seq 150); do
        node_ready && break
        if [ "$i" -eq 25 ] || [ "$i" -eq 75 ]; then
            scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
        fi
        sleep 0.2
    done
    node_ready || die "node localhost not idle: $(sinfo -h -N -o '%N %T %E' 2>&1); see $DIR/log/slurmd.log"
    log "up: partition $PARTITION, node localhost ($CPUS CPUs), config $CONF"
}

stop() {
    for d in slurmd slurmctld; do
        if pid_alive "$DIR/run/$d.pid"; then
            kill "$(cat "$DIR/run/$d.pid")" 2>/dev/null || true
            for _ in $(seq 50); do pid_alive "$DIR/run/$d.pid" || break; sleep 0.1; done
            log "stopped $d"
        fi
    done
}

case "$action" in
    start) start ;;
    status) node_ready ;;
    stop) stop ;;
    *) die "usage: $0 [start|status|stop]" ;;
esac
