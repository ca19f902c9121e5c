"""koala.jax: the KOALA optimizers (libkoala) inside ``jax.jit``.

libkoala runs as XLA FFI custom calls (the handlers in libkoala_jax.so), so a
whole training step, forward, backward and optimizer, compiles into one XLA
program. The optimizer state (:class:`KoalaState`) is a pytree of arrays that
libkoala reads and writes in place (koala_bind_state on XLA's buffers):

- per-parameter state with the parameters' shapes and shardings: KOALA-M's
  ``velocity`` and ``xbar``, KOALA++'s ``v`` and ``h_prev`` (none for KOALA-V);
- ``scalars``, libkoala's scalar block (koala_state_layout's scalar_count
  doubles: the filter's covariance, R, q_w, step count, call phase, the lr
  multiplier, per-tensor filter scalars), float64 when ``jax_enable_x64`` is
  on, else uint32 pairs holding the same bytes (XLA never touches them).

::

    import jax, koala.jax as kj

    state = kj.init(params, "momentum")            # "vanilla", "momentum", "plusplus"
    @jax.jit
    def step(params, state, x, y):
        params, state = kj.predict(params, state)  # before the forward pass
        (loss, loss_var), grads = jax.value_and_grad(losses, has_aux=True)(params, x, y)
        return kj.update(params, grads, state, loss, loss_var)
    # loss = mean per-sample loss (differentiated), loss_var = mean of the
    # squared per-sample losses (not differentiated).

With ``jax.jit(step, donate_argnums=(0, 1))`` the parameters and every state
array are updated in place: no state is copied in a step.

Sharded parameters (NamedSharding over a Mesh, under jit; or inside
``shard_map``) get a sharded state: every device runs libkoala's sharded
optimizer on its pieces, the partial sums are summed over the mesh with
``lax.psum`` and the step is finished from them (two-phase update), so the
result equals the single-device run. See doc/readme/jax.md.

The optax forms are :func:`koala_v`, :func:`koala_m`, :func:`koala_pp`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from . import jax_sharding as _sharding
from .jax_lib import (DTYPES, FLOAT_FIELDS, INT_FIELDS, METHODS, SCALAR_LR_SCALE, STATE_DTYPES,
                      HostOptimizer, KoalaError, default_config, handler_library)

from jax.experimental.shard_map import shard_map as _shard_map

__all__ = ["KoalaState", "KoalaError", "init", "predict", "update", "info", "state_specs",
           "to_checkpoint", "from_checkpoint", "koala_v", "koala_m", "koala_pp",
           "handler_library"]

_ALIASES = {"vanilla": "vanilla", "v": "vanilla", "koala-v": "vanilla",
            "momentum": "momentum", "m": "momentum", "koala-m": "momentum",
            "plusplus": "plusplus", "pp": "plusplus", "koala++": "plusplus",
            "koala-pp": "plusplus"}
BUFFER_NAMES = {"vanilla": (), "momentum": ("velocity", "xbar"), "plusplus": ("v", "h_prev")}


def _method_name(method) -> str:
    key = str(method).lower()
    if key not in _ALIASES:
        raise ValueError(f"koala.jax: method must be one of {sorted(METHODS)}, got {method!r}")
    return _ALIASES[key]


@contextlib.contextmanager
def _x64():
    """float64 for the few values that need it (the scalar block's bits, the
    partial sums' all-reduce) while the program runs without x64."""
    if jax.config.jax_enable_x64:
        yield
        return
    with jax.experimental.enable_x64():
        yield


# ---- the state -----------------------------------------------------------

@dataclass(frozen=True)
class _Meta:
    """The static part of a KoalaState (its pytree aux data)."""
    method: str
    dtype: str                  # the parameters' dtype name
    treedef: Any                # the parameter tree's structure
    shapes: tuple               # the parameters' (global) shapes
    config: tuple               # ((field, value), ...): koala_config, lr excluded
    layout: Any                 # jax_sharding.MeshLayout, or None

    @property
    def config_dict(self):
        return {k: float("nan") if v is None else v for k, v in self.config}


@jax.tree_util.register_pytree_node_class
class KoalaState:
    """The optimizer state: ``scalars`` (the scalar block) and ``buffers``
    (per-parameter state: a tuple of parameter-shaped trees, named by
    :attr:`buffer_names`; also reachable as ``state.velocity``,
    ``state.xbar`` (KOALA-M), ``state.v``, ``state.h_prev`` (KOALA++)),
    plus the static facts of the parameter tree it belongs to.

    A sharded state's ``scalars`` has one row per mesh device (sharded over
    every mesh axis): the rows agree but in KOALA-M's slot of this device's
    |xbar - x|^2 partial sum."""

    def __init__(self, scalars, buffers, meta: _Meta):
        self.scalars = scalars
        self.buffers = tuple(buffers)
        self.meta = meta

    def tree_flatten(self):
        return (self.scalars, self.buffers), self.meta

    @classmethod
    def tree_unflatten(cls, meta, children):
        return cls(children[0], children[1], meta)

    @property
    def method(self):
        return self.meta.method

    @property
    def buffer_names(self):
        return BUFFER_NAMES[self.meta.method]

    def __getattr__(self, name):
        meta = self.__dict__.get("meta")
        if meta is not None and name in BUFFER_NAMES[meta.method]:
            return self.buffers[BUFFER_NAMES[meta.method].index(name)]
        raise AttributeError(name)

    def _replace(self, scalars=None, buffers=None):
        return KoalaState(self.scalars if scalars is None else scalars,
                          self.buffers if buffers is None else buffers, self.meta)

    def __repr__(self):
        m = self.meta
        where = "sharded over " + str(dict(m.layout.mesh.shape)) if m.layout else "unsharded"
        return (f"KoalaState(method={m.method!r}, dtype={m.dtype!r}, tensors={len(m.shapes)}, "
                f"buffers={self.buffer_names}, scalars={getattr(self.scalars, 'dtype', '?')}"
                f"{list(getattr(self.scalars, 'shape', ()))}, {where})")


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
        if dt not in DTYPES:
            raise TypeError(f"koala.jax: {name} has dtype {dt}; KOALA works on float32, "
                            "float64, bfloat16 or float16 arrays (one dtype per tree)")
        if math.prod(leaf.shape) == 0:
            raise ValueError(f"koala.jax: {name} is empty (shape {leaf.shape})")
        dtypes.add(dt)
        leaves.append(leaf)
    if len(dtypes) > 1:
        raise TypeError(f"koala.jax: {what} mixes dtypes {sorted(dtypes)}; one optimizer "
                        "handles one dtype: use one KOALA state per dtype (e.g. optax.partition)")
    return leaves, treedef, dtypes.pop()


def _find_state(state):
    """The KoalaState itself, or the one KoalaState inside an optax state tree."""
    if isinstance(state, KoalaState):
        return state, lambda s: s
    is_ks = lambda x: isinstance(x, KoalaState)  # noqa: E731
    found = [s for s in jax.tree_util.tree_leaves(state, is_leaf=is_ks) if is_ks(s)]
    if len(found) != 1:
        raise TypeError(f"koala.jax: expected a KoalaState (or an optax state holding exactly "
                        f"one), found {len(found)} in {type(state).__name__}")
    return found[0], lambda new: jax.tree_util.tree_map(
        lambda s: new if is_ks(s) else s, state, is_leaf=is_ks)


def _is_tracer(x):
    return isinstance(x, jax.core.Tracer)


def _scalar_dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.uint32


def _lr_bits(lr):
    """lr as the scalar block's slot holds it: float64 (x64), else the two
    uint32 halves of the float64 (converted from float32 exactly)."""
    if not _is_tracer(lr) and not isinstance(lr, jax.Array):
        value = float(lr)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"koala.jax: lr is {value}; it must be finite and >= 0")
        if jax.config.jax_enable_x64:
            return jnp.asarray(value, jnp.float64)
        return jnp.asarray(np.array([value], np.float64).view(np.uint32))
    lr = jnp.asarray(lr)
    if lr.size != 1:
        raise ValueError(f"koala.jax: lr must be a scalar, got shape {lr.shape}")
    lr = lr.reshape(())
    if jax.config.jax_enable_x64:
        return lr.astype(jnp.float64)
    with _x64():
        return jax.lax.bitcast_convert_type(lr.astype(jnp.float64), jnp.uint32)


