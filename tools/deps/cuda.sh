#!/usr/bin/env bash
# The CUDA plugin (cuda/) and its tests/benchmark: nothing to install from
# Debian. The CUDA toolkit (nvcc 13, cuBLAS for the benchmark's baseline)
# comes with the machine image under /usr/local/cuda (the plugin is built and
# checked with CUDA 13.0 there); Debian 12's own nvidia-cuda-toolkit (11.8,
# non-free) is not used. Meson finds nvcc on PATH: with
# -Dcuda=auto (the default) a machine without nvcc builds the host-only
# library; -Dcuda=enabled fails loudly instead.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
if ! command -v nvcc >/dev/null 2>&1; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then
    echo "libkoala setup (cuda): nvcc is in /usr/local/cuda/bin; add it to PATH:" >&2
    echo "  export PATH=/usr/local/cuda/bin:\$PATH" >&2
  else
    echo "libkoala setup (cuda): no CUDA toolkit found; the CUDA plugin will not be built" >&2
  fi
fi
