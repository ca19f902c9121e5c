"""koala.jax: the KOALA optimizer (libkoala) inside ``jax.jit``.

libkoala runs as an XLA FFI custom call (the handlers in libkoala_jax.so), so
a whole training step, forward, backward and optimizer, compiles into one
XLA program. The optimizer state is a pytree (:class:`KoalaState`) whose only
array is a libkoala checkpoint (``uint8[N]``, the bytes of
``koala_state_save``); each step is therefore a pure function::

    import jax, koala.jax as kj

    state = kj.init(params, "momentum")            # or "vanilla", plus config
    @jax.jit
    def step(params, state, x, y):
        params, state = kj.predict(params, state)  # before the forward pass
        (loss, loss_var), grads = jax.value_and_grad(losses, has_aux=True)(params, x, y)
        return kj.update(params, grads, state, loss, loss_var)
    # loss = mean per-sample loss (differentiated), loss_var = mean of the
    # squared per-sample losses (not differentiated).

With ``jax.jit(step, donate_argnums=(0, 1))`` XLA updates the parameters and
the checkpoint in place (they are aliased input->output). The optax form is
:func:`koala_v` / :func:`koala_m`; see their docstrings for where predict goes.

This module needs only jax, numpy and the handler library (found through
$KOALA_JAX_LIB, next to this file, in the install's libdir, or on the loader
path); it does not import the SWIG module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import threading
from typing import Any, NamedTuple

import numpy as np
import jax
import jax.numpy as jnp

__all__ = ["KoalaState", "KoalaError", "init", "predict", "update", "info",
           "koala_v", "koala_m", "handler_library"]

_METHODS = {"vanilla": 1, "momentum": 2}
_DTYPES = {"float32": 1, "float64": 2}
_CONFIG_FIELDS = ("lr", "weight_decay", "r", "alpha_r", "sigma", "q",
                  "sw", "sc", "sv", "a", "qw", "qv")


class KoalaError(RuntimeError):
    """A libkoala call made from Python (init, info) failed; the message is
    libkoala's status and koala_last_error(). Inside jit, libkoala's errors
    surface as JAX's runtime error with the same text."""


# ---- the handler library ---------------------------------------------------

class _Config(ctypes.Structure):
    # koala_config from koala.h, fields in ABI order.
    _fields_ = [("struct_size", ctypes.c_size_t), ("method", ctypes.c_int)] + \
               [(name, ctypes.c_double) for name in _CONFIG_FIELDS]


class _Info(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("steps", ctypes.c_uint64),
                ("skipped_steps", ctypes.c_uint64)] + \
               [(n, ctypes.c_double) for n in ("sigma", "p00", "p01", "p11", "r", "qw")]


def _candidate_paths():
    env = os.environ.get("KOALA_JAX_LIB")
    if env:
        yield env
        return  # an explicit choice is not second-guessed
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "libkoala_jax.so")
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
            raise ImportError("koala.jax: cannot load libkoala_jax.so (build libkoala with "
                              "the jax option, or set KOALA_JAX_LIB); tried: " + "; ".join(tried))
        # libkoala's C API, reached through the handler's dependency.
        lib.koala_config_init.argtypes = [ctypes.POINTER(_Config), ctypes.c_int]
        lib.koala_config_init.restype = None
        lib.koala_create.argtypes = [ctypes.POINTER(_Config), ctypes.c_size_t,
                                     ctypes.POINTER(ctypes.c_size_t), ctypes.c_int,
                                     ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
        lib.koala_destroy.argtypes = [ctypes.c_void_p]
        lib.koala_destroy.restype = None
        lib.koala_state_size.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        lib.koala_state_save.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                         ctypes.c_void_p]
        lib.koala_state_load.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                         ctypes.c_void_p]
        lib.koala_get_info.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(_Info)]
        lib.koala_status_string.restype = ctypes.c_char_p
        lib.koala_last_error.restype = ctypes.c_char_p
        for target, symbol in (("koala_jax_predict", "KoalaJaxPredict"),
                               ("koala_jax_update", "KoalaJaxUpdate")):
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol + "Cpu")),
                                        platform="cpu")
            # GPU: device optimizers on XLA's stream (needs libkoala's CUDA
            # plugin at run time). JAX defers this registration until a CUDA
            # backend exists; UNTESTED so far (no GPU where this was written).
            try:
                jax.ffi.register_ffi_target(target,
                                            jax.ffi.pycapsule(getattr(lib, symbol + "Gpu")),
                                            platform="CUDA")
            except Exception:  # a jaxlib that cannot take CUDA targets: CPU only
                pass
        _lib = lib
        return lib


