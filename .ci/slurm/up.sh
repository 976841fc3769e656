#!/usr/bin/env bash
# Bring up a single-node SLURM for CI and local testing: munged, a private MariaDB on a local
# socket, slurmdbd (accounting, so `sacct` works), slurmctld and slurmd, all on this machine.
#
#   sudo .ci/slurm/up.sh [STATE_DIR]        # default /tmp/finescope-slurm
#   sinfo; sbatch ...; snakemake --profile profiles/slurm --profile profiles/slurm-ci ...
#   sudo .ci/slurm/down.sh [STATE_DIR]      # stops exactly the daemons this script started
#
# Needs root and Debian/Ubuntu packages (installed with apt-get when missing; ~25 s). No systemd:
# the daemons are started directly and their PIDs recorded in STATE_DIR/pids. The cluster:
#   cluster finescope, node $(hostname -s) (NodeAddr 127.0.0.1, CPUs/memory from `slurmd -C`)
#   with two fake GPUs (gres files are symlinks to /dev/null; jobs run on the CPU);
#   partitions ci_cpu (default) and ci_gpu on that node; account finescope_ci for the caller.
# profiles/slurm-ci/ is the matching Snakemake profile overlay.
#
# The configuration goes to /etc/slurm (slurm.conf, gres.conf, slurmdbd.conf), not to a private
# SLURM_CONF: snakemake-executor-plugin-slurm-jobstep drops SLURM_* variables, SLURM_CONF
# included, before its `srun` inside each job, so that srun only finds the default path. An
# existing /etc/slurm/slurm.conf that this script did not write is never touched.
set -euo pipefail

STATE=${1:-${FINESCOPE_SLURM_STATE:-/tmp/finescope-slurm}}
CLUSTER=finescope
ACCOUNT=finescope_ci
CPU_PARTITION=ci_cpu
GPU_PARTITION=ci_gpu
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
CONF_DIR=/etc/slurm
MARKER="# Written by finescope .ci/slurm/up.sh"

log() { echo "[slurm-up] $*" >&2; }
die() { echo "[slurm-up] ERROR: $*" >&2; exit 1; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq $((limit * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "timed out after ${limit}s waiting for $what (logs: $STATE/log)"
}
record_pid() {  # record_pid NAME PIDFILE: the daemon wrote its PID there
    wait_for 20 "$1 pid file" test -s "$2"
    echo "$1 $(cat "$2")" >>"$STATE/pids"
}

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"
if [ -s "$STATE/pids" ]; then
    die "$STATE/pids exists: a cluster from this state folder may still run; run down.sh first"
fi
if [ -e "$CONF_DIR/slurm.conf" ] && ! grep -qF "$MARKER" "$CONF_DIR/slurm.conf"; then
    die "$CONF_DIR/slurm.conf exists and was not written by this script; not touching it"
fi

# --- packages ------------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    # Keep the packages' maintainer scripts from starting the daemons: we start them ourselves.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q --no-install-recommends "${missing[@]}" >"$1" 2>&1; }
    mkdir -p "$STATE"
    if ! apt_install "$STATE/apt.log"; then
        apt-get update -q >"$STATE/apt-update.log" 2>&1 || true
        apt_install "$STATE/apt.log" || {
            if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
            tail -5 "$STATE/apt.log" >&2
            echo "[slurm-up] APT_INSTALL_FAILED" >&2
            exit 3
        }
    fi
    if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

rm -rf "$STATE"/{log,ctld,spool,mysql,gpu}
mkdir -p "$STATE"/{log,ctld,spool,gpu}
: >"$STATE/pids"
mkdir -p "$CONF_DIR"
export SLURM_CONF="$CONF_DIR/slurm.conf"
# slurmdbd's MariaDB client finds the private server's socket through MYSQL_UNIX_PORT.
export MYSQL_UNIX_PORT="$STATE/mysql.sock"
[ ${#MYSQL_UNIX_PORT} -lt 100 ] || die "state folder path too long for a unix socket: $STATE"

# --- munge ---------------------------------------------------------------------------------
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running; using it"
else
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    record_pid munged /run/munge/munged.pid
    wait_for 10 munged sh -c 'munge -n | unmunge'
fi

# --- MariaDB on a local socket, private data folder -----------------------------------------
log "starting MariaDB ($STATE/mysql)"
mariadb-install-db --no-defaults --datadir="$STATE/mysql" --user=root \
    --auth-root-authentication-method=socket --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1
setsid mariadbd --no-defaults --datadir="$STATE/mysql" --socket="$MYSQL_UNIX_PORT" \
    --pid-file="$STATE/mariadbd.pid" --skip-networking --user=root \
    --log-error="$STATE/log/mariadbd.log" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
record_pid mariadbd "$STATE/mariadbd.pid"
wait_for 30 MariaDB mariadb --no-defaults --socket="$MYSQL_UNIX_PORT" -e "select 1"

# --- slurm configuration -------------------------------------------------------------------
NODE=$(hostname -s)
HARDWARE=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ *RealMemory=[0-9]*//')
DETECTED_MB=$(slurmd -C | head -1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
MEMORY_MB=$((DETECTED_MB - 512))  # leave some for the daemons; never above what slurmd sees
for i in 0 1; do ln -sf /dev/null "$STATE/gpu/fakegpu$i"; done

cat >"$SLURM_CONF" <<EOF
$MARKER (state in $STATE): one node, accounting in slurmdbd, two fake GPUs.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
MinJobAge=300
KillWait=5
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 $HARDWARE RealMemory=$MEMORY_MB Gres=gpu:2 State=UNKNOWN
PartitionName=$CPU_PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=$GPU_PARTITION Nodes=$NODE MaxTime=INFINITE State=UP
EOF
cat >"$CONF_DIR/gres.conf" <<EOF
$MARKER
NodeName=$NODE Name=gpu File=$STATE/gpu/fakegpu[0-1]
EOF
cat >"$CONF_DIR/slurmdbd.conf" <<EOF
$MARKER
DbdHost=localhost
SlurmUser=root
AuthType=auth/munge
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
chmod 600 "$CONF_DIR/slurmdbd.conf"

# --- daemons -------------------------------------------------------------------------------
log "starting slurmdbd"
slurmdbd
record_pid slurmdbd "$STATE/slurmdbd.pid"
wait_for 30 slurmdbd sacctmgr -n list cluster
sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=ci Organization=ci >/dev/null
sacctmgr -i add user "$(id -un)" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null

log "starting slurmctld and slurmd on $NODE"
slurmctld
record_pid slurmctld "$STATE/slurmctld.pid"
wait_for 30 slurmctld scontrol ping
slurmd
record_pid slurmd "$STATE/slurmd.pid"
wait_for 30 "node $NODE to be idle" sh -c "sinfo -h -n $NODE -o %t | grep -qx idle"

log "SLURM up: $(sinfo -h -o '%P %D %t %G' | tr '\n' ';')"
