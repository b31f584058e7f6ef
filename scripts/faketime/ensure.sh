#!/usr/bin/env bash
# libfaketime for the clock-jump tests (Debian's faketime package; nothing is downloaded at run time).
set -euo pipefail
if command -v faketime >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ]; then
  echo "faketime is missing and only root can install it (apt-get install faketime)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends faketime >/dev/null
command -v faketime >/dev/null
