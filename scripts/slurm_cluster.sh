#!/usr/bin/env bash
# A one-machine SLURM cluster (slurmctld + slurmd + munged) for launch and fault tests.
#
#   scripts/slurm_cluster.sh start    # idempotent; prints the SLURM_CONF to export
#   scripts/slurm_cluster.sh status
#   scripts/slurm_cluster.sh stop     # cancels jobs, stops the daemons, removes the state
#
# Needs root and Debian's slurm-wlm + munge (scripts/ci_system_deps.sh installs them).
# Everything lives in $SLURM_CLUSTER_DIR (default /tmp/trainer-slurm): its own munge key and
# socket, its own ports, no cgroups, no systemd, nothing of the host's SLURM or munge touched.
# Client commands need `export SLURM_CONF=$SLURM_CLUSTER_DIR/slurm.conf`.
set -euo pipefail

DIR=${SLURM_CLUSTER_DIR:-/tmp/trainer-slurm}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)
CPUS=${SLURM_CLUSTER_CPUS:-2}          # a 2-task job must fit, whatever the machine reports
CTLD_PORT=${SLURM_CLUSTER_CTLD_PORT:-16817}
SLURMD_PORT=${SLURM_CLUSTER_SLURMD_PORT:-16818}
export SLURM_CONF=$CONF

die() { echo "slurm_cluster: $*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
  mkdir -p "$DIR"/{state,spool,log,munge}
  chmod 700 "$DIR/munge"
  if [ ! -f "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
    chmod 400 "$DIR/munge/munge.key"
  fi
  # Short credential lifetime and a fast scheduler loop: a requeued job restarts in ~15 s, not ~2 min.
  cat > "$CONF" <<EOF
ClusterName=trainer-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
MailProg=/bin/true
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

wait_idle() {
  for _ in $(seq 1 60); do
    state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
    case "$state" in
      idle*|mix*|alloc*) return 0 ;;
      drain*|down*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  echo "--- slurmctld.log"; tail -n 20 "$DIR/log/slurmctld.log" 2>/dev/null || true
  echo "--- slurmd.log"; tail -n 20 "$DIR/log/slurmd.log" 2>/dev/null || true
  die "node $NODE did not become idle (state: ${state:-none})"
}

start() {
  [ "$(id -u)" = 0 ] || die "needs root"
  for bin in munged slurmctld slurmd sbatch; do
    command -v "$bin" >/dev/null || die "$bin not found: run scripts/ci_system_deps.sh (apt-get install slurm-wlm munge)"
  done
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && alive "$DIR/munge/munged.pid"; then
    wait_idle
    echo "export SLURM_CONF=$CONF  # already running"
    return 0
  fi
  stop_daemons
  write_conf
  munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  slurmctld -i -f "$CONF"     # -i: ignore state left by an earlier run
  slurmd -f "$CONF" -N "$NODE"
  wait_idle
  echo "export SLURM_CONF=$CONF"
}

stop_daemons() {
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    if alive "$pidfile"; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

stop() {
  if alive "$DIR/slurmctld.pid"; then
    # End the jobs first: their job steps (slurmstepd) outlive slurmd otherwise.
    squeue -h -o %i 2>/dev/null | xargs -r scancel --quiet 2>/dev/null || true
    for _ in $(seq 1 40); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.25
    done
  fi
  stop_daemons
  rm -rf "$DIR"
  echo "slurm_cluster: stopped"
}

status() {
  for d in slurmctld slurmd munge/munged; do
    if alive "$DIR/$d.pid"; then echo "$(basename $d): running (pid $(cat "$DIR/$d.pid"))"; else echo "$(basename $d): stopped"; fi
  done
  if alive "$DIR/slurmctld.pid"; then sinfo; squeue; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
