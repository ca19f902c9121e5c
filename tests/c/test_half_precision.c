/*
 * test_half_precision.c - KOALA_BFLOAT16 and KOALA_FLOAT16 parameters.
 *
 * koala.h: element math in float32, norms in float64, KOALA-M/KOALA++ state
 * in float32, results rounded to nearest-even (or stochastically).
 *
 * 1. Against the float32 path. A 16-bit optimizer and a float32 one, both
 *    on caller-owned state, run side by side; before every call the
 *    float32 one is given the 16-bit one's parameters (exact in float32),
 *    state buffers (both float32) and filter scalars, and both get the same
 *    16-bit gradients. Then the float32 path computes exactly what the
 *    16-bit path computes before its final rounding: the same float32
 *    inputs, the same float64 sums in the same order (the kernels' lane
 *    order does not depend on the dtype), the same float32 element math.
 *    So the derived tolerance is zero: every 16-bit parameter must be the
 *    float32 result rounded to nearest-even (by this file's own rounding,
 *    harness.c), and the state buffers and scalars must be equal, bit for
 *    bit, after every predict and update, over 20 steps with skipped
 *    tensors and weight decay, for all three methods.
 * 2. The rounding itself through the API, on cases whose expected bits are
 *    written out below: ties to even in normal and subnormal ranges,
 *    rounding up across a binade, overflow to +-Inf exactly at the
 *    midpoint above the largest finite value, negative zero. KOALA-V with
 *    R = 0, sigma = q = 1 and one tensor of four gradients +-1 steps every
 *    element by exactly loss/4 (S = sigma-hat |g|^2 = 8, c = loss sigma-hat
 *    / S = loss / 4), so x +- d is an exact float32 value that the library
 *    must round.
 * 3. Stochastic rounding (cfg.stochastic_rounding, cfg.seed): the same seed
 *    gives the same bits, another seed other bits, for any thread count;
 *    and it is unbiased: 65536 elements at x = 1 stepping by d (a fraction
 *    p of the spacing above 1) round up with frequency p within 6 standard
 *    deviations (a false failure has probability < 2e-9), so their mean is
 *    1 + d to within 6 sqrt(p (1 - p) / n) spacings.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

static const char *method_name(koala_method m) {
    return m == KOALA_VANILLA ? "V" : m == KOALA_MOMENTUM ? "M" : "++";
}
static const char *dtype_name(koala_dtype d) { return d == KOALA_BFLOAT16 ? "bf16" : "fp16"; }

static double round16(koala_dtype d, double v) { return d == KOALA_BFLOAT16 ? round_bf16(v) : round_fp16(v); }

/* ---- 1. against float32 --------------------------------------------------- */

/* f32 := h's parameters, state and scalars. */
static void sync_from(test_pair *f32, const test_pair *h) {
    const test_layout *l = h->layout;
    for (size_t i = 0; i < l->n; ++i)
        for (size_t j = 0; j < l->sizes[i]; ++j)
            ((float *)f32->params[i])[j] = (float)buffer_get(h->params[i], j, h->dtype);
    for (size_t k = 0; k < h->state_buffers * l->n; ++k)
        memcpy(f32->state[k], h->state[k], l->sizes[k % l->n] * sizeof(float));
    memcpy(f32->scalars, h->scalars, h->scalar_count * sizeof(double));
}

static void expect_rounded(const test_pair *f32, const test_pair *h, const char *name,
                           const char *when, unsigned k) {
    const test_layout *l = h->layout;
    for (size_t i = 0; i < l->n; ++i)
        for (size_t j = 0; j < l->sizes[i]; ++j) {
            const double want = round16(h->dtype, ((const float *)f32->params[i])[j]);
            const double got = buffer_get(h->params[i], j, h->dtype);
            if (!(got == want) && !(isnan(got) && isnan(want)))
                fail_msg("%s: %s %u: tensor %zu element %zu is %.9g; the float32 path's %.9g "
                         "rounds to %.9g",
                         name, when, k, i, j, got, ((const float *)f32->params[i])[j], want);
        }
    for (size_t b = 0; b < h->state_buffers * l->n; ++b)
        if (memcmp(f32->state[b], h->state[b], l->sizes[b % l->n] * sizeof(float)) != 0)
            fail_msg("%s: %s %u: state buffer %zu differs from the float32 path's", name, when, k, b);
    if (memcmp(f32->scalars, h->scalars, h->scalar_count * sizeof(double)) != 0)
        fail_msg("%s: %s %u: filter scalars differ from the float32 path's", name, when, k);
}

