"""koala.jax states to and from libkoala checkpoints (koala_state_save's
bytes, which every binding reads): a round trip continues the run bit for
bit, and the bytes load into a plain libkoala optimizer."""
import jax
import numpy as np
import pytest

from conftest import DTYPE, kj
from problems import batches, loss_and_var, nested_params


def make_step():
    @jax.jit
    def step(params, state, x, y):
        params, state = kj.predict(params, state)
        (loss, loss_var), grads = jax.value_and_grad(loss_and_var, has_aux=True)(params, x, y)
        return kj.update(params, grads, state, loss, loss_var)
    return step


@pytest.mark.parametrize("method", ["vanilla", "momentum", "plusplus"])
def test_round_trip_continues_bit_for_bit(method):
    step = make_step()
    params = nested_params(DTYPE)
    state = kj.init(params, method, lr=0.5, weight_decay=1e-3)
    data = list(batches(10, DTYPE, seed=6))
    for x, y in data[:5]:
        params, state = step(params, state, x, y)
    data_bytes = kj.to_checkpoint(state)
    restored = kj.from_checkpoint(data_bytes, params, method, lr=0.5, weight_decay=1e-3)
    assert kj.to_checkpoint(restored) == data_bytes
    a, b = (params, state), (params, restored)
    for x, y in data[5:]:
        a = step(*a, x, y)
        b = step(*b, x, y)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.array_equal(np.asarray(u), np.asarray(v))
    assert kj.info(b[1])["steps"] == 10


def test_checkpoint_of_another_layout_is_refused():
    params = nested_params(DTYPE)
    data_bytes = kj.to_checkpoint(kj.init(params, "momentum"))
    other = {"w": params["dense"]["w"]}
    with pytest.raises(kj.KoalaError, match="KOALA_ERROR_BAD_STATE"):
        kj.from_checkpoint(data_bytes, other, "momentum")
