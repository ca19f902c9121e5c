"""The handler library of koala.jax (libkoala_jax.so) and the part of
libkoala's C API that koala.jax calls from Python (through ctypes, on the
libkoala the handler library is linked to, so that both sides are the same
library): configuration defaults and checks, the initial state, koala_info,
checkpoints.

This module needs only jax and numpy; it does not import the SWIG module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import jax
import numpy as np

METHODS = {"vanilla": 1, "momentum": 2, "plusplus": 3}
# JAX dtype name -> koala_dtype; KOALA-M / KOALA++ state is float32 for the
# 16-bit types.
DTYPES = {"float32": 1, "float64": 2, "bfloat16": 3, "float16": 4}
STATE_DTYPES = {"float32": "float32", "float64": "float64", "bfloat16": "float32",
                "float16": "float32"}
# koala_config's float fields, in ABI order (the `config` attribute of the
# handlers), and its since-1.1 int fields koala.jax exposes.
FLOAT_FIELDS = ("lr", "weight_decay", "r", "alpha_r", "sigma", "q",
                "sw", "sc", "sv", "a", "qw", "qv")
INT_FIELDS = ("threads", "asymmetric", "fused_predict")
KOALA_HOST = 1
SCALAR_LR_SCALE = 10   # KOALA_SCALAR_LR_SCALE


class KoalaError(RuntimeError):
    """A libkoala call made from Python (init, info, checkpoints) failed; the
    message is libkoala's status and koala_last_error(). Inside jit,
    libkoala's errors surface as JAX's runtime error with the same text."""


class Config(ctypes.Structure):
    """koala_config of koala.h 1.1, fields in ABI order."""
    _fields_ = ([("struct_size", ctypes.c_size_t), ("method", ctypes.c_int)] +
                [(name, ctypes.c_double) for name in FLOAT_FIELDS] +
                [("threads", ctypes.c_int), ("stochastic_rounding", ctypes.c_int),
                 ("seed", ctypes.c_uint64), ("asymmetric", ctypes.c_int),
                 ("fused_predict", ctypes.c_int), ("caller_state", ctypes.c_int)])


class Info(ctypes.Structure):
    """koala_info of koala.h 1.1."""
    _fields_ = ([("struct_size", ctypes.c_size_t), ("steps", ctypes.c_uint64),
                 ("skipped_steps", ctypes.c_uint64)] +
                [(n, ctypes.c_double) for n in ("sigma", "p00", "p01", "p11", "r", "qw", "lr")] +
                [("threads", ctypes.c_int), ("phase", ctypes.c_int)])


class Shard(ctypes.Structure):
    """koala_shard."""
    _fields_ = [("struct_size", ctypes.c_size_t), ("n_global", ctypes.c_size_t),
                ("global_index", ctypes.POINTER(ctypes.c_size_t)),
                ("global_elements", ctypes.c_uint64), ("allreduce", ctypes.c_void_p),
                ("user", ctypes.c_void_p)]


def _candidate_paths():
    env = os.environ.get("KOALA_JAX_LIB")
    if env:
        yield env
        return  # an explicit choice is not second-guessed
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "libkoala_jax.so")
    # A wheel (pip install .): meson-python's folder of the project's libraries.
    yield os.path.join(os.path.dirname(here), ".libkoala.mesonpy.libs", "libkoala_jax.so")
    # Installed: <prefix>/lib[/<multiarch>]/python3.X/site-packages/koala/
    # next to <prefix>/lib[/<multiarch>]/libkoala_jax.so.
    d = here
    for _ in range(5):
        d = os.path.dirname(d)
        yield os.path.join(d, "libkoala_jax.so")
        for sub in ("lib", "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu"):
            yield os.path.join(d, sub, "libkoala_jax.so")
    found = ctypes.util.find_library("koala_jax")
    if found:
        yield found
    yield "libkoala_jax.so"  # the loader's own search (LD_LIBRARY_PATH, ...)


_lib = None
_lib_lock = threading.Lock()
# FFI targets: name -> handler symbol stem (+ "Cpu" / "Gpu").
TARGETS = {"koala_jax_predict": "KoalaJaxPredict", "koala_jax_update": "KoalaJaxUpdate",
           "koala_jax_update_begin": "KoalaJaxUpdateBegin",
           "koala_jax_update_end": "KoalaJaxUpdateEnd"}


def _declare(lib):
    c = ctypes
    P = c.c_void_p
    sigs = {
        "koala_config_init_sized": ([c.POINTER(Config), c.c_int, c.c_size_t], None),
        "koala_create": ([c.POINTER(Config), c.c_size_t, c.POINTER(c.c_size_t), c.c_int,
                          c.c_int, c.POINTER(P)], c.c_int),
        "koala_create_sharded": ([c.POINTER(Config), c.c_size_t, c.POINTER(c.c_size_t),
                                  c.POINTER(Shard), c.c_int, c.c_int, c.POINTER(P)], c.c_int),
        "koala_destroy": ([P], None),
        "koala_state_layout": ([P, c.POINTER(c.c_size_t), c.POINTER(c.c_int),
                                c.POINTER(c.c_size_t)], c.c_int),
        "koala_state_init": ([P, c.POINTER(P), P, P], c.c_int),
        "koala_bind_state": ([P, c.POINTER(P), P], c.c_int),
        "koala_sums_size": ([P, c.POINTER(c.c_size_t)], c.c_int),
        "koala_get_info": ([P, P, c.POINTER(Info)], c.c_int),
        "koala_state_size": ([P, c.POINTER(c.c_size_t)], c.c_int),
        "koala_state_save": ([P, P, c.c_size_t, P], c.c_int),
        "koala_state_load": ([P, P, c.c_size_t, P], c.c_int),
        "koala_status_string": ([c.c_int], c.c_char_p),
        "koala_last_error": ([], c.c_char_p),
        "koala_version": ([], c.c_uint),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res


def handler_library() -> ctypes.CDLL:
    """Loads libkoala_jax.so (and with it libkoala) once and registers its
    FFI targets with JAX. Raises ImportError naming the places tried."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        tried = []
        lib = None
        for path in _candidate_paths():
            if os.sep in path and not os.path.exists(path):
                tried.append(path)
                continue
            try:
                lib = ctypes.CDLL(path)
                break
            except OSError as e:
                tried.append(f"{path} ({e})")
        if lib is None:
            raise ImportError("koala.jax: cannot load libkoala_jax.so (it is built whenever "
                              "jax is importable when libkoala is configured; or set "
                              "KOALA_JAX_LIB); tried: " + "; ".join(tried))
        _declare(lib)
        if lib.koala_version() < 10100:
            raise ImportError("koala.jax needs libkoala 1.1 or newer (caller-owned state)")
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol + "Cpu")),
                                        platform="cpu")
            # GPU: device optimizers on XLA's stream (needs libkoala's CUDA
            # plugin at run time). JAX defers this registration until a CUDA
            # backend exists.
            try:
                jax.ffi.register_ffi_target(target,
                                            jax.ffi.pycapsule(getattr(lib, symbol + "Gpu")),
                                            platform="CUDA")
            except Exception:  # a jaxlib that cannot take CUDA targets: CPU only
                pass
        _lib = lib
        return lib


