"""Parameters and state sharded over 4 host devices (jax.sharding under jit,
and the caller's own shard_map) give the single-device run, for every
method, and the state arrays keep their sharding.

The gradients are elementwise functions of the parameters and the losses a
fixed sequence, so both runs see the same numbers and the only difference
is the order in which the partial sums add up (per device, then over the
mesh): "rounding of the sums aside" (koala.h, koala_create_sharded)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.shard_map import shard_map
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from conftest import X64, kj, scalar_block

DTYPE = jnp.float64 if X64 else jnp.float32
# float64: the sums' rounding only; float32: that, carried through float32 elements.
TOL = 1e-13 if X64 else 2e-5
PENDING_D2 = 9  # the scalar block's slot of KOALA-M's |xbar - x|^2 partial sum
METHODS = [("vanilla", dict(weight_decay=1e-3)), ("momentum", dict(weight_decay=1e-3)),
           ("plusplus", dict(weight_decay=1e-3))]
N_STEPS = 12


def mesh_2x2():
    return Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("x", "y"))


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(8, 6)), DTYPE),
            "b": jnp.asarray(rng.normal(size=6), DTYPE),        # replicated: a bias
            "v": jnp.asarray(rng.normal(size=(4, 4)), DTYPE)}   # sharded over x only


SPECS = {"w": P("x", "y"), "b": P(), "v": P(None, "x")}


def grads_of(params):
    return jax.tree_util.tree_map(lambda p: 0.1 * jnp.sin(3.0 * p) + 0.01, params)


def step(params, state, loss):
    params, state = kj.predict(params, state)
    return kj.update(params, grads_of(params), state, loss, 1.1 * loss * loss)


def run(params, state, fn):
    for k in range(N_STEPS):
        params, state = fn(params, state, jnp.asarray(2.0 - 0.1 * k, DTYPE))
    return params, state


def assert_close(a, b, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)
    assert err <= TOL, f"{what}: sharded and single-device differ by {err:g}"


def compare(single, sharded, method):
    (p1, s1), (p4, s4) = single, sharded
    for k in p1:
        assert_close(p4[k], p1[k], f"param {k}")
    for i, name in enumerate(s1.buffer_names):
        for k in p1:
            assert_close(s4.buffers[i][k], s1.buffers[i][k], f"{name}[{k}]")
    one = scalar_block(s1)
    rows = [scalar_block(s4, r) for r in range(4)]
    # Every device's filter scalars are the single run's, but KOALA-M's
    # |xbar - x|^2 slot, which holds each device's own part of the sum.
    for r, row in enumerate(rows):
        for j in range(len(one)):
            if j != PENDING_D2:
                assert abs(row[j] - one[j]) <= TOL * max(abs(one[j]), 1.0), (r, j, row[j], one[j])
    if method == "momentum":
        assert abs(sum(row[PENDING_D2] for row in rows) - one[PENDING_D2]) <= \
            1e-12 * one[PENDING_D2] + (0 if X64 else 1e-5 * one[PENDING_D2])
    assert kj.info(s4)["steps"] == kj.info(s1)["steps"] == N_STEPS


@pytest.mark.parametrize("method,config", METHODS)
def test_jit_with_named_shardings_equals_single_device(method, config):
    mesh = mesh_2x2()
    single = run(make_params(), kj.init(make_params(), method, **config), jax.jit(step))
    params = {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in make_params().items()}
    state = kj.init(params, method, **config)
    assert state.meta.layout is not None
    p4, s4 = run(params, state, jax.jit(step, donate_argnums=(0, 1)))
    # Parameters and state keep their shardings.
    for k in p4:
        assert p4[k].sharding.spec == SPECS[k], (k, p4[k].sharding)
        for tree in s4.buffers:
            assert tree[k].sharding.spec == SPECS[k], (k, tree[k].sharding)
            assert tree[k].sharding.mesh == mesh
    assert s4.scalars.sharding.spec == P(("x", "y"))
    assert s4.scalars.shape[0] == 4
    compare(single, (p4, s4), method)


@pytest.mark.parametrize("method,config", METHODS)
def test_callers_shard_map_equals_single_device(method, config):
    """koala.jax called on this device's pieces inside the caller's
    shard_map; the state's in/out specs come from koala.jax.state_specs."""
    mesh = Mesh(np.array(jax.devices()[:4]), ("fsdp",))
    specs = {"w": P("fsdp"), "b": P(), "v": P(None, "fsdp")}
    single = run(make_params(1), kj.init(make_params(1), method, **config), jax.jit(step))
    state = kj.init(make_params(1), method, mesh=mesh, specs=specs, **config)
    sspecs = kj.state_specs(state)
    body = shard_map(step, mesh=mesh, in_specs=(specs, sspecs, P()), out_specs=(specs, sspecs),
                     check_rep=False)
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k]))
              for k, v in make_params(1).items()}
    compare(single, run(params, state, jax.jit(body)), method)


def test_sharded_without_x64_psum_is_exact():
    """The partial sums cross the mesh as float64 bits whatever the x64
    setting: the all-reduce of uint32 pairs sums real doubles."""
    from koala.jax import _psum_doubles
    mesh = Mesh(np.array(jax.devices()[:4]), ("d",))
    vals = np.array([[1.0 + 2.0 ** -40, 3.0], [2.0, 2.0 ** -50], [5.0, 7.0], [1.0, 1e300]])
    bits = jnp.asarray(vals.view(np.uint32).reshape(-1))
    f = shard_map(lambda b: _psum_doubles(b, ("d",)), mesh=mesh, in_specs=P("d"),
                  out_specs=P("d"), check_rep=False)
    out = np.asarray(jax.jit(f)(bits)).reshape(4, 4).view(np.float64)
    expected = vals[0] + vals[1] + vals[2] + vals[3]
    for r in range(4):
        assert np.array_equal(out[r], expected)


def test_uneven_shards_are_a_clear_error():
    mesh = Mesh(np.array(jax.devices()[:4]), ("d",))
    with pytest.raises(ValueError, match="does not divide into 4 shards"):
        kj.init({"w": jnp.ones((6, 2), DTYPE)}, "momentum", mesh=mesh, specs={"w": P("d")})


@pytest.mark.parametrize("method", ["momentum", "plusplus"])
def test_vmap_over_sharded_states(method):
    """vmap over two sharded optimizers is two independent sharded runs."""
    mesh = Mesh(np.array(jax.devices()[:4]), ("fsdp",))
    specs = {"w": P("fsdp"), "b": P(), "v": P(None, "fsdp")}
    runs = []
    for seed in (2, 3):
        params = {k: jax.device_put(v, NamedSharding(mesh, specs[k]))
                  for k, v in make_params(seed).items()}
        runs.append((params, kj.init(params, method)))
    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    params = jax.tree_util.tree_map(stack, runs[0][0], runs[1][0])
    state = jax.tree_util.tree_map(stack, runs[0][1], runs[1][1])
    vstep = jax.jit(jax.vmap(step, in_axes=(0, 0, None)))
    one = jax.jit(step)
    for k in range(4):
        loss = jnp.asarray(2.0 - 0.1 * k, DTYPE)
        params, state = vstep(params, state, loss)
        runs = [one(p, s, loss) for p, s in runs]
    for i, (p, s) in enumerate(runs):
        for a, b in zip(jax.tree_util.tree_leaves((params, state)),
                        jax.tree_util.tree_leaves((p, s))):
            assert_close(np.asarray(a)[i], b, "vmapped and separate sharded runs")
