#!/usr/bin/env bash
# Table 2's genomics-only rows on the real TCGA tables (BLCA: MCAT's sig table; BRCA:
# PORPOISE's mutsig table) with their 5-fold splits: `hdmoe-pipe compare` over both studies.
# Reads the project's shared data folder (not shipped to users). Resumable: a rerun keeps every
# finished fold. Hours of CPU.
#
# Usage: [JOBS=N] scripts/bench_compare.sh BIN SHARED_TCGA_DIR [EPOCHS] [MODELS] [STUDIES]
#   MODELS:  comma-separated (default snn,snn_trans,hdmoe); STUDIES: default "blca brca".
#   JOBS:    (study, model, fold) jobs trained at once, each `compare --shard k/JOBS` in its own
#            process with (cores / JOBS) libtorch threads (default 2); then one run over all
#            keeps them and writes bench-out/compare/compare.{csv,md,html}.
set -euo pipefail
bin=$1 shared=$2 epochs=${3:-30} models=${4:-snn,snn_trans,hdmoe} studies=${5:-blca brca}
jobs=${JOBS:-2}
out=bench-out/compare
mkdir -p "$out"
configs=()
for study in $studies; do
  case $study in
    blca) table=$shared/mcat_datasets_csv_sig/tcga_blca_all_clean.csv ;;
    brca) table=$shared/porpoise_datasets_csv_mutsig/tcga_brca_all_clean.csv ;;
    *) echo "unknown study $study" >&2; exit 2 ;;
  esac
  config=$out/$study.yaml
  cat > "$config.partial" <<YAML
dataset:
  name: $study
  modalities: [genomics]
paths:
  cohort: $table
  signatures: $shared/signatures.csv
  splits: $shared/splits/5foldcv/tcga_$study
  cache: $out/cache_$study
  runs: $out/runs_$study
train:
  epochs: $epochs
  device: cpu
YAML
  mv "$config.partial" "$config"
  "$bin" -q genomics --config "$config" > /dev/null
  configs+=(--config "$config")
done
if [ "$jobs" -gt 1 ]; then
  threads=$(( $(nproc) / jobs )); [ "$threads" -ge 1 ] || threads=1
  for k in $(seq 0 $((jobs - 1))); do
    OMP_NUM_THREADS=$threads "$bin" -q compare "${configs[@]}" --models "$models" \
      --shard "$k/$jobs" --out "$out" > "$out/shard_$k.log" 2>&1 &
  done
  wait
fi
"$bin" -q compare "${configs[@]}" --models "$models" --out "$out" > "$out/compare.log"
cat "$out/compare.md"
