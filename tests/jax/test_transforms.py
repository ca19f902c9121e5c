"""JAX transformations around koala.jax: optax.inject_hyperparams driving
lr, vmap over independent optimizers, data parallelism (pmap and shard_map
with replicated parameters) with the loss averaged over devices."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental.shard_map import shard_map
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from conftest import X64, kj, scalar_block
from problems import batches, loss_and_var, nested_params

DTYPE = np.float64 if X64 else np.float32
LR_SLOT = 10  # KOALA_SCALAR_LR_SCALE


def train_step(tx):
    @jax.jit
    def step(params, opt_state, x, y):
        params, opt_state = kj.predict(params, opt_state)
        (loss, loss_var), grads = jax.value_and_grad(loss_and_var, has_aux=True)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params, value=loss, loss_var=loss_var)
        return optax.apply_updates(params, updates), opt_state
    return step


@pytest.mark.parametrize("make_tx", [kj.koala_v, kj.koala_m, kj.koala_pp])
def test_inject_hyperparams_drives_lr(make_tx):
    """A schedule through inject_hyperparams equals the same lr changes made
    by hand: the traced lr lands in the scalar block's lr multiplier."""
    schedule = optax.piecewise_constant_schedule(1.0, {5: 0.3, 10: 0.5})
    tx = optax.inject_hyperparams(make_tx)(lr=schedule)
    params = nested_params(DTYPE)
    opt_state = tx.init(params)
    step = train_step(tx)
    ref_params, ref_tx = nested_params(DTYPE), {}
    ref_state = None
    data = list(batches(12, DTYPE, seed=4))
    for k, (x, y) in enumerate(data):
        params, opt_state = step(params, opt_state, x, y)
        lr = float(schedule(k))
        if lr not in ref_tx:  # one transformation and jitted step per lr
            tx_lr = make_tx(lr=lr)
            ref_tx[lr] = (tx_lr, train_step(tx_lr))
        if ref_state is None:
            ref_state = ref_tx[lr][0].init(ref_params)
        ref_params, ref_state = ref_tx[lr][1](ref_params, ref_state, x, y)
        assert scalar_block(kj._find_state(opt_state)[0])[LR_SLOT] == DTYPE(lr)  # optax casts it to the params dtype
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert kj.info(opt_state)["lr"] == DTYPE(schedule(11))


def test_inject_hyperparams_keeps_other_config_static():
    """Keywords other than lr reach libkoala's config unchanged (optax passes
    koala_m's **config as one static argument)."""
    tx = optax.inject_hyperparams(kj.koala_m)(lr=0.5, weight_decay=1e-4)
    params = nested_params(DTYPE)
    opt_state = tx.init(params)
    assert kj._find_state(opt_state)[0].meta.config_dict["weight_decay"] == 1e-4
    train_step(tx)(params, opt_state, *next(batches(1, DTYPE)))


def test_traced_config_other_than_lr_is_a_clear_error():
    params = nested_params(DTYPE)
    state = kj.koala_m(weight_decay=1e-4).init(params)

    @jax.jit
    def step(params, state, wd):
        params, state = kj.predict(params, state)
        tx = kj.koala_m(weight_decay=wd)
        return tx.update(params, state, params, value=1.0, loss_var=1.0)

    with pytest.raises(TypeError, match="only lr may change inside jit"):
        step(params, state, 1e-4)


@pytest.mark.parametrize("method", ["vanilla", "momentum", "plusplus"])
def test_vmap_over_independent_optimizers(method):
    """vmap over 3 parameter sets and 3 states is 3 independent runs, bit
    for bit (gradients elementwise, so batching cannot change their
    rounding)."""
    seeds = [0, 1, 2]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                     *[nested_params(DTYPE, seed=s) for s in seeds])
    states = jax.vmap(lambda p: kj.init(p, method, weight_decay=1e-3))(stacked)

    def step(params, state, loss):
        params, state = kj.predict(params, state)
        grads = jax.tree_util.tree_map(lambda p: 0.1 * jnp.sin(3.0 * p) + 0.01, params)
        return kj.update(params, grads, state, loss, 1.2 * loss * loss)

    vstep = jax.jit(jax.vmap(step, in_axes=(0, 0, None)))
    one = jax.jit(step)
    singles = [(nested_params(DTYPE, seed=s), kj.init(nested_params(DTYPE, seed=s), method,
                                                      weight_decay=1e-3)) for s in seeds]
    for k in range(8):
        loss = jnp.asarray(1.5 - 0.1 * k, DTYPE)
        stacked, states = vstep(stacked, states, loss)
        singles = [one(p, s, loss) for p, s in singles]
    for i, (p, s) in enumerate(singles):
        for a, b in zip(jax.tree_util.tree_leaves(stacked), jax.tree_util.tree_leaves(p)):
            assert np.array_equal(np.asarray(a[i]), np.asarray(b))
        assert np.array_equal(np.asarray(states.scalars[i]), np.asarray(s.scalars))
    assert kj.info(singles[0][1])["steps"] == 8


