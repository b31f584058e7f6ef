#!/usr/bin/env bash
# Start a single-node SLURM 22.05 cluster on this machine (as root, without systemd), or check that it runs.
#
# Idempotent: a second run finds the daemons up and only waits for the node; after a reboot (stale pid files,
# no processes) it starts them again; a changed configuration restarts them. Installs the Debian packages if
# missing. Everything lives in $OSA_GRID_SLURM_DIR (default .services/slurm in the repo); the client commands
# find the cluster through SLURM_CONF=<that dir>/etc/slurm.conf (printed at the end), never /etc/slurm.
# Loopback only: the node is 127.0.0.1, the daemons use private ports 16817-16819.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

install_packages() {
  local missing=()
  local package
  for package in slurm-wlm slurmdbd munge; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]} failed"
}

# The node advertises 8 CPUs whatever the machine has (config_overrides), and the machine's real memory.
real_memory_mb() {
  awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo
}

write_slurm_conf() {
  cat <<CONF
$CONF_MARKER: a single-node cluster for osa-grid's tests and benchmarks.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/run/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/run/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
PlugStackConfig=$SLURM_DIR/etc/plugstack.conf
# No cgroups in a container without systemd: track processes by parentage, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Memory use sampled every second; a job above its --mem is killed and ends OUT_OF_MEMORY.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
MailProg=/bin/true
SelectType=select/cons_tres
# Memory is allocated too, so that a job's --mem is its limit (and a job without one gets 256 MB per CPU).
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=256
# Start jobs as soon as they are submitted rather than on the next scheduler cycle.
SchedulerParameters=batch_sched_delay=0
# Use the CPUs and memory written below, not what the hardware has.
SlurmdParameters=config_overrides
ReturnToService=2
# Finished jobs stay in squeue for 5 minutes (sacct has them for ever): a small state restarts quickly.
MinJobAge=300
MaxArraySize=10001
MaxJobCount=100000
# Quick kills on time limits and cancellations (SIGTERM, then SIGKILL 2 s later).
KillWait=2
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$SLURMDBD_PORT
# Job comments reach sacct: they carry osa-grid's identity of the job.
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=$(real_memory_mb) State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
}

write_slurmdbd_conf() {
  cat <<CONF
# Written by scripts/slurm/start.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$SLURMDBD_PORT
SlurmUser=root
LogFile=$SLURM_DIR/log/slurmdbd.log
PidFile=$SLURM_DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=root
StorageLoc=$ACCOUNTING_DB
CONF
}

# Write the configuration; returns 0 if it changed (running daemons must then be restarted).
write_config() {
  mkdir -p "$SLURM_DIR"/{etc,state,spool,log,run}
  local changed=1
  local new_slurm new_dbd
  new_slurm=$(write_slurm_conf)
  new_dbd=$(write_slurmdbd_conf)
  if [[ -f "$SLURM_CONF" && "$(cat "$SLURM_CONF")" == "$new_slurm" \
    && "$(cat "$SLURM_DIR/etc/slurmdbd.conf" 2>/dev/null)" == "$new_dbd" ]]; then
    changed=0
  fi
  echo "$new_slurm" >"$SLURM_CONF"
  (umask 077 && echo "$new_dbd" >"$SLURM_DIR/etc/slurmdbd.conf")
  chmod 600 "$SLURM_DIR/etc/slurmdbd.conf"  # slurmdbd refuses a configuration others can read
  : >"$SLURM_DIR/etc/plugstack.conf"
  return $((1 - changed))
}

ensure_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating the munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  terminate $(pids_of munged)  # a munged that does not answer (e.g. a stale one after a reboot)
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged 9>&- || fail "munged did not start" /var/log/munge/munged.log
  for _ in $(seq 1 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "munge does not answer" /var/log/munge/munged.log
}

ensure_mariadb() {
  if mysql "${MYSQL_ARGS[@]}" -e "SELECT 1" >/dev/null 2>&1; then return 0; fi
  say "MariaDB does not answer on 127.0.0.1:3306; trying to start it"
  if [[ -x /etc/init.d/mariadb ]]; then /etc/init.d/mariadb start >/dev/null 2>&1 || true; fi
  for _ in $(seq 1 30); do
    mysql "${MYSQL_ARGS[@]}" -e "SELECT 1" >/dev/null 2>&1 && return 0
    sleep 1
  done
  fail "MariaDB is not reachable on 127.0.0.1:3306 as root without password (needed by slurmdbd)"
}

