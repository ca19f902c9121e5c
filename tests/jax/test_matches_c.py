"""Inside jax.jit, koala.jax computes what plain libkoala computes, bit for
bit: parameters AND state (KOALA-M's velocity and xbar, KOALA++'s v and
H_prev, the scalar block).

The jitted step (predict -> forward/backward in JAX -> update) also returns
the loss, loss_var and gradients it used; the plain-C optimizer (ctypes on
libkoala.so, its state in NumPy arrays) replays the same step on its own
copy of the parameters with those numbers. As long as both sides agree,
those are exactly the gradients at the C side's parameters, so this is the
same training run twice. lr goes in differently on purpose: the C side sets
koala_config::lr (koala_set_lr), koala.jax writes the scalar block's lr
multiplier; the products are the same doubles."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import X64, kj, scalar_block, state_leaves
from problems import batches, loss_and_var, nested_params

N_STEPS = 60
LR_SLOT = 10  # KOALA_SCALAR_LR_SCALE


def make_step(counter):
    def step(params, state, x, y, lr):
        counter[0] += 1  # runs once per trace, never per call
        params, state = kj.predict(params, state)
        predicted = params
        (loss, loss_var), grads = jax.value_and_grad(loss_and_var, has_aux=True)(params, x, y)
        params, state = kj.update(params, grads, state, loss, loss_var, lr=lr)
        return params, state, predicted, loss, loss_var, grads
    return jax.jit(step, donate_argnums=(0, 1))


def assert_same(a_tree, b_list, what, k):
    for a, b in zip(jax.tree_util.tree_leaves(a_tree), b_list):
        a = np.asarray(a).reshape(-1)
        assert np.array_equal(a, np.asarray(b).reshape(-1)), \
            f"step {k}: {what} differ by {np.max(np.abs(a - b.reshape(-1))):g}"


CASES = [("vanilla", dict(sigma=0.1, weight_decay=5e-4)),
         ("momentum", dict(weight_decay=5e-4)),
         ("momentum", dict(r=0.5)),
         ("plusplus", dict(weight_decay=5e-4)),
         ("plusplus", dict(r=0.3, q=0.5))]


@pytest.mark.parametrize("dtype", [np.float64, np.float32] if X64 else [np.float32])
@pytest.mark.parametrize("method,config", CASES)
def test_jit_matches_plain_c(plain_koala, method, config, dtype):
    params = nested_params(dtype)
    c_params = [np.array(p) for p in jax.tree_util.tree_leaves(params)]
    c_opt = plain_koala(method, c_params, **config)
    state = kj.init(params, method, **config)
    expected = c_opt.scalars.copy()
    assert np.array_equal(scalar_block(state), expected)

    traces = [0]
    step = make_step(traces)
    for k, (x, y) in enumerate(batches(N_STEPS, dtype)):
        lr = 1.0 if k < 40 else 0.2  # a schedule through the traced lr argument
        params, state, predicted, loss, loss_var, grads = step(params, state, x, y, lr)
        c_opt.predict(c_params)
        assert_same(predicted, c_params, "predicted parameters", k)
        if k == 40:
            # Without x64 the traced lr is a float32: 0.2 arrives as float32(0.2).
            c_opt.set_lr(0.2 if X64 else float(np.float32(0.2)))
        c_grads = [np.array(g) for g in jax.tree_util.tree_leaves(grads)]
        c_opt.update(float(loss), float(loss_var), c_params, c_grads)
        assert_same(params, c_params, "parameters", k)
    # The whole optimizer state agrees: every buffer, and the scalar block
    # but its lr slot (the C side keeps the multiplier at 1, lr in its config).
    for a, b in zip(state_leaves(state), c_opt.buffers):
        assert np.array_equal(a, b)
    ours, theirs = scalar_block(state).copy(), c_opt.scalars.copy()
    assert ours[LR_SLOT] == (0.2 if X64 else float(np.float32(0.2))) and theirs[LR_SLOT] == 1.0
    ours[LR_SLOT] = theirs[LR_SLOT]
    assert np.array_equal(ours, theirs)
    assert kj.info(state)["steps"] == N_STEPS
    assert traces[0] == 1, f"the jitted step was traced {traces[0]} times"
    c_opt.close()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("method,config", [CASES[0], CASES[1], CASES[3]])
def test_16_bit_parameters_match_plain_c(plain_koala, method, config, dtype):
    """bfloat16 / float16 parameters (float32 state): the same bits as plain
    libkoala on the same 16-bit arrays, with the same gradients."""
    import ml_dtypes
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(np.float16)
    params = jax.tree_util.tree_map(lambda p: p.astype(dtype), nested_params(np.float32))
    c_params = [np.array(p) for p in jax.tree_util.tree_leaves(params)]
    assert c_params[0].dtype == np_dtype
    c_opt = plain_koala(method, c_params, **config)
    state = kj.init(params, method, **config)

    @jax.jit
    def step(params, state, k):
        params, state = kj.predict(params, state)
        grads = jax.tree_util.tree_map(
            lambda p: (0.1 * jnp.sin(3.0 * p.astype(jnp.float32)) + 0.01).astype(p.dtype), params)
        loss = 1.5 - 0.05 * k
        loss_var = 1.1 * loss * loss
        return kj.update(params, grads, state, loss, loss_var), grads, loss, loss_var

    for k in range(10):
        (params, state), grads, loss, loss_var = step(params, state, float(k))
        c_opt.predict(c_params)
        c_opt.update(float(loss), float(loss_var), c_params,
                     [np.array(g) for g in jax.tree_util.tree_leaves(grads)])
        assert_same(params, c_params, "parameters", k)
    for a, b in zip(state_leaves(state), c_opt.buffers):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    c_opt.close()


@pytest.mark.parametrize("method", ["momentum", "plusplus"])
def test_training_reduces_the_loss(method):
    dtype = np.float64 if X64 else np.float32
    params = nested_params(dtype)
    state = kj.init(params, method)
    step = make_step([0])
    data = list(batches(1, dtype, seed=7, batch=64)) * 60
    first = None
    for x, y in data:
        params, state, _, loss, _, _ = step(params, state, x, y, 0.2)
        first = float(loss) if first is None else first
    final = float(loss_and_var(params, *data[0])[0])
    assert final < 0.7 * first, (first, final)
