"""A small regression network in plain NumPy (float64), with hand-written
backprop, used to drive both the reference and libkoala through the same
kind of steps. Its tensors, in order:
    W1 (8x6), b1 (6), W2 (6x1), b2 (1), unused (4), frozen (3)
`unused` never affects the output (gradient exactly zero: skipped by the
norm test); `frozen` has no gradient at all (None: skipped as absent).
"""
import numpy as np

SIZES = [48, 6, 6, 1, 4, 3]


def initial_params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.5, 48), rng.normal(0, 0.1, 6), rng.normal(0, 0.5, 6),
            np.array([0.1]), rng.normal(0, 1, 4), rng.normal(0, 1, 3)]


def batches(seed=1, batch=16):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(0, 1, 8)
    while True:
        x = rng.normal(0, 1, (batch, 8))
        y = np.sin(x @ w_true) + 0.1 * rng.normal(0, 1, batch)
        yield x, y


def losses_and_grads(params, x, y):
    """Per-sample losses l_j = 0.5 (f(x_j) - y_j)^2 + 0.1 (kept > 0) and the
    gradients of their mean."""
    W1, b1, W2, b2 = params[0].reshape(8, 6), params[1], params[2].reshape(6, 1), params[3]
    hidden = np.tanh(x @ W1 + b1)
    out = (hidden @ W2)[:, 0] + b2[0]
    err = out - y
    losses = 0.5 * err ** 2 + 0.1
    m = len(y)
    d_out = err / m
    gW2 = hidden.T @ d_out
    gb2 = np.array([d_out.sum()])
    d_hidden = np.outer(d_out, W2[:, 0]) * (1 - hidden ** 2)
    gW1 = x.T @ d_hidden
    gb1 = d_hidden.sum(0)
    grads = [gW1.ravel(), gb1, gW2.ravel(), gb2, np.zeros(4), None]
    return losses, grads
