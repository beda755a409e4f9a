#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and for trying `lthfast sweep
# --launcher slurm` without a cluster. Everything lives in one folder (default
# /tmp/lthfast-slurm, env LTHFAST_SLURM_DIR): slurm.conf, munge key and socket, state, spool,
# logs, pid files. Its own munged (own key, own socket) and slurmctld/slurmd (started as root,
# SlurmUser=root) are started and stopped by their pid files; no system service is touched.
#
#   scripts/slurm-local.sh start     # installs slurm-wlm and munge if missing (root), waits for idle
#   eval "$(scripts/slurm-local.sh env)"   # SLURM_CONF for sinfo/sbatch/squeue in this shell
#   scripts/slurm-local.sh status    # daemons and sinfo; exit 1 if not running
#   scripts/slurm-local.sh stop      # no process of it is left behind
#
# Accounting is off (accounting_storage/none, jobacct_gather/none): sacct needs slurmdbd and a
# MySQL server. lthfast never calls sacct: it follows its jobs with squeue and scontrol
# (lthfast/sweep/slurm.py), which work without accounting, so submitit's sacct warnings never appear.
set -euo pipefail
dir="${LTHFAST_SLURM_DIR:-/tmp/lthfast-slurm}"
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"

die() { echo "slurm-local: $*" >&2; exit 1; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged \
    >/dev/null && command -v sbatch >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and this is not root: \
sudo apt-get install -y --no-install-recommends slurm-wlm munge"
  command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get"
  echo "slurm-local: installing slurm-wlm munge" >&2
  # Debian's policy-rc.d convention: the packages' own services must not start (exit 101);
  # an existing policy (a container's) is kept as it is
  local policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
  fi
  local rc=0
  { apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2 ||
    { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends slurm-wlm munge >&2; }; } || rc=$?
  [ -n "$policy" ] && rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get install slurm-wlm munge failed"
}

write_config() {
  mkdir -p "$dir"/{state,spool,munge,log}
  chmod 700 "$dir/munge"
  [ -s "$dir/munge/munge.key" ] || { dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 \
    count=1 status=none; chmod 400 "$dir/munge/munge.key"; }
  local host node
  host="$(hostname -s)"
  # this host's real CPUs, sockets, cores, threads and memory, as slurmd sees them
  node="$(slurmd -C | head -1)"
  [[ "$node" == NodeName=* ]] || die "slurmd -C did not describe this host: $node"
  cat > "$conf" <<EOF
# written by scripts/slurm-local.sh: a one-node cluster for lthfast's tests
ClusterName=lthfast
# by address: a container's hostname need not resolve
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# a killed job's processes get SIGKILL 2 s after SIGTERM (default 30): fast tests
KillWait=2
# finished jobs stay known to scontrol for 10 minutes (lthfast reads their final state there)
MinJobAge=600
# the tests overwhelm nothing: let jobs start at once
SchedulerParameters=defer_batch=0
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start() {
  install_packages
  if alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid" && alive "$dir/munged.pid"; then
    echo "slurm-local: already running ($conf)" >&2
  else
    stop_daemons quiet
    write_config
    munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
      --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" \
      --seed-file="$dir/munge/munged.seed" --force
    slurmctld -f "$conf"
    slurmd -f "$conf"
  fi
  local deadline=$((SECONDS + ${LTHFAST_SLURM_WAIT_S:-60}))
  until [ "$(sinfo -h -N -o '%t' 2>/dev/null | head -1)" = idle ]; do
    if [ $SECONDS -ge $deadline ]; then
      sinfo -N >&2 || true
      tail -5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
      die "the node did not become idle; logs in $dir/log"
    fi
    sleep 0.5
  done
  echo "slurm-local: node idle; export SLURM_CONF=$conf" >&2
}

stop_one() {  # pid file, name, seconds to wait for a clean exit before SIGKILL
  local file="$1" name="$2" pid
  [ -s "$file" ] || return 0
  pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null && grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 $(($3 * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

ours() {  # processes of this cluster's jobs: slurmstepd and job processes (SLURM_CONF is ours)
  local pid
  local env
  for pid in $(ls /proc | grep -x '[0-9]*'); do
    [ "$pid" = $$ ] && continue
    env="$( { tr '\0' '\n' < "/proc/$pid/environ"; } 2>/dev/null)" || continue
    grep -qx "SLURM_CONF=$conf" <<< "$env" || continue
    if grep -qx slurmstepd "/proc/$pid/comm" 2>/dev/null || grep -q '^SLURM_JOB_ID=' <<< "$env"; then
      echo "$pid"
    fi
  done | sort -u
}

stop_daemons() {
  # running jobs first: cancelled, and given KillWait to end, while slurmd still runs them
  if alive "$dir/slurmctld.pid"; then
    scancel --quiet --user=root 2>/dev/null || true
    for _ in $(seq 1 100); do
      [ -z "$(squeue -h -t R,CG,S 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  stop_one "$dir/slurmd.pid" slurmd 5
  stop_one "$dir/slurmctld.pid" slurmctld 5
  # anything of a job that outlived them (its slurmstepd, a process it left behind)
  local pid
  for pid in $(ours); do kill -9 "$pid" 2>/dev/null || true; done
  stop_one "$dir/munged.pid" munged 5
  [ "${1:-}" = quiet ] || echo "slurm-local: stopped" >&2
}

status() {
  local rc=0 name
  for name in munged slurmctld slurmd; do
    if alive "$dir/$name.pid"; then echo "$name: running (pid $(cat "$dir/$name.pid"))"
    else echo "$name: not running"; rc=1; fi
  done
  [ "$rc" = 0 ] && sinfo -N
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop_daemons ;;
  status) status ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
