/*
 * test_reference_match.c - libkoala against the independent float64 model
 * (reference.c) over long runs.
 *
 * Each scenario draws a random layout (1..40 tensors, sizes 1, primes,
 * 32767/32768/32769 and 65537 so the 32 Ki chunking and the OpenMP path are
 * crossed), random parameters and, per step, a random positive loss, its
 * raw second moment and random gradients. Gradients do not depend on the
 * parameters, so a rounding difference is never amplified by the dynamics:
 * what accumulates is only the arithmetic difference of the two codes.
 * Over the run the scenario
 *   - skips tensors (NULL, |g| = 1e-12-ish, exactly zero) on some steps,
 *   - skips every tensor on one step,
 *   - changes lr with koala_set_lr (0.5, 0.2, 0 for two steps, then 1),
 * and after every predict and every update compares parameters
 * (norm-relative per tensor, harness.h) and koala_get_info with the model;
 * at the end of a KOALA-M run also the velocity and x-bar buffers.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

typedef struct scenario {
    const char *name;
    koala_method method;
    koala_dtype dtype;
    unsigned steps;
    uint64_t seed;
    size_t max_tensors;
    int large;          /* force a 65537-element tensor (OpenMP path) */
    int skip_percent;   /* tensors skipped per step, on average */
    double tolerance;   /* on both the parameter and the info error */
    /* config changes from koala_config_init */
    double weight_decay, r, alpha_r;
    double sigma, q;                  /* vanilla; 0 = keep the default */
    double sw, sc, sv, a, qw, qv;     /* momentum; negative = keep the default */
} scenario;

#define KEEP (-1.0)

static void make_config(const scenario *s, koala_config *cfg) {
    koala_config_init(cfg, s->method);
    cfg->weight_decay = s->weight_decay;
    cfg->r = s->r;
    if (s->alpha_r >= 0) cfg->alpha_r = s->alpha_r;
    if (s->sigma > 0) cfg->sigma = s->sigma;
    if (s->q > 0) cfg->q = s->q;
    if (s->sw >= 0) cfg->sw = s->sw;
    if (s->sc != KEEP) cfg->sc = s->sc;
    if (s->sv >= 0) cfg->sv = s->sv;
    if (s->a >= 0) cfg->a = s->a;
    if (s->qw >= 0) cfg->qw = s->qw;
    if (s->qv >= 0) cfg->qv = s->qv;
}

/* The lr schedule every scenario follows (as a fraction of its length). */
static double lr_at(unsigned k, unsigned steps) {
    if (k == steps / 3) return 0.5;
    if (k == steps / 2) return 0.2;
    if (k == (2 * steps) / 3) return 0.0;
    if (k == (2 * steps) / 3 + 2) return 1.0;
    return -1.0; /* unchanged */
}

