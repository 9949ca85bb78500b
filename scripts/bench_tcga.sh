#!/usr/bin/env bash
# Genomics-only HDMoE and the SNN baseline on the real TCGA tables with their 5-fold splits,
# beside the paper's figures. Reads the project's shared data folder (not shipped to users).
#
# Usage: scripts/bench_tcga.sh BIN SHARED_TCGA_DIR STUDY ARCH [EPOCHS]
#   STUDY: blca (MCAT sig table) or brca (PORPOISE mutsig table: the sig table is not available)
#   ARCH:  hdmoe or snn
set -euo pipefail
bin=$1 shared=$2 study=$3 arch=$4 epochs=${5:-30}
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
"$bin" -q genomics "${sets[@]}" > /dev/null
"$bin" -q fit "${sets[@]}" > "$out.log"
# Seconds per epoch: the median over every fold's history (a resumed fit keeps its history).
sec=$(tail -q -n +2 "$out"/fold_*/history.csv | cut -d, -f10 | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
awk -F, -v s="$study" -v a="$arch" -v p="$paper" -v sec="$sec" -v e="$epochs" '
  $1=="mean" {m_last=$7; m_best=$8} $1=="std" {s_last=$7; s_best=$8}
  END { printf "| %s | %s | %d | %.4f ± %.4f | %.4f ± %.4f | %s | %.1f |\n", s, a, e, m_last, s_last, m_best, s_best, p, sec }
' "$out/summary.csv"
