#!/usr/bin/env bash
# JAX binding (issue 6): a private venv at .venv/jax with jax/jaxlib (whose
# jax.ffi.include_dir() supplies the XLA FFI headers the handler is compiled
# against), optax, numpy, pytest and scikit-learn (digits data for the example).
# Idempotent: an existing venv that already imports everything is left alone.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
apt_install python3-venv python3-dev build-essential

root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.venv/jax"
# Pinned together: jax/jaxlib 0.6.2 have jax.ffi (ffi_call, register_ffi_target,
# include_dir, pycapsule) and wheels for CPython 3.11 (Debian 12's python3).
pins=(jax==0.6.2 jaxlib==0.6.2 optax==0.2.5 "numpy>=1.26,<2.3" pytest scikit-learn)

if [ -x "$venv/bin/python" ] &&
   "$venv/bin/python" -c 'import jax, jax.ffi, optax, numpy, pytest, sklearn' 2>/dev/null; then
  exit 0
fi
/usr/bin/python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}"
"$venv/bin/python" -c 'import jax, jax.ffi; print("jax", jax.__version__, jax.ffi.include_dir())'