static void run_scenario(void **state) {
    const scenario *s = *state;
    koala_config cfg;
    make_config(s, &cfg);
    test_layout layout = layout_random(s->seed, s->max_tensors, s->large);
    test_pair pair;
    assert_int_equal(pair_init(&pair, &cfg, &layout, s->dtype, s->seed, 1), KOALA_OK);
    test_step step;
    step_alloc(&step, &layout);

    const unsigned all_skipped_step = s->steps / 4 + 1;
    double worst_param = 0.0, worst_info = 0.0;
    const char *what = "none";
    for (unsigned k = 0; k < s->steps; ++k) {
        const double lr = lr_at(k, s->steps);
        if (lr >= 0) pair_set_lr(&pair, lr);

        assert_int_equal(pair_predict(&pair), KOALA_OK);
        double e = pair_info_error(&pair, &what);
        if (!(e <= s->tolerance))
            fail_msg("%s: after predict %u: %s differs by %g", s->name, k, what, e);
        if (e > worst_info) worst_info = e;
        if (s->method == KOALA_MOMENTUM) { /* only KOALA-M's predict moves x */
            e = pair_param_error(&pair);
            if (!(e <= s->tolerance))
                fail_msg("%s: after predict %u: params differ by %g", s->name, k, e);
        }

        step_fill(&step, &layout, s->seed, k, s->skip_percent, k == all_skipped_step);
        const koala_status st = pair_update(&pair, &step);
        if (st != KOALA_OK) fail_msg("%s: update %u: %s", s->name, k, koala_last_error());
        e = pair_info_error(&pair, &what);
        if (!(e <= s->tolerance))
            fail_msg("%s: after update %u: %s differs by %g", s->name, k, what, e);
        if (e > worst_info) worst_info = e;
        e = pair_param_error(&pair);
        if (!(e <= s->tolerance)) fail_msg("%s: after update %u: params differ by %g", s->name, k, e);
        if (e > worst_param) worst_param = e;
    }
    if (s->method == KOALA_MOMENTUM) { /* v and x-bar, through the checkpoint */
        const double e = pair_momentum_state_error(&pair);
        if (!(e <= s->tolerance)) fail_msg("%s: velocity / x-bar differ by %g", s->name, e);
        if (e > worst_param) worst_param = e;
    }
    /* The figures doc/readme/ctests.md quotes. */
    printf("# %s: %zu tensors, %zu elements, %u steps: max param (KOALA-M: and v, x-bar) error %.3g, max info error %.3g\n",
           s->name, layout.n, layout.total, s->steps, worst_param, worst_info);
    step_free(&step, &layout);
    pair_free(&pair);
    layout_free(&layout);
}

/* Matching the model proves little if the steps are negligible: check that
 * a short run of the same data moves the parameters by a sizeable fraction
 * of their norm (the random walk of 10 Polyak-like steps). */
static void test_runs_move_the_parameters(void **state) {
    (void)state;
    koala_config cfg;
    koala_config_init(&cfg, KOALA_VANILLA);
    test_layout layout = layout_random(99, 8, 0);
    test_pair pair;
    assert_int_equal(pair_init(&pair, &cfg, &layout, KOALA_FLOAT64, 99, 1), KOALA_OK);
    void **start = buffers_alloc(&layout, KOALA_FLOAT64);
    buffers_copy(start, pair.params, &layout, KOALA_FLOAT64);
    test_step step;
    step_alloc(&step, &layout);
    for (unsigned k = 0; k < 10; ++k) {
        assert_int_equal(pair_predict(&pair), KOALA_OK);
        step_fill(&step, &layout, 99, k, 0, 0);
        assert_int_equal(pair_update(&pair, &step), KOALA_OK);
    }
    double moved = 0.0, size = 0.0;
    for (size_t i = 0; i < layout.n; ++i) {
        for (size_t j = 0; j < layout.sizes[i]; ++j) {
            const double d = ((double *)pair.params[i])[j] - ((double *)start[i])[j];
            moved += d * d;
            size += ((double *)start[i])[j] * ((double *)start[i])[j];
        }
    }
    printf("# 10 steps moved the parameters by %.3g of their norm\n", sqrt(moved / size));
    assert_true(moved > 1e-2 * size); /* at least 10 % of the norm */
    buffers_free(start, &layout);
    step_free(&step, &layout);
    pair_free(&pair);
    layout_free(&layout);
}

/* Every tensor skipped: R takes its EMA step, nothing else moves, and the
 * covariance keeps the prediction exactly. */
