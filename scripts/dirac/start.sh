#!/usr/bin/env bash
# Start a real DiracX 0.7 server on this machine (127.0.0.1), or check that it runs; print the env file to source.
#
# Idempotent: a second run finds the server up and only renews the token (about a second). A restart keeps the
# databases, the keys and the configuration, so jobs survive it. The first run creates a venv with the pinned
# diracx packages, moto and uvicorn (a minute or two), a git configuration with a `ctao` VO, a `ctao_production`
# group (JobAdministrator, ProductionManagement) and a user `osagrid`, a JWKS key store and SQLite databases.
# Everything lives in $OSA_GRID_DIRAC_DIR (default .services/dirac); see docs/dirac.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VO=ctao
GROUP=ctao_production
USER_NAME=osagrid
USER_SUB=osagrid-0000-0000-0000-000000000001

ensure_venv() {
  local marker=$VENV/.installed-$DIRACX_VERSION
  [[ -f "$marker" ]] && return 0
  say "creating the server venv $VENV (diracx $DIRACX_VERSION, moto $MOTO_VERSION, uvicorn)"
  local python=${OSA_GRID_DIRAC_PYTHON:-python3.11}
  command -v "$python" >/dev/null || python=python3
  "$python" -m venv "$VENV"
  local packages=()
  for package in diracx diracx-core diracx-db diracx-logic diracx-routers diracx-testing diracx-client \
    diracx-api diracx-cli; do
    packages+=("$package==$DIRACX_VERSION")
  done
  "$VENV/bin/pip" install --quiet --upgrade pip >"$DIRAC_DIR/log/pip.log" 2>&1 || true
  "$VENV/bin/pip" install --quiet "${packages[@]}" "moto[server]==$MOTO_VERSION" uvicorn \
    >>"$DIRAC_DIR/log/pip.log" 2>&1 || fail "pip install of the server packages failed" "$DIRAC_DIR/log/pip.log"
  touch "$marker"
}

ensure_config() {
  local repo=$DIRAC_DIR/cs_store/repo
  [[ -f "$DIRAC_DIR/cs_store/.done" ]] && return 0
  say "writing the configuration repository (VO $VO, group $GROUP, user $USER_NAME)"
  rm -rf "$DIRAC_DIR/cs_store"
  mkdir -p "$DIRAC_DIR/cs_store"
  local dirac=$VENV/bin/dirac
  {
    "$dirac" internal generate-cs "$repo"
    "$dirac" internal add-vo "$repo" --vo="$VO" --idp-url=https://idp.ctao.invalid \
      --idp-client-id=osa-grid --default-group=ctao_user
    "$dirac" internal add-group "$repo" --vo="$VO" --group="$GROUP" \
      --properties NormalUser --properties JobAdministrator --properties ProductionManagement
    "$dirac" internal add-user "$repo" --vo="$VO" --sub="$USER_SUB" --preferred-username="$USER_NAME" \
      --group ctao_user --group "$GROUP"
  } >"$DIRAC_DIR/log/config.log" 2>&1 || fail "dirac internal could not write the configuration" \
    "$DIRAC_DIR/log/config.log"
  touch "$DIRAC_DIR/cs_store/.done"
}

ensure_keys() {
  if [[ ! -s "$DIRAC_DIR/keys/jwks.json" ]]; then
    say "creating the token signing keys"
    mkdir -p "$DIRAC_DIR/keys"
    (umask 077 && "$VENV/bin/python" -m diracx.logic rotate-jwk --jwks-path "$DIRAC_DIR/keys/jwks.json") \
      >"$DIRAC_DIR/log/keys.log" 2>&1 || fail "rotate-jwk failed" "$DIRAC_DIR/log/keys.log"
  fi
  # The secret of the legacy-exchange route (the server keeps only its hash).
  # The key that encrypts the OAuth2 state parameter (a Fernet key: 32 bytes, url-safe base64).
  if [[ ! -s "$DIRAC_DIR/keys/state-key" ]]; then
    (umask 077 && "$VENV/bin/python" -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())' \
      >"$DIRAC_DIR/keys/state-key")
  fi
  if [[ ! -s "$DIRAC_DIR/keys/legacy-api-key" ]]; then
    (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))' \
      >"$DIRAC_DIR/keys/legacy-api-key")
  fi
}

