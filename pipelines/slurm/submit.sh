#!/usr/bin/env bash
# Submits a cohort's pipeline to Slurm: the per-slide and per-case stages as job arrays of
# SHARDS tasks, then fit and report, chained by dependencies. The cache and run folders of the
# configuration must be on storage every node sees.
#
#   pipelines/slurm/submit.sh pipelines/blca.yaml 16
#
# Environment:
#   HDMOE_BIN        the hdmoe-pipe binary (default target/release/hdmoe-pipe; `make release`)
#   SBATCH_ARGS      sbatch options for every job (e.g. "--partition=cpu --account=lab")
#   FEATURES_ARGS    extra sbatch options for the features array (e.g. "--gres=gpu:1 --cpus-per-task=8")
#   FIT_ARGS         extra sbatch options for fit (e.g. "--gres=gpu:1 --cpus-per-task=4")
#   LOG_DIR          where Slurm writes the jobs' logs (default <run folder>/slurm)
# Prints the job ids; the last is the report's.
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,15p' "$0" >&2
  exit 2
fi
config=$1
shards=${2:-8}
here=$(cd "$(dirname "$0")" && pwd)
export HDMOE_BIN=$(realpath "${HDMOE_BIN:-target/release/hdmoe-pipe}")
export HDMOE_CONFIG=$config
export HDMOE_SHARDS=$shards
[ -x "$HDMOE_BIN" ] || { echo "error: no binary at $HDMOE_BIN: run 'make release' or set HDMOE_BIN" >&2; exit 1; }

plan=$("$HDMOE_BIN" run --config "$config" --plan)
run_dir=$(sed -n 's/^run_dir //p' <<<"$plan")
stages=$(sed -n 's/^stage //p' <<<"$plan")
log_dir=${LOG_DIR:-$run_dir/slurm}
mkdir -p "$log_dir"

read -r -a common <<<"${SBATCH_ARGS:-}"
submit() {  # submit DEPENDENCY EXTRA_ARGS -- job.sbatch args...
  local dependency=$1 extra=$2
  shift 3
  local -a opts=(--parsable --output="$log_dir/%x_%A_%a.log" "${common[@]}")
  [ -n "$dependency" ] && opts+=(--dependency="afterok:$dependency")
  read -r -a more <<<"$extra"
  sbatch "${opts[@]}" "${more[@]}" "$here/job.sbatch" "$@"
}

array="--array=0-$((shards - 1))"
before_fit=()
if grep -qx tile <<<"$stages"; then
  tile=$(submit "" "$array --job-name=hdmoe-tile" -- tile)
  features=$(submit "$tile" "$array --job-name=hdmoe-features ${FEATURES_ARGS:-}" -- features)
  echo "tile: $tile  features: $features"
  before_fit+=("$features")
fi
if grep -qx genomics <<<"$stages"; then
  genomics=$(submit "" "--job-name=hdmoe-genomics" -- genomics)
  echo "genomics: $genomics"
  before_fit+=("$genomics")
fi
if grep -qx mri <<<"$stages"; then
  mri=$(submit "" "$array --job-name=hdmoe-mri" -- mri)
  echo "mri: $mri"
  before_fit+=("$mri")
fi
after=$(IFS=:; echo "${before_fit[*]}")
fit=$(submit "$after" "--job-name=hdmoe-fit ${FIT_ARGS:-}" -- fit)
before_report=$fit
if grep -qx external <<<"$stages"; then
  # train.holdout: the held-out patients by the fold ensemble, then their own report, which
  # the main report shows as its external-validation section.
  external=$(submit "$fit" "--job-name=hdmoe-external" -- predict \
    --run "$run_dir" --holdout --out "$run_dir/external")
  before_report=$(submit "$external" "--job-name=hdmoe-external-report" -- report \
    --predictions "$run_dir/external/predictions.csv" --out "$run_dir/report_external" --run "$run_dir")
  echo "external: $external  external report: $before_report"
fi
report=$(submit "$before_report" "--job-name=hdmoe-report" -- report \
  --predictions "$run_dir/predictions.csv" --out "$run_dir/report" --run "$run_dir")
echo "fit: $fit  report: $report"
echo "report (when done): $run_dir/report/report.html"
