#!/bin/sh
# pip_install.sh SOURCE_ROOT WORK_DIR
# `pip install .` of the repository into a fresh venv, offline: the build tools
# (meson-python, meson, ninja) come from the wheels tools/deps/python.sh saved
# in .venv/wheels-python, and the build runs without isolation. Then the
# installed package must import from outside the source tree, find its own
# libkoala, take a real step and report itself (python -m koala).
# Exit 77 (skipped) when the wheels or python3-venv are missing.
set -eu
src=$1
work=$2
wheels=$src/.venv/wheels-python
if [ ! -d "$wheels" ] || ! /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "skipped: $wheels or python3-venv missing (run tools/deps/python.sh)"
  exit 77
fi
mkdir -p "$work"
rm -rf "$work/venv"
# --system-site-packages: Debian's NumPy (and torch) for the smoke test.
/usr/bin/python3 -m venv --system-site-packages "$work/venv"
py=$work/venv/bin/python
"$py" -m pip install -q --no-index --find-links "$wheels" meson-python meson ninja
# The build directory persists between runs, so a re-run only rebuilds what changed.
"$py" -m pip install -q --no-index --no-build-isolation \
  --config-settings=build-dir="$work/build" "$src"

cd "$work"
unset PYTHONPATH
"$py" - "$work/venv" <<'PY'
import os, sys
import numpy as np
import koala

venv = os.path.realpath(sys.argv[1])
assert os.path.realpath(koala.__file__).startswith(venv), koala.__file__
lib = koala.library_path()
assert lib and os.path.realpath(lib).startswith(venv), f"libkoala loaded from {lib}"
params = [np.ones(6, np.float32), np.ones(2, np.float32)]
opt = koala.Optimizer("momentum", params, weight_decay=5e-4)
opt.predict(params)
opt.update(0.9, 1.0, params, [np.full(6, 0.5, np.float32), None])
assert params[0][0] < 1.0 and params[1][0] == 1.0, params
assert opt.info().steps == 1
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    from koala.torch import MomentumKOALA
    w = torch.nn.Parameter(torch.ones(3))
    m = MomentumKOALA([w])
    m.predict()
    loss = (w ** 2).sum()
    m.zero_grad()
    loss.backward()
    m.update(loss, loss ** 2)
    assert float(w[0]) < 1.0
print(f"pip install OK: koala {koala.__version__} from {os.path.dirname(koala.__file__)}, "
      f"libkoala {lib}")
PY
"$py" -m koala
