#!/usr/bin/env bash
# Runs cargo against the libtorch of the PyPI torch installed by scripts/setup.sh.
# Usage: scripts/cargo.sh VENV_DIR cargo-args...
set -euo pipefail
venv=$(cd "$1" && pwd)
shift
torch_dir=$(ls -d "$venv"/lib/python3*/site-packages/torch 2>/dev/null | head -n 1)
if [ -z "$torch_dir" ]; then
  echo "scripts/cargo.sh: no torch in $venv; run 'make setup' first" >&2
  exit 1
fi
export LIBTORCH="$torch_dir" LIBTORCH_CXX11_ABI=1
unset LIBTORCH_USE_PYTORCH
exec cargo "$@"
