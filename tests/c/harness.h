/*
 * harness.h - what the C tests share: deterministic random data, tensor
 * layouts, and a "pair" that drives a libkoala optimizer and the float64
 * reference model (reference.h) through the same steps.
 *
 * Error metric (used by every comparison): for each tensor,
 *     err_i = ||x_lib,i - x_ref,i||_2 / max(||x_ref,i||_2, ||x_0,i||_2)
 * (x_0,i = the tensor at the start of the run) and the reported error is
 * max_i err_i. A per-element relative error is meaningless for elements
 * that pass near zero (any rounding difference is then "100 %"), while the
 * norm of the whole tensor is the scale the update itself works at (every
 * block step is c_i * g_i with one scalar c_i). The start norm guards the
 * same way against a small tensor (a bias of 1 element) whose whole norm
 * passes near zero during the run.
 * Filter scalars compare as |lib - ref| / max(|ref|, scale) with the scale
 * described at pair_info_error().
 */
#ifndef KOALA_TEST_HARNESS_H
#define KOALA_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include <koala.h>

#include "reference.h"

/* ---- deterministic random numbers (splitmix64) --------------------------- */
typedef struct test_rng {
    uint64_t state;
} test_rng;

void rng_seed(test_rng *rng, uint64_t seed);
uint64_t rng_u64(test_rng *rng);
double rng_unit(test_rng *rng);                        /* [0, 1) */
double rng_range(test_rng *rng, double lo, double hi); /* [lo, hi) */

/* ---- layouts ------------------------------------------------------------ */
typedef struct test_layout {
    size_t n;
    size_t *sizes;
    size_t total;
} test_layout;

test_layout layout_make(size_t n, const size_t *sizes);
/* 1..max_tensors tensors whose sizes mix 1, small primes and powers of two.
 * When `large` is nonzero, one tensor of 65537 elements is always included
 * (so the layout takes the OpenMP path and crosses 32 Ki chunk boundaries)
 * and maybe one more of 32767, 32768, 32769 or 65537 elements. */
test_layout layout_random(uint64_t seed, size_t max_tensors, int large);
void layout_free(test_layout *layout);

/* ---- one step's measurement --------------------------------------------- */
typedef enum {
    GRAD_NORMAL = 0,
    GRAD_NULL,  /* grads[i] = NULL: the tensor has no gradient */
    GRAD_TINY,  /* |g| <= 1e-12, below the 1e-9 skip threshold */
    GRAD_ZERO   /* exactly zero */
} grad_kind;

typedef struct test_step {
    double loss, loss_var;
    grad_kind *kind;  /* per tensor */
    double **grad;    /* per tensor, always allocated (contents ignored for GRAD_NULL) */
} test_step;

void step_alloc(test_step *step, const test_layout *layout);
void step_free(test_step *step, const test_layout *layout);
/* Positive loss in [0.5, 3), loss_var = loss^2 + [0, 2) (a raw second moment
 * is never below the squared mean), per-tensor gradient norms spread over
 * [0.05, 5). skip_percent of the tensors (on average) are NULL, tiny or zero;
 * all_skipped makes every tensor one of those. Deterministic in (seed, step). */
void step_fill(test_step *step, const test_layout *layout, uint64_t seed, unsigned step_index,
               int skip_percent, int all_skipped);

/* ---- buffers in the library's dtype -------------------------------------- */
/* The four method x dtype combinations most tests run over. */
typedef struct test_variant {
    const char *name;
    koala_method method;
    koala_dtype dtype;
} test_variant;
enum { N_TEST_VARIANTS = 4 };
extern const test_variant test_variants[N_TEST_VARIANTS];

size_t dtype_bytes(koala_dtype dtype);
void **buffers_alloc(const test_layout *layout, koala_dtype dtype);
void buffers_free(void **buffers, const test_layout *layout);
void buffers_copy(void **dst, void *const *src, const test_layout *layout, koala_dtype dtype);
int buffers_equal(void *const *a, void *const *b, const test_layout *layout, koala_dtype dtype);
double buffer_get(const void *buffer, size_t j, koala_dtype dtype);
/* Stores `value` rounded to the dtype (16-bit types: to nearest-even). */
void buffer_set(void *buffer, size_t j, koala_dtype dtype, double value);