static void against_float32(koala_method method, koala_dtype dtype) {
    char name[32];
    snprintf(name, sizeof name, "%s %s", method_name(method), dtype_name(dtype));
    const uint64_t seed = 600 + (uint64_t)method * 5 + (uint64_t)dtype;
    test_layout layout = layout_random(seed, 16, 1);
    koala_config cfg;
    koala_config_init(&cfg, method);
    cfg.weight_decay = 1e-3;
    cfg.caller_state = 1;
    test_pair h, f;
    assert_int_equal(pair_init(&h, &cfg, &layout, dtype, seed, 0), KOALA_OK);
    assert_int_equal(pair_init(&f, &cfg, &layout, KOALA_FLOAT32, seed, 0), KOALA_OK);
    assert_int_equal(h.state_dtype, KOALA_FLOAT32);
    assert_int_equal(h.scalar_count, f.scalar_count);
    test_step step;
    step_alloc(&step, &layout);
    size_t moved = 0;
    for (unsigned k = 0; k < 20; ++k) {
        sync_from(&f, &h);
        assert_int_equal(pair_predict(&h), KOALA_OK);
        assert_int_equal(pair_predict(&f), KOALA_OK);
        expect_rounded(&f, &h, name, "predict", k);
        sync_from(&f, &h);
        void **before = buffers_alloc(&layout, dtype);
        buffers_copy(before, h.params, &layout, dtype);
        step_fill(&step, &layout, seed, k, 15, 0);
        assert_int_equal(pair_update(&h, &step), KOALA_OK); /* rounds step to 16 bits */
        assert_int_equal(pair_update(&f, &step), KOALA_OK); /* the same values, as float */
        expect_rounded(&f, &h, name, "update", k);
        for (size_t i = 0; i < layout.n; ++i)
            moved += memcmp(before[i], h.params[i], layout.sizes[i] * 2) != 0;
        buffers_free(before, &layout);
    }
    /* the comparison is not vacuous: the 16-bit parameters do move */
    if (moved < layout.n) fail_msg("%s: only %zu tensor-steps moved", name, moved);
    step_free(&step, &layout);
    pair_free(&h);
    pair_free(&f);
    layout_free(&layout);
}

static void test_against_float32(void **state) {
    (void)state;
    const koala_method methods[] = {KOALA_VANILLA, KOALA_MOMENTUM, KOALA_PLUSPLUS};
    for (size_t m = 0; m < 3; ++m) {
        against_float32(methods[m], KOALA_BFLOAT16);
        against_float32(methods[m], KOALA_FLOAT16);
    }
}

/* ---- 2. rounding edge cases ------------------------------------------------ */

typedef struct rounding_case {
    const char *what;
    double d;         /* the step size loss / 4 */
    int sign;         /* gradient of every element: +1 steps x - d, -1 steps x + d */
    uint16_t x[4];    /* starting bits */
    uint16_t want[4]; /* bits after the step */
} rounding_case;

static double value16(koala_dtype dtype, uint16_t bits) {
    return dtype == KOALA_BFLOAT16 ? bf16_value(bits) : fp16_value(bits);
}

static void run_rounding(koala_dtype dtype, const rounding_case *c) {
    koala_config cfg;
    koala_config_init(&cfg, KOALA_VANILLA);
    cfg.r = 0.0; /* S = sigma-hat |g|^2 */
    const size_t n = 4;
    koala_optimizer *opt = NULL;
    assert_int_equal(koala_create(&cfg, 1, &n, dtype, KOALA_HOST, &opt), KOALA_OK);
    uint16_t x[4], g[4];
    for (size_t j = 0; j < 4; ++j) {
        x[j] = c->x[j];
        g[j] = dtype == KOALA_BFLOAT16 ? bf16_bits(c->sign) : fp16_bits(c->sign);
    }
    void *params[] = {x};
    const void *grads[] = {g};
    const double loss = 4.0 * c->d;
    assert_int_equal(koala_predict(opt, params, NULL), KOALA_OK);
    assert_int_equal(koala_update(opt, loss, loss * loss, params, grads, NULL), KOALA_OK);
    for (size_t j = 0; j < 4; ++j) {
        if (x[j] != c->want[j])
            fail_msg("%s %s, element %zu: %.9g %c %.9g gave bits 0x%04x (%.9g), expected 0x%04x "
                     "(%.9g)",
                     dtype_name(dtype), c->what, j, value16(dtype, c->x[j]), c->sign > 0 ? '-' : '+',
                     c->d, x[j], value16(dtype, x[j]), c->want[j], value16(dtype, c->want[j]));
        /* the written-out bits agree with this file's own rounding too */
        const double exact = value16(dtype, c->x[j]) - c->sign * c->d;
        const double rounded = round16(dtype, exact);
        const double listed = value16(dtype, c->want[j]);
        if (!(rounded == listed) || signbit(rounded) != signbit(listed))
            fail_msg("%s %s, element %zu: the table's expectation is wrong", dtype_name(dtype),
                     c->what, j);
    }
    koala_destroy(opt);
}

