# Shared by start.sh and stop.sh (sourced, not run): where the cluster lives and how to find its daemons.
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Everything of the cluster (configuration, state, spool, logs, pid files) lives here; gitignored.
SLURM_DIR=${OSA_GRID_SLURM_DIR:-$REPO/.services/slurm}
# The client commands (and the SLURM backend, through the slurm_conf setting) find the cluster by this.
export SLURM_CONF=$SLURM_DIR/etc/slurm.conf
CLUSTER=osagrid
ACCOUNTING_DB=osagrid_slurm_acct
# Private ports, not SLURM's defaults (6817-6819), so a site installation on the same machine is not disturbed.
SLURMCTLD_PORT=16817
SLURMD_PORT=16818
SLURMDBD_PORT=16819
MYSQL_ARGS=(-h 127.0.0.1 -P 3306 -u root)

say() { echo "slurm: $*" >&2; }
source "$REPO/scripts/service_lib.sh"

# Pids of the processes called $1 (the kernel's comm name, e.g. slurmctld).
pids_of() {
  local proc comm
  for proc in /proc/[0-9]*; do
    # `read`, not `cat`: a fork per process made this scan take seconds on a busy machine.
    read -r comm 2>/dev/null <"$proc/comm" || continue
    [[ "$comm" == "$1" ]] && echo "${proc#/proc/}"
  done
  return 0
}

# The SLURM_CONF a process was started with (empty if none): tells our daemons from anybody else's.
conf_of() {
  tr '\0' '\n' 2>/dev/null <"/proc/$1/environ" | sed -n 's/^SLURM_CONF=//p' | head -n 1
}

# Pids of daemon $1 started by this script from this checkout.
our_pids() {
  local pid
  for pid in $(pids_of "$1"); do
    [[ "$(conf_of "$pid")" == "$SLURM_CONF" ]] && echo "$pid"
  done
  return 0
}

# The first line of every slurm.conf start.sh writes: how a cluster of another checkout is recognised.
CONF_MARKER="# Written by scripts/slurm/start.sh"

# Pids of daemon $1 started by start.sh from another checkout or directory (they would hold our ports).
# A daemon whose configuration is gone (a deleted CI clone) counts too; a site's own daemons do not.
other_cluster_pids() {
  local pid conf
  for pid in $(pids_of "$1"); do
    conf=$(conf_of "$pid")
    [[ -z "$conf" || "$conf" == "$SLURM_CONF" ]] && continue
    if [[ ! -e "$conf" ]] || [[ "$(head -n 1 "$conf" 2>/dev/null)" == "$CONF_MARKER"* ]]; then
      echo "$pid"
    fi
  done
  return 0
}

# Running, and not a zombie waiting to be reaped.
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# SIGTERM the given pids, SIGKILL what is left after 10 s.
terminate() {
  local pid
  [[ $# -eq 0 ]] && return 0
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 1 100); do
    local alive=0
    for pid in "$@"; do alive "$pid" && alive=1; done
    [[ $alive -eq 0 ]] && return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
}

# One start or stop at a time (two `make test` at once would otherwise race to start the same daemons).
take_lock() {
  mkdir -p "$SLURM_DIR"
  exec 9>"$SLURM_DIR/.lock"
  flock -w 120 9 || { say "ERROR: another start.sh/stop.sh holds $SLURM_DIR/.lock"; exit 1; }
}
