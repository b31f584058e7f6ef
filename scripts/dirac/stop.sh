#!/usr/bin/env bash
# Stop the DiracX server started by start.sh from this checkout. Idempotent. The databases, keys, configuration
# and the sandbox store (moto) are kept: the next start.sh finds every job as it was.
# --all also stops the sandbox store (moto keeps its objects in memory: uploaded sandboxes are lost);
# --purge stops everything and deletes the server's state (the venv stays), so the next start is a fresh server.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

mode=server
case "${1:-}" in
  "") ;;
  --all) mode=all ;;
  --purge) mode=purge ;;
  *) echo "usage: $0 [--all|--purge]" >&2; exit 2 ;;
esac

take_lock
stop_process diracx
if [[ $mode != server ]]; then
  stop_process moto
fi
if [[ $mode == purge ]]; then
  say "deleting the server's state in $DIRAC_DIR (the venv stays)"
  rm -rf "$DIRAC_DIR"/{db,cs_store,keys,log,server.env,env,credentials.json}
fi
say "stopped"
