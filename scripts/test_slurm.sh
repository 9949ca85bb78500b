#!/usr/bin/env bash
# `make test-slurm`: the Slurm scripts of pipelines/slurm/ for real, on a single-node cluster
# started here. Installs Debian's slurm-wlm and munge when missing (apt; sudo when not root),
# starts munged, slurmctld and slurmd on localhost with a private configuration, submits the
# demo as job arrays of 3 shards, and checks that the union of the shards equals an unsharded
# run of the same configuration: every patches, masks, features and genomics file identical
# (checksums), the same items in the manifests, and identical predictions. Stops the daemons at
# the end. Usage: scripts/test_slurm.sh BIN [WORK_DIR]
set -euo pipefail
bin=$(realpath "$1")
work=${2:-$(mktemp -d /tmp/hdmoe-slurm.XXXXXX)}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$work"
work=$(realpath "$work")
sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q slurm-wlm munge
fi

# munge: a fresh key and a private socket, so a system munged (if any) is left alone.
mkdir -p "$work/munge"
chmod 700 "$work/munge"
dd if=/dev/urandom bs=1 count=1024 of="$work/munge/munge.key" status=none
chmod 400 "$work/munge/munge.key"
socket="$work/munge/munge.socket"
munged --force --key-file="$work/munge/munge.key" --socket="$socket" \
  --pid-file="$work/munge/munged.pid" --log-file="$work/munge/munged.log" --seed-file="$work/munge/seed"

host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
mkdir -p "$work/state" "$work/spool"
cat > "$work/slurm.conf" <<CONF
ClusterName=hdmoe-test
SlurmctldHost=$host
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$work/slurm.conf"

cleanup() {
  [ -f "$work/slurmd.pid" ] && kill "$(cat "$work/slurmd.pid")" 2>/dev/null || true
  [ -f "$work/slurmctld.pid" ] && kill "$(cat "$work/slurmctld.pid")" 2>/dev/null || true
  [ -f "$work/munge/munged.pid" ] && kill "$(cat "$work/munge/munged.pid")" 2>/dev/null || true
}
trap cleanup EXIT
slurmctld -i
slurmd
for _ in $(seq 60); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then break; fi
  sleep 1
done
sinfo

# The demo with shorter training; both runs single-threaded per process, so that libtorch's
# results cannot differ by thread count.
export OMP_NUM_THREADS=1
cd "$repo"
config() {  # config NAME -> a copy of the demo's YAML with its own cache and run folders
  sed -e "s|^  name: demo$|  name: $1|" -e "s|^  epochs: .*|  epochs: 2|" pipelines/demo.yaml > "$work/$1.yaml"
  printf '  cache: %s\n  runs: %s\n' "$work/$1/cache" "$work/$1/runs" > "$work/paths.tmp"
  sed -i "/^paths:/r $work/paths.tmp" "$work/$1.yaml"
  echo "$work/$1.yaml"
}
unsharded=$(config unsharded)
sharded=$(config sharded)

echo "== unsharded run"
"$bin" -q run --config "$unsharded" > "$work/unsharded.log" 2>&1 || { tail -20 "$work/unsharded.log"; exit 1; }

echo "== Slurm: 3 shards"
HDMOE_BIN="$bin" pipelines/slurm/submit.sh "$sharded" 3 | tee "$work/submit.log"
report_job=$(sed -n 's/^fit: [0-9]*  report: //p' "$work/submit.log")
for _ in $(seq 900); do
  if [ -z "$(squeue -h -o %i)" ]; then break; fi
  sleep 2
done
squeue
state=$(sacct -n -j "$report_job" -o State 2>/dev/null | head -1 || true)
[ -f "$work/sharded/runs/report/report.html" ] || {
  echo "FAIL: no report from the Slurm run ($state)"; tail -n 30 "$work"/sharded/runs/slurm/*.log; exit 1; }

echo "== compare"
fail=0
sums() { (cd "$1" && find patches masks features genomics.h5 -type f ! -name '.*' -print0 | sort -z | xargs -0 sha256sum); }
if ! diff <(sums "$work/unsharded/cache") <(sums "$work/sharded/cache") > "$work/diff.txt"; then
  echo "FAIL: cache files differ:"; head -20 "$work/diff.txt"; fail=1
fi
items() { for m in "$1"/"$2"_manifest.csv "$1"/"$2"_shard*_manifest.csv; do [ -f "$m" ] && tail -n +2 "$m"; done | cut -d, -f1,2 | sed 's/,skipped$/,done/' | sort; }
for stage in tile features; do
  if ! diff <(items "$work/unsharded/cache" $stage) <(items "$work/sharded/cache" $stage) > "$work/diff.txt"; then
    echo "FAIL: $stage manifests differ:"; head "$work/diff.txt"; fail=1
  fi
  n=$(ls "$work/sharded/cache/${stage}"_shard*of3_manifest.csv | wc -l)
  [ "$n" -eq 3 ] || { echo "FAIL: $n $stage shard manifests, want 3"; fail=1; }
done
if ! cmp "$work/unsharded/runs/predictions.csv" "$work/sharded/runs/predictions.csv"; then
  echo "FAIL: predictions differ"; fail=1
fi
patches=$(ls "$work/sharded/cache/patches" | wc -l)
[ "$fail" -eq 0 ] && echo "OK: 3 Slurm shards == unsharded run ($patches slides; patches, masks, features, genomics, manifests, predictions)"
exit "$fail"