def _with_lr(scalars, lr):
    """The scalar block with its lr multiplier (KOALA_SCALAR_LR_SCALE) set."""
    bits = _lr_bits(lr)
    if scalars.dtype == jnp.float64:
        return scalars.at[..., SCALAR_LR_SCALE].set(bits)
    k = 2 * SCALAR_LR_SCALE
    return scalars.at[..., k].set(bits[0]).at[..., k + 1].set(bits[1])


def _check_scalars(ks: KoalaState):
    dt = ks.scalars.dtype
    if dt == jnp.float64 or dt == jnp.uint32:
        return
    raise TypeError(f"koala.jax: the state's scalar block has dtype {dt}: it was made with "
                    "jax_enable_x64 on and is used with it off (or was cast); keep the x64 "
                    "setting of koala.jax.init")


def _place(x, sharding):
    return x if sharding is None else jax.device_put(x, sharding)


def _static_config(method, config):
    cfg = default_config(method)
    for name, value in config.items():
        if _is_tracer(value):
            raise TypeError(f"koala.jax: {name} is a traced value; only lr may change inside "
                            "jit (e.g. optax.inject_hyperparams(..., static_args=("
                            f"'{name}',)))")
        cfg[name] = int(value) if name in INT_FIELDS else float(np.asarray(value))
    cfg["lr"] = 1.0  # the lr is the scalar block's multiplier (set per call)
    # NaN (r: the online estimate) as None, so that equal configs compare
    # equal (the config is part of the state's tree structure).
    return tuple(sorted((k, None if v != v else v) for k, v in cfg.items()))


