/*
 * test_fused_predict.c - KOALA-M's cfg.fused_predict = 1 (the update also
 * applies the next prediction) against the default passes, and the
 * default's update-pass accumulation of the next predict's |xbar - x|^2.
 *
 *   - A loop that follows the calling contract (predict, then update)
 *     sees the same parameters after every koala_predict in both modes,
 *     bit for bit, with tensors skipped by NULL, tiny and zero gradients
 *     and every tensor skipped on one step (fused mode's predict moves
 *     exactly those), and the same filter scalars after every call.
 *   - koala_posterior: in non-fused mode it copies the parameters; in fused
 *     mode it gives x_pred - v, the posterior to rounding: x_pred = fl(x +
 *     v) and fl(x_pred - v) differ from x by at most half an ulp of x_pred
 *     plus half an ulp of the result, so the bound checked per element is
 *     one ulp of max(|x_pred|, |x|). Between predict and update it is
 *     BAD_STATE.
 *   - A fused run saved to a checkpoint and loaded into a fresh fused
 *     optimizer continues with the same bits.
 *   - Default mode: q_w after every predict equals the reference's, which
 *     computes |xbar - x|^2 in predict from the parameters as they are then
 *     (the library's value was summed during the preceding update; nothing
 *     touches the parameters in between).
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

static koala_info info_of(const koala_optimizer *opt) {
    koala_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (koala_get_info(opt, NULL, &info) != KOALA_OK) fail_msg("koala_get_info: %s", koala_last_error());
    return info;
}

static int same_filter(const koala_info *a, const koala_info *b) {
    return a->steps == b->steps && a->p00 == b->p00 && a->p01 == b->p01 && a->p11 == b->p11 &&
           a->r == b->r && a->qw == b->qw;
}

/* The spacing of the dtype's values at |v| (subnormal spacing below the
 * smallest normal). */
static double ulp_of(double v, koala_dtype dtype) {
    const int digits = dtype == KOALA_FLOAT64 ? 53 : dtype == KOALA_FLOAT32 ? 24
                     : dtype == KOALA_BFLOAT16 ? 8 : 11;
    const int emin = dtype == KOALA_FLOAT64 ? -1022 : dtype == KOALA_FLOAT16 ? -14 : -126;
    int e2;
    frexp(fabs(v), &e2);
    int lead = v == 0.0 ? emin : e2 - 1;
    if (lead < emin) lead = emin;
    return ldexp(1.0, lead - (digits - 1));
}

/* worst |posterior - expected| in ulps of max(|pred|, |expected|) */
static double posterior_ulps(void *const *post, void *const *pred, void *const *expected,
                             const test_layout *l, koala_dtype dtype) {
    double worst = 0.0;
    for (size_t i = 0; i < l->n; ++i)
        for (size_t j = 0; j < l->sizes[i]; ++j) {
            const double y = buffer_get(post[i], j, dtype), x = buffer_get(expected[i], j, dtype);
            const double p = buffer_get(pred[i], j, dtype);
            const double u = ulp_of(fabs(p) > fabs(x) ? p : x, dtype);
            const double e = fabs(y - x) / u;
            if (!(e <= worst)) worst = e;
        }
    return worst;
}