# A fresh controller state starts job ids at 1 again: old accounting rows would then shadow new jobs, so the
# accounting database is created anew with the state directory (the marker file records that it was).
ensure_accounting_db() {
  local marker=$SLURM_DIR/state/accounting-db-created
  if [[ ! -e "$marker" ]]; then
    say "fresh controller state: (re)creating the accounting database $ACCOUNTING_DB"
    mysql "${MYSQL_ARGS[@]}" -e "DROP DATABASE IF EXISTS $ACCOUNTING_DB; CREATE DATABASE $ACCOUNTING_DB" \
      || fail "cannot create the database $ACCOUNTING_DB"
    touch "$marker"
  fi
}

# Stop daemons of another checkout (they hold our ports) and, after a configuration change, our own.
stop_stale_daemons() {
  local restart=$1
  local daemon
  for daemon in slurmd slurmctld slurmdbd; do
    # shellcheck disable=SC2046
    terminate $(other_cluster_pids "$daemon")
    if [[ $restart -eq 1 ]]; then
      # shellcheck disable=SC2046
      terminate $(our_pids "$daemon")
    fi
  done
}

# Start daemon $1 (a command line follows) unless it already runs from this checkout; $2 is its log.
start_daemon() {
  local name=$1 log=$2
  shift 2
  if [[ -n "$(our_pids "$name")" ]]; then return 0; fi
  say "starting $name"
  # 9>&-: the daemon must not inherit (and hold for ever) the lock of this script.
  "$@" 9>&- || fail "$name did not start" "$log"
}

wait_for() {
  local what=$1 seconds=$2 log=$3
  shift 3
  local tries=$((seconds * 5))
  for _ in $(seq 1 "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  fail "$what not ready after $seconds s" "$log"
}

slurmdbd_ready() { sacctmgr -n list cluster format=Cluster; }
controller_up() { scontrol ping | grep -q "is UP"; }
node_state() { sinfo -h -n localhost -o %T 2>/dev/null | head -n 1; }
# Registered: slurmd answers (no "*" suffix) and the controller knows its state.
node_registered() { [[ "$(node_state)" =~ ^[a-z]+$ && "$(node_state)" != unknown ]]; }
# Usable, not necessarily idle: jobs of an earlier run may still be on it.
node_usable() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }
sacct_works() { sacct -n -X -S now-1hour --format=JobID; }

ensure_cluster_registered() {
  if ! sacctmgr -n -P list cluster format=Cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "cannot register cluster $CLUSTER" \
      "$SLURM_DIR/log/slurmdbd.log"
  fi
}

# A node left DOWN or DRAINED (e.g. by a reboot while jobs ran) is put back into service.
resume_node() {
  local state
  state=$(node_state)
  if [[ "$state" =~ (down|drain|fail) ]]; then
    say "node is $state: resuming it"
    scontrol update NodeName=localhost State=RESUME || true
  fi
}

main() {
  local started=$SECONDS restart=0
  take_lock
  install_packages
  if write_config; then restart=1; fi
  stop_stale_daemons "$restart"
  ensure_munge
  ensure_mariadb
  ensure_accounting_db
  local log=$SLURM_DIR/log
  start_daemon slurmdbd "$log/slurmdbd.log" slurmdbd
  wait_for "slurmdbd" 30 "$log/slurmdbd.log" slurmdbd_ready
  ensure_cluster_registered
  start_daemon slurmctld "$log/slurmctld.log" slurmctld -i -f "$SLURM_CONF"
  wait_for "slurmctld" 30 "$log/slurmctld.log" controller_up
  start_daemon slurmd "$log/slurmd.log" slurmd -N localhost -f "$SLURM_CONF"
  wait_for "the node" 30 "$log/slurmd.log" node_registered
  resume_node
  wait_for "the node" 30 "$log/slurmd.log" node_usable
  wait_for "sacct" 30 "$log/slurmdbd.log" sacct_works
  say "cluster $CLUSTER up (node $(node_state)) in $((SECONDS - started)) s; use SLURM_CONF=$SLURM_CONF"
}

main "$@"