def init(params, method: str = "vanilla", *, mesh=None, specs=None, **config) -> KoalaState:
    """A fresh state for the parameter tree ``params`` (float32, float64,
    bfloat16 or float16 arrays, one dtype).

    ``config`` takes koala_config's fields: lr (may be a traced value),
    weight_decay, r (float('nan') = online estimate), alpha_r, sigma, q
    (vanilla, plusplus), sw, sc, sv, a, qw, qv (momentum), threads (CPU
    threads of each libkoala call; 0 = the default), asymmetric (plusplus);
    the rest keep the reference defaults. Bad values raise KoalaError with
    libkoala's message.

    Sharding: when ``params`` are jax.Arrays placed with a NamedSharding over
    several devices, the state follows that sharding. ``mesh`` and ``specs``
    (a tree of PartitionSpecs like ``params``) say it explicitly, e.g. under
    jit or for abstract params. Only shapes, dtypes and shardings are read."""
    method = _method_name(method)
    lr = config.pop("lr", 1.0)
    # fused_predict is not offered: its parameters hold the next prediction
    # after update, and koala.jax has no posterior view for evaluation.
    known = (set(FLOAT_FIELDS) | set(INT_FIELDS)) - {"fused_predict"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(f"koala.jax: unknown config field(s) {unknown}; known: "
                        f"{sorted(known)}")
    leaves, treedef, dtype = _leaves(params, "params")
    shapes = tuple(tuple(int(d) for d in leaf.shape) for leaf in leaves)
    if mesh is not None:
        spec_leaves = ([None] * len(leaves) if specs is None else
                       jax.tree_util.tree_leaves(
                           specs, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None))
        if len(spec_leaves) != len(leaves):
            raise ValueError(f"koala.jax: specs has {len(spec_leaves)} entries, params "
                             f"{len(leaves)} arrays")
        layout = _sharding.make_layout(mesh, spec_leaves, shapes)
    elif specs is not None:
        raise ValueError("koala.jax: specs= needs mesh=")
    elif any(_is_tracer(leaf) for leaf in leaves):
        layout = None
    else:
        layout = _sharding.layout_from_arrays(leaves)

    cfg = _static_config(method, config)
    sizes = [int(math.prod(s)) for s in shapes]
    check_cfg = {k: float("nan") if v is None else v for k, v in cfg}
    if not _is_tracer(lr) and not isinstance(lr, jax.Array):
        check_cfg["lr"] = float(lr)  # libkoala's check of the value
    with HostOptimizer(method, dtype, sizes, check_cfg) as opt:
        per, count = opt.layout()
    # The initial scalars depend on the config and the number of tensors
    # only (koala_state_init: "the config's filter scalars"), so a layout of
    # 1-element tensors gives them without a host copy of the model.
    scalars = np.zeros(count, np.float64)
    with HostOptimizer(method, dtype, [1] * len(sizes), {**check_cfg, "lr": 1.0}) as opt:
        opt.init_state([np.zeros(1, STATE_DTYPES[dtype]) for _ in range(per * len(sizes))],
                       scalars)
    if not jax.config.jax_enable_x64:
        scalars = scalars.view(np.uint32)
    if layout is not None:
        scalars = np.tile(scalars, (layout.rows, 1))
    scalars = _place(jnp.asarray(scalars), layout.scalar_sharding() if layout else None)
    scalars = _with_lr(scalars, lr)

    shardings = (layout.param_shardings() if layout else
                 [getattr(leaf, "sharding", None) if not _is_tracer(leaf) else None
                  for leaf in leaves])
    state_dtype = jnp.dtype(STATE_DTYPES[dtype])

    def zeros():
        return jax.tree_util.tree_unflatten(
            treedef, [_place(jnp.zeros(s, state_dtype), sh) for s, sh in zip(shapes, shardings)])

    buffers = tuple(zeros() for _ in range(per))
    return KoalaState(scalars, buffers, _Meta(method, dtype, treedef, shapes, cfg, layout))


def state_specs(state) -> KoalaState:
    """The PartitionSpecs of a state's arrays (a KoalaState of specs), for
    the in_specs/out_specs of a shard_map that passes the state."""
    ks, put_back = _find_state(state)
    layout = ks.meta.layout
    if layout is None:
        scal, leaf_specs = PartitionSpec(), [PartitionSpec()] * len(ks.meta.shapes)
    else:
        scal, leaf_specs = layout.scalar_spec(), list(layout.specs)
    buffers = tuple(jax.tree_util.tree_unflatten(ks.meta.treedef, leaf_specs)
                    for _ in ks.buffers)
    return put_back(KoalaState(scal, buffers, ks.meta))


# ---- the calls -------------------------------------------------------------

def _attrs(meta: _Meta):
    cfg = meta.config_dict
    layout = meta.layout
    sizes = layout.local_sizes() if layout else [int(math.prod(s)) for s in meta.shapes]
    return dict(
        method=np.int64(METHODS[meta.method]), dtype=np.int64(DTYPES[meta.dtype]),
        config=np.array([cfg[f] for f in FLOAT_FIELDS], np.float64),
        options=np.array([cfg[f] for f in INT_FIELDS], np.int64),
        sizes=np.array(sizes, np.int64),
        n_global=np.int64(len(sizes) if layout else 0),
        global_elements=np.int64(layout.global_elements() if layout else 0),
        device_rows=np.array(layout.device_rows if layout else [-1], np.int64),
        contributes=np.array(layout.contributes if layout else [0], np.int64))


def _ffi(target, results, operands, aliases, meta):
    # vmap: one call per batch element (independent optimizers), in a loop.
    call = jax.ffi.ffi_call(target, results, input_output_aliases=aliases,
                            vmap_method="sequential")
    return call(*operands, **_attrs(meta))


def _aval(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _loss_dtype(dtype):
    # libkoala takes the loss as a double: keep all of it wherever JAX has
    # float64 (a float32 loss converts exactly).
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _scalar(x, dtype, name):
    x = jnp.asarray(x)
    if x.size != 1:
        raise ValueError(f"koala.jax: {name} must be a scalar, got shape {x.shape}")
    return x.reshape(()).astype(dtype)


def _psum_doubles(sums, axes):
    """Sums the partial-sums block over the mesh in float64: directly with
    x64, else bit-cast from and back to its uint32 pairs around an all-reduce
    that runs in float64 (exact sums; a float32 split would round them)."""
    if sums.dtype == jnp.float64:
        return jax.lax.psum(sums, axes)
    with _x64():
        d = jax.lax.bitcast_convert_type(sums.reshape(-1, 2), jnp.float64)
        return jax.lax.bitcast_convert_type(jax.lax.psum(d, axes), jnp.uint32).reshape(-1)


# The local view: arrays are this device's pieces (inside shard_map), or the
# whole arrays of an unsharded state. scalars is one device's block (1-D).

def _local_predict(meta, scalars, leaves, buffers):
    moves = meta.method == "momentum"
    n = len(leaves)
    flat_buffers = [b for tree in buffers for b in tree]
    # KOALA++'s predict binds its buffers but changes only the scalars.
    operands = [scalars] + (leaves if moves else []) + flat_buffers
    written = operands if moves else [scalars]
    # Sharded KOALA-M: scratch for the replicated pieces' copy of the scalars.
    scratch = [_aval(scalars)] if moves and meta.layout is not None else []
    out = _ffi("koala_jax_predict", [_aval(x) for x in written] + scratch, operands,
               {i: i for i in range(len(written))}, meta)
    if not moves:
        return out[0], leaves, buffers
    new_buffers = [list(out[1 + n + b * n: 1 + n + (b + 1) * n]) for b in range(len(buffers))]
    return out[0], list(out[1:1 + n]), new_buffers


def _local_update(meta, scalars, leaves, grads, buffers, loss, loss_var):
    n = len(leaves)
    flat_buffers = [b for tree in buffers for b in tree]
    written = [scalars] + leaves + flat_buffers
    results = [_aval(x) for x in written]
    if meta.layout is None:
        operands = [scalars, loss, loss_var] + leaves + grads + flat_buffers
        aliases = {0: 0}
        aliases.update({3 + i: 1 + i for i in range(n)})
        aliases.update({3 + 2 * n + k: 1 + n + k for k in range(len(flat_buffers))})
        out = _ffi("koala_jax_update", results, operands, aliases, meta)
    else:
        with HostOptimizer(meta.method, meta.dtype, [1] * n, meta.config_dict,
                           shard=_shard_struct(n)) as opt:
            n_sums = opt.sums_size()
        sums_type = jax.ShapeDtypeStruct((n_sums if scalars.dtype == jnp.float64
                                          else 2 * n_sums,), scalars.dtype)
        operands = [scalars] + leaves + grads + flat_buffers
        scalars, sums = _ffi("koala_jax_update_begin", [_aval(scalars), sums_type], operands,
                             {0: 0}, meta)
        sums = _psum_doubles(sums, meta.layout.axis_names)
        operands = [scalars, loss, loss_var] + leaves + grads + flat_buffers + [sums]
        aliases = {0: 0}
        aliases.update({3 + i: 1 + i for i in range(n)})
        aliases.update({3 + 2 * n + k: 1 + n + k for k in range(len(flat_buffers))})
        out = _ffi("koala_jax_update_end", results + [_aval(scalars)], operands, aliases, meta)
    new_buffers = [list(out[1 + n + b * n: 1 + n + (b + 1) * n]) for b in range(len(buffers))]
    return out[0], list(out[1:1 + n]), new_buffers


def _shard_struct(n):
    """A koala_shard for n tensors of one element each (sizing the sums)."""
    import ctypes
    from .jax_lib import Shard
    index = (ctypes.c_size_t * n)(*range(n))
    s = Shard(struct_size=ctypes.sizeof(Shard), n_global=n, global_index=index,
              global_elements=n)
    s._keep = index
    return s


def _view(ks: KoalaState, leaves, what):
    """'whole' (unsharded state, or a sharded one given the global arrays:
    run inside our own shard_map) or 'local' (a sharded state given this
    device's pieces: inside the caller's shard_map)."""
    shapes = tuple(tuple(int(d) for d in leaf.shape) for leaf in leaves)
    layout = ks.meta.layout
    if shapes == ks.meta.shapes:
        return "whole"
    if layout is not None and shapes == layout.local_shapes:
        return "local"
    expected = f"shapes {list(ks.meta.shapes)}"
    if layout is not None:
        expected += f" (or, inside shard_map, the pieces {list(layout.local_shapes)})"
    raise ValueError(f"koala.jax: {what} does not match the optimizer state: the state was made "
                     f"for {len(ks.meta.shapes)} {ks.meta.dtype} tensors of {expected}, got "
                     f"{len(shapes)} tensors of shapes {list(shapes)}")


def _check(ks: KoalaState, leaves, treedef, dtype, what):
    if dtype != ks.meta.dtype or len(leaves) != len(ks.meta.shapes):
        raise ValueError(f"koala.jax: {what} does not match the optimizer state: the state was "
                         f"made for {len(ks.meta.shapes)} {ks.meta.dtype} tensors, got "
                         f"{len(leaves)} {dtype} tensors")
    if treedef != ks.meta.treedef:
        raise ValueError(f"koala.jax: {what} has another tree structure than the state's "
                         f"parameters: {treedef} vs {ks.meta.treedef}")
    return _view(ks, leaves, what)


def _run(ks: KoalaState, view, local_fn, leaves_args, scalar_args=()):
    """Runs local_fn(scalars, buffers, *leaves_args, *scalar_args) -> (scalars,
    leaves, buffers) on every device: directly (unsharded, or already in the
    caller's shard_map) or inside a shard_map over the state's mesh."""
    buffers = [jax.tree_util.tree_leaves(tree) for tree in ks.buffers]
    layout = ks.meta.layout

    def body(scalars, buffers, *args):
        if layout is None:
            return local_fn(scalars, buffers, *args)
        row_shape = scalars.shape
        s, leaves, bufs = local_fn(scalars.reshape(-1), buffers, *args)
        return s.reshape(row_shape), leaves, bufs

    args = list(leaves_args) + list(scalar_args)
    if layout is None or view == "local":
        return body(ks.scalars, buffers, *args)
    leaf_specs = list(layout.specs)
    n = len(leaf_specs)
    in_specs = (layout.scalar_spec(), [leaf_specs] * len(buffers)) + \
        tuple(leaf_specs[i % n] for i in range(len(leaves_args))) + \
        (PartitionSpec(),) * len(scalar_args)
    out_specs = (layout.scalar_spec(), leaf_specs, [leaf_specs] * len(buffers))
    fn = _shard_map(body, mesh=layout.mesh, in_specs=in_specs, out_specs=out_specs,
                    check_rep=False)
    return fn(ks.scalars, buffers, *args)


def predict(params, state):
    """The time update, before the forward pass: returns (params, state).
    KOALA-V and KOALA++ leave the parameters as they are; KOALA-M moves them
    to the prediction x + v (the forward and backward passes must use the
    returned params, and update must get them). ``state`` may be a
    KoalaState or an optax state holding one (the same structure is
    returned)."""
    ks, put_back = _find_state(state)
    handler_library()
    _check_scalars(ks)
    leaves, treedef, dtype = _leaves(params, "params")
    view = _check(ks, leaves, treedef, dtype, "params")

    def local(scalars, buffers, *leaves):
        return _local_predict(ks.meta, scalars, list(leaves), buffers)

    scalars, new_leaves, new_buffers = _run(ks, view, local, leaves)
    new_state = ks._replace(scalars, tuple(jax.tree_util.tree_unflatten(treedef, b)
                                           for b in new_buffers))
    new_params = jax.tree_util.tree_unflatten(treedef, list(new_leaves))
    return new_params, put_back(new_state)


def update(params, grads, state, loss, loss_var, lr=None, *, axis_name=None):
    """The measurement update, after the backward pass: returns (params, state).

    ``grads`` = gradient of ``loss`` (the mean per-sample loss) with the tree
    structure of ``params``; ``loss_var`` = mean of the squared per-sample
    losses. Both must be the global-batch means, the same on every device:
    under data parallelism (pmap, or shard_map over a batch axis) pass
    ``axis_name`` to average them over that axis (lax.pmean), and average
    the gradients as for any optimizer. ``lr`` (optional, may be traced)
    sets the target multiplier from this step on (a schedule,
    optax.inject_hyperparams); None keeps the state's. On the CPU a
    non-finite loss or gradient fails the call (a JAX runtime error naming
    libkoala's KOALA_ERROR_NOT_FINITE); on a GPU the step is skipped and
    counted (info()['skipped_steps'])."""
    ks, put_back = _find_state(state)
    handler_library()
    _check_scalars(ks)
    leaves, treedef, dtype = _leaves(params, "params")
    view = _check(ks, leaves, treedef, dtype, "params")
    g_leaves, g_treedef, g_dtype = _leaves(grads, "grads")
    if g_treedef != treedef:
        raise ValueError(f"koala.jax: grads has another tree structure than params: "
                         f"{g_treedef} vs {treedef}")
    if _check(ks, g_leaves, g_treedef, g_dtype, "grads") != view:
        raise ValueError("koala.jax: params and grads must both be whole arrays or both "
                         "this device's pieces")
    ldt = _loss_dtype(dtype)
    loss = _scalar(loss, ldt, "loss")
    loss_var = _scalar(loss_var, ldt, "loss_var")
    if axis_name is not None:
        loss = jax.lax.pmean(loss, axis_name)
        loss_var = jax.lax.pmean(loss_var, axis_name)
    if lr is not None:
        ks = ks._replace(scalars=_with_lr(ks.scalars, lr))
    n = len(leaves)

    def local(scalars, buffers, *args):
        p, g = list(args[:n]), list(args[n:2 * n])
        return _local_update(ks.meta, scalars, p, g, buffers, args[2 * n], args[2 * n + 1])

    scalars, new_leaves, new_buffers = _run(ks, view, local, leaves + g_leaves,
                                            (loss, loss_var))
    new_state = ks._replace(scalars, tuple(jax.tree_util.tree_unflatten(treedef, b)
                                           for b in new_buffers))
    return jax.tree_util.tree_unflatten(treedef, list(new_leaves)), put_back(new_state)


# ---- outside jit: inspection and checkpoints ------------------------------

def _host_scalars(ks: KoalaState, row=0):
    s = np.asarray(jax.device_get(ks.scalars))
    if s.ndim == 2:
        s = s[row]
    return np.ascontiguousarray(s).view(np.float64).copy()


def info(state, row: int = 0) -> dict:
    """What the state's optimizer reports (koala_info): steps,
    skipped_steps, sigma (vanilla), p00, p01, p11 (momentum), r, qw, lr (the
    effective target multiplier), phase (0 updated, 1 predicted). A sharded
    state reports mesh row ``row`` (every row agrees). Reads the scalar
    block on the host: call it outside jit."""
    ks, _ = _find_state(state)
    scalars = _host_scalars(ks, row)
    n = len(ks.meta.shapes)
    per = len(ks.buffers)
    with HostOptimizer(ks.meta.method, ks.meta.dtype, [1] * n, ks.meta.config_dict) as opt:
        opt.bind([np.zeros(1, STATE_DTYPES[ks.meta.dtype]) for _ in range(per * n)], scalars)
        out = opt.info()
    out["lr"] = out["lr"] * scalars[SCALAR_LR_SCALE]
    return out


def to_checkpoint(state) -> bytes:
    """The state as a libkoala checkpoint (koala_state_save's bytes), which
    any libkoala binding can koala_state_load into an optimizer of the same
    method, dtype and tensor sizes. Unsharded states only."""
    ks, _ = _find_state(state)
    if ks.meta.layout is not None:
        raise ValueError("koala.jax.to_checkpoint: the state is sharded; each device's "
                         "optimizer holds its own pieces (save the state arrays instead, "
                         "e.g. with orbax)")
    sizes = [int(math.prod(s)) for s in ks.meta.shapes]
    buffers = [np.ascontiguousarray(jax.device_get(leaf)).reshape(-1).copy()
               for tree in ks.buffers for leaf in jax.tree_util.tree_leaves(tree)]
    with HostOptimizer(ks.meta.method, ks.meta.dtype, sizes, ks.meta.config_dict) as opt:
        opt.bind(buffers, _host_scalars(ks))
        return opt.save()


def from_checkpoint(data: bytes, params, method: str, **config) -> KoalaState:
    """A state from a libkoala checkpoint (e.g. to_checkpoint's, or another
    binding's koala_state_save) for the parameter tree ``params``; ``method``
    and ``config`` as for init (the checkpoint's filter scalars, phase and
    buffers replace the fresh state's; its config must be the layout's).
    Unsharded states only."""
    ks = init(params, method, **config)
    if ks.meta.layout is not None:
        raise ValueError("koala.jax.from_checkpoint: unsharded states only")
    sizes = [int(math.prod(s)) for s in ks.meta.shapes]
    sdt = STATE_DTYPES[ks.meta.dtype]
    buffers = [np.zeros(s, sdt) for _ in ks.buffers for s in sizes]
    scalars = _host_scalars(ks)
    with HostOptimizer(ks.meta.method, ks.meta.dtype, sizes, ks.meta.config_dict) as opt:
        opt.bind(buffers, scalars)
        opt.load(data)
    if not jax.config.jax_enable_x64:
        scalars = scalars.view(np.uint32)
    new_buffers, k = [], 0
    for tree in ks.buffers:
        leaves = jax.tree_util.tree_leaves(tree)
        out = []
        for leaf in leaves:
            out.append(jnp.asarray(buffers[k].reshape(leaf.shape)))
            k += 1
        new_buffers.append(jax.tree_util.tree_unflatten(ks.meta.treedef, out))
    return ks._replace(jnp.asarray(scalars), tuple(new_buffers))


# ---- optax ---------------------------------------------------------------

def _transformation(method, lr, config, axis_name):
    import optax  # only this part needs optax

    # optax.inject_hyperparams passes the **config of koala_v & co. on as one
    # keyword argument named `config` (it binds the factory's signature).
    nested = config.pop("config", None)
    if isinstance(nested, dict):
        config = {**nested, **config}

    def init_fn(params):
        return init(params, method, lr=lr, **config)

    def update_fn(updates, state, params=None, *, value=None, loss_var=None, **extra):
        if params is None or value is None or loss_var is None:
            raise ValueError("koala.jax: KOALA's update needs params, value=<mean loss> and "
                             "loss_var=<mean squared per-sample loss>: "
                             "tx.update(grads, state, params, value=loss, loss_var=loss_var)")
        ks, _ = _find_state(state)
        have = ks.meta.config_dict
        for name, v in config.items():
            if _is_tracer(v):
                raise TypeError(f"koala.jax: {name} is a traced value; only lr may change "
                                "inside jit (optax.inject_hyperparams(..., static_args=("
                                f"'{name}',)))")
            want = int(v) if name in INT_FIELDS else float(np.asarray(v))
            if not (want == have[name] or (want != want and have[name] != have[name])):
                raise ValueError(f"koala.jax: {name} is {want} but the state was made with "
                                 f"{have[name]}; only lr may change after init")
        new_params, state = update(params, updates, state, value, loss_var, lr,
                                   axis_name=axis_name)
        deltas = jax.tree_util.tree_map(lambda new, old: new - old, new_params, params)
        return deltas, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def koala_v(lr=1.0, *, axis_name=None, **config):
    """KOALA-V as an optax.GradientTransformationExtraArgs. ``update(grads,
    state, params, value=loss, loss_var=loss_var)`` returns updates =
    new_params - params for optax.apply_updates. KOALA also needs a predict
    call BEFORE each forward pass: ``params, state = koala.jax.predict(params,
    state)`` (state may be the whole optax state). For KOALA-V it only
    advances the filter, but it is still required: predict and update
    strictly alternate. ``lr`` may be driven by optax.inject_hyperparams;
    ``axis_name`` averages loss and loss_var over a data-parallel axis."""
    return _transformation("vanilla", lr, config, axis_name)


def koala_m(lr=1.0, *, axis_name=None, **config):
    """KOALA-M as an optax.GradientTransformationExtraArgs; see koala_v. Its
    predict moves the parameters to x + v: run the forward/backward pass on
    the params predict returns, and pass those same params to update."""
    return _transformation("momentum", lr, config, axis_name)


def koala_pp(lr=1.0, *, axis_name=None, **config):
    """KOALA++ (the symmetric variant of the official koalap.py; asymmetric=1
    for the other) as an optax.GradientTransformationExtraArgs; see koala_v.
    Its keywords are koalap.py's: sigma, q, r, alpha_r, weight_decay, lr."""
    return _transformation("plusplus", lr, config, axis_name)


koala_plusplus = koala_pp
