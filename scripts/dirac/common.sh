# Shared by start.sh and stop.sh (sourced, not run): where the DiracX server lives and how to find its processes.
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Everything of the server (venv, config repo, keys, databases, logs, pid files, credentials); gitignored.
DIRAC_DIR=${OSA_GRID_DIRAC_DIR:-$REPO/.services/dirac}
DIRAC_DIR=$(mkdir -p "$DIRAC_DIR" && cd "$DIRAC_DIR" && pwd)
DIRACX_VERSION=0.7.0
MOTO_VERSION=5.2.5
# Private loopback ports (not DiracX's usual 8000 nor moto's 3000/5000): nothing of the machine is disturbed.
DIRAC_PORT=${OSA_GRID_DIRAC_PORT:-18731}
MOTO_PORT=${OSA_GRID_DIRAC_MOTO_PORT:-18732}
DIRAC_URL="http://127.0.0.1:$DIRAC_PORT"
VENV=$DIRAC_DIR/venv
# What osa-grid, the pilot and the tests read: DIRACX_URL and DIRACX_CREDENTIALS_PATH.
ENV_FILE=$DIRAC_DIR/env
CREDENTIALS=$DIRAC_DIR/credentials.json

say() { echo "dirac: $*" >&2; }
source "$REPO/scripts/service_lib.sh"

# The pid in run/$1.pid if that process is alive and is ours (its command line names this directory).
live_pid() {
  local file=$DIRAC_DIR/run/$1.pid pid
  [[ -f "$file" ]] || return 1
  read -r pid <"$file" || return 1
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$DIRAC_DIR" || return 1
  echo "$pid"
}

# TERM, then KILL after 10 s: a server that does not stop must not hold the port for the next start.
stop_process() {
  local pid
  pid=$(live_pid "$1") || { rm -f "$DIRAC_DIR/run/$1.pid"; return 0; }
  say "stopping $1 ($pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    [[ -e "/proc/$pid" ]] || break
    sleep 0.1
  done
  [[ -e "/proc/$pid" ]] && kill -9 "$pid" 2>/dev/null || true
  rm -f "$DIRAC_DIR/run/$1.pid"
}

# start.sh and stop.sh never run at the same time (a second start waits for the first).
take_lock() {
  mkdir -p "$DIRAC_DIR/run"
  exec 9>"$DIRAC_DIR/run/lock"
  flock 9
}