static void all_skipped_case(koala_method method, koala_dtype dtype) {
    koala_config cfg;
    koala_config_init(&cfg, method);
    const size_t sizes[] = {3, 1, 70000};
    test_layout layout = layout_make(3, sizes);
    test_pair pair;
    assert_int_equal(pair_init(&pair, &cfg, &layout, dtype, 7, 1), KOALA_OK);
    test_step step;
    step_alloc(&step, &layout);
    for (unsigned k = 0; k < 3; ++k) {
        assert_int_equal(pair_predict(&pair), KOALA_OK);
        koala_info predicted;
        memset(&predicted, 0, sizeof predicted);
        predicted.struct_size = sizeof predicted;
        assert_int_equal(koala_get_info(pair.opt, NULL, &predicted), KOALA_OK);
        void **before = buffers_alloc(&layout, dtype);
        buffers_copy(before, pair.params, &layout, dtype);
        step_fill(&step, &layout, 7, k, 0, 1);
        assert_int_equal(pair_update(&pair, &step), KOALA_OK);
        koala_info after;
        memset(&after, 0, sizeof after);
        after.struct_size = sizeof after;
        assert_int_equal(koala_get_info(pair.opt, NULL, &after), KOALA_OK);
        assert_true(buffers_equal(before, pair.params, &layout, dtype));
        assert_true(after.sigma == predicted.sigma);
        assert_true(after.p00 == predicted.p00);
        assert_true(after.p01 == predicted.p01);
        assert_true(after.p11 == predicted.p11);
        assert_true(after.qw == predicted.qw);
        /* R0 = 1 then R <- 0.9 R + 0.1 M, evaluated by the model. */
        assert_true(fabs(after.r - pair.ref.r) <= 1e-15 * pair.ref.r);
        assert_true(after.r != predicted.r);
        assert_int_equal(after.steps, k + 1);
        buffers_free(before, &layout);
    }
    step_free(&step, &layout);
    pair_free(&pair);
    layout_free(&layout);
}

static void test_all_skipped_vanilla(void **state) {
    (void)state;
    all_skipped_case(KOALA_VANILLA, KOALA_FLOAT64);
    all_skipped_case(KOALA_VANILLA, KOALA_FLOAT32);
}

static void test_all_skipped_momentum(void **state) {
    (void)state;
    all_skipped_case(KOALA_MOMENTUM, KOALA_FLOAT64);
    all_skipped_case(KOALA_MOMENTUM, KOALA_FLOAT32);
}

/* float64: the two codes differ only in summation order and in the
 * covariance form (stable vs reference), i.e. by rounding: 1e-9 leaves
 * room for ~1e5 ulps of accumulated drift over the run.
 *
 * float32: the library stores parameters (and KOALA-M's v and x-bar) in
 * float32 and applies each step in float32, while the model stays float64.
 * Each step then adds a relative rounding of about 2^-24 ~ 6e-8 per stored
 * value (x - c g rounds once; c itself is rounded to float32 once; KOALA-M
 * also rounds h, v and x-bar), and these add up over the steps: after 30
 * steps a few e-6 is the expected size of the difference, and the filter
 * scalars inherit it through |h|^2, |x|^2 and d2. 1e-4 bounds that with a
 * margin while still catching any real algebra error (a wrong gain or
 * sign is off by O(1)). Measured figures are printed by each run. */
#define TOL64 1e-9
#define TOL32 1e-4

/* name, method, dtype, steps, seed, max_tensors, large, skip%, tol,
 * wd, r, alpha_r, sigma, q, sw, sc, sv, a, qw, qv */
