"""Inside jax.jit, koala.jax computes what plain libkoala computes.

The jitted step (predict -> forward/backward in JAX -> update) also returns
the loss, loss_var and gradients it used; the plain-C optimizer (ctypes on
libkoala.so) replays the same step on its own copy of the parameters with
those numbers. As long as both sides agree, those are exactly the gradients
at the C side's parameters, so this is the same training run twice."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import kj
from problems import batches, loss_and_var, nested_params

N_STEPS = 120


def make_step(counter):
    def step(params, state, x, y, lr):
        counter[0] += 1  # runs once per trace, never per call
        params, state = kj.predict(params, state)
        predicted = params
        (loss, loss_var), grads = jax.value_and_grad(loss_and_var, has_aux=True)(params, x, y)
        params, state = kj.update(params, grads, state, loss, loss_var, lr=lr)
        return params, state, predicted, loss, loss_var, grads
    return jax.jit(step, donate_argnums=(0, 1))


def max_rel_err(a_tree, b_list):
    a_list = [np.asarray(a) for a in jax.tree_util.tree_leaves(a_tree)]
    return max(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)
               for a, b in zip(a_list, b_list))


@pytest.mark.parametrize("method,dtype,tol,config", [
    # The same libkoala code runs on the same numbers: expect identical bits;
    # float64 is held to the brief's 1e-12.
    ("vanilla", np.float64, 1e-12, dict(sigma=0.1, weight_decay=5e-4)),
    ("momentum", np.float64, 1e-12, dict(weight_decay=5e-4)),
    ("vanilla", np.float32, 0.0, dict()),
    ("momentum", np.float32, 0.0, dict(r=0.5)),
])
def test_jit_matches_plain_c(plain_koala, method, dtype, tol, config):
    params = nested_params(dtype)
    c_params = [np.array(p) for p in jax.tree_util.tree_leaves(params)]
    c_opt = plain_koala(method, c_params, **config)
    state = kj.init(params, method, **config)
    assert np.array_equal(np.asarray(state.ckpt), c_opt.state_bytes())

    traces = [0]
    step = make_step(traces)
    worst = 0.0
    for k, (x, y) in enumerate(batches(N_STEPS, dtype)):
        lr = 1.0 if k < 80 else 0.2  # a schedule through the traced lr argument
        params, state, predicted, loss, loss_var, grads = step(params, state, x, y, lr)
        c_opt.predict(c_params)
        worst = max(worst, max_rel_err(predicted, c_params))
        if k == 80:
            c_opt.set_lr(0.2)
        c_grads = [np.array(g) for g in jax.tree_util.tree_leaves(grads)]
        c_opt.update(float(loss), float(loss_var), c_params, c_grads)
        worst = max(worst, max_rel_err(params, c_params))
        assert worst <= tol, f"step {k}: jit and plain C differ by {worst:g}"
    print(f"{method} {np.dtype(dtype).name}: max relative difference {worst:g}")
    # The whole optimizer state agrees too (sigma / P, R, step count, buffers).
    assert np.array_equal(np.asarray(state.ckpt), c_opt.state_bytes())
    assert kj.info(state)["steps"] == N_STEPS
    assert traces[0] == 1, f"the jitted step was traced {traces[0]} times"
    c_opt.close()


def test_training_reduces_the_loss():
    params = nested_params(np.float64)
    state = kj.init(params, "momentum")
    step = make_step([0])
    data = list(batches(1, np.float64, seed=7, batch=64)) * 60
    first = None
    for x, y in data:
        params, state, _, loss, _, _ = step(params, state, x, y, 0.2)
        first = float(loss) if first is None else first
    final = float(loss_and_var(params, *data[0])[0])
    assert final < 0.7 * first, (first, final)
