# Shared by start.sh and stop.sh (sourced, not run): where the Rucio server lives and how to find it.
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Everything of the server (venv, configuration, logs, pid file, RSE directories) lives here; gitignored.
RUCIO_DIR=${OSA_GRID_RUCIO_DIR:-$REPO/.services/rucio}
VENV=$RUCIO_DIR/venv
RUCIO_VERSION=41.5.1
# A private loopback port, and a database of its own on the machine's PostgreSQL (never another one).
RUCIO_PORT=${OSA_GRID_RUCIO_PORT:-18480}
RUCIO_DB=${OSA_GRID_RUCIO_DB:-osa_grid_rucio}
PSQL=(psql -h 127.0.0.1 -p 5432 -U postgres -v ON_ERROR_STOP=1 -qAt)
SERVER_CFG=$RUCIO_DIR/etc/server/rucio.cfg
# What osa-grid, the tests and the `rucio` command line use (RUCIO_CONFIG): a client-only configuration.
CLIENT_CFG=$RUCIO_DIR/etc/client/rucio.cfg
PID_FILE=$RUCIO_DIR/run/gunicorn.pid

say() { echo "rucio: $*" >&2; }
source "$REPO/scripts/service_lib.sh"

# Running, and not a zombie waiting to be reaped.
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# The gunicorn master started from this directory, if it runs.
server_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 0
  pid=$(cat "$PID_FILE" 2>/dev/null || true)
  [[ -n "$pid" ]] && alive "$pid" && tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null \
    | grep -qx "RUCIO_CONFIG=$SERVER_CFG" && echo "$pid"
  return 0
}

ping_ok() {
  curl -fsS --max-time 3 "http://127.0.0.1:$RUCIO_PORT/ping" >/dev/null 2>&1
}

# One start or stop at a time.
take_lock() {
  mkdir -p "$RUCIO_DIR"
  exec 9>"$RUCIO_DIR/.lock"
  flock -w 600 9 || { say "ERROR: another start.sh/stop.sh holds $RUCIO_DIR/.lock"; exit 1; }
}
