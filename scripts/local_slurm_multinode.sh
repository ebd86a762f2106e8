#!/usr/bin/env bash
# A real multi-node SLURM cluster on this one machine, for the two-node tests and for
# trying MPI across nodes: one slurmctld on this host and N slurmd "compute nodes", each
# in its own network and UTS namespace (own hostname, own address and loopback) on a
# private bridge. Nodes share this machine's file system (as cluster nodes share one),
# munge and its key. Separate from scripts/local_slurm.sh's single-node cluster: its own
# folder, ports, bridge and namespaces, so both can run at once.
#
#   scripts/local_slurm_multinode.sh start [N]   # N nodes (default 2): hxn1 .. hxnN
#   scripts/local_slurm_multinode.sh env         # prints `export SLURM_CONF=...`
#   scripts/local_slurm_multinode.sh status      # sinfo
#   scripts/local_slurm_multinode.sh stop        # daemons, namespaces, bridge
#
# Needs root, the packages of `scripts/local_slurm.sh install`, iproute2 and util-linux
# (ip netns, nsenter, unshare). Layout: bridge hxbr19 10.19.0.1/24 (the controller and
# the Parsl driver), node k at 10.19.0.(10+k) in network namespace hx19-nk with hostname
# hxnk; each node's slurmd has its own mount namespace in which $DIR/hosts is mounted
# over /etc/hosts, so nodes resolve each other by name without touching this machine's.
set -euo pipefail

DIR="${HPCXTAL_SLURM_MULTI_DIR:-/tmp/hpcxtal-slurm-multi}"
CONF="$DIR/slurm.conf"
HOST="$(hostname -s)"
BRIDGE=hxbr19
NET=10.19.0
CTLD_PORT=6917
SLURMD_PORT=6918

die() { echo "local_slurm_multinode: $*" >&2; exit 1; }
# shellcheck source=scripts/munge.sh
. "$(dirname "${BASH_SOURCE[0]}")/munge.sh"
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
nodes() { cat "$DIR/nodes" 2>/dev/null || true; }

network() {
    local n=$1 k ns
    ip link show "$BRIDGE" >/dev/null 2>&1 || {
        ip link add "$BRIDGE" type bridge
        ip addr add "$NET.1/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    }
    for k in $(seq 1 "$n"); do
        ns="hx19-n$k"
        ip netns list | grep -qw "$ns" && continue
        ip netns add "$ns"
        ip link add "hx19v$k" type veth peer name "hx19p$k"
        ip link set "hx19p$k" netns "$ns"
        ip link set "hx19v$k" master "$BRIDGE" up
        ip netns exec "$ns" ip link set lo up
        ip netns exec "$ns" ip addr add "$NET.$((10 + k))/24" dev "hx19p$k"
        ip netns exec "$ns" ip link set "hx19p$k" up
        ip netns exec "$ns" ip route add default via "$NET.1"
    done
    # the nodes' /etc/hosts (bind-mounted over it in each node's mount namespace)
    {
        echo "127.0.0.1 localhost"
        echo "$NET.1 $HOST"
        for k in $(seq 1 "$n"); do echo "$NET.$((10 + k)) hxn$k"; done
    } > "$DIR/hosts"
}

write_conf() {
    local n=$1 k names
    names="$(seq -s, -f 'hxn%g' 1 "$n")"
    mkdir -p "$DIR/state" "$DIR/log"
    for k in $(seq 1 "$n"); do mkdir -p "$DIR/spool/hxn$k"; done
    cat > "$CONF" <<CONF
ClusterName=hpcxtal-multi
SlurmctldHost=${HOST}(${NET}.1)
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
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SchedulerType=sched/backfill
MinJobAge=600
KillWait=5
InactiveLimit=0
CONF
    for k in $(seq 1 "$n"); do
        echo "NodeName=hxn$k NodeAddr=$NET.$((10 + k)) NodeHostname=hxn$k CPUs=2 RealMemory=2000 State=UNKNOWN" >> "$CONF"
    done
    cat >> "$CONF" <<CONF
PartitionName=cpu Nodes=${names} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
PartitionName=gpu Nodes=${names} Default=NO MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
}

start() {
    local n=${1:-2} k
    [ "$(id -u)" = 0 ] || die "start needs root (namespaces, munge and slurm daemons)"
    command -v slurmctld >/dev/null || die "SLURM is not installed; run 'scripts/local_slurm.sh install'"
    [ "$n" -ge 2 ] || die "a multi-node cluster needs at least 2 nodes, got $n"
    mkdir -p "$DIR"
    echo "$n" | xargs seq 1 | sed 's/^/hxn/' > "$DIR/nodes"
    start_munge "$DIR"
    network "$n"
    write_conf "$n"
    export SLURM_CONF="$CONF"
    running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
    for k in $(seq 1 "$n"); do
        running "$DIR/slurmd-hxn$k.pid" && continue
        # The node's network namespace, and its own UTS (`hostname` in a job step says hxnK,
        # as on a real node) and mount namespaces (its hosts file over /etc/hosts). Not
        # `ip netns exec`: it remounts /sys, hiding the cgroup file system slurmd needs.
        nsenter --net="/run/netns/hx19-n$k" unshare --uts --mount --propagation private \
            sh -c "mount --bind '$DIR/hosts' /etc/hosts && hostname hxn$k && exec slurmd -N hxn$k -f '$CONF'"
    done
    for _ in $(seq 1 60); do
        if [ "$(sinfo -h -p cpu -o '%T %D' 2>/dev/null | awk '$1 ~ /^(idle|mixed|allocated)/ {s += $2} END {print s + 0}')" = "$n" ]; then
            echo "local_slurm_multinode: $n nodes up (SLURM_CONF=$CONF)"
            return
        fi
        sleep 1
    done
    scontrol update nodename="$(seq -s, -f 'hxn%g' 1 "$n")" state=resume 2>/dev/null || true
    sleep 2
    sinfo -h -p cpu -o '%T' | grep -qvE '^(idle|mixed|allocated)' && die "nodes did not become idle; see $DIR/log/"
    echo "local_slurm_multinode: $n nodes up (SLURM_CONF=$CONF)"
}

stop() {
    local node k
    for node in $(nodes); do
        if running "$DIR/slurmd-$node.pid"; then kill "$(cat "$DIR/slurmd-$node.pid")"; fi
    done
    if running "$DIR/slurmctld.pid"; then kill "$(cat "$DIR/slurmctld.pid")"; fi
    sleep 1
    for node in $(nodes); do
        k="${node#hxn}"
        ip netns pids "hx19-n$k" 2>/dev/null | xargs -r kill 2>/dev/null || true
        ip netns del "hx19-n$k" 2>/dev/null || true
        ip link del "hx19v$k" 2>/dev/null || true
        rm -f "$DIR/slurmd-$node.pid"
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    if running "$DIR/munged.pid"; then kill "$(cat "$DIR/munged.pid")"; fi
    rm -f "$DIR/slurmctld.pid" "$DIR/munged.pid" "$DIR/nodes"
    echo "local_slurm_multinode: stopped"
}

case "${1:-}" in
    start) start "${2:-2}" ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    status) SLURM_CONF="$CONF" sinfo ;;
    *) echo "usage: $0 start [N]|stop|env|status" >&2; exit 2 ;;
esac