static void fused_vs_default(koala_dtype dtype, uint64_t seed, int stochastic) {
    test_layout layout = layout_random(seed, 20, 1);
    koala_config cfg;
    koala_config_init(&cfg, KOALA_MOMENTUM);
    cfg.weight_decay = 5e-4;
    cfg.stochastic_rounding = stochastic;
    cfg.seed = seed;
    test_pair plain, fused, resumed;
    assert_int_equal(pair_init(&plain, &cfg, &layout, dtype, seed, 0), KOALA_OK);
    cfg.fused_predict = 1;
    assert_int_equal(pair_init(&fused, &cfg, &layout, dtype, seed, 0), KOALA_OK);
    void **post = buffers_alloc(&layout, dtype);
    void **copy = buffers_alloc(&layout, dtype);
    test_step step;
    step_alloc(&step, &layout);
    const unsigned steps = 40, save_at = 15;
    int have_resumed = 0;
    double worst_ulps = 0.0;
    for (unsigned k = 0; k < steps; ++k) {
        test_pair *runs[] = {&plain, &fused, &resumed};
        const int n_runs = have_resumed ? 3 : 2;
        for (int r = 0; r < n_runs; ++r) assert_int_equal(pair_predict(runs[r]), KOALA_OK);
        for (int r = 1; r < n_runs; ++r) {
            if (!buffers_equal(plain.params, runs[r]->params, &layout, dtype))
                fail_msg("dtype %d: predict %u: %s parameters differ from the default mode's",
                         dtype, k, r == 1 ? "fused" : "resumed fused");
            const koala_info a = info_of(plain.opt), b = info_of(runs[r]->opt);
            if (!same_filter(&a, &b)) fail_msg("dtype %d: predict %u: filter scalars differ", dtype, k);
        }
        /* the parameters hold the prediction: no posterior view now */
        assert_int_equal(koala_posterior(fused.opt, fused.params, post, NULL), KOALA_ERROR_BAD_STATE);
        assert_int_equal(koala_posterior(plain.opt, plain.params, post, NULL), KOALA_ERROR_BAD_STATE);

        step_fill(&step, &layout, seed, k, 25, k == 7 || k == 8);
        for (int r = 0; r < n_runs; ++r) {
            step_fill(&step, &layout, seed, k, 25, k == 7 || k == 8);
            assert_int_equal(pair_update(runs[r], &step), KOALA_OK);
        }
        const koala_info a = info_of(plain.opt), b = info_of(fused.opt);
        if (!same_filter(&a, &b)) fail_msg("dtype %d: update %u: filter scalars differ", dtype, k);
        /* non-fused: a copy */
        memset(post[0], 0x5a, layout.sizes[0] * dtype_bytes(dtype));
        assert_int_equal(koala_posterior(plain.opt, plain.params, post, NULL), KOALA_OK);
        assert_true(buffers_equal(post, plain.params, &layout, dtype));
        /* fused: the posterior to rounding */
        assert_int_equal(koala_posterior(fused.opt, fused.params, post, NULL), KOALA_OK);
        const double u = posterior_ulps(post, fused.params, plain.params, &layout, dtype);
        if (!(u <= 1.0))
            fail_msg("dtype %d: update %u: fused posterior is %.3g ulps from the posterior", dtype, k, u);
        if (u > worst_ulps) worst_ulps = u;

        if (k + 1 == save_at) { /* a fused checkpoint, continued by a fresh optimizer */
            size_t n;
            unsigned char *ck = save_state(fused.opt, &n);
            assert_int_equal(pair_init(&resumed, &cfg, &layout, dtype, seed + 9, 0), KOALA_OK);
            assert_int_equal(koala_state_load(resumed.opt, ck, n, NULL), KOALA_OK);
            buffers_copy(resumed.params, fused.params, &layout, dtype);
            have_resumed = 1;
            free(ck);
        }
    }
    /* the fused mode really is ahead after an update (not a vacuous test) */
    buffers_copy(copy, fused.params, &layout, dtype);
    assert_false(buffers_equal(copy, plain.params, &layout, dtype));
    printf("# dtype %d%s: %zu tensors, %u steps: predicts bit-identical, fused posterior within "
           "%.3g ulp\n",
           dtype, stochastic ? " (stochastic rounding)" : "", layout.n, steps, worst_ulps);
    step_free(&step, &layout);
    buffers_free(post, &layout);
    buffers_free(copy, &layout);
    pair_free(&plain);
    pair_free(&fused);
    pair_free(&resumed);
    layout_free(&layout);
}

static void test_fused_same_trajectory(void **state) {
    (void)state;
    fused_vs_default(KOALA_FLOAT64, 701, 0);
    fused_vs_default(KOALA_FLOAT32, 702, 0);
    fused_vs_default(KOALA_BFLOAT16, 703, 0);
    fused_vs_default(KOALA_FLOAT16, 704, 0);
    /* stochastic rounding: the fused update draws the next predict's bits too */
    fused_vs_default(KOALA_BFLOAT16, 705, 1);
    fused_vs_default(KOALA_FLOAT16, 706, 1);
}

/* Default mode: q_w (and the whole predicted P) after every predict
 * against the reference, which sums |xbar - x|^2 inside predict. */
static void test_default_qw_from_update_pass(void **state) {
    (void)state;
    const koala_dtype dtypes[] = {KOALA_FLOAT64, KOALA_FLOAT32};
    for (size_t t = 0; t < 2; ++t) {
        test_layout layout = layout_random(710 + t, 24, 1);
        koala_config cfg;
        koala_config_init(&cfg, KOALA_MOMENTUM);
        cfg.weight_decay = 1e-3;
        test_pair pair;
        assert_int_equal(pair_init(&pair, &cfg, &layout, dtypes[t], 710 + t, 1), KOALA_OK);
        test_step step;
        step_alloc(&step, &layout);
        double worst = 0.0;
        for (unsigned k = 0; k < 40; ++k) {
            assert_int_equal(pair_predict(&pair), KOALA_OK);
            const koala_info info = info_of(pair.opt);
            const double e = fabs(info.qw - pair.ref.qw) / pair.ref.qw;
            const double tol = dtypes[t] == KOALA_FLOAT64 ? 1e-12 : 1e-5;
            if (!(e <= tol)) fail_msg("predict %u: q_w %.17g, the reference's %.17g", k, info.qw, pair.ref.qw);
            if (e > worst) worst = e;
            step_fill(&step, &layout, 710 + t, k, 25, k == 9);
            assert_int_equal(pair_update(&pair, &step), KOALA_OK);
        }
        printf("# %s: q_w after 40 predicts within %.3g of the reference\n",
               dtypes[t] == KOALA_FLOAT64 ? "f64" : "f32", worst);
        step_free(&step, &layout);
        pair_free(&pair);
        layout_free(&layout);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fused_same_trajectory),
        cmocka_unit_test(test_default_qw_from_update_pass),
    };
    return cmocka_run_group_tests_name("fused_predict", tests, NULL, NULL);
}
