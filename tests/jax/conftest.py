"""Shared setup of the JAX suite: the koala.jax module, and libkoala itself
through ctypes (the plain-C side the jitted results are compared against).

x64 is on unless KOALA_JAX_X64=0 (the suite runs once each way: without
x64 the scalar block is uint32 pairs and the partial sums are summed in a
locally enabled float64). Four host devices for the sharded tests
(XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before jax
is imported; tests/jax/meson.build sets it).

Environment (set by tests/jax/meson.build): KOALA_JAX_LIB (the handler
library in the build tree), KOALA_LIB (libkoala.so in the build tree),
PYTHONPATH (the koala package), KOALA_PYTHON_SOURCE (bindings/python/koala)."""
import ctypes
import importlib
import os
import sys
import types

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

X64 = os.environ.get("KOALA_JAX_X64", "1") != "0"
jax.config.update("jax_enable_x64", X64)


def _import_koala_jax():
    try:
        return importlib.import_module("koala.jax")
    except ImportError:
        # koala/__init__.py imports the SWIG module (koala.capi), which a
        # build without the python feature lacks; koala.jax needs only its own
        # handler library: import it from a bare package of the sources.
        src = os.environ.get("KOALA_PYTHON_SOURCE")
        if not src:
            raise
        for name in [m for m in sys.modules if m == "koala" or m.startswith("koala.")]:
            del sys.modules[name]
        pkg = types.ModuleType("koala")
        pkg.__path__ = [src]
        sys.modules["koala"] = pkg
        return importlib.import_module("koala.jax")


kj = _import_koala_jax()
DTYPE = np.float64 if X64 else np.float32  # the suite's parameter dtype


@pytest.fixture(scope="session")
def koala_jax():
    return kj


# ---- libkoala through ctypes ------------------------------------------------

from koala.jax_lib import Config  # noqa: E402

_METHODS = {"vanilla": 1, "momentum": 2, "plusplus": 3}


class PlainKoala:
    """One host koala_optimizer driven through the C ABI with NumPy arrays:
    the reference the jitted results must reproduce. Its state is
    caller-owned (NumPy arrays), so it can be compared array by array with
    koala.jax's; lr is the plain config's (cfg.lr, lr multiplier 1)."""

    def __init__(self, lib, method, arrays, **config):
        self.lib = lib
        cfg = Config()
        lib.koala_config_init_sized(ctypes.byref(cfg), _METHODS[method], ctypes.sizeof(Config))
        for k, v in config.items():
            setattr(cfg, k, float(v) if k not in ("threads", "asymmetric") else int(v))
        cfg.caller_state = 1
        import ml_dtypes
        dtype = {np.dtype(np.float32): 1, np.dtype(np.float64): 2,
                 np.dtype(ml_dtypes.bfloat16): 3, np.dtype(np.float16): 4}[arrays[0].dtype]
        # KOALA-M / KOALA++ state: float32 for the 16-bit types.
        state_dtype = np.float64 if dtype == 2 else np.float32
        sizes = (ctypes.c_size_t * len(arrays))(*[a.size for a in arrays])
        self.handle = ctypes.c_void_p()
        self._check(lib.koala_create(ctypes.byref(cfg), len(arrays), sizes, dtype, 1,
                                     ctypes.byref(self.handle)))
        self.n = len(arrays)
        per, count = ctypes.c_size_t(), ctypes.c_size_t()
        self._check(lib.koala_state_layout(self.handle, ctypes.byref(per), None,
                                           ctypes.byref(count)))
        self.buffers = [np.zeros(a.size, state_dtype) for _ in range(per.value) for a in arrays]
        self.scalars = np.zeros(count.value, np.float64)
        table = self._ptrs(self.buffers) if self.buffers else None
        self._check(lib.koala_state_init(self.handle, table, self.scalars.ctypes.data, None))
        self._check(lib.koala_bind_state(self.handle, table, self.scalars.ctypes.data))
        self._table = table

    def _check(self, status):
        if status != 0:
            raise RuntimeError(self.lib.koala_last_error().decode())

    def _ptrs(self, arrays):
        for a in arrays:
            assert a.flags.c_contiguous
        return (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])

    def predict(self, params):
        self._check(self.lib.koala_predict(self.handle, self._ptrs(params), None))

    def update(self, loss, loss_var, params, grads):
        self._check(self.lib.koala_update(self.handle, ctypes.c_double(loss),
                                          ctypes.c_double(loss_var), self._ptrs(params),
                                          self._ptrs(grads), None))

    def set_lr(self, lr):
        self._check(self.lib.koala_set_lr(self.handle, ctypes.c_double(lr)))

    def close(self):
        self.lib.koala_destroy(self.handle)


@pytest.fixture(scope="session")
def plain_koala():
    path = os.environ.get("KOALA_LIB", "libkoala.so")
    lib = ctypes.CDLL(path)
    c = ctypes
    lib.koala_config_init_sized.argtypes = [c.c_void_p, c.c_int, c.c_size_t]
    lib.koala_config_init_sized.restype = None
    lib.koala_create.argtypes = [c.c_void_p, c.c_size_t, c.c_void_p, c.c_int, c.c_int,
                                 c.c_void_p]
    lib.koala_state_layout.argtypes = [c.c_void_p, c.c_void_p, c.c_void_p, c.c_void_p]
    lib.koala_state_init.argtypes = [c.c_void_p, c.c_void_p, c.c_void_p, c.c_void_p]
    lib.koala_bind_state.argtypes = [c.c_void_p, c.c_void_p, c.c_void_p]
    lib.koala_predict.argtypes = [c.c_void_p, c.c_void_p, c.c_void_p]
    lib.koala_update.argtypes = [c.c_void_p, c.c_double, c.c_double, c.c_void_p, c.c_void_p,
                                 c.c_void_p]
    lib.koala_set_lr.argtypes = [c.c_void_p, c.c_double]
    lib.koala_destroy.argtypes = [c.c_void_p]
    lib.koala_last_error.restype = c.c_char_p
    return lambda method, arrays, **config: PlainKoala(lib, method, arrays, **config)


def scalar_block(state, row=0):
    """The state's scalar block as float64 values (either representation)."""
    s = np.asarray(state.scalars)
    if s.ndim == 2:
        s = s[row]
    return np.ascontiguousarray(s).view(np.float64)


def state_leaves(state):
    """The state's per-parameter arrays, buffer-major, as NumPy arrays."""
    return [np.asarray(leaf).reshape(-1) for tree in state.buffers
            for leaf in jax.tree_util.tree_leaves(tree)]