/* bfloat16: 8 significant bits; spacing 2^-7 in [1, 2); smallest subnormal
 * 2^-133 (0x0001), smallest normal 2^-126 (0x0080); largest finite
 * (2 - 2^-7) 2^127 (0x7f7f), whose spacing is 2^120. */
static const rounding_case bf16_cases[] = {
    {"normal ties", 0x1p-8, +1,
     /* 1+2^-7 - 2^-8 = 1+2^-8: tie, even 1.0;  1+2^-6 - 2^-8 = 1+3*2^-8: tie, even 1+2^-6;
      * 1+3*2^-7 - 2^-8: tie, even 1+2^-6;       2 - 2^-8: tie between 2-2^-7 and 2, even 2 */
     {0x3f81, 0x3f82, 0x3f83, 0x4000}, {0x3f80, 0x3f82, 0x3f82, 0x4000}},
    {"normal, not ties", 3 * 0x1p-10, -1,
     /* 1 + 3/1024 -> 1 (3/1024 vs 5/1024 away); 1+8/1024 + 3/1024 -> 1+8/1024;
      * -1 + 3/1024 = -(1 - 3/1024) -> -(1 - 4/1024) (spacing 2^-8 below 1); 0 + 3*2^-10 exact */
     {0x3f80, 0x3f81, 0xbf80, 0x0000}, {0x3f80, 0x3f81, 0xbf7f, 0x3b40}},
    {"subnormal ties", 0x1p-134, +1,
     /* 3 - 1/2 units -> 2; 2 - 1/2 -> 2; 1 - 1/2 -> 0; 2^-126 - 1/2 unit = 127.5 units -> 128 */
     {0x0003, 0x0002, 0x0001, 0x0080}, {0x0002, 0x0002, 0x0000, 0x0080}},
    {"overflow up", 0x1p119, -1,
     /* max + half spacing: tie, even is 2^128 = +Inf; (2-2^-6)2^127 + 2^119: tie, even stays;
      * -max + 2^119: tie, even -(2-2^-6)2^127; 2^127 + 2^119: tie, even 2^127 */
     {0x7f7f, 0x7f7e, 0xff7f, 0x7f00}, {0x7f80, 0x7f7e, 0xff7e, 0x7f00}},
    {"overflow down", 0x1p119, +1,
     /* -max - 2^119 -> -Inf; -(2-2^-6)2^127 - 2^119 -> itself; max - 2^119 -> (2-2^-6)2^127;
      * 0 - 2^119 = -2^119 exact (0xfb00) */
     {0xff7f, 0xff7e, 0x7f7f, 0x0000}, {0xff80, 0xff7e, 0x7f7e, 0xfb00}},
};

/* binary16: 11 significant bits; spacing 2^-10 in [1, 2); smallest
 * subnormal 2^-24 (0x0001), smallest normal 2^-14 (0x0400); largest finite
 * 65504 (0x7bff), spacing 32 there. */