write_server_env() {
  local hashed
  hashed=$("$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read().strip()).hexdigest())' \
    "$DIRAC_DIR/keys/legacy-api-key")
  mkdir -p "$DIRAC_DIR/db"
  # It holds the server's state key: readable by its owner only (the redirect keeps the empty file's mode).
  (umask 077 && : >"$DIRAC_DIR/server.env.tmp")
  {
    echo "# Written by scripts/dirac/start.sh: the DiracX server's environment."
    "$VENV/bin/python" -m diracx.db generate-local-urls "$DIRAC_DIR/db"
    echo "export DIRACX_CONFIG_BACKEND_URL='git+file://$DIRAC_DIR/cs_store/repo'"
    echo "export DIRACX_SERVICE_AUTH_TOKEN_ISSUER='$DIRAC_URL'"
    echo "export DIRACX_SERVICE_AUTH_TOKEN_KEYSTORE='file://$DIRAC_DIR/keys/jwks.json'"
    echo "export DIRACX_SERVICE_AUTH_ALLOWED_REDIRECTS='[\"$DIRAC_URL/api/docs/oauth2-redirect\"]'"
    echo "export DIRACX_SERVICE_AUTH_STATE_KEY='$(cat "$DIRAC_DIR/keys/state-key")'"
    echo "export DIRACX_LEGACY_EXCHANGE_HASHED_API_KEY='$hashed'"
    echo "export DIRACX_SANDBOX_STORE_BUCKET_NAME=sandboxes"
    echo "export DIRACX_SANDBOX_STORE_AUTO_CREATE_BUCKET=true"
    echo "export DIRACX_SANDBOX_STORE_S3_CLIENT_KWARGS='{\"endpoint_url\": \"http://127.0.0.1:$MOTO_PORT\", \"aws_access_key_id\": \"osagrid\", \"aws_secret_access_key\": \"osagrid-sandboxes\"}'"
  } >"$DIRAC_DIR/server.env.tmp" || fail "cannot write the server environment"
  mv "$DIRAC_DIR/server.env.tmp" "$DIRAC_DIR/server.env"
}

port_answers() {
  "$VENV/bin/python" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' \
    "$1" 2>/dev/null
}

ensure_moto() {
  live_pid moto >/dev/null && return 0
  port_answers "$MOTO_PORT" && fail "port $MOTO_PORT is taken by another process (set OSA_GRID_DIRAC_MOTO_PORT)"
  say "starting the sandbox store (moto S3) on 127.0.0.1:$MOTO_PORT"
  nohup "$VENV/bin/python" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" \
    >>"$DIRAC_DIR/log/moto.log" 2>&1 </dev/null 9>&- &
  echo $! >"$DIRAC_DIR/run/moto.pid"
  for _ in $(seq 1 100); do
    port_answers "$MOTO_PORT" && return 0
    live_pid moto >/dev/null || break
    sleep 0.1
  done
  fail "moto did not start" "$DIRAC_DIR/log/moto.log"
}

server_ready() {
  "$VENV/bin/python" - "$DIRAC_URL" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/.well-known/openid-configuration", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

ensure_server() {
  if live_pid diracx >/dev/null; then
    # Up: wait for it to answer (it may have been started a moment ago by another start.sh).
    for _ in $(seq 1 300); do
      server_ready && return 0
      sleep 0.1
    done
    fail "the DiracX server runs but does not answer" "$DIRAC_DIR/log/diracx.log"
  fi
  port_answers "$DIRAC_PORT" && fail "port $DIRAC_PORT is taken by another process (set OSA_GRID_DIRAC_PORT)"
  say "starting DiracX $DIRACX_VERSION on $DIRAC_URL"
  (
    # shellcheck disable=SC1091
    source "$DIRAC_DIR/server.env"
    cd "$DIRAC_DIR"
    exec nohup "$VENV/bin/python" -m uvicorn --factory diracx.testing.routers:create_app \
      --host 127.0.0.1 --port "$DIRAC_PORT" --log-level warning >>"$DIRAC_DIR/log/diracx.log" 2>&1 </dev/null 9>&-
  ) &
  echo $! >"$DIRAC_DIR/run/diracx.pid"
  for _ in $(seq 1 600); do
    server_ready && return 0
    live_pid diracx >/dev/null || break
    sleep 0.1
  done
  fail "the DiracX server did not start" "$DIRAC_DIR/log/diracx.log"
}

get_token() {
  "$VENV/bin/python" "$REPO/scripts/dirac/get_token.py" "$DIRAC_URL" "$DIRAC_DIR/keys/legacy-api-key" \
    "$CREDENTIALS" "$USER_NAME" "vo:$VO group:$GROUP" || fail "no token from the legacy exchange" \
    "$DIRAC_DIR/log/diracx.log"
  {
    echo "# Written by scripts/dirac/start.sh: source it to use the DiracX server (osa-grid, the pilot, the tests)."
    echo "export DIRACX_URL=$DIRAC_URL"
    echo "export DIRACX_CREDENTIALS_PATH=$CREDENTIALS"
  } >"$ENV_FILE"
}

take_lock
mkdir -p "$DIRAC_DIR"/{log,run}
ensure_venv
ensure_config
ensure_keys
write_server_env
ensure_moto
ensure_server
get_token
say "DiracX runs on $DIRAC_URL; source $ENV_FILE"
echo "$ENV_FILE"
