#!/usr/bin/env bash
# Runs on a CUDA node with PyTorch 2.11 and no Rust (see README, "GPU nodes"), from the
# repository root, with the bundle scripts/gpu_bundle.sh made: the GPU tests, the features
# benchmark at fp16 / batch 256 on a large generated 40x slide (end to end next to the model
# alone and the readers alone), and the training-step benchmark on CUDA next to PyTorch eager
# (alternating rounds). Results go to OUT_DIR.
#
# Usage: bash scripts/gpu_check.sh BUNDLE_DIR OUT_DIR   (ONLY=features runs that part alone)
set -uo pipefail
ONLY=${ONLY:-all}
BUNDLE=$1
OUT=$2
WORK=/tmp/hdmoe-gpu
mkdir -p "$WORK/bin" "$WORK/lib" "$WORK/slides" "$OUT"
for f in "$BUNDLE"/*.xz; do
  name=$(basename "$f" .xz)
  [ "$name" = libs.tar ] && continue
  xz -dc "$f" >"$WORK/bin/$name" && chmod +x "$WORK/bin/$name"
done
tar -C "$WORK/lib" -xJf "$BUNDLE/libs.tar.xz"
TORCH_LIB=$(${PYTHON:-python3} -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
# Only our binaries see the shipped libraries (the node's Python keeps its own).
LIBS=$TORCH_LIB:$WORK/lib
bin() { LD_LIBRARY_PATH=$LIBS "$WORK/bin/$@"; }
export HDMOE_REPO=$PWD
section() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

section "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
bin hdmoe-pipe doctor | tee -a "$OUT/device.txt"

if [ "$ONLY" = all ]; then
section "GPU tests"
bin gpu-tests gpu:: --test-threads 1 --nocapture 2>&1 | tee "$OUT/gpu_tests.txt" | grep -v '^$'

fi

section "features benchmark"
[ -f "$WORK/slides/large40x.svs" ] ||
  python3 fixtures/slides/make_slides.py "$BUNDLE/images" --large "$WORK/slides/large40x.svs"
HDMOE_BENCH_SLIDES=$WORK/slides HDMOE_BENCH_DEVICE=cuda HDMOE_BENCH_PRECISION=fp16 \
  HDMOE_BENCH_BATCH=256 bin bench-features 2>&1 | tee "$OUT/features_bench.md"

[ "$ONLY" = all ] || exit 0
section "training step benchmark"
HDMOE_BENCH_DEVICE=cuda HDMOE_BENCH_TORCH_PYTHON=python3 bin bench-fit 2>&1 | tee "$OUT/fit_bench.md"
section "done"
