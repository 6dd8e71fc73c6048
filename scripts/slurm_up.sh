#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for CI and local tests of the SLURM launcher.
#
# Installs munge + slurmctld + slurmd from the distribution's packages when missing (needs root and apt), writes
# a slurm.conf for this host's cores and memory (`slurmd -C`), with settings that work inside a container: no
# cgroups (proctrack/linuxproc, task/none), no accounting daemon, loopback only. Idempotent: a cluster that already
# answers `sinfo` with an idle node is left alone. Exits non-zero with one line saying why when it cannot start.
#
#   bash scripts/slurm_up.sh            # start (or check) the cluster; prints the partition name
#   bash scripts/slurm_up.sh --down     # stop the daemons this script started
set -euo pipefail

PARTITION=${AKVQ_SLURM_PARTITION:-ci}
CONF_DIR=/etc/slurm
STATE=/var/spool/akvq-slurm
LOG=/var/log/akvq-slurm

die() { echo "slurm_up: $*" >&2; exit 1; }

if [[ ${1:-} == --down ]]; then
  for pidf in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
    [[ -f $pidf ]] && kill "$(cat "$pidf")" 2>/dev/null || true
  done
  exit 0
fi

ready() { sinfo -h -p "$PARTITION" -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }
if command -v sinfo >/dev/null && ready; then echo "$PARTITION"; exit 0; fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  [[ $(id -u) == 0 ]] || die "slurmctld/slurmd/munge are not installed and this is not root"
  command -v apt-get >/dev/null || die "slurmctld/slurmd/munge are not installed and there is no apt-get"
  echo "slurm_up: installing munge slurmctld slurmd slurm-client (apt)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      munge slurmctld slurmd slurm-client; } >"${TMPDIR:-/tmp}/akvq-slurm-apt.log" 2>&1 \
    || die "apt-get install failed (log: ${TMPDIR:-/tmp}/akvq-slurm-apt.log)"
fi
[[ $(id -u) == 0 ]] || die "starting slurmctld/slurmd needs root"

mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOG" /run/munge /var/lib/munge /var/log/munge
# munge: a key once, then the daemon (as root with --force: containers often lack the munge user's setup).
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chmod 0400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then
  chown root:root /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge /etc/munge
  munged --force >/dev/null 2>&1 || die "munged did not start"
  for _ in $(seq 20); do munge -n >/dev/null 2>&1 && break; sleep 0.25; done
  munge -n >/dev/null 2>&1 || die "munged started but munge -n fails"
fi

host=$(hostname -s)
# `slurmd -C` prints this machine's NodeName line (CPUs, sockets, cores, threads, RealMemory); keep some memory
# for the daemons and the submitting process.
node=$(slurmd -C | head -1) || die "slurmd -C failed"
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
node=$(sed -e "s/^NodeName=[^ ]*/NodeName=$host/" -e "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/" <<<"$node")

cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by akvq scripts/slurm_up.sh: one node, no cgroups, no accounting daemon.
ClusterName=akvq
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=300
KillWait=5
MaxArraySize=10001
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
# No cgroup.conf: the cgroup plugins are not used.

pgrep -x slurmctld >/dev/null || slurmctld -f "$CONF_DIR/slurm.conf" || die "slurmctld did not start (see $LOG/slurmctld.log)"
pgrep -x slurmd >/dev/null || slurmd -f "$CONF_DIR/slurm.conf" || die "slurmd did not start (see $LOG/slurmd.log)"
for _ in $(seq 60); do
  ready && { echo "$PARTITION"; exit 0; }
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 0.5
done
die "node $host is not idle after 30 s: $(sinfo -h -o '%T %E' 2>&1 | head -1) (logs in $LOG)"