static const rounding_case fp16_cases[] = {
    {"normal ties", 0x1p-11, +1,
     /* 1+2^-10 - 2^-11: tie, even 1;  1+2^-9 - 2^-11: tie, even 1+2^-9;
      * 2 - 2^-11: tie between 2-2^-10 and 2, even 2;  -(1+2^-10) - 2^-11: tie, even -(1+2^-9) */
     {0x3c01, 0x3c02, 0x4000, 0xbc01}, {0x3c00, 0x3c02, 0x4000, 0xbc02}},
    {"subnormal ties, negative zero", 0x1p-25, +1,
     /* 3 - 1/2 units -> 2; 1 - 1/2 -> 0; 1024 - 1/2 units -> 1024 (the smallest normal);
      * 0 - 2^-25: tie between -0 and -2^-24, even -0 */
     {0x0003, 0x0001, 0x0400, 0x0000}, {0x0002, 0x0000, 0x0400, 0x8000}},
    {"overflow ties", 16.0, -1,
     /* 65504 + 16 = 65520: tie, even is 65536 = +Inf; 65472 + 16: tie, even 65472;
      * -65504 + 16 = -65488: tie, even -65472; 0 + 16 exact */
     {0x7bff, 0x7bfe, 0xfbff, 0x0000}, {0x7c00, 0x7bfe, 0xfbfe, 0x4c00}},
    {"overflow, not ties", 24.0, -1,
     /* 65528 -> +Inf; 65496 -> 65504; -65480 -> -65472; 24 exact */
     {0x7bff, 0x7bfe, 0xfbff, 0x0000}, {0x7c00, 0x7bff, 0xfbfe, 0x4e00}},
    {"overflow down", 16.0, +1,
     /* -65504 - 16 -> -Inf; 65504 - 16 = 65488: tie, even 65472; 1 - 16 = -15 exact;
      * 0 - 16 = -16 exact */
     {0xfbff, 0x7bff, 0x3c00, 0x0000}, {0xfc00, 0x7bfe, 0xcb80, 0xcc00}},
};

static void test_round_to_nearest_even(void **state) {
    (void)state;
    for (size_t c = 0; c < sizeof bf16_cases / sizeof bf16_cases[0]; ++c)
        run_rounding(KOALA_BFLOAT16, &bf16_cases[c]);
    for (size_t c = 0; c < sizeof fp16_cases / sizeof fp16_cases[0]; ++c)
        run_rounding(KOALA_FLOAT16, &fp16_cases[c]);
}

/* ---- 3. stochastic rounding -------------------------------------------------- */

enum { N_UNBIASED = 65536 };

/* One KOALA-V update of n elements all at x0 with gradient -1 and step d
 * (as in 2.); returns the mean of the results and writes the fraction that
 * rounded up. */
static double stochastic_mean(koala_dtype dtype, double x0, double d, uint64_t seed, int threads,
                              double *up_fraction, uint16_t *out) {
    koala_config cfg;
    koala_config_init(&cfg, KOALA_VANILLA);
    cfg.r = 0.0;
    cfg.stochastic_rounding = 1;
    cfg.seed = seed;
    cfg.threads = threads;
    const size_t n = N_UNBIASED;
    koala_optimizer *opt = NULL;
    assert_int_equal(koala_create(&cfg, 1, &n, dtype, KOALA_HOST, &opt), KOALA_OK);
    uint16_t *x = malloc(n * sizeof *x), *g = malloc(n * sizeof *g);
    const uint16_t xb = dtype == KOALA_BFLOAT16 ? bf16_bits(x0) : fp16_bits(x0);
    const uint16_t gb = dtype == KOALA_BFLOAT16 ? bf16_bits(-1.0) : fp16_bits(-1.0);
    for (size_t j = 0; j < n; ++j) {
        x[j] = xb;
        g[j] = gb;
    }
    void *params[] = {x};
    const void *grads[] = {g};
    /* |g|^2 = n: c = loss sigma-hat / (sigma-hat n) = loss / n */
    const double loss = d * (double)n;
    assert_int_equal(koala_predict(opt, params, NULL), KOALA_OK);
    assert_int_equal(koala_update(opt, loss, loss * loss, params, grads, NULL), KOALA_OK);
    double sum = 0.0;
    size_t up = 0;
    for (size_t j = 0; j < n; ++j) {
        const double v = value16(dtype, x[j]);
        sum += v;
        up += v > x0;
    }
    if (out) memcpy(out, x, n * sizeof *x);
    *up_fraction = (double)up / (double)n;
    free(x);
    free(g);
    koala_destroy(opt);
    return sum / (double)n;
}