/* bfloat16 and IEEE binary16 written from their definitions (harness.c):
 * round a float64 to the nearest value of the format (ties to even, Inf
 * past the largest finite value), and encode / decode the bits. */
double round_bf16(double v);
double round_fp16(double v);
uint16_t bf16_bits(double v);
uint16_t fp16_bits(double v);
double bf16_value(uint16_t bits);
double fp16_value(uint16_t bits);

/* ---- a library optimizer next to the reference --------------------------- */
typedef struct test_pair {
    const test_layout *layout;
    koala_dtype dtype;
    koala_optimizer *opt;
    void **params;            /* the library's parameters (dtype) */
    void **grads;             /* the library's gradients (dtype) */
    const void **grad_args;   /* what koala_update gets: grads[i] or NULL */
    int with_reference;
    ref_koala ref;
    double **ref_params;      /* the reference's parameters (float64) */
    double **ref_grads;       /* scratch: the reference's gradient arguments */
    double *start_norm;       /* ||x_0,i||, the floor of the error metric */
    /* cfg.caller_state = 1: the state the test owns, bound at pair_init
     * (state[b * n + i] = buffer b of tensor i, of state_dtype). */
    void **state;
    size_t state_buffers;     /* per tensor */
    koala_dtype state_dtype;
    double *scalars;
    size_t scalar_count;
} test_pair;

ref_config ref_config_from(const koala_config *cfg);
/* Creates the optimizer and random parameters from `seed` (rounded to the
 * dtype first, so both sides start from the same numbers). With
 * cfg->caller_state the pair allocates the state, koala_state_init's it and
 * binds it. Returns
 * KOALA_OK or the failing status of koala_create. */
koala_status pair_init(test_pair *pair, const koala_config *cfg, const test_layout *layout,
                       koala_dtype dtype, uint64_t seed, int with_reference);
void pair_free(test_pair *pair);
koala_status pair_predict(test_pair *pair);
/* Rounds step->grad to the pair's dtype IN PLACE (so the reference sees the
 * numbers the library sees), then updates both sides. The reference only
 * steps when the library returns KOALA_OK. */
koala_status pair_update(test_pair *pair, test_step *step);
/* The first half of pair_update: fills pair->grads / grad_args (and the
 * reference's arguments) from the step, rounding it to the dtype. */
void pair_load_grads(test_pair *pair, test_step *step);
void pair_set_lr(test_pair *pair, double lr);
/* koala_set_tensor_lr / koala_set_tensor_weight_decay on the library and the
 * same on the reference (when the library accepts them). */
koala_status pair_set_tensor_lr(test_pair *pair, const double *scale);
koala_status pair_set_tensor_wd(test_pair *pair, const double *weight_decay);

/* max over tensors of the norm-relative parameter error (see the top). */
double pair_param_error(const test_pair *pair);
/* Largest relative error of the filter scalars the method uses (vanilla:
 * sigma, r; momentum: p00, p01, p11, r, qw), or INFINITY when `steps`
 * differ or koala_get_info fails. sigma and P are measured against
 * max(|ref|, prior), prior = sigma-hat / P-hat00 of the latest predict,
 * because with R ~ 0 the posterior cancels to ~0 and the reference form
 * keeps a rounding residue of that scale. `what` (may be NULL) receives
 * the name of the worst field. */
double pair_info_error(const test_pair *pair, const char **what);

/* KOALA++: the largest norm-relative error (floor as above) of the
 * library's v and previous-H buffers against the reference's; the pair must
 * own the state (caller_state) so the buffers can be read. */
double pair_plusplus_state_error(const test_pair *pair);

/* KOALA-M: the largest norm-relative error (floor: the reference buffer's
 * norm, or an absolute error where that is 0) of the library's velocity and
 * x-bar buffers, read from its checkpoint (format of src/checkpoint.h: a
 * 200 + 8 n byte header, every tensor's velocity, every tensor's x-bar, an
 * 8-byte checksum). Returns INFINITY if the checkpoint size does not fit. */
double pair_momentum_state_error(const test_pair *pair);

/* A checkpoint of the optimizer in a fresh malloc'ed buffer (*size set). */
unsigned char *save_state(const koala_optimizer *opt, size_t *size);

#endif
