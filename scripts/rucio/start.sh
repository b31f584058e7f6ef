#!/usr/bin/env bash
# Start a real Rucio server (PyPI `rucio`, the server package) on 127.0.0.1, or check that it runs.
#
# Idempotent and quick the second time: a running server that answers is left alone. The server has its own venv
# ($RUCIO_DIR/venv: `rucio` and `rucio-clients` install the same import package, so osa-grid's venv keeps the
# client only), its own database on the machine's PostgreSQL (osa_grid_rucio; SQLite cannot hold JSON metadata),
# gunicorn on a private loopback port, and four RSEs on local directories (file protocol):
#   LST_ONSITE (disk), LST_TAPE (rse_type TAPE), LST_CACHE (processing cache, disk), LST_DL3 (disk).
# Prints the client configuration to use: RUCIO_CONFIG=<that file> (osa-grid, the tests, the `rucio` command).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

install_venv() {
  local marker=$VENV/.installed-$RUCIO_VERSION
  [[ -f "$marker" ]] && return 0
  say "installing rucio==$RUCIO_VERSION in $VENV (about half a minute)"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" || fail "cannot create $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "rucio==$RUCIO_VERSION" gunicorn "psycopg[binary]" \
    >"$RUCIO_DIR/log/pip.log" 2>&1 || fail "pip install rucio==$RUCIO_VERSION failed" "$RUCIO_DIR/log/pip.log"
  touch "$marker"
}

