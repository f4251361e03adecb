#!/usr/bin/env bash
# A throw-away single-node Slurm (slurmctld + slurmd + munged) with every file under one folder,
# for testing launch/train_salm_mtp.sbatch for real. Needs root and Debian's slurm-wlm + munge
# (`install` fetches them with apt-get).
#
#   bash tests/support/slurm_cluster.sh install          # apt-get install slurm-wlm munge, if missing
#   bash tests/support/slurm_cluster.sh start DIR        # prints `export SLURM_CONF=DIR/slurm.conf`
#   SLURM_CONF=DIR/slurm.conf sbatch ...; squeue; scontrol show job ...
#   bash tests/support/slurm_cluster.sh stop DIR         # stops the three daemons (also after a failed start)
#
# What makes it work in a container without systemd (seen with Slurm 22.05):
# - munged runs as root (--force) on its own socket, handed to Slurm by AuthInfo=socket=...;
# - proctrack/linuxproc and task/none: no cgroups needed;
# - one node named `localhost` (slurmd -N localhost: the machine's hostname may differ), with the
#   controller on this host's short name, both reached on 127.0.0.1, on free ports.
set -euo pipefail

die() { echo "slurm_cluster: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

stop_pidfiles() {  # pid files -> TERM to all at once, wait up to 10 s, then KILL what is left
  local pids=() pid alive
  for f in "$@"; do
    [ -s "$f" ] && pid=$(cat "$f") && kill -0 "$pid" 2>/dev/null && pids+=("$pid")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 1 ] || return 0
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

cmd=${1:-}
case "$cmd" in
install)
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    exit 0
  fi
  [ "$(id -u)" = 0 ] || die "slurm-wlm/munge missing and not root: cannot apt-get install them"
  command -v apt-get >/dev/null || die "slurm-wlm/munge missing and no apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
    || die "apt-get install slurm-wlm munge failed"
  ;;
start)
  dir=$(realpath -m "${2:?usage: slurm_cluster.sh start DIR}")
  [ "$(id -u)" = 0 ] || die "must run as root (slurmd launches jobs; munged --force)"
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  chmod 700 "$dir/munge"
  # A key of our own: the packaged /etc/munge/munge.key may be missing or owned by another user.
  [ -s "$dir/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$dir/munge/munge.key"; chmod 400 "$dir/munge/munge.key"; }
  munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munge.seed" \
    --log-file="$dir/munge/munged.log" || die "munged did not start (see $dir/munge/munged.log)"
  host=$(hostname -s)
  cat > "$dir/slurm.conf" <<EOF
ClusterName=salmtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=600
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -f "$SLURM_CONF" || die "slurmctld did not start (see $dir/slurmctld.log)"
  slurmd -f "$SLURM_CONF" -N localhost || die "slurmd did not start (see $dir/slurmd.log)"
  for _ in $(seq 100); do  # up when the node accepts jobs
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    case "$state" in idle*|mixed*|allocated*) echo "export SLURM_CONF=$SLURM_CONF"; exit 0 ;; esac
    sleep 0.2
  done
  die "node never became idle (state: ${state:-none}); see $dir/slurmctld.log and $dir/slurmd.log"
  ;;
stop)
  dir=$(realpath -m "${2:?usage: slurm_cluster.sh stop DIR}")
  stop_pidfiles "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"
  ;;
*)
  die "usage: slurm_cluster.sh install | start DIR | stop DIR"
  ;;
esac
