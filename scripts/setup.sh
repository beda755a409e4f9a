#!/usr/bin/env bash
# Set up lthfast on a fresh Debian/Ubuntu machine: apt libraries for ffcv (as root; otherwise
# prints the command), a virtualenv, and the package with its ffcv and dev extras.
#   scripts/setup.sh [VENV_DIR]      (default: .venv; env LTHFAST_VENV overrides)
set -euo pipefail
venv="${1:-${LTHFAST_VENV:-.venv}}"
here="$(cd "$(dirname "$0")/.." && pwd)"
apt_pkgs="libopencv-dev libturbojpeg0-dev pkg-config"

have_libs() { pkg-config --exists opencv4 2>/dev/null && ldconfig -p | grep -q libturbojpeg; }
if ! have_libs; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing apt packages: $apt_pkgs" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $apt_pkgs) >&2
  else
    echo "ffcv needs system libraries; run: sudo apt-get install -y $apt_pkgs" >&2
    echo "(continuing without ffcv: lthfast's own loader does not need it)" >&2
    no_ffcv=1
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
fi
# torch 2.13.0 first, pinned: an unpinned torch may pull a multi-GB CUDA build.
"$venv/bin/pip" install -q "torch==2.13.0" >&2 || "$venv/bin/pip" install -q "torch>=2.4" >&2
extras="dev"
[ -z "${no_ffcv:-}" ] && extras="dev,ffcv"
"$venv/bin/pip" install -q -e "$here[$extras]" >&2
echo "$venv"