def _check(lib, status, what):
    if status != 0:
        raise KoalaError(f"koala.jax {what}: {lib.koala_status_string(status).decode()}: "
                         f"{lib.koala_last_error().decode()}")


class _HostOptimizer:
    """A short-lived host koala_optimizer for init/info (outside jit)."""

    def __init__(self, lib, method, dtype, sizes, config=None):
        self.lib = lib
        cfg = _Config()
        lib.koala_config_init(ctypes.byref(cfg), _METHODS[method])
        for name, value in (config or {}).items():
            setattr(cfg, name, float(value))
        arr = (ctypes.c_size_t * len(sizes))(*sizes)
        self.handle = ctypes.c_void_p()
        _check(lib, lib.koala_create(ctypes.byref(cfg), len(sizes), arr, _DTYPES[dtype], 1,
                                     ctypes.byref(self.handle)), "init")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lib.koala_destroy(self.handle)

    def state_size(self):
        n = ctypes.c_size_t()
        _check(self.lib, self.lib.koala_state_size(self.handle, ctypes.byref(n)), "state size")
        return n.value


# ---- the state -----------------------------------------------------------

@jax.tree_util.register_pytree_node_class
class KoalaState:
    """The optimizer state: one array leaf, ``ckpt`` (uint8[N], a libkoala
    checkpoint: config, filter scalars, call phase and, for KOALA-M, two
    buffers per parameter), plus static facts about the parameter tree it
    belongs to (method, dtype, tensor sizes), which let predict/update check
    the tree at trace time. ``np.asarray(state.ckpt).tobytes()`` is a
    checkpoint any libkoala binding can koala_state_load."""

    def __init__(self, ckpt, method: str, dtype: str, sizes: tuple):
        self.ckpt = ckpt
        self.method = method
        self.dtype = dtype
        self.sizes = tuple(sizes)

    def tree_flatten(self):
        return (self.ckpt,), (self.method, self.dtype, self.sizes)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)

    def _replace(self, ckpt):
        return KoalaState(ckpt, self.method, self.dtype, self.sizes)

    def __repr__(self):
        return (f"KoalaState(method={self.method!r}, dtype={self.dtype!r}, "
                f"tensors={len(self.sizes)}, ckpt={getattr(self.ckpt, 'shape', '?')})")


