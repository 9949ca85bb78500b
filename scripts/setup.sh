#!/usr/bin/env bash
# One-time machine set-up for hdmoe-pipe: Debian packages and the PyPI torch that supplies libtorch.
# Idempotent: when everything is already in place it only checks and returns in seconds.
#
# Usage: scripts/setup.sh [VENV_DIR]   (default .venv; the Makefile passes $(VENV))
set -euo pipefail

VENV_DIR=${1:-.venv}
TORCH_VERSION=2.11.0 # torch-sys 0.24 pins exactly this libtorch
APT_PACKAGES=(
  libopenslide-dev libhdf5-dev libclang-dev clang pkg-config libturbojpeg0-dev
  libfontconfig1-dev libfreetype-dev fonts-dejavu-core
  python3-venv
)

log() { printf '[setup] %s\n' "$*" >&2; }

missing_apt_packages() {
  local pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || printf '%s\n' "$pkg"
  done
}

install_apt_packages() {
  local missing
  missing=$(missing_apt_packages)
  [ -z "$missing" ] && return 0
  if ! command -v apt-get >/dev/null; then
    log "missing system packages and no apt-get to install them: $(echo $missing)"
    log "install the equivalents of: ${APT_PACKAGES[*]}"
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  log "installing Debian packages: $(echo $missing)"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# Python's venv module is only usable when ensurepip works; Debian's python3 needs python3-venv for that,
# a pyenv python has it built in. Prefer whichever python3 is first on PATH.
python_for_venv() {
  local py
  for py in python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import venv, ensurepip' 2>/dev/null; then
      command -v "$py"
      return 0
    fi
  done
  log "no python3 with a working venv module found"
  exit 1
}

torch_ok() {
  [ -x "$VENV_DIR/bin/python" ] &&
    "$VENV_DIR/bin/python" - "$TORCH_VERSION" <<'EOF' 2>/dev/null
import sys, pathlib, torch
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
assert (pathlib.Path(torch.__file__).parent / "lib" / "libtorch_cpu.so").exists()
EOF
}

install_torch() {
  torch_ok && return 0
  if [ ! -x "$VENV_DIR/bin/python" ]; then
    log "creating virtual environment $VENV_DIR"
    "$(python_for_venv)" -m venv "$VENV_DIR"
  fi
  log "installing torch==$TORCH_VERSION into $VENV_DIR (about 2.7 GB with its CUDA libraries; once)"
  "$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
  torch_ok || {
    log "torch $TORCH_VERSION did not install correctly into $VENV_DIR"
    exit 1
  }
}

install_apt_packages
install_torch
log "ok: system packages present, torch $TORCH_VERSION in $VENV_DIR"
