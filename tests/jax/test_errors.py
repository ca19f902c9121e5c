"""Bad input gives a clear Python error naming the problem."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import kj
from problems import nested_params


def small():
    return {"a": jnp.ones((2, 3)), "b": [jnp.zeros(4)]}


def test_mixed_dtypes():
    with pytest.raises(TypeError, match=r"mixes dtypes \['bfloat16', 'float32'\]"):
        kj.init({"a": jnp.ones(3, jnp.float32), "b": jnp.ones(3, jnp.bfloat16)})


def test_unknown_method_name_lists_the_methods():
    with pytest.raises(ValueError, match="momentum.*plusplus"):
        kj.init(small(), "adamw")


def test_integer_arrays():
    with pytest.raises(TypeError, match=r"params\['a'\] has dtype int32"):
        kj.init({"a": jnp.ones(3, jnp.int32)})


def test_not_an_array():
    with pytest.raises(TypeError, match="not an array"):
        kj.init({"a": 1.5})


def test_unknown_method_and_config():
    with pytest.raises(ValueError, match="method must be one of"):
        kj.init(small(), "adam")
    with pytest.raises(TypeError, match="unknown config field"):
        kj.init(small(), "vanilla", beta=0.9)
    with pytest.raises(TypeError, match="unknown config field.*fused_predict"):
        kj.init(small(), "momentum", fused_predict=1)


def test_bad_config_value_is_libkoalas_message():
    with pytest.raises(kj.KoalaError, match="KOALA_ERROR_INVALID_ARGUMENT.*lr"):
        kj.init(small(), "vanilla", lr=-1.0)
    with pytest.raises(kj.KoalaError, match="KOALA_ERROR_INVALID_ARGUMENT.*alpha_r"):
        kj.init(small(), "momentum", alpha_r=1.5)


def test_state_of_another_tree():
    state = kj.init(small(), "momentum")
    other = {"a": jnp.ones((3, 3)), "b": [jnp.zeros(4)]}
    with pytest.raises(ValueError, match="does not match the optimizer state"):
        kj.predict(other, state)
    with pytest.raises(ValueError, match="does not match the optimizer state"):
        jax.jit(kj.predict)(jax.tree_util.tree_map(lambda p: p.astype(jnp.float16), small()),
                            state)


def test_grads_of_another_structure():
    params = small()
    state = kj.init(params)
    params, state = kj.predict(params, state)
    with pytest.raises(ValueError, match="another tree structure"):
        kj.update(params, {"a": params["a"], "b": params["b"][0]}, state, 1.0, 1.0)


def test_corrupt_scalar_block_is_rejected():
    """A scalar block that is not libkoala's (here: an impossible call phase)
    is refused by koala_bind_state, naming the slot."""
    params = small()
    state = kj.init(params, "momentum")
    s = np.ascontiguousarray(np.asarray(state.scalars)).view(np.float64).copy()
    s[8] = 7.0  # the phase slot
    bad = state._replace(scalars=jnp.asarray(s.view(np.asarray(state.scalars).dtype)))
    with pytest.raises(Exception, match="KOALA_ERROR_INVALID_ARGUMENT.*the phase"):
        jax.block_until_ready(jax.jit(kj.predict)(params, bad))


def test_scalar_block_of_another_tree():
    state = kj.init({"a": jnp.ones(3)}, "momentum")
    other = kj.init({"a": jnp.ones(3), "b": jnp.ones(2)}, "momentum")
    wrong = other._replace(scalars=state.scalars)
    with pytest.raises(Exception, match="the scalar block must be"):
        jax.block_until_ready(kj.predict({"a": jnp.ones(3), "b": jnp.ones(2)}, wrong))


def test_negative_traced_lr():
    params = small()
    state = kj.init(params)
    params, state = kj.predict(params, state)
    with pytest.raises(Exception, match="lr is -0.5.*finite and >= 0"):
        jax.block_until_ready(jax.jit(kj.update)(params, params, state, 1.0, 1.0, -0.5))
    with pytest.raises(kj.KoalaError, match="cfg->lr is -1"):
        kj.init(params, lr=-1.0)


def test_predict_twice_is_bad_state():
    params = small()
    state = kj.init(params)
    params, state = kj.predict(params, state)
    with pytest.raises(Exception, match="KOALA_ERROR_BAD_STATE"):
        jax.block_until_ready(kj.predict(params, state))


def test_non_finite_loss():
    params = small()
    state = kj.init(params)
    params, state = kj.predict(params, state)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    with pytest.raises(Exception, match="KOALA_ERROR_NOT_FINITE"):
        jax.block_until_ready(kj.update(params, grads, state, jnp.nan, 1.0))
    # Nothing changed: the same state still accepts a finite update.
    new, state2 = kj.update(params, grads, state, 1.0, 1.0)
    assert kj.info(state2)["steps"] == 1


def test_loss_must_be_scalar():
    params = small()
    state = kj.init(params)
    params, state = kj.predict(params, state)
    with pytest.raises(ValueError, match="loss must be a scalar"):
        kj.update(params, params, state, jnp.ones(3), 1.0)
