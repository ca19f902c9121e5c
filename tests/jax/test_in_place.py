"""With donation, libkoala updates XLA's parameter and checkpoint buffers in
place: the outputs of a jitted step live in the donated input buffers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import kj


@pytest.mark.parametrize("method", ["vanilla", "momentum"])
def test_donated_step_reuses_the_buffers(method):
    params = {"w": jnp.linspace(-1.0, 1.0, 4096).reshape(64, 64), "b": jnp.full(64, 0.1)}
    state = kj.init(params, method)

    def step(params, state, grads):
        params, state = kj.predict(params, state)
        return kj.update(params, grads, state, 1.0, 1.5)

    step = jax.jit(step, donate_argnums=(0, 1))
    grads = jax.tree_util.tree_map(lambda p: 0.01 * p + 0.001, params)
    params, state = step(params, state, grads)  # first call: buffers made by XLA
    before = [a.unsafe_buffer_pointer() for a in jax.tree_util.tree_leaves((params, state))]
    for _ in range(3):
        params, state = step(params, state, grads)
    after = [a.unsafe_buffer_pointer() for a in jax.tree_util.tree_leaves((params, state))]
    assert after == before
    assert kj.info(state)["steps"] == 4
    assert np.all(np.isfinite(np.asarray(params["w"])))
