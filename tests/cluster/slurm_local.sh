#!/usr/bin/env bash
# A throwaway single-node SLURM cluster on localhost, for tests/test_slurm.py (Debian, as root).
#   slurm_local.sh install   apt packages: munge slurmctld slurmd slurm-client
#   slurm_local.sh start     munged + slurmctld + slurmd; returns once the node is idle
#   slurm_local.sh stop      cancels jobs, stops the daemons this script started (by pid file)
# No accounting daemon: `sacct` fails, so Snakemake must poll with `--slurm-status-command squeue`
# (the slurm profile sets it; MinJobAge=300 here is what the plugin needs to trust squeue).
# slurm.conf is symlinked to /etc/slurm/slurm.conf: the slurm-jobstep plugin drops SLURM_CONF
# before its nested srun, so the compiled-in path is the only one every step sees.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/lmcbench-slurm}
CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
MEM_MB=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 8 / 10 ))
CONF=$DIR/slurm.conf

fail() { echo "slurm_local: $*" >&2; exit 1; }

poll() {  # seconds command...: true once the command succeeds
  local tries=$(( $1 * 10 )); shift
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

gone() {  # pid: not running (a zombie counts as gone; PID 1 here reaps late)
  [ ! -e "/proc/$1" ] || [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]
}

node_idle() { [ "$(sinfo -h -n localhost -o %T)" = idle ]; }
queue_empty() { [ -z "$(squeue -h -t running,completing)" ]; }

kill_pidfile() {  # pidfile
  [ -s "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill "$pid" 2>/dev/null && ! poll 20 gone "$pid"; then
    echo "slurm_local: $1 ($pid) ignored TERM; killing" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    munge slurmctld slurmd slurm-client >/dev/null
}

start_munge() {
  [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; head -c 1024 /dev/urandom >/etc/munge/munge.key; }
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
  munge -n </dev/null >/dev/null 2>&1 && return 0       # someone else's munged is fine
  runuser -u munge -- /usr/sbin/munged
  cp /run/munge/munged.pid "$DIR/munged.pid"
  poll 5 munge -n </dev/null || fail "munged did not start"
}

start() {
  command -v slurmctld >/dev/null || fail "SLURM is not installed (run: $0 install)"
  [ -s "$DIR/slurmctld.pid" ] && fail "already running ($DIR/slurmctld.pid exists; run: $0 stop)"
  rm -rf "$DIR/state"
  mkdir -p "$DIR/state/ctld" "$DIR/state/d" "$DIR/log" /etc/slurm
  start_munge
  cat >"$CONF" <<EOF
ClusterName=lmcbench
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MinJobAge=300
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  ln -sfn "$CONF" /etc/slurm/slurm.conf
  slurmctld -f "$CONF"
  slurmd -f "$CONF" -N localhost
  poll 30 node_idle || { tail -n 20 "$DIR"/log/*.log >&2; fail "the node did not become idle"; }
  echo "slurm_local: up ($CPUS CPUs, $MEM_MB MB, $CONF)"
}

stop() {
  if [ -s "$DIR/slurmctld.pid" ]; then
    squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
    poll 10 queue_empty || true
  fi
  kill_pidfile "$DIR/slurmd.pid"
  kill_pidfile "$DIR/slurmctld.pid"
  kill_pidfile "$DIR/munged.pid"
  echo "slurm_local: stopped"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) fail "usage: $0 install|start|stop" ;;
esac
