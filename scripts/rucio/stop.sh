#!/usr/bin/env bash
# Stop the Rucio server started by start.sh from this checkout. Idempotent; its database and RSEs are kept.
# --purge also drops its database (osa_grid_rucio, never another one) and deletes $RUCIO_DIR except the venv.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

purge=0
locked=0
for arg in "$@"; do
  case "$arg" in
    --purge) purge=1 ;;
    --locked) locked=1 ;;  # called by start.sh, which holds the lock
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
  esac
done

[[ $locked -eq 1 ]] || take_lock
pid=$(server_pid)
if [[ -n "$pid" ]]; then
  say "stopping gunicorn ($pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
fi
if [[ $purge -eq 1 ]]; then
  say "dropping the database $RUCIO_DB and deleting the RSE directories"
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $RUCIO_DB WITH (FORCE)" || say "could not drop $RUCIO_DB"
  rm -rf "$RUCIO_DIR/etc" "$RUCIO_DIR/log" "$RUCIO_DIR/run" "$RUCIO_DIR/rses"
fi
say "stopped"