static void test_stochastic_unbiased(void **state) {
    (void)state;
    const koala_dtype dtypes[] = {KOALA_BFLOAT16, KOALA_FLOAT16};
    for (size_t t = 0; t < 2; ++t) {
        const koala_dtype dtype = dtypes[t];
        const double spacing = dtype == KOALA_BFLOAT16 ? 0x1p-7 : 0x1p-10; /* above 1 */
        const double fractions[] = {0.25, 0.3, 0.9, 0.01};
        for (size_t f = 0; f < 4; ++f) {
            const double d = fractions[f] * spacing;
            /* what the float32 element math computes: 1 + float(d) in float32 */
            volatile float df = (float)d;
            volatile float exact_f = 1.0f + df;
            const double exact = exact_f;
            const double p = (exact - 1.0) / spacing;
            double up;
            const double mean = stochastic_mean(dtype, 1.0, d, 11 + f, 0, &up, NULL);
            const double sd = sqrt(p * (1.0 - p) / N_UNBIASED);
            printf("# %s: step %.3g spacings: rounded up %.5f (expected %.5f, sd %.2g), mean - "
                   "exact = %.3g spacings\n",
                   dtype_name(dtype), p, up, p, sd, (mean - exact) / spacing);
            if (!(fabs(up - p) <= 6.0 * sd))
                fail_msg("%s: %.5f of the elements rounded up, expected %.5f +- %.2g",
                         dtype_name(dtype), up, p, 6.0 * sd);
            if (!(fabs(mean - exact) <= 6.0 * sd * spacing + 1e-12 * spacing))
                fail_msg("%s: the mean %.9g is not the exact %.9g", dtype_name(dtype), mean, exact);
            /* nearest-even would give 1 or 1 + spacing for all of them */
            assert_true(up > 0.0 && up < 1.0);
        }
    }
}

/* Same seed -> same bits, for threads 1..4 and the default; another seed
 * -> other bits. On a random layout with weight decay over several steps,
 * every method. */
static void test_stochastic_reproducible(void **state) {
    (void)state;
    const koala_method methods[] = {KOALA_VANILLA, KOALA_MOMENTUM, KOALA_PLUSPLUS};
    const koala_dtype dtypes[] = {KOALA_BFLOAT16, KOALA_FLOAT16};
    for (size_t m = 0; m < 3; ++m)
        for (size_t t = 0; t < 2; ++t) {
            const size_t sizes[] = {70000, 33, 40000, 1};
            test_layout layout = layout_make(4, sizes);
            void **result[7];
            const int threads[] = {1, 2, 3, 4, 0, 2, 1};
            const uint64_t seeds[] = {5, 5, 5, 5, 5, 6, 0};
            const int stochastic[] = {1, 1, 1, 1, 1, 1, 0};
            for (int r = 0; r < 7; ++r) {
                koala_config cfg;
                koala_config_init(&cfg, methods[m]);
                cfg.weight_decay = 1e-3;
                cfg.stochastic_rounding = stochastic[r];
                cfg.seed = seeds[r];
                cfg.threads = threads[r];
                test_pair pair;
                assert_int_equal(pair_init(&pair, &cfg, &layout, dtypes[t], 77, 0), KOALA_OK);
                test_step step;
                step_alloc(&step, &layout);
                for (unsigned k = 0; k < 4; ++k) {
                    assert_int_equal(pair_predict(&pair), KOALA_OK);
                    step_fill(&step, &layout, 77, k, 0, 0);
                    assert_int_equal(pair_update(&pair, &step), KOALA_OK);
                }
                result[r] = buffers_alloc(&layout, dtypes[t]);
                buffers_copy(result[r], pair.params, &layout, dtypes[t]);
                step_free(&step, &layout);
                pair_free(&pair);
            }
            for (int r = 1; r < 5; ++r)
                if (!buffers_equal(result[0], result[r], &layout, dtypes[t]))
                    fail_msg("%s %s: stochastic rounding with %d threads differs from 1 thread",
                             method_name(methods[m]), dtype_name(dtypes[t]), threads[r]);
            if (buffers_equal(result[0], result[5], &layout, dtypes[t]))
                fail_msg("%s %s: seeds 5 and 6 gave the same bits", method_name(methods[m]),
                         dtype_name(dtypes[t]));
            if (buffers_equal(result[0], result[6], &layout, dtypes[t]))
                fail_msg("%s %s: stochastic rounding equals nearest-even", method_name(methods[m]),
                         dtype_name(dtypes[t]));
            for (int r = 0; r < 7; ++r) buffers_free(result[r], &layout);
            layout_free(&layout);
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_float32),
        cmocka_unit_test(test_round_to_nearest_even),
        cmocka_unit_test(test_stochastic_unbiased),
        cmocka_unit_test(test_stochastic_reproducible),
    };
    return cmocka_run_group_tests_name("half_precision", tests, NULL, NULL);
}
