"""Shared setup of the JAX suite: float64 on, the koala.jax module, and
libkoala itself through ctypes (the plain-C side the jitted results are
compared against).

Environment (set by tests/jax/meson.build): KOALA_JAX_LIB (the handler
library in the build tree), KOALA_LIB (libkoala.so in the build tree),
PYTHONPATH (the koala package), KOALA_JAX_MODULE (the source koala/jax.py)."""
import ctypes
import importlib.util
import os
import sys

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)


def _import_koala_jax():
    try:
        import koala.jax
        return koala.jax
    except ImportError:
        # koala/__init__.py imports the SWIG module (koala.capi), which a
        # build without the python feature lacks; koala.jax needs only its own
        # handler library, so load the file by itself.
        path = os.environ.get("KOALA_JAX_MODULE")
        if not path:
            raise
        spec = importlib.util.spec_from_file_location("koala_jax_standalone", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


kj = _import_koala_jax()


@pytest.fixture(scope="session")
def koala_jax():
    return kj


# ---- libkoala through ctypes ------------------------------------------------

class PlainKoala:
    """One host koala_optimizer driven through the C ABI with NumPy arrays:
    the reference the jitted results must reproduce."""

    def __init__(self, lib, method, arrays, **config):
        self.lib = lib
        cfg = kj._Config()
        lib.koala_config_init(ctypes.byref(cfg), {"vanilla": 1, "momentum": 2}[method])
        for k, v in config.items():
            setattr(cfg, k, float(v))
        dtype = {np.dtype(np.float32): 1, np.dtype(np.float64): 2}[arrays[0].dtype]
        sizes = (ctypes.c_size_t * len(arrays))(*[a.size for a in arrays])
        self.handle = ctypes.c_void_p()
        self._check(lib.koala_create(ctypes.byref(cfg), len(arrays), sizes, dtype, 1,
                                     ctypes.byref(self.handle)))
        self.n = len(arrays)

    def _check(self, status):
        if status != 0:
            raise RuntimeError(self.lib.koala_last_error().decode())

    def _ptrs(self, arrays):
        for a in arrays:
            assert a.flags.c_contiguous
        return (ctypes.c_void_p * self.n)(*[a.ctypes.data for a in arrays])

    def predict(self, params):
        self._check(self.lib.koala_predict(self.handle, self._ptrs(params), None))

    def update(self, loss, loss_var, params, grads):
        self._check(self.lib.koala_update(self.handle, ctypes.c_double(loss),
                                          ctypes.c_double(loss_var), self._ptrs(params),
                                          self._ptrs(grads), None))

    def set_lr(self, lr):
        self._check(self.lib.koala_set_lr(self.handle, ctypes.c_double(lr)))

    def state_bytes(self):
        n = ctypes.c_size_t()
        self._check(self.lib.koala_state_size(self.handle, ctypes.byref(n)))
        buf = np.zeros(n.value, np.uint8)
        self._check(self.lib.koala_state_save(self.handle, buf.ctypes.data, n.value, None))
        return buf

    def close(self):
        self.lib.koala_destroy(self.handle)


@pytest.fixture(scope="session")
def plain_koala():
    path = os.environ.get("KOALA_LIB", "libkoala.so")
    lib = ctypes.CDLL(path)
    lib.koala_config_init.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.koala_create.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int,
                                 ctypes.c_int, ctypes.c_void_p]
    lib.koala_predict.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.koala_update.argtypes = [ctypes.c_void_p, ctypes.c_double, ctypes.c_double,
                                 ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.koala_set_lr.argtypes = [ctypes.c_void_p, ctypes.c_double]
    lib.koala_state_size.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.koala_state_save.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                     ctypes.c_void_p]
    lib.koala_destroy.argtypes = [ctypes.c_void_p]
    lib.koala_last_error.restype = ctypes.c_char_p
    return lambda method, arrays, **config: PlainKoala(lib, method, arrays, **config)
