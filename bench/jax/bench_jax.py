"""The cost of koala.jax's jitted step against the plain C step of libkoala
and against optax.adam, measured in one run on the same machine.

Model: an MLP 1024-2048-1024-10 (about 4.2M float32 parameters). Figures,
each the median of --repeat timed calls after warm-up:

  c_step       koala_predict + koala_update of plain libkoala (ctypes, NumPy
               arrays, library-owned state): the floor koala.jax is held to
  jax_step     the same two calls jitted through koala.jax (predict, update
               with donated parameters and state, precomputed gradients)
  adam_step    optax.adam's update + apply_updates, jitted, donated
  *_train      a whole training step (forward, backward, optimizer) on a
               batch of --batch samples

The step kinds are timed in interleaved rounds (one call of each per round),
so that load from elsewhere weighs on all alike. Printed as milliseconds and
as ratios of the medians and of the fastest calls (on a machine shared
with other jobs the fastest calls tell the cost apart from the waiting); the goal of issue 13 is
jax_step / c_step <= 1.5. Run:

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false \\
    KOALA_JAX_LIB=build/bindings/jax/libkoala_jax.so KOALA_LIB=build/libkoala.so \\
    PYTHONPATH=build/bindings/python .venv/jax/bin/python bench/jax/bench_jax.py

(XLA's Eigen thread pool would otherwise compete with libkoala's threads
for the cores; it slows both koala.jax and optax.adam on 2 cores.)
"""
import argparse
import ctypes
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import koala.jax as kj
from koala.jax_lib import Config

SIZES = [1024, 2048, 1024, 10]


def init_mlp(rng):
    params = {}
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        params[f"w{i}"] = jnp.asarray(rng.normal(scale=a ** -0.5, size=(a, b)), jnp.float32)
        params[f"b{i}"] = jnp.zeros(b, jnp.float32)
    return params


def per_sample_losses(params, x, y):
    h = x
    n = len(SIZES) - 1
    for i in range(n):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = jax.nn.relu(h)
    return -jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], axis=1)[:, 0]


def losses(params, x, y):
    l = per_sample_losses(params, x, y)
    return jnp.mean(l), jax.lax.stop_gradient(jnp.mean(l * l))


