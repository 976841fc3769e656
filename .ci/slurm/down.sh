#!/usr/bin/env bash
# Stop the single-node SLURM that up.sh started: cancel its jobs, then stop exactly the daemons
# whose PIDs up.sh recorded in STATE_DIR/pids (newest first), and remove the /etc/slurm files
# up.sh wrote (they carry its marker line). Logs stay in STATE_DIR/log.
#   sudo .ci/slurm/down.sh [STATE_DIR]      # default /tmp/finescope-slurm
set -uo pipefail

STATE=${1:-${FINESCOPE_SLURM_STATE:-/tmp/finescope-slurm}}
PIDS="$STATE/pids"
log() { echo "[slurm-down] $*" >&2; }

if [ ! -s "$PIDS" ]; then
    log "nothing recorded in $PIDS; nothing to stop"
    exit 0
fi
export SLURM_CONF=/etc/slurm/slurm.conf
MARKER="# Written by finescope .ci/slurm/up.sh"

# Jobs of this private cluster only (its own slurmctld answers).
if grep -q '^slurmctld ' "$PIDS" && scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 50); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

alive() {  # alive PID NAME: the PID still runs the daemon recorded under that name
    [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm")" = "$2" ]
}
tac "$PIDS" | while read -r name pid; do
    [ -n "${pid:-}" ] || continue
    if ! alive "$pid" "$name"; then
        log "$name ($pid) already gone"
        continue
    fi
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do
        alive "$pid" "$name" || break
        sleep 0.2
    done
    if alive "$pid" "$name"; then
        log "$name ($pid) ignored TERM for 10 s; sending KILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    log "stopped $name ($pid)"
done
rm -f "$PIDS"
for f in slurm.conf gres.conf slurmdbd.conf; do
    if [ -f "/etc/slurm/$f" ] && grep -qF "$MARKER" "/etc/slurm/$f"; then
        rm -f "/etc/slurm/$f"
    fi
done
