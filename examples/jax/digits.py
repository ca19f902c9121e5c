"""Train a small MLP on scikit-learn's digits with libkoala inside jax.jit.

    tools/deps/jax.sh && meson setup build && ninja -C build
    KOALA_JAX_LIB=build/bindings/jax/libkoala_jax.so PYTHONPATH=build/bindings/python \
        .venv/jax/bin/python examples/jax/digits.py [--epochs 20]

Each training step (KOALA predict, forward, backward, KOALA update) is one
jitted XLA program; parameters and optimizer state are donated, so libkoala
updates them in place. Prints test accuracy and time per epoch for KOALA-V,
KOALA-M, KOALA++ and optax's Adam. The data ship with scikit-learn (no download).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import koala.jax as kj


def init_mlp(key, sizes=(64, 128, 10)):
    params = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes, sizes[1:])):
        params.append({"w": jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(2.0 / n_in),
                       "b": jnp.zeros(n_out)})
    return params


def logits_of(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def per_sample_loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_of(params, x), y)


def koala_losses(params, x, y):
    """KOALA needs the mean loss (differentiated) and the mean SQUARED
    per-sample loss (its measurement-noise estimate)."""
    l = per_sample_loss(params, x, y)
    return jnp.mean(l), jax.lax.stop_gradient(jnp.mean(l * l))


def koala_trainer(method, **config):
    def step(params, state, x, y):
        params, state = kj.predict(params, state)          # before the forward pass
        (loss, loss_var), grads = jax.value_and_grad(koala_losses, has_aux=True)(params, x, y)
        params, state = kj.update(params, grads, state, loss, loss_var)
        return params, state, loss
    return (lambda params: kj.init(params, method, **config),
            jax.jit(step, donate_argnums=(0, 1)))


def adam_trainer(lr=1e-3):
    tx = optax.adam(lr)

    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(per_sample_loss(p, x, y)))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss
    return tx.init, jax.jit(step, donate_argnums=(0, 1))


@jax.jit
def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(logits_of(params, x), axis=1) == y)


def train(name, make, data, epochs, batch, seed):
    x_tr, y_tr, x_te, y_te = data
    init_state, step = make
    params = init_mlp(jax.random.PRNGKey(seed))
    state = init_state(params)
    rng = np.random.default_rng(seed)
    n_batches = len(x_tr) // batch          # full batches only: one shape, one trace
    epoch_times = []
    for epoch in range(epochs):
        order = rng.permutation(len(x_tr))
        t0 = time.perf_counter()
        for b in range(n_batches):
            idx = order[b * batch:(b + 1) * batch]
            params, state, loss = step(params, state, x_tr[idx], y_tr[idx])
        jax.block_until_ready(params)
        epoch_times.append(time.perf_counter() - t0)
    acc = float(accuracy(params, x_te, y_te))
    # Epoch 1 includes compilation; report it apart.
    steady = np.mean(epoch_times[1:]) if epochs > 1 else epoch_times[0]
    return {"name": name, "acc": acc, "loss": float(loss), "first": epoch_times[0],
            "epoch": steady}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-accuracy", type=float, default=0.0,
                    help="exit 1 if a KOALA run ends below this test accuracy (for CI)")
    args = ap.parse_args()

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target.astype(np.int32),
                                              test_size=0.25, random_state=0,
                                              stratify=digits.target)
    data = (jnp.asarray(x_tr), jnp.asarray(y_tr), jnp.asarray(x_te), jnp.asarray(y_te))

    runs = [("KOALA-V", koala_trainer("vanilla", sigma=0.1, weight_decay=5e-4)),
            ("KOALA-M", koala_trainer("momentum", weight_decay=5e-4)),
            ("KOALA++", koala_trainer("plusplus", weight_decay=5e-4)),
            ("Adam 1e-3", adam_trainer(1e-3))]
    results = [train(name, make, data, args.epochs, args.batch, args.seed)
               for name, make in runs]

    print(f"digits: {len(x_tr)} train / {len(x_te)} test, MLP 64-128-10, batch {args.batch}, "
          f"{args.epochs} epochs, {jax.devices()[0].platform}")
    print(f"{'optimizer':<10} {'test acc':>9} {'last loss':>10} {'epoch 1 (s)':>12} "
          f"{'s/epoch':>9}")
    for r in results:
        print(f"{r['name']:<10} {r['acc']:>9.4f} {r['loss']:>10.4f} {r['first']:>12.3f} "
              f"{r['epoch']:>9.4f}")
    worst = min(r["acc"] for r in results if r["name"].startswith("KOALA"))
    if worst < args.min_accuracy:
        raise SystemExit(f"KOALA test accuracy {worst:.4f} < {args.min_accuracy}")


if __name__ == "__main__":
    main()
