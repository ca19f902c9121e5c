"""KOALA over a device mesh: the digits MLP with its weights sharded over 4
devices (FSDP style: every weight matrix split by rows, the biases
replicated) and the batch split over the same devices, under plain jax.jit
with NamedShardings. The optimizer state follows the parameters' shardings;
each device updates its own pieces, and one all-reduce of the partial sums
per step keeps the run equal to the single-device one.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
    KOALA_JAX_LIB=build/bindings/jax/libkoala_jax.so PYTHONPATH=build/bindings/python \\
        .venv/jax/bin/python examples/jax/sharded.py [--method momentum] [--epochs 3]

On a CPU-only machine the four devices are host devices (the XLA flag must
be set before jax is imported; this script sets it when absent). Prints
the test accuracy of the sharded and the single-device run and how far
their parameters are apart.
"""
import argparse
import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import koala.jax as kj  # noqa: E402


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


def losses(params, x, y):
    """(mean loss, mean squared per-sample loss) over the whole batch."""
    l = optax.softmax_cross_entropy_with_integer_labels(logits_of(params, x), y)
    return jnp.mean(l), jax.lax.stop_gradient(jnp.mean(l * l))


def step(params, state, x, y):
    params, state = kj.predict(params, state)
    (loss, loss_var), grads = jax.value_and_grad(losses, has_aux=True)(params, x, y)
    params, state = kj.update(params, grads, state, loss, loss_var)
    return params, state, loss


def train(params, state, data, epochs, batch, place_batch):
    x_tr, y_tr = data
    jstep = jax.jit(step, donate_argnums=(0, 1))
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        order = rng.permutation(len(x_tr))
        for b in range(len(x_tr) // batch):
            idx = order[b * batch:(b + 1) * batch]
            params, state, loss = jstep(params, state, *place_batch(x_tr[idx], y_tr[idx]))
    return params, state


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="momentum", choices=["vanilla", "momentum", "plusplus"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-difference", type=float, default=None,
                    help="exit 1 if sharded and single-device parameters differ more (for CI)")
    args = ap.parse_args()

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target.astype(np.int32),
                                              test_size=0.25, random_state=0,
                                              stratify=digits.target)
    mesh = Mesh(np.array(jax.devices()[:4]), ("fsdp",))
    specs = [{"w": P("fsdp"), "b": P()}, {"w": P("fsdp"), "b": P()}]   # weights by rows
    shard = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), tree, specs)
    rows = NamedSharding(mesh, P("fsdp"))

    config = dict(weight_decay=5e-4)
    params = init_mlp(jax.random.PRNGKey(0))
    # A copy: device_put may share device 0's buffer with `params`, and the
    # sharded run donates its arrays.
    sharded = shard(jax.tree_util.tree_map(jnp.copy, params))
    state = kj.init(sharded, args.method, **config)    # follows the parameters' shardings
    sharded, state = train(sharded, state, (x_tr, y_tr), args.epochs, args.batch,
                           lambda xb, yb: (jax.device_put(xb, rows), jax.device_put(yb, rows)))
    single, single_state = train(params, kj.init(params, args.method, **config), (x_tr, y_tr),
                                 args.epochs, args.batch, lambda xb, yb: (xb, yb))

    acc = lambda p: float(jnp.mean(jnp.argmax(logits_of(p, x_te), axis=1) == y_te))  # noqa: E731
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree_util.tree_leaves(sharded),
                               jax.tree_util.tree_leaves(single)))
    print(f"KOALA ({args.method}) on {mesh.size} devices ({jax.devices()[0].platform}), "
          f"{args.epochs} epochs, batch {args.batch}")
    print(f"  weight 0 sharded as {sharded[0]['w'].sharding.spec}, its state as "
          f"{state.buffers[0][0]['w'].sharding.spec if state.buffers else 'none (KOALA-V)'}, "
          f"scalar block {state.scalars.shape} as {state.scalars.sharding.spec}")
    print(f"  test accuracy: sharded {acc(sharded):.4f}, single device {acc(single):.4f}; "
          f"max |parameter difference| {diff:.3g}; steps {kj.info(state)['steps']}")
    if args.max_difference is not None and diff > args.max_difference:
        raise SystemExit(f"sharded and single-device runs differ by {diff:g}")


if __name__ == "__main__":
    main()
