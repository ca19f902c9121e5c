#!/usr/bin/env bash
# The CPU benchmark's PyTorch comparison (bench/cpu/compare_torch.py) runs on
# Debian's Python with Debian's CPU build of PyTorch 1.13 and NumPy.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
apt_install python3-torch python3-numpy
