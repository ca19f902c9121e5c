"""Checkpoint round trip through the pythonic layer: saving, continuing, and
continuing again from the loaded state give bit-identical parameters."""
import numpy as np
import pytest

import koala
from toy_problem import batches, initial_params, losses_and_grads


def _run(opt, params, data, steps):
    for _ in range(steps):
        opt.predict(params)
        x, y = next(data)
        losses, grads = losses_and_grads([p.astype(np.float64) for p in params], x, y)
        grads = [None if g is None else g.astype(params[0].dtype) for g in grads]
        opt.update(losses.mean(), np.mean(losses ** 2), params, grads)


@pytest.mark.parametrize("method", ["vanilla", "momentum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_continues_bit_for_bit(method, dtype):
    params = [p.astype(dtype) for p in initial_params()]
    opt = koala.Optimizer(method, params, weight_decay=5e-4)
    data = batches()
    _run(opt, params, data, 15)
    state = opt.state_dict()
    saved_params = [p.copy() for p in params]
    later = [next(data) for _ in range(15)]

    _run(opt, params, iter(later), 15)

    params2 = [p.copy() for p in saved_params]
    opt2 = koala.Optimizer(method, params2, lr=0.3)     # other config until loaded
    opt2.load_state_dict(state)
    assert opt2.state_dict() == state
    _run(opt2, params2, iter(later), 15)
    for a, b in zip(params, params2):
        np.testing.assert_array_equal(a, b)
    assert opt.info() == opt2.info()


def test_mid_step_checkpoint_keeps_the_phase():
    """Saved between predict and update: the loaded optimizer expects update."""
    params = initial_params()
    opt = koala.Optimizer("momentum", params)
    opt.predict(params)
    state = opt.state_dict()
    opt2 = koala.Optimizer("momentum", [p.copy() for p in params])
    opt2.load_state_dict(state)
    with pytest.raises(koala.BadState):
        opt2.predict(params)
