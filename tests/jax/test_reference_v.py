"""KOALA-V inside jit against an independent float64 NumPy transcription of
ALGORITHM.md §3 (predict: sigma += q; update: online R, per-block Kalman step
with the raw gradient, sigma <- sigma_hat - sigma_hat^2 max rho)."""
import jax
import numpy as np
import pytest

from conftest import X64, kj
from problems import batches, loss_and_var, nested_params


def reference_koala_v(sigma, q, alpha_r, weight_decay, lr):
    st = {"sigma": sigma, "R": 1.0}

    def predict():
        st["sigma"] += q

    def update(L, M, xs, gs):
        st["R"] = alpha_r * st["R"] + (1 - alpha_r) * M
        s_hat, rho = st["sigma"], []
        for x, g in zip(xs, gs):
            if np.linalg.norm(g) < 1e-9:
                continue
            h = g + weight_decay * x
            a = float(np.sum(h * h))
            S = s_hat * a + st["R"]
            Li = L + weight_decay / 2 * float(np.sum(x * x))
            x -= lr * Li * s_hat / S * g
            rho.append(a / S)
        if rho:
            st["sigma"] = s_hat - s_hat * s_hat * max(rho)

    return st, predict, update


@pytest.mark.skipif(not X64, reason="a float64 reference needs jax_enable_x64")
def test_vanilla_matches_numpy_reference():
    cfg = dict(sigma=0.1, q=1.0, alpha_r=0.9, weight_decay=5e-4, lr=1.0)
    params = nested_params(np.float64, seed=3)
    xs = [np.array(p) for p in jax.tree_util.tree_leaves(params)]
    st, ref_predict, ref_update = reference_koala_v(**cfg)
    state = kj.init(params, "vanilla", **cfg)

    @jax.jit
    def step(params, state, x, y):
        params, state = kj.predict(params, state)
        (loss, loss_var), grads = jax.value_and_grad(loss_and_var, has_aux=True)(params, x, y)
        new, state = kj.update(params, grads, state, loss, loss_var)
        return new, state, loss, loss_var, grads

    for x, y in batches(40, np.float64, seed=5):
        params, state, loss, loss_var, grads = step(params, state, x, y)
        ref_predict()
        ref_update(float(loss), float(loss_var), xs,
                   [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)])
        for a, b in zip(jax.tree_util.tree_leaves(params), xs):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-11, atol=1e-13)
    info = kj.info(state)
    assert abs(info["sigma"] - st["sigma"]) <= 1e-11 * st["sigma"]
    assert abs(info["r"] - st["R"]) <= 1e-11 * st["R"]
