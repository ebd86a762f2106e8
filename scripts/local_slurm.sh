#!/usr/bin/env bash
# A real single-node SLURM cluster on loopback for tests, CI and trying hpcxtal's
# scheduler paths: munged + slurmctld + slurmd with a `cpu` (default) and a `gpu`
# partition on this machine (the gpu partition has no GPUs; it exercises the routing).
#
#   scripts/local_slurm.sh install   # apt packages (root; once per machine)
#   scripts/local_slurm.sh start     # writes $HPCXTAL_SLURM_DIR/slurm.conf, starts daemons
#   scripts/local_slurm.sh env       # prints `export SLURM_CONF=...` for clients
#   scripts/local_slurm.sh status    # sinfo
#   scripts/local_slurm.sh stop      # stops the daemons started by `start`
set -euo pipefail

DIR="${HPCXTAL_SLURM_DIR:-/tmp/hpcxtal-slurm}"
CONF="$DIR/slurm.conf"
HOST="$(hostname -s)"

die() { echo "local_slurm: $*" >&2; exit 1; }
# shellcheck source=scripts/munge.sh
. "$(dirname "${BASH_SOURCE[0]}")/munge.sh"

install_packages() {
    [ "$(id -u)" = 0 ] || die "install needs root (apt-get)"
    command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null \
        && { echo "local_slurm: packages already installed"; return; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    local cpus mem
    cpus="$(nproc)"
    mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat > "$CONF" <<CONF
ClusterName=hpcxtal-local
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SchedulerType=sched/backfill
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=cpu Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
PartitionName=gpu Nodes=${HOST} Default=NO MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    [ "$(id -u)" = 0 ] || die "start needs root (munge and slurm daemons)"
    command -v slurmctld >/dev/null || die "SLURM is not installed; run '$0 install'"
    mkdir -p "$DIR"
    start_munge "$DIR"
    write_conf
    export SLURM_CONF="$CONF"
    running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
    running "$DIR/slurmd.pid" || slurmd -f "$CONF"
    for _ in $(seq 1 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "local_slurm: cluster up (SLURM_CONF=$CONF)"
            return
        fi
        sleep 1
    done
    scontrol update nodename="$HOST" state=resume 2>/dev/null || true
    sinfo -h -o '%T' | grep -qE '^(idle|mixed)' || die "node did not become idle; see $DIR/log/"
    echo "local_slurm: cluster up (SLURM_CONF=$CONF)"
}

stop() {
    for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munged.pid"; do
        if running "$pidfile"; then
            kill "$(cat "$pidfile")"
            for _ in $(seq 1 20); do running "$pidfile" || break; sleep 0.5; done
        fi
        rm -f "$pidfile"
    done
    echo "local_slurm: stopped"
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    status) SLURM_CONF="$CONF" sinfo ;;
    *) echo "usage: $0 install|start|stop|env|status" >&2; exit 2 ;;
esac