def _leaves(tree, what):
    """Flattens a parameter/gradient tree; returns (leaves, treedef, dtype name)."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    if not with_path:
        raise ValueError(f"koala.jax: {what} has no arrays")
    leaves, dtypes = [], set()
    for path, leaf in with_path:
        name = what + jax.tree_util.keystr(path)
        if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
            raise TypeError(f"koala.jax: {name} is a {type(leaf).__name__}, not an array")
        dt = np.dtype(leaf.dtype).name
        if dt not in _DTYPES:
            raise TypeError(f"koala.jax: {name} has dtype {dt}; KOALA works on float32 or "
                            "float64 arrays (one dtype per tree)")
        if math.prod(leaf.shape) == 0:
            raise ValueError(f"koala.jax: {name} is empty (shape {leaf.shape})")
        dtypes.add(dt)
        leaves.append(leaf)
    if len(dtypes) > 1:
        raise TypeError(f"koala.jax: {what} mixes dtypes {sorted(dtypes)}; one optimizer "
                        "handles one dtype: use one KOALA state per dtype (e.g. optax.partition)")
    return leaves, treedef, dtypes.pop()


def _sizes(leaves):
    return tuple(int(math.prod(leaf.shape)) for leaf in leaves)


def _find_state(state):
    """The KoalaState itself, or the one KoalaState inside an optax state tree."""
    if isinstance(state, KoalaState):
        return state, lambda s: s
    found = [s for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, KoalaState))
             if isinstance(s, KoalaState)]
    if len(found) != 1:
        raise TypeError(f"koala.jax: expected a KoalaState (or an optax state holding exactly "
                        f"one), found {len(found)} in {type(state).__name__}")
    return found[0], lambda new: jax.tree_util.tree_map(
        lambda s: new if isinstance(s, KoalaState) else s, state,
        is_leaf=lambda x: isinstance(x, KoalaState))


def _check_layout(state: KoalaState, leaves, dtype, what):
    sizes = _sizes(leaves)
    if dtype != state.dtype or sizes != state.sizes:
        raise ValueError(f"koala.jax: {what} does not match the optimizer state: the state was "
                         f"made for {len(state.sizes)} {state.dtype} tensors of sizes "
                         f"{list(state.sizes)}, got {len(sizes)} {dtype} tensors of sizes "
                         f"{list(sizes)}")


def _attrs(state: KoalaState):
    return dict(method=np.int64(_METHODS[state.method]), dtype=np.int64(_DTYPES[state.dtype]),
                sizes=np.asarray(state.sizes, dtype=np.int64))


# ---- the functional API ----------------------------------------------------

def init(params, method: str = "vanilla", **config) -> KoalaState:
    """A fresh state for the parameter tree ``params`` (float32 or float64
    arrays, one dtype). ``config`` takes koala_config's fields: lr,
    weight_decay, r (float('nan') = online estimate), alpha_r, and sigma, q
    (vanilla) or sw, sc, sv, a, qw, qv (momentum); the rest keep the
    reference defaults. Only shapes and dtypes are read, so this also works
    under jit. Bad values raise KoalaError with libkoala's message."""
    if method not in _METHODS:
        raise ValueError(f"koala.jax: method must be one of {sorted(_METHODS)}, got {method!r}")
    unknown = sorted(set(config) - set(_CONFIG_FIELDS))
    if unknown:
        raise TypeError(f"koala.jax: unknown config field(s) {unknown}; known: "
                        f"{list(_CONFIG_FIELDS)}")
    leaves, _, dtype = _leaves(params, "params")
    sizes = _sizes(leaves)
    lib = handler_library()
    with _HostOptimizer(lib, method, dtype, sizes, config) as opt:
        n = opt.state_size()
        buf = np.zeros(n, dtype=np.uint8)
        _check(lib, lib.koala_state_save(opt.handle, buf.ctypes.data, n, None), "init")
    return KoalaState(jnp.asarray(buf), method, dtype, sizes)


def predict(params, state):
    """The time update, before the forward pass: returns (params, state).
    KOALA-V leaves the parameters as they are; KOALA-M moves them to the
    prediction x + v (the forward and backward passes must use the returned
    params, and update must get them). ``state`` may be a KoalaState or an
    optax state holding one (then the same structure is returned)."""
    ks, put_back = _find_state(state)
    handler_library()
    leaves, treedef, dtype = _leaves(params, "params")
    _check_layout(ks, leaves, dtype, "params")
    ckpt_type = jax.ShapeDtypeStruct(ks.ckpt.shape, jnp.uint8)
    if ks.method == "vanilla":
        # KOALA-V's predict only changes the filter's sigma: no parameters pass.
        (ckpt,) = jax.ffi.ffi_call("koala_jax_predict", [ckpt_type],
                                   input_output_aliases={0: 0})(ks.ckpt, **_attrs(ks))
        return params, put_back(ks._replace(ckpt))
    n = len(leaves)
    out_types = [ckpt_type] + [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in leaves]
    out = jax.ffi.ffi_call("koala_jax_predict", out_types,
                           input_output_aliases={i: i for i in range(1 + n)})(
        ks.ckpt, *leaves, **_attrs(ks))
    return jax.tree_util.tree_unflatten(treedef, out[1:]), put_back(ks._replace(out[0]))


def _scalar(x, dtype, name):
    x = jnp.asarray(x)
    if x.size != 1:
        raise ValueError(f"koala.jax: {name} must be a scalar, got shape {x.shape}")
    return x.reshape(()).astype(dtype)


