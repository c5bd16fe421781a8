#!/usr/bin/env bash
# `jem sweep --launcher slurm` on a real single-node Slurm: start munge, slurmctld and slurmd
# with a minimal slurm.conf in a scratch folder, run the same 4-cell sweep (20 steps each of a
# small CNN on Fashion-MNIST) through the local launcher and through `sbatch --array`, and check that both
# end with the same results.csv (every column but the timing, ms_per_step). Stops the daemons
# it started. Needs root (or an already running munged) and the Debian packages slurm-wlm
# and munge (installed here when missing and run as root).
#
# Usage: scripts/test-slurm.sh [WORK_DIR (default: a new temporary folder)]
#   JEM=path/to/jem overrides the binary (default: target/release/jem, built when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d /tmp/jem-slurm.XXXXXX)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
jem=${JEM:-target/release/jem}
if [ ! -x "$jem" ]; then
  cargo build --release -p jem-cli
fi
jem=$(cd "$(dirname "$jem")" && pwd)/$(basename "$jem")
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge
  else
    echo "Slurm is missing: sudo apt-get install -y slurm-wlm munge" >&2
    exit 1
  fi
fi
export PATH=$PATH:/usr/sbin

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# munge: the key and the daemon (a running one is used as it is).
if ! munge -n >/dev/null 2>&1; then
  [ -f /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null ||
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c "/usr/sbin/munged" || /usr/sbin/munged --force
  else
    /usr/sbin/munged --force
  fi
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi

# A one-node cluster on this host, its state in the scratch folder.
host=$(hostname -s)
cpus=$(nproc)
mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2))
conf=$work/slurm
mkdir -p "$conf/state" "$conf/spool"
cat > "$conf/slurm.conf" <<EOF
ClusterName=jem-test
SlurmctldHost=$host
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$conf/state
SlurmdSpoolDir=$conf/spool
SlurmctldPidFile=$conf/slurmctld.pid
SlurmdPidFile=$conf/slurmd.pid
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SlurmctldLogFile=$conf/slurmctld.log
SlurmdLogFile=$conf/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$conf/slurm.conf
slurmctld -D -f "$SLURM_CONF" > "$conf/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" > "$conf/slurmd.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed)'; then break; fi
  sleep 0.2
done
if ! sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed)'; then
  echo "Slurm did not come up; logs in $conf" >&2
  tail -20 "$conf/slurmctld.log" "$conf/slurmd.log" >&2 || true
  exit 1
fi
echo "single-node Slurm up on $host ($cpus CPUs)"

grid=(--recipe fashion-mnist --max-steps 20 --set schedule.checkpoint_every=10 --set "model.widths=[8, 16]"
  --set "model.strides=[1, 2]"
  --grid "optim.lr=3e-4,1e-3" --grid "loss.px_weight=0,0.3" --ood uniform,constant)
"$jem" --threads 1 sweep --out "$work/local" "${grid[@]}"
"$jem" sweep --out "$work/slurm-sweep" "${grid[@]}" --launcher slurm --sbatch-args "--cpus-per-task=1"
for _ in $(seq 1200); do
  [ -z "$(squeue -h -n jem-sweep 2>/dev/null)" ] && break
  sleep 0.5
done
"$jem" sweep status "$work/slurm-sweep"
# Every column but ms_per_step (a timing) must agree.
strip() {
  awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "ms_per_step") c = i } { $c = ""; print }' OFS=, "$1"
}
if diff <(strip "$work/local/results.csv") <(strip "$work/slurm-sweep/results.csv"); then
  echo "slurm: the job array's results.csv equals the local launcher's ($work)"
else
  echo "slurm: results differ ($work/local/results.csv, $work/slurm-sweep/results.csv)" >&2
  exit 1
fi