password() {
  local file=$RUCIO_DIR/etc/root.password
  if [[ ! -s "$file" ]]; then
    (umask 077 && head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file")
  fi
  cat "$file"
}

write_configs() {
  local pwd=$1 site
  site=$("$VENV/bin/python" -c 'import rucio, os; print(os.path.dirname(rucio.__file__))')
  mkdir -p "$RUCIO_DIR/etc/server" "$RUCIO_DIR/etc/client"
  # It holds the root password: readable by its owner only (the redirect keeps the empty file's mode).
  (umask 077 && : >"$SERVER_CFG.new")
  cat >"$SERVER_CFG.new" <<CFG
# Written by scripts/rucio/start.sh: the server's configuration (gunicorn, bootstrap, daemons).
[common]
logdir = $RUCIO_DIR/log
loglevel = WARNING
mailtemplatedir = $VENV/rucio/etc/mail_templates

[database]
default = postgresql+psycopg://postgres@127.0.0.1:5432/$RUCIO_DB
pool_size = 10
max_overflow = 10
pool_reset_on_return = rollback
echo = 0

[bootstrap]
userpass_identity = root
userpass_pwd = $pwd
userpass_email = root@localhost

[alembic]
cfg = $RUCIO_DIR/etc/server/alembic.ini

[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = hash
support = osa-grid developers
support_rucio = https://github.com/rucio/rucio/issues/

[conveyor]
# No FTS here: transfers are done by osa-grid's site transfer agent (docs/rucio.md).
transfertool = mock

[monitor]
enable_metrics = False

[trace]
# Traces (download/upload reports) need a message broker; the traces endpoint is left out above.
tracedir = $RUCIO_DIR/log/trace

[api]
endpoints = accountlimits, accounts, config, credentials, dids, export, heartbeats, identities, import, lifetime_exceptions, locks, meta_conventions, ping, redirect, replicas, requests, rses, rules, scopes, subscriptions, vos, auth
CFG
  cat >"$RUCIO_DIR/etc/server/alembic.ini" <<CFG
[alembic]
sqlalchemy.url = postgresql+psycopg://postgres@127.0.0.1:5432/$RUCIO_DB
script_location = $site/db/sqla/migrate_repo/

[loggers]
keys = root
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARN
handlers = console
qualname =
[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic
[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
CFG
  (umask 077 && cat >"$CLIENT_CFG" <<CFG
# Written by scripts/rucio/start.sh: client only (osa-grid, tests, the rucio command line). RUCIO_CONFIG=this file.
[client]
rucio_host = http://127.0.0.1:$RUCIO_PORT
auth_host = http://127.0.0.1:$RUCIO_PORT
auth_type = userpass
username = root
password = $pwd
account = root
ca_cert = /etc/ssl/certs/ca-certificates.crt
request_retries = 2
CFG
)
  [[ -e "$SERVER_CFG" ]] && chmod 600 "$SERVER_CFG"  # one written before it was made private
  if cmp -s "$SERVER_CFG.new" "$SERVER_CFG"; then
    rm "$SERVER_CFG.new"
    return 1
  fi
  mv "$SERVER_CFG.new" "$SERVER_CFG"
  return 0
}

ensure_database() {
  bash "$REPO/scripts/postgres/ensure.sh" || fail "PostgreSQL is needed for the Rucio database"
  if [[ -z "$("${PSQL[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$RUCIO_DB'")" ]]; then
    say "creating the database $RUCIO_DB"
    "${PSQL[@]}" -d postgres -c "CREATE DATABASE $RUCIO_DB" || fail "cannot create the database $RUCIO_DB"
  fi
  if [[ -z "$("${PSQL[@]}" -d "$RUCIO_DB" -c "SELECT to_regclass('accounts')")" ]] \
    || [[ -z "$("${PSQL[@]}" -d "$RUCIO_DB" -c "SELECT 1 FROM accounts WHERE account = 'root'")" ]]; then
    say "bootstrapping the schema and the root account"
    RUCIO_CONFIG=$SERVER_CFG "$VENV/bin/python" "$VENV/rucio/tools/bootstrap.py" >"$RUCIO_DIR/log/bootstrap.log" 2>&1 \
      || fail "bootstrap failed" "$RUCIO_DIR/log/bootstrap.log"
    rm -f "$RUCIO_DIR/run/setup.done"
  fi
  password | RUCIO_CONFIG=$SERVER_CFG "$VENV/bin/python" "$REPO/scripts/rucio/sync_root_password.py" \
    2>>"$RUCIO_DIR/log/bootstrap.log" || fail "cannot give the root account this checkout's password" \
    "$RUCIO_DIR/log/bootstrap.log"
}

start_server() {
  say "starting gunicorn on 127.0.0.1:$RUCIO_PORT"
  # gunicorn daemonizes itself and writes its master's pid; the environment carries RUCIO_CONFIG (stop.sh checks it).
  # 9>&-: the daemon must not inherit the lock, or the next start.sh waits for it for ever.
  rm -f "$PID_FILE"
  RUCIO_CONFIG=$SERVER_CFG "$VENV/bin/gunicorn" --daemon --pid "$PID_FILE" --bind "127.0.0.1:$RUCIO_PORT" \
    --workers 2 --threads 4 --timeout 120 --control-socket "$RUCIO_DIR/run/gunicorn.ctl" --access-logfile "$RUCIO_DIR/log/access.log" \
    --error-logfile "$RUCIO_DIR/log/server.log" rucio.web.rest.flaskapi.v1.main:application 9>&- \
    || fail "gunicorn did not start" "$RUCIO_DIR/log/server.log"
  for _ in $(seq 1 60); do
    ping_ok && return 0
    [[ -f "$PID_FILE" && -z "$(server_pid)" ]] && break
    sleep 0.5
  done
  fail "the server does not answer on 127.0.0.1:$RUCIO_PORT" "$RUCIO_DIR/log/server.log"
}

take_lock
mkdir -p "$RUCIO_DIR"/{etc,log/trace,run,rses}
install_venv
changed=0
write_configs "$(password)" && changed=1
ensure_database
pid=$(server_pid)
if [[ -n "$pid" && $changed -eq 1 ]]; then
  say "configuration changed: restarting the server"
  bash "$(dirname "${BASH_SOURCE[0]}")/stop.sh" --locked
  pid=""
fi
if [[ -z "$pid" ]]; then
  ping_ok && fail "port $RUCIO_PORT answers but not with our server (set OSA_GRID_RUCIO_PORT)"
  start_server
elif ! ping_ok; then
  fail "the server (pid $pid) runs but does not answer on 127.0.0.1:$RUCIO_PORT" "$RUCIO_DIR/log/server.log"
fi
digest=$(sha256sum "$(dirname "${BASH_SOURCE[0]}")/setup_rses.py" | cut -c1-16)
if [[ "$(cat "$RUCIO_DIR/run/setup.done" 2>/dev/null)" != "$digest" ]]; then
  RUCIO_CONFIG=$CLIENT_CFG "$VENV/bin/python" "$(dirname "${BASH_SOURCE[0]}")/setup_rses.py" "$RUCIO_DIR/rses" \
    || fail "the RSE setup failed"
  echo "$digest" >"$RUCIO_DIR/run/setup.done"
fi
say "up on http://127.0.0.1:$RUCIO_PORT"
echo "RUCIO_CONFIG=$CLIENT_CFG"