def timed(fns, repeat, warmup=3):
    """Medians of each of `fns`, timed in interleaved rounds (one call of
    each per round), so that load from elsewhere on the machine weighs on
    all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    out = [[] for _ in fns]
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t)
    return [statistics.median(o) for o in out], [min(o) for o in out]


def c_step(params, grads):
    """koala_predict + koala_update of plain libkoala on NumPy copies: a
    function doing one step, and one releasing the optimizer."""
    lib = ctypes.CDLL(os.environ.get("KOALA_LIB", "libkoala.so"))
    c = ctypes
    lib.koala_config_init_sized.argtypes = [c.c_void_p, c.c_int, c.c_size_t]
    lib.koala_create.argtypes = [c.c_void_p, c.c_size_t, c.c_void_p, c.c_int, c.c_int, c.c_void_p]
    lib.koala_predict.argtypes = [c.c_void_p, c.c_void_p, c.c_void_p]
    lib.koala_update.argtypes = [c.c_void_p, c.c_double, c.c_double, c.c_void_p, c.c_void_p,
                                 c.c_void_p]
    lib.koala_destroy.argtypes = [c.c_void_p]
    cfg = Config()
    lib.koala_config_init_sized(c.byref(cfg), 2, c.sizeof(Config))
    xs = [np.array(p) for p in jax.tree_util.tree_leaves(params)]
    gs = [np.array(g) for g in jax.tree_util.tree_leaves(grads)]
    sizes = (c.c_size_t * len(xs))(*[a.size for a in xs])
    opt = c.c_void_p()
    assert lib.koala_create(c.byref(cfg), len(xs), sizes, 1, 1, c.byref(opt)) == 0
    px = (c.c_void_p * len(xs))(*[a.ctypes.data for a in xs])
    pg = (c.c_void_p * len(gs))(*[a.ctypes.data for a in gs])

    def step():
        assert lib.koala_predict(opt, px, None) == 0
        assert lib.koala_update(opt, 1.0, 1.5, px, pg, None) == 0

    step.keep = (xs, gs, px, pg)
    return step, lambda: lib.koala_destroy(opt)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--async-dispatch", action="store_true",
                    help="keep JAX's asynchronous CPU dispatch (the default of JAX; here off "
                         "by default, so that each call runs on the calling thread as the "
                         "plain C step does, without a hand-off to XLA's thread to wait for)")
    args = ap.parse_args()
    if not args.async_dispatch:
        jax.config.update("jax_cpu_enable_async_dispatch", False)

    rng = np.random.default_rng(0)
    params = init_mlp(rng)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    x = jnp.asarray(rng.normal(size=(args.batch, SIZES[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, SIZES[-1], size=args.batch), jnp.int32)
    grads = jax.grad(lambda p: losses(p, x, y)[0])(params)
    grads = jax.tree_util.tree_map(lambda g: g + 1e-3, grads)  # no tensor skipped

    # ---- the optimizer step alone ----
    run_c, release_c = c_step(params, grads)

    def koala_opt(params, state, grads):
        params, state = kj.predict(params, state)
        return kj.update(params, grads, state, 1.0, 1.5)

    koala_opt = jax.jit(koala_opt, donate_argnums=(0, 1))
    kp, ks = jax.tree_util.tree_map(jnp.copy, params), kj.init(params, "momentum")

    def run_koala():
        nonlocal kp, ks
        kp, ks = koala_opt(kp, ks, grads)
        jax.block_until_ready((kp, ks))


    adam = optax.adam(1e-3)

    def adam_opt(params, state, grads):
        updates, state = adam.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    adam_opt = jax.jit(adam_opt, donate_argnums=(0, 1))
    ap_, as_ = jax.tree_util.tree_map(jnp.copy, params), adam.init(params)

    def run_adam():
        nonlocal ap_, as_
        ap_, as_ = adam_opt(ap_, as_, grads)
        jax.block_until_ready((ap_, as_))

    (c_step_t, jax_step, adam_step), (c_min, jax_min, adam_min) = timed(
        [run_c, run_koala, run_adam], args.repeat)
    release_c()

    # ---- whole training steps ----
    def koala_train(params, state, x, y):
        params, state = kj.predict(params, state)
        (loss, loss_var), g = jax.value_and_grad(losses, has_aux=True)(params, x, y)
        return kj.update(params, g, state, loss, loss_var)

    def adam_train(params, state, x, y):
        (loss, _), g = jax.value_and_grad(losses, has_aux=True)(params, x, y)
        updates, state = adam.update(g, state, params)
        return optax.apply_updates(params, updates), state

    koala_train = jax.jit(koala_train, donate_argnums=(0, 1))
    adam_train = jax.jit(adam_train, donate_argnums=(0, 1))

    def run_koala_train():
        nonlocal kp, ks
        kp, ks = koala_train(kp, ks, x, y)
        jax.block_until_ready((kp, ks))

    def run_adam_train():
        nonlocal ap_, as_
        ap_, as_ = adam_train(ap_, as_, x, y)
        jax.block_until_ready((ap_, as_))

    (koala_train_t, adam_train_t), _ = timed([run_koala_train, run_adam_train], args.repeat)

    threads = kj.info(ks)["threads"]
    print(f"koala.jax bench: MLP {'-'.join(map(str, SIZES))}, {n_params / 1e6:.2f}M float32 "
          f"parameters, KOALA-M, {threads} libkoala thread(s), {os.cpu_count()} CPUs, "
          f"jax {jax.__version__}, {'async' if args.async_dispatch else 'synchronous'} "
          f"dispatch, {args.repeat} interleaved rounds")
    print(f"  optimizer step:  plain C {c_step_t * 1e3:8.2f} ms   koala.jax {jax_step * 1e3:8.2f} ms"
          f"   optax.adam {adam_step * 1e3:8.2f} ms")
    print(f"  training step:   koala.jax {koala_train_t * 1e3:8.2f} ms   optax.adam "
          f"{adam_train_t * 1e3:8.2f} ms   (batch {args.batch})")
    print(f"  ratios (medians): koala.jax / plain C = {jax_step / c_step_t:.3f} (goal <= 1.5);  "
          f"optax.adam / plain C = {adam_step / c_step_t:.3f};  "
          f"training step koala.jax / optax.adam = {koala_train_t / adam_train_t:.3f}")
    print(f"  ratios (fastest calls): koala.jax / plain C = {jax_min / c_min:.3f};  "
          f"optax.adam / plain C = {adam_min / c_min:.3f}   "
          f"(plain C {c_min * 1e3:.2f} ms, koala.jax {jax_min * 1e3:.2f} ms)")
    return 0 if jax_step / c_step_t <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
