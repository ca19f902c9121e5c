"""Small training problems shared by the tests: a nested parameter pytree
and a per-sample loss whose mean and mean-square feed KOALA."""
import jax
import jax.numpy as jnp
import numpy as np


def nested_params(dtype, seed=0):
    """Nested dicts/lists/tuples of several shapes (scalar included)."""
    rng = np.random.default_rng(seed)
    def a(*shape):
        return jnp.asarray(rng.normal(scale=0.3, size=shape).astype(dtype))
    return {"dense": {"w": a(5, 4), "b": a(4)},
            "blocks": [a(4, 3), (a(3,), a())],
            "head": a(3, 2, 1)}


def model(params, x):
    h = jnp.tanh(x @ params["dense"]["w"] + params["dense"]["b"])
    w2, (b2, s) = params["blocks"]
    h = jnp.tanh(h @ w2 + b2) * (1.0 + s)
    return h @ params["head"][:, :, 0]


def per_sample_losses(params, x, y):
    """Softmax cross-entropy per sample (>= 0, as KOALA's targets assume)."""
    logits = model(params, x)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]


def loss_and_var(params, x, y):
    """(mean loss, mean squared loss); only the first is differentiated."""
    l = per_sample_losses(params, x, y)
    return jnp.mean(l), jax.lax.stop_gradient(jnp.mean(l * l))


def batches(n_steps, dtype, seed=1, batch=16):
    rng = np.random.default_rng(seed)
    for _ in range(n_steps):
        x = rng.normal(size=(batch, 5)).astype(dtype)
        y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
        yield jnp.asarray(x), jnp.asarray(y)
