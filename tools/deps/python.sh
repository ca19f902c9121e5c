#!/usr/bin/env bash
# The Python binding, its tests and the digits example:
#  - Debian: SWIG, Python headers, NumPy 1.24, PyTorch 1.13 (CPU), pytest,
#    scikit-learn, matplotlib, patchelf (meson-python relocates libkoala.so
#    into the wheel with it);
#  - .venv/torch: a venv over Debian's packages (--system-site-packages; Debian's
#    torch needs Debian's NumPy 1.x) with meson-python, meson and ninja from PyPI;
#  - .venv/wheels-python: those wheels, so the `pip install .` test installs
#    them into its fresh venv without the network.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
apt_install python3-dev python3-venv python3-pip swig patchelf python3-numpy python3-torch \
  python3-pytest python3-sklearn python3-matplotlib

root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$root/.venv/torch
wheels=$root/.venv/wheels-python
build_tools=(meson-python meson ninja)
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
if ! "$venv/bin/python" -c 'import mesonpy, ninja' 2>/dev/null; then
  "$venv/bin/python" -m pip install -q "${build_tools[@]}"
fi
if ! ls "$wheels"/meson_python-*.whl "$wheels"/ninja-*.whl "$wheels"/meson-*.whl >/dev/null 2>&1; then
  "$venv/bin/python" -m pip download -q -d "$wheels" "${build_tools[@]}"
fi
