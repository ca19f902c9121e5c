#!/usr/bin/env bash
# PyPI's current PyTorch for the Python tests (issue 15): a private venv at
# .venv/torch-pypi on Debian's /usr/bin/python3 (the interpreter the SWIG
# module is built for), without Debian's site packages (Debian's torch 1.13
# and NumPy 1.24 stay in .venv/torch). It holds torch, NumPy 2, pytest and
# ml_dtypes (NumPy bfloat16/float16 arrays for the half-precision tests).
#
# PyPI's Linux torch wheel is the CUDA build: about 5.6 GB installed with its
# nvidia-* dependencies (the CPU-only wheels live on another index, which this
# project's machines cannot reach). pip's cache keeps a re-install fast; an
# existing venv that already imports everything is left alone.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
apt_install python3-venv python3-dev build-essential

root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.venv/torch-pypi"
# Pinned so that CI tests what was tested; bump together.
pins=(torch==2.15.0 "numpy>=2,<3" ml_dtypes pytest)

if [ -x "$venv/bin/python" ] &&
   "$venv/bin/python" -c 'import torch, numpy, ml_dtypes, pytest' 2>/dev/null; then
  exit 0
fi
/usr/bin/python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}"
"$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'
