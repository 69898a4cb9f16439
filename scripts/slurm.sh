#!/usr/bin/env bash
# A single-host SLURM for the tests and benchmarks: slurmctld + slurmd on this machine.
#
#   bash scripts/slurm.sh start    install (Debian slurm-wlm + munge) if missing, configure, start, wait idle
#   bash scripts/slurm.sh stop     stop slurmd, slurmctld and munged (the ones this script started)
#   bash scripts/slurm.sh status   print sinfo/squeue; exit 0 when the node is usable
#
# The node declares ESAP_SLURM_CPUS CPUs (default 8) and ESAP_SLURM_MEMORY MiB (default 16384)
# whatever the hardware has (SlurmdParameters=config_overrides), so that a 2-core machine can
# run 8 single-core worker jobs. Jobs run as root (SlurmUser=root) because the tests do.
# There is no slurmdbd: finished jobs stay visible to `squeue --states=all` and
# `scontrol show job` for MinJobAge seconds, and a one-line record per finished job is
# appended to $STATE/jobcomp.log (jobcomp/filetxt). `start` is idempotent: when the node is
# already up with the same slurm.conf nothing is restarted.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE=${ESAP_SLURM_STATE:-/var/lib/esap-slurm}
LOGS=/var/log/slurm
CPUS=${ESAP_SLURM_CPUS:-8}
MEMORY=${ESAP_SLURM_MEMORY:-16384}
HOST=$(hostname -s)

log() { printf 'slurm.sh: %s\n' "$*" >&2; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge from the Debian archive"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS"
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
# Written by esap-dask scripts/slurm.sh: one host, $CPUS declared CPUs, no slurmdbd.
ClusterName=esap
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
EnforcePartLimits=ALL
DefMemPerCPU=256
MaxArraySize=10001
MinJobAge=900
KillWait=5
InactiveLimit=0
Waittime=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return 1
    fi
    install -m 0644 "$tmp" "$CONF"
    rm -f "$tmp"
    printf '# no cgroups here: proctrack/linuxproc and task/none\n' >"$CONF_DIR/cgroup.conf"
    return 0
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo --noheader --nodes="$HOST" --format=%t 2>/dev/null | head -n1 || true; }

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    log "starting munged"
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
    else
        /usr/sbin/munged --force
    fi
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    log "munged did not come up; see /var/log/munge/munged.log"
    exit 1
}

stop_daemons() {
    local pidfile pid
    for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
        if running "$pidfile"; then
            pid=$(cat "$pidfile")
            kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pidfile"
    done
}

start() {
    install_packages
    local changed=0
    write_conf && changed=1
    start_munge
    if ((changed)); then
        stop_daemons
    fi
    if ! running "$STATE/slurmctld.pid"; then
        log "starting slurmctld"
        slurmctld
    fi
    if ! running "$STATE/slurmd.pid"; then
        log "starting slurmd ($CPUS CPUs, $MEMORY MiB declared)"
        slurmd
    fi
    local state=""
    for _ in $(seq 300); do
        state=$(node_state)
        case $state in
            idle | mix | alloc) break ;;
            down* | drain* | fail*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.2
    done
    case $state in
        idle | mix | alloc) log "node $HOST is $state; partition debug is up" ;;
        *)
            log "node $HOST did not become idle (state: ${state:-unknown});" \
                "see $LOGS/slurmctld.log and $LOGS/slurmd.log"
            exit 1
            ;;
    esac
}

stop() {
    stop_daemons
    if [[ -f /run/munge/munged.pid ]] && running /run/munge/munged.pid; then
        kill "$(cat /run/munge/munged.pid)"
    fi
    log "stopped"
}

status() {
    local state
    state=$(node_state)
    sinfo || true
    squeue || true
    case $state in
        idle | mix | alloc) return 0 ;;
        *) log "SLURM is not usable here (node state: ${state:-no controller}); run: bash scripts/slurm.sh start"; return 1 ;;
    esac
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
