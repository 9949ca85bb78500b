#!/usr/bin/env bash
# Genomics-only HDMoE and the SNN baseline on the real TCGA tables with their 5-fold splits,
# beside the paper's figures. Reads the project's shared data folder (not shipped to users).
#
# Usage: [JOBS=N] [REPORT_ONLY=1] scripts/bench_tcga.sh BIN SHARED_TCGA_DIR STUDY ARCH [EPOCHS]
#   STUDY: blca (MCAT sig table) or brca (PORPOISE mutsig table: the sig table is not available)
#   ARCH:  hdmoe or snn
#   JOBS:  folds trained at once, each its own process with (cores / JOBS) libtorch threads
#          (default 1). The small genomic models use two threads poorly: on 2 cores, JOBS=2
#          trains BRCA HDMoE ~1.8x faster than one fold at a time. A final fit over all folds
#          keeps them and writes predictions.csv and summary.csv.
#   REPORT_ONLY=1: print the row of a finished run (all five folds and summary.csv in
#          bench-out/tcga) without training; `make bench` uses it.
set -euo pipefail
bin=$1 shared=$2 study=$3 arch=$4 epochs=${5:-30} jobs=${JOBS:-1}
case $study in
  blca) table=$shared/mcat_datasets_csv_sig/tcga_blca_all_clean.csv ;;
  brca) table=$shared/porpoise_datasets_csv_mutsig/tcga_brca_all_clean.csv ;;
  *) echo "unknown study $study" >&2; exit 2 ;;
esac
case $study/$arch in
  blca/snn) paper=0.618 ;; brca/snn) paper=0.633 ;;
  blca/hdmoe) paper=0.664 ;; brca/hdmoe) paper=0.658 ;;
  *) echo "unknown model $arch" >&2; exit 2 ;;
esac
out=bench-out/tcga/${study}_${arch}_e${epochs}
sets=(
  --set "dataset.name=tcga_${study}_genomics" --set "dataset.modalities=[genomics]"
  --set "paths.cohort=$table" --set "paths.signatures=$shared/signatures.csv"
  --set "paths.splits=$shared/splits/5foldcv/tcga_$study"
  --set "paths.cache=bench-out/tcga/cache_$study" --set "paths.runs=$out"
  --set "model.architecture=$arch" --set "train.epochs=$epochs" --set "train.device=cpu"
)
if [ "$jobs" -gt 1 ]; then how="$jobs folds at once"; else how="1 fold at once"; fi
if [ -n "${REPORT_ONLY:-}" ]; then
  done_folds=$( (find "$out" -path "$out/fold_*/done" 2>/dev/null || true) | wc -l)
  if [ ! -f "$out/summary.csv" ] || [ "$done_folds" -lt 5 ]; then
    echo "| $study | $arch | $epochs | not trained here: \`make bench-tcga\` (hours of CPU) | | $paper | |"
    exit 0
  fi
  how="finished run in $out"
else
  "$bin" -q genomics "${sets[@]}" > /dev/null
  if [ "$jobs" -gt 1 ]; then
    threads=$(( $(nproc) / jobs )); [ "$threads" -ge 1 ] || threads=1
    mkdir -p "$out"
    export OMP_NUM_THREADS=$threads
    printf '%s\n' 0 1 2 3 4 | xargs -P "$jobs" -I{} sh -c \
      '"$0" -q fit "$@" --set "train.folds=[{}]" > "'"$out"'/fold_{}.log" 2>&1' "$bin" "${sets[@]}"
    unset OMP_NUM_THREADS
  fi
  "$bin" -q fit "${sets[@]}" > "$out.log"
fi
# Seconds per epoch: the median over every fold's history (a resumed fit keeps its history).
sec=$(tail -q -n +2 "$out"/fold_*/history.csv | cut -d, -f10 | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
awk -F, -v s="$study" -v a="$arch" -v p="$paper" -v sec="$sec" -v e="$epochs" -v how="$how" '
  $1=="mean" {m_last=$7; m_best=$8} $1=="std" {s_last=$7; s_best=$8}
  END { printf "| %s | %s | %d | %.4f ± %.4f | %.4f ± %.4f | %s | %.1f (%s) |\n", s, a, e, m_last, s_last, m_best, s_best, p, sec, how }
' "$out/summary.csv"