def update(params, grads, state, loss, loss_var, lr=None):
    """The measurement update, after the backward pass: returns (params, state).
    ``grads`` = gradient of ``loss`` (the mean per-sample loss) with the tree
    structure of ``params``; ``loss_var`` = mean of the squared per-sample
    losses. ``lr`` (optional, may be traced) replaces the target multiplier
    from this step on, e.g. a schedule; None keeps the state's. A non-finite
    loss or gradient fails the call (JAX runtime error naming libkoala's
    KOALA_ERROR_NOT_FINITE)."""
    ks, put_back = _find_state(state)
    handler_library()
    leaves, treedef, dtype = _leaves(params, "params")
    _check_layout(ks, leaves, dtype, "params")
    g_leaves, g_treedef, g_dtype = _leaves(grads, "grads")
    if g_treedef != treedef:
        raise ValueError(f"koala.jax: grads has another tree structure than params: "
                         f"{g_treedef} vs {treedef}")
    _check_layout(ks, g_leaves, g_dtype, "grads")
    scalars = [_scalar(loss, dtype, "loss"), _scalar(loss_var, dtype, "loss_var"),
               _scalar(float("nan") if lr is None else lr,
                       jnp.float64 if jax.config.jax_enable_x64 else jnp.float32, "lr")]
    n = len(leaves)
    out_types = [jax.ShapeDtypeStruct(ks.ckpt.shape, jnp.uint8)] + \
                [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in leaves]
    # Inputs: ckpt, loss, loss_var, lr, params..., grads...; outputs: ckpt, params...
    aliases = {0: 0}
    aliases.update({4 + i: 1 + i for i in range(n)})
    out = jax.ffi.ffi_call("koala_jax_update", out_types, input_output_aliases=aliases)(
        ks.ckpt, *scalars, *leaves, *g_leaves, **_attrs(ks))
    return jax.tree_util.tree_unflatten(treedef, out[1:]), put_back(ks._replace(out[0]))


def info(state) -> dict:
    """What the state's optimizer reports (koala_info): steps, skipped_steps,
    sigma (vanilla), p00, p01, p11 (momentum), r, qw. Reads the checkpoint on
    the host, so call it outside jit."""
    ks, _ = _find_state(state)
    lib = handler_library()
    buf = np.ascontiguousarray(np.asarray(ks.ckpt), dtype=np.uint8)
    with _HostOptimizer(lib, ks.method, ks.dtype, ks.sizes) as opt:
        _check(lib, lib.koala_state_load(opt.handle, buf.ctypes.data, buf.size, None),
               "info (loading the state)")
        out = _Info(struct_size=ctypes.sizeof(_Info))
        _check(lib, lib.koala_get_info(opt.handle, None, ctypes.byref(out)), "info")
    return {name: getattr(out, name) for name, _ in _Info._fields_[1:]}


# ---- optax ---------------------------------------------------------------

def _transformation(method, config):
    import optax  # only this part needs optax

    def init_fn(params):
        return init(params, method, **config)

    def update_fn(updates, state, params=None, *, value=None, loss_var=None, lr=None, **extra):
        if params is None or value is None or loss_var is None:
            raise ValueError("koala.jax: KOALA's update needs params, value=<mean loss> and "
                             "loss_var=<mean squared per-sample loss>: "
                             "tx.update(grads, state, params, value=loss, loss_var=loss_var)")
        new_params, state = update(params, updates, state, value, loss_var, lr)
        deltas = jax.tree_util.tree_map(lambda new, old: new - old, new_params, params)
        return deltas, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def koala_v(lr: float = 1.0, **config):
    """KOALA-V as an optax.GradientTransformationExtraArgs. ``update(grads,
    state, params, value=loss, loss_var=loss_var)`` returns updates =
    new_params - params for optax.apply_updates. KOALA also needs a predict
    call BEFORE each forward pass: ``params, state = koala.jax.predict(params,
    state)`` (state may be the whole optax state). For KOALA-V it only
    advances the filter, but it is still required: predict and update
    strictly alternate."""
    return _transformation("vanilla", dict(lr=lr, **config))


def koala_m(lr: float = 1.0, **config):
    """KOALA-M as an optax.GradientTransformationExtraArgs; see koala_v. Its
    predict moves the parameters to x + v: run the forward/backward pass on
    the params predict returns, and pass those same params to update."""
    return _transformation("momentum", dict(lr=lr, **config))
