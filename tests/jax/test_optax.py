"""The optax form: koala_v / koala_m as GradientTransformationExtraArgs,
with optax.apply_updates, against the functional API."""
import jax
import numpy as np
import optax
import pytest

from conftest import DTYPE, kj
from problems import batches, loss_and_var, nested_params


@pytest.mark.parametrize("make_tx,method", [(kj.koala_v, "vanilla"), (kj.koala_m, "momentum"),
                                            (kj.koala_pp, "plusplus")])
def test_optax_matches_functional_api(make_tx, method):
    tx = make_tx(lr=0.5, weight_decay=1e-4)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    params = nested_params(DTYPE, seed=11)
    ref_params = jax.tree_util.tree_map(lambda p: p.copy(), params)
    opt_state = tx.init(params)
    ref_state = kj.init(ref_params, method, lr=0.5, weight_decay=1e-4)

    @jax.jit
    def optax_step(params, opt_state, x, y):
        params, opt_state = kj.predict(params, opt_state)        # before the forward pass
        (loss, loss_var), grads = jax.value_and_grad(loss_and_var, has_aux=True)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params, value=loss, loss_var=loss_var)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def functional_step(params, state, x, y):
        params, state = kj.predict(params, state)
        (loss, loss_var), grads = jax.value_and_grad(loss_and_var, has_aux=True)(params, x, y)
        return kj.update(params, grads, state, loss, loss_var)

    for x, y in batches(40, DTYPE, seed=2):
        params, opt_state, loss = optax_step(params, opt_state, x, y)
        ref_params, ref_state = functional_step(ref_params, ref_state, x, y)
    # apply_updates adds back (new - old): equal up to rounding per step.
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9 if DTYPE == np.float64 else 1e-5,
                                   atol=1e-12 if DTYPE == np.float64 else 1e-6)
    assert kj.info(opt_state)["steps"] == 40


def test_optax_state_inside_a_chain():
    """predict finds the KoalaState inside an optax.chain state."""
    tx = optax.chain(optax.identity(), kj.koala_m())
    params = nested_params(DTYPE)
    opt_state = tx.init(params)
    x, y = next(batches(1, DTYPE))
    params, opt_state = kj.predict(params, opt_state)
    (loss, loss_var), grads = jax.value_and_grad(loss_and_var, has_aux=True)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params, value=loss, loss_var=loss_var)
    params = optax.apply_updates(params, updates)
    assert kj.info(opt_state)["steps"] == 1
    assert float(loss_and_var(params, x, y)[0]) < float(loss)


def test_optax_update_without_loss_is_a_clear_error():
    tx = kj.koala_v()
    params = nested_params(DTYPE)
    state = tx.init(params)
    _, state = kj.predict(params, state)
    with pytest.raises(ValueError, match="value=<mean loss>"):
        tx.update(params, state, params)
