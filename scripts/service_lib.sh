# Shared by the service scripts (sourced, not run); the sourcing common.sh defines say() with its own prefix.
# shellcheck shell=bash

# Stop with an error message and the last lines of the logs that explain it.
fail() {
  say "ERROR: $1"
  local log
  for log in "${@:2}"; do
    [[ -f "$log" ]] && { echo "--- last lines of $log" >&2; tail -n 25 "$log" >&2; }
  done
  exit 1
}
