/*
 * v1_problem.h - the training run behind tests/c/data/v1_*: libkoala 1.0
 * made it (tests/c/data/gen_v1_data.c, built against the 1.0 header and
 * library), test_checkpoint.c replays its continuation with this library.
 *
 * Everything here is plain C and exact on every machine: the numbers come
 * from splitmix64 through exact scalings (no libm), so the generator and
 * the test compute the same bits. Include it after either koala header.
 */
#ifndef KOALA_V1_PROBLEM_H
#define KOALA_V1_PROBLEM_H

#include <stddef.h>
#include <stdint.h>

#define V1_TENSORS 4
#define V1_BEFORE 4 /* whole steps (predict + update) before the checkpoint */
#define V1_AFTER 6  /* updates recorded after it */
#define V1_ELEMENTS 30

static const size_t v1_sizes[V1_TENSORS] = {3, 17, 1, 9};

static inline uint64_t v1_mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A value in [-1, 1) with 53 random bits, from (stream, step, tensor, i). */
static inline double v1_value(uint64_t stream, uint64_t step, uint64_t tensor, uint64_t i) {
    const uint64_t z = v1_mix(v1_mix(v1_mix(v1_mix(stream) ^ step) ^ tensor) ^ i);
    return (double)(z >> 11) * (1.0 / 4503599627370496.0) - 1.0; /* 2^-52 */
}

/* The starting parameters. */
static inline double v1_start(size_t t, size_t i) { return 0.5 * v1_value(1, 0, t, i); }

/* Step k's gradient element (tensor scales 2^-1 .. 2^-4, all exact). */
static inline double v1_grad(unsigned k, size_t t, size_t i) {
    return v1_value(2, k, t, i) / (double)(2u << t);
}

/* Tensors without a gradient: one before the checkpoint, one after. */
static inline int v1_grad_is_null(unsigned k, size_t t) {
    return (k == 2 && t == 1) || (k == V1_BEFORE + 3 && t == 2);
}

/* Step k's loss in [0.5, 1.5) and loss_var >= loss^2. */
static inline double v1_loss(unsigned k) { return 1.0 + 0.5 * v1_value(3, k, 0, 0); }
static inline double v1_loss_var(unsigned k) {
    const double l = v1_loss(k);
    return l * l + 0.25 * (1.0 + v1_value(3, k, 1, 0));
}

/* koala_set_lr before this step's update. */
#define V1_SET_LR_STEP (V1_BEFORE + 2)
#define V1_SET_LR 0.5

/* The config changes from the method's defaults (weight decay per data set). */
#define V1_CONFIGURE(cfg, wd)                         \
    do {                                              \
        (cfg).lr = 0.8;                               \
        (cfg).weight_decay = (wd);                    \
        (cfg).alpha_r = 0.8;                          \
        if ((cfg).method == KOALA_VANILLA) {          \
            (cfg).sigma = 0.1;                        \
            (cfg).q = 0.5;                            \
        } else {                                      \
            (cfg).qw = 0.02;                          \
            (cfg).a = 0.85;                           \
        }                                             \
    } while (0)

/* ---- the expected-results file (tests/c/data/v1_*.expected) -------------
 * Little-endian, every field 8 bytes:
 *   char[8] "KOALAV1E"
 *   u64 method, u64 dtype, u64 n_tensors, u64 sizes[n_tensors],
 *   u64 before, u64 after, u64 phase (0: saved after update V1_BEFORE-1,
 *       1: saved after the predict of step V1_BEFORE), f64 weight_decay,
 *   f64 params[elements]                 the parameters when saved
 *   after times: f64 params[elements]    after each following update
 *                f64 sigma p00 p01 p11 r qw, u64 steps   (koala_info)
 * Parameters are stored as float64 (exact for float32 ones).
 */
#define V1_EXPECTED_MAGIC "KOALAV1E"

#endif