static scenario scenarios[] = {
    {"V f64 defaults, online R", KOALA_VANILLA, KOALA_FLOAT64, 120, 1, 40, 1, 15, TOL64,
     0.0, NAN, KEEP, 0, 0, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP},
    {"V f64 train.py sigma 0.1, wd 5e-4", KOALA_VANILLA, KOALA_FLOAT64, 120, 2, 40, 0, 15, TOL64,
     5e-4, NAN, KEEP, 0.1, 0, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP},
    {"V f64 wd 0.01, fixed r 0.5", KOALA_VANILLA, KOALA_FLOAT64, 110, 3, 40, 1, 10, TOL64,
     0.01, 0.5, KEEP, 0, 0, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP},
    {"V f64 fixed r 0, wd 0.01", KOALA_VANILLA, KOALA_FLOAT64, 110, 4, 20, 0, 10, TOL64,
     0.01, 0.0, KEEP, 0, 0, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP},
    {"V f64 alpha_r 0, q 0.3, sigma 2", KOALA_VANILLA, KOALA_FLOAT64, 110, 5, 40, 1, 20, TOL64,
     0.0, NAN, 0.0, 2.0, 0.3, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP},
    {"M f64 defaults, online R", KOALA_MOMENTUM, KOALA_FLOAT64, 120, 11, 40, 1, 15, TOL64,
     0.0, NAN, KEEP, 0, 0, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP},
    {"M f64 train.py wd 5e-4", KOALA_MOMENTUM, KOALA_FLOAT64, 120, 12, 40, 0, 15, TOL64,
     5e-4, NAN, KEEP, 0, 0, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP},
    {"M f64 sc 0.05, wd 0.01, fixed r 0.5", KOALA_MOMENTUM, KOALA_FLOAT64, 110, 13, 40, 1, 10,
     TOL64, 0.01, 0.5, KEEP, 0, 0, 0.2, 0.05, 0.1, KEEP, KEEP, KEEP},
    {"M f64 a 0, qw 0, qv 0.02, wd 0.01", KOALA_MOMENTUM, KOALA_FLOAT64, 110, 14, 40, 1, 15,
     TOL64, 0.01, NAN, KEEP, 0, 0, KEEP, KEEP, KEEP, 0.0, 0.0, 0.02},
    {"M f64 fixed r 0, sc -0.03", KOALA_MOMENTUM, KOALA_FLOAT64, 110, 15, 20, 0, 10, TOL64,
     0.0, 0.0, KEEP, 0, 0, 0.1, -0.03, 0.1, KEEP, KEEP, KEEP},
    {"M f64 alpha_r 0.5, a 0.5, qv 0", KOALA_MOMENTUM, KOALA_FLOAT64, 110, 16, 40, 0, 20, TOL64,
     0.0, NAN, 0.5, 0, 0, KEEP, KEEP, KEEP, 0.5, KEEP, 0.0},
    {"V f64 one tensor of 65537, wd 0.01", KOALA_VANILLA, KOALA_FLOAT64, 100, 17, 1, 1, 10,
     TOL64, 0.01, NAN, KEEP, 0, 0, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP},
    {"M f64 one tensor, wd 0.01", KOALA_MOMENTUM, KOALA_FLOAT64, 100, 18, 1, 0, 10, TOL64,
     0.01, NAN, KEEP, 0, 0, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP},
    {"V f32 train.py, wd 5e-4", KOALA_VANILLA, KOALA_FLOAT32, 30, 21, 40, 1, 15, TOL32,
     5e-4, NAN, KEEP, 0.1, 0, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP},
    {"V f32 fixed r 0.5", KOALA_VANILLA, KOALA_FLOAT32, 30, 22, 40, 0, 15, TOL32,
     0.0, 0.5, KEEP, 0, 0, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP},
    {"M f32 train.py, wd 5e-4", KOALA_MOMENTUM, KOALA_FLOAT32, 30, 23, 40, 1, 15, TOL32,
     5e-4, NAN, KEEP, 0, 0, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP},
    {"M f32 sc 0.05, wd 0.01", KOALA_MOMENTUM, KOALA_FLOAT32, 30, 24, 40, 0, 15, TOL32,
     0.01, NAN, KEEP, 0, 0, 0.2, 0.05, 0.1, KEEP, KEEP, KEEP},
};

int main(void) {
    enum { N = sizeof scenarios / sizeof scenarios[0] };
    struct CMUnitTest tests[N + 3];
    for (size_t i = 0; i < N; ++i) {
        struct CMUnitTest t = cmocka_unit_test_prestate(run_scenario, &scenarios[i]);
        t.name = scenarios[i].name;
        tests[i] = t;
    }
    struct CMUnitTest extra[] = {
        cmocka_unit_test(test_runs_move_the_parameters),
        cmocka_unit_test(test_all_skipped_vanilla),
        cmocka_unit_test(test_all_skipped_momentum),
    };
    memcpy(tests + N, extra, sizeof extra);
    return _cmocka_run_group_tests("reference_match", tests, N + 3, NULL, NULL);
}
