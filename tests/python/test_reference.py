"""The binding (koala.Optimizer, float64, host) against the independent NumPy
reference (reference.py), step by step over 120 steps of a small network:
both methods, weight decay on/off, online/fixed R, an lr schedule, and two
tensors that are skipped every step (zero gradient; no gradient)."""
import itertools

import numpy as np
import pytest

import koala
from reference import MomentumReference, VanillaReference
from toy_problem import SIZES, batches, initial_params, losses_and_grads

STEPS = 120
CASES = list(itertools.product(["vanilla", "momentum"], [0.0, 5e-4], [None, 0.5]))


def _reference(method, config):
    if method == "vanilla":
        return VanillaReference(**config)
    return MomentumReference(SIZES, **config)


def _rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("method,wd,r", CASES)
def test_matches_reference(method, wd, r):
    config = dict(weight_decay=wd, r=r)
    if method == "vanilla":
        config["sigma"] = 0.1          # the official train.py value
    ours = initial_params()
    theirs = [p.copy() for p in ours]
    opt = koala.Optimizer(method, ours, **config)
    ref = _reference(method, config)
    data = batches()
    worst = 0.0
    for step in range(STEPS):
        lr = 1.0 if step < 60 else 0.2          # a step schedule, as train.py does
        opt.set_lr(lr)
        ref.lr = lr
        opt.predict(ours)
        ref.predict(theirs)
        x, y = next(data)
        l_ours, g_ours = losses_and_grads(ours, x, y)
        l_ref, g_ref = losses_and_grads(theirs, x, y)
        opt.update(l_ours.mean(), np.mean(l_ours ** 2), ours, g_ours)
        ref.update(l_ref.mean(), np.mean(l_ref ** 2), theirs, g_ref)
        for a, b in zip(ours, theirs):
            worst = max(worst, _rel(a, b))
        assert worst < 1e-10, f"step {step}: relative difference {worst:.3g}"
    info = opt.info()
    assert info.steps == STEPS
    if method == "vanilla":
        assert info.sigma == pytest.approx(ref.sigma, rel=1e-10)
    else:
        assert [info.p00, info.p01, info.p11] == pytest.approx(
            [ref.P[0, 0], ref.P[0, 1], ref.P[1, 1]], rel=1e-10)
        assert info.qw == pytest.approx(ref.qw, rel=1e-10)
    assert info.r == pytest.approx(ref.r.value, rel=1e-12)
    # The skipped tensors never moved (KOALA-V) / moved only by their zero velocity.
    init = initial_params()
    np.testing.assert_array_equal(ours[4], init[4])
    np.testing.assert_array_equal(ours[5], init[5])
    # And the network did learn something: the loss went down.
    x, y = next(batches(seed=7, batch=256))
    assert losses_and_grads(ours, x, y)[0].mean() < losses_and_grads(init, x, y)[0].mean()


@pytest.mark.parametrize("method", ["vanilla", "momentum"])
def test_float32_follows_reference(method):
    """float32 parameters: same steps within float32 rounding for 20 steps."""
    ours = [p.astype(np.float32) for p in initial_params()]
    theirs = initial_params()
    opt = koala.Optimizer(method, ours, weight_decay=5e-4)
    ref = _reference(method, dict(weight_decay=5e-4))
    data = batches()
    for _ in range(20):
        opt.predict(ours)
        ref.predict(theirs)
        x, y = next(data)
        l_o, g_o = losses_and_grads([p.astype(np.float64) for p in ours], x, y)
        l_r, g_r = losses_and_grads(theirs, x, y)
        opt.update(l_o.mean(), np.mean(l_o ** 2), ours,
                   [None if g is None else g.astype(np.float32) for g in g_o])
        ref.update(l_r.mean(), np.mean(l_r ** 2), theirs, g_r)
    for a, b in zip(ours, theirs):
        assert _rel(a.astype(np.float64), b) < 1e-4


def test_all_skipped_keeps_prediction():
    """Every gradient absent: R moves, parameters and covariance keep the prediction."""
    params = initial_params()
    before = [p.copy() for p in params]
    opt = koala.Optimizer("vanilla", params)
    opt.predict()
    opt.update(1.0, 2.0, params, [None] * len(SIZES))
    info = opt.info()
    assert info.sigma == 2.0                # 1 + q, not shrunk
    assert info.r == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
    for a, b in zip(params, before):
        np.testing.assert_array_equal(a, b)