def check(lib, status, what):
    if status != 0:
        raise KoalaError(f"koala.jax {what}: {lib.koala_status_string(status).decode()}: "
                         f"{lib.koala_last_error().decode()}")


def default_config(method: str) -> dict:
    """koala_config_init's defaults for `method` (koala.jax's fields only)."""
    lib = handler_library()
    cfg = Config()
    lib.koala_config_init_sized(ctypes.byref(cfg), METHODS[method], ctypes.sizeof(Config))
    return {name: getattr(cfg, name) for name in FLOAT_FIELDS + INT_FIELDS}


class HostOptimizer:
    """A short-lived host koala_optimizer with caller-owned state, for what
    koala.jax does outside jit: validating a config, the initial scalars,
    koala_info, checkpoints."""

    def __init__(self, method, dtype, sizes, config, shard=None):
        self.lib = lib = handler_library()
        cfg = Config()
        lib.koala_config_init_sized(ctypes.byref(cfg), METHODS[method], ctypes.sizeof(Config))
        for name, value in config.items():
            setattr(cfg, name, int(value) if name in INT_FIELDS else float(value))
        cfg.caller_state = 1
        self.n = len(sizes)
        arr = (ctypes.c_size_t * max(1, self.n))(*sizes)
        self.handle = ctypes.c_void_p()
        if shard is None:
            status = lib.koala_create(ctypes.byref(cfg), self.n, arr, DTYPES[dtype], KOALA_HOST,
                                      ctypes.byref(self.handle))
        else:
            status = lib.koala_create_sharded(ctypes.byref(cfg), self.n, arr, ctypes.byref(shard),
                                              DTYPES[dtype], KOALA_HOST,
                                              ctypes.byref(self.handle))
        check(lib, status, "config")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lib.koala_destroy(self.handle)

    def layout(self):
        """(buffers_per_tensor, scalar_count)."""
        per, dt, count = ctypes.c_size_t(), ctypes.c_int(), ctypes.c_size_t()
        check(self.lib, self.lib.koala_state_layout(self.handle, ctypes.byref(per),
                                                    ctypes.byref(dt), ctypes.byref(count)),
              "state layout")
        return per.value, count.value

    def sums_size(self):
        n = ctypes.c_size_t()
        check(self.lib, self.lib.koala_sums_size(self.handle, ctypes.byref(n)), "sums size")
        return n.value

    @staticmethod
    def _table(buffers):
        return (ctypes.c_void_p * max(1, len(buffers)))(*[b.ctypes.data for b in buffers])

    def init_state(self, buffers, scalars):
        """koala_state_init into NumPy arrays (C-contiguous, written)."""
        check(self.lib, self.lib.koala_state_init(self.handle, self._table(buffers),
                                                  scalars.ctypes.data, None), "init")

    def bind(self, buffers, scalars):
        """koala_bind_state to NumPy arrays; keeps them alive while bound."""
        self._bound = (buffers, scalars)
        check(self.lib, self.lib.koala_bind_state(self.handle, self._table(buffers),
                                                  scalars.ctypes.data), "binding the state")

    def info(self) -> dict:
        out = Info(struct_size=ctypes.sizeof(Info))
        check(self.lib, self.lib.koala_get_info(self.handle, None, ctypes.byref(out)), "info")
        return {name: getattr(out, name) for name, _ in Info._fields_[1:]}

    def save(self) -> bytes:
        n = ctypes.c_size_t()
        check(self.lib, self.lib.koala_state_size(self.handle, ctypes.byref(n)), "state size")
        buf = np.zeros(n.value, np.uint8)
        check(self.lib, self.lib.koala_state_save(self.handle, buf.ctypes.data, n.value, None),
              "saving the checkpoint")
        return buf.tobytes()

    def load(self, data: bytes):
        buf = np.frombuffer(data, np.uint8).copy()
        check(self.lib, self.lib.koala_state_load(self.handle, buf.ctypes.data, buf.size, None),
              "loading the checkpoint")
