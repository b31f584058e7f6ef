#!/usr/bin/env bash
# Stop the cluster started by start.sh from this checkout: slurmd, slurmctld, slurmdbd (munged, a machine service,
# stays). Idempotent. Jobs are kept in the controller's state and carry on at the next start.
# --purge also deletes the cluster's directory and its accounting database (the next start is a fresh cluster).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

purge=0
case "${1:-}" in
  "") ;;
  --purge) purge=1 ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

take_lock
for daemon in slurmd slurmctld slurmdbd; do
  pids=$(our_pids "$daemon")
  if [[ -n "$pids" ]]; then
    say "stopping $daemon ($pids)"
    # shellcheck disable=SC2086
    terminate $pids
  fi
done
if [[ $purge -eq 1 ]]; then
  say "deleting $SLURM_DIR and the database $ACCOUNTING_DB"
  mysql "${MYSQL_ARGS[@]}" -e "DROP DATABASE IF EXISTS $ACCOUNTING_DB" || say "could not drop $ACCOUNTING_DB"
  rm -rf "$SLURM_DIR"
fi
say "stopped"