def _dp_data(n_dev, steps):
    """Per-device batches of 8 (stacked) and the same data as one batch."""
    out = []
    for x, y in batches(steps, DTYPE, seed=9, batch=8 * n_dev):
        out.append((x.reshape(n_dev, 8, -1), y.reshape(n_dev, 8), x, y))
    return out


@pytest.mark.parametrize("method", ["vanilla", "momentum", "plusplus"])
@pytest.mark.parametrize("average", [True, False])
def test_pmap_data_parallel_averages_the_loss(method, average):
    """pmap over 4 devices, each with a quarter of the batch: with the loss,
    loss_var and gradients averaged (axis_name) every device holds the same
    parameters, equal to one device on the whole batch. Without averaging
    the loss (the gradients still averaged) the devices drift apart: the
    test can tell."""
    n_dev = 4
    params = nested_params(DTYPE)
    state = kj.init(params, method)
    rep = lambda t: jax.tree_util.tree_map(lambda a: jnp.stack([a] * n_dev), t)  # noqa: E731

    def dp_step(params, state, x, y):
        params, state = kj.predict(params, state)
        (loss, loss_var), grads = jax.value_and_grad(loss_and_var, has_aux=True)(params, x, y)
        grads = jax.lax.pmean(grads, "batch")
        return kj.update(params, grads, state, loss, loss_var,
                         axis_name="batch" if average else None)

    def full_step(params, state, x, y):
        params, state = kj.predict(params, state)
        (loss, loss_var), grads = jax.value_and_grad(loss_and_var, has_aux=True)(params, x, y)
        return kj.update(params, grads, state, loss, loss_var)

    pstep = jax.pmap(dp_step, axis_name="batch", devices=jax.devices()[:n_dev])
    fstep = jax.jit(full_step)
    p_dp, s_dp = rep(params), rep(state)
    p_1, s_1 = params, state
    for xs, ys, x, y in _dp_data(n_dev, 30):
        p_dp, s_dp = pstep(p_dp, s_dp, xs, ys)
        p_1, s_1 = fstep(p_1, s_1, x, y)
    spread = max(float(np.max(np.abs(np.asarray(a) - np.asarray(a)[0])))
                 for a in jax.tree_util.tree_leaves(p_dp))
    err = max(float(np.max(np.abs(np.asarray(a)[0] - np.asarray(b))))
              for a, b in zip(jax.tree_util.tree_leaves(p_dp), jax.tree_util.tree_leaves(p_1)))
    tol = 1e-10 if X64 else 1e-4
    if average:
        assert spread == 0.0, f"devices drifted apart by {spread:g}"
        assert err <= tol, f"data-parallel and one-device runs differ by {err:g}"
    else:
        assert spread > 1e3 * tol, f"devices should drift without averaging ({spread:g})"


def test_shard_map_data_parallel_replicated_params():
    """shard_map over a batch axis with replicated parameters and state
    (an unsharded state: every device runs the plain optimizer)."""
    n_dev = 4
    mesh = Mesh(np.array(jax.devices()[:n_dev]), ("batch",))
    params = nested_params(DTYPE)
    state = kj.init(params, "momentum")
    sspecs = kj.state_specs(state)
    pspecs = jax.tree_util.tree_map(lambda _: P(), params)

    def dp_step(params, state, x, y):
        params, state = kj.predict(params, state)
        (loss, loss_var), grads = jax.value_and_grad(loss_and_var, has_aux=True)(params, x, y)
        grads = jax.lax.pmean(grads, "batch")
        return kj.update(params, grads, state, loss, loss_var, axis_name="batch")

    step = jax.jit(shard_map(dp_step, mesh=mesh, in_specs=(pspecs, sspecs, P("batch"), P("batch")),
                             out_specs=(pspecs, sspecs), check_rep=False))
    p_1, s_1 = nested_params(DTYPE), kj.init(nested_params(DTYPE), "momentum")

    @jax.jit
    def full_step(params, state, x, y):
        params, state = kj.predict(params, state)
        (loss, loss_var), grads = jax.value_and_grad(loss_and_var, has_aux=True)(params, x, y)
        return kj.update(params, grads, state, loss, loss_var)

    replicated = NamedSharding(mesh, P())
    params, state = jax.device_put((params, state), replicated)
    for _, _, x, y in _dp_data(n_dev, 20):
        params, state = step(params, state, x, y)
        p_1, s_1 = full_step(p_1, s_1, x, y)
    tol = 1e-10 if X64 else 1e-4
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(p_1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_states_of_one_layout_share_a_tree_structure():
    """Two states made alike have equal tree structures (jit's cache and
    tree_map across states rely on it), the online R's NaN included."""
    params = nested_params(DTYPE)
    a, b = kj.init(params, "momentum"), kj.init(params, "momentum")
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert jax.tree_util.tree_structure(a) != \
        jax.tree_util.tree_structure(kj.init(params, "momentum", r=0.5))
