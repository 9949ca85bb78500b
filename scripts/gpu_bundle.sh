#!/usr/bin/env bash
# Builds, on this machine, what scripts/gpu_check.sh runs on a CUDA node that has PyTorch 2.11
# but no Rust toolchain: the hdmoe-pipe binary, the integration test binary (tests/it; scripts/gpu_check.sh runs its gpu:: tests) and the
# features and fit benchmark binaries (stripped, xz-compressed), the shared libraries such a node
# lacks (libopenslide and its dependencies, libhdf5: everything ldd lists outside glibc, the C++
# runtime and libtorch), and the H&E tiles the large benchmark slide is made from.
#
# Usage: scripts/gpu_bundle.sh VENV OUT_DIR [SHARED_IMAGES_DIR]   (about 30 MB)
set -euo pipefail
VENV=$1
OUT=$2
IMAGES=${3:-../shared/data/images}
CARGO="scripts/cargo.sh $VENV"
TARGET=${CARGO_TARGET_DIR:-target}

$CARGO build
$CARGO test --no-run --test it
$CARGO bench --no-run --profile dev --bench features --bench fit

newest() { ls -t "$TARGET"/debug/deps/"$1"-* | grep -v '\.d$' | head -1; }
rm -rf "$OUT" && mkdir -p "$OUT/images" /tmp/gpu_bundle_strip
for pair in "hdmoe-pipe:$TARGET/debug/hdmoe-pipe" "gpu-tests:$(newest it)" \
  "bench-features:$(newest features)" "bench-fit:$(newest fit)"; do
  name=${pair%%:*}
  strip -o /tmp/gpu_bundle_strip/"$name" "${pair#*:}"
  xz -T0 -6 -c /tmp/gpu_bundle_strip/"$name" >"$OUT/$name.xz"
done

libs=$(ldd "$TARGET/debug/hdmoe-pipe" | awk '$3 ~ /^\// {print $3}' |
  grep -v -e torch -e nvidia -e '/libc\.so' -e '/libm\.so' -e libpthread -e '/libdl\.so' \
    -e '/librt\.so' -e ld-linux -e 'libstdc++' -e libgcc_s)
rm -rf /tmp/gpu_bundle_libs && mkdir -p /tmp/gpu_bundle_libs
for lib in $libs; do cp -L "$lib" /tmp/gpu_bundle_libs/; done
tar -C /tmp/gpu_bundle_libs -cJf "$OUT/libs.tar.xz" .
cp -r "$IMAGES/patches" "$OUT/images/patches"
du -sh "$OUT"
