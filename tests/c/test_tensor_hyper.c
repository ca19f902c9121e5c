/*
 * test_tensor_hyper.c - per-tensor hyper-parameters: koala_set_tensor_lr
 * (tensor i steps with lr * scale[i], the official per-param-group lr) and
 * koala_set_tensor_weight_decay (tensor i uses its own omega everywhere the
 * weight decay enters), against the float64 reference (reference.c, which
 * applies them per tensor in the same places), for every method.
 *
 * A run sets random per-tensor values (some exactly 0) at step 0, other
 * values at a third of the run, and NULL at two thirds (back to lr 1 and
 * cfg.weight_decay for every tensor), comparing with the reference after
 * every update; a bad entry is refused with nothing changed; the values
 * survive a checkpoint round trip (a fresh optimizer loading the checkpoint
 * continues bit for bit, and one that did not load them would differ).
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

/* n random values in [0, hi), with entry `zero` exactly 0. */
static void random_values(double *v, size_t n, uint64_t seed, double hi, size_t zero) {
    test_rng rng;
    rng_seed(&rng, seed);
    for (size_t i = 0; i < n; ++i) v[i] = rng_range(&rng, 0.0, hi);
    if (zero < n) v[zero] = 0.0;
}

static void run_case(koala_method method, koala_dtype dtype, double tol) {
    const uint64_t seed = 410 + (uint64_t)method * 7 + (uint64_t)dtype;
    test_layout layout = layout_random(seed, 24, 1);
    koala_config cfg;
    koala_config_init(&cfg, method);
    cfg.weight_decay = 5e-4; /* what NULL restores */
    test_pair pair;
    assert_int_equal(pair_init(&pair, &cfg, &layout, dtype, seed, 1), KOALA_OK);
    test_step step;
    step_alloc(&step, &layout);
    double *lr = malloc(layout.n * sizeof *lr), *wd = malloc(layout.n * sizeof *wd);
    double *bad = malloc(layout.n * sizeof *bad);
    const unsigned steps = dtype == KOALA_FLOAT64 ? 60 : 24;
    double worst = 0.0;
    for (unsigned k = 0; k < steps; ++k) {
        if (k == 0 || k == steps / 3) {
            random_values(lr, layout.n, seed + k, 2.0, k % layout.n);
            random_values(wd, layout.n, seed + k + 1, 0.02, (k + 1) % layout.n);
            assert_int_equal(pair_set_tensor_lr(&pair, lr), KOALA_OK);
            assert_int_equal(pair_set_tensor_wd(&pair, wd), KOALA_OK);
            /* bad entries: refused, the values just set stay */
            memcpy(bad, lr, layout.n * sizeof *bad);
            bad[layout.n - 1] = -0.5;
            assert_int_equal(koala_set_tensor_lr(pair.opt, bad, NULL), KOALA_ERROR_INVALID_ARGUMENT);
            bad[layout.n - 1] = NAN;
            assert_int_equal(koala_set_tensor_weight_decay(pair.opt, bad, NULL),
                             KOALA_ERROR_INVALID_ARGUMENT);
            bad[layout.n - 1] = INFINITY;
            assert_int_equal(koala_set_tensor_lr(pair.opt, bad, NULL), KOALA_ERROR_INVALID_ARGUMENT);
        }
        if (k == (2 * steps) / 3) {
            assert_int_equal(pair_set_tensor_lr(&pair, NULL), KOALA_OK);
            assert_int_equal(pair_set_tensor_wd(&pair, NULL), KOALA_OK);
        }
        assert_int_equal(pair_predict(&pair), KOALA_OK);
        step_fill(&step, &layout, seed, k, 10, 0);
        if (pair_update(&pair, &step) != KOALA_OK) fail_msg("update %u: %s", k, koala_last_error());
        const double e = pair_param_error(&pair);
        if (!(e <= tol))
            fail_msg("%s dtype %d: update %u: params differ from the reference by %g",
                     method_name(method), dtype, k, e);
        if (e > worst) worst = e;
        const char *what;
        const double ei = pair_info_error(&pair, &what);
        if (!(ei <= tol))
            fail_msg("%s dtype %d: update %u: %s differs by %g", method_name(method), dtype, k,
                     what, ei);
    }
    printf("# %s %s: %zu tensors, %u steps with per-tensor lr and weight decay: max error %.3g\n",
           method_name(method), dtype == KOALA_FLOAT64 ? "f64" : "f32", layout.n, steps, worst);
    free(lr);
    free(wd);
    free(bad);
    step_free(&step, &layout);
    pair_free(&pair);
    layout_free(&layout);
}

/* float64: rounding only (measured: a few e-15 at most);
 * float32: as reference_match's 1e-4 for 24 steps. */
static void test_against_reference(void **state) {
    (void)state;
    const koala_method methods[] = {KOALA_VANILLA, KOALA_MOMENTUM, KOALA_PLUSPLUS};
    for (size_t m = 0; m < 3; ++m) {
        run_case(methods[m], KOALA_FLOAT64, 1e-12);
        run_case(methods[m], KOALA_FLOAT32, 1e-4);
    }
}

/* The per-tensor values are part of the checkpoint: a fresh optimizer that
 * loads it continues bit for bit; NULL after the load restores the
 * defaults on it as on the original. */
static void test_checkpoint_round_trip(void **state) {
    (void)state;
    const koala_method methods[] = {KOALA_VANILLA, KOALA_MOMENTUM, KOALA_PLUSPLUS};
    for (size_t m = 0; m < 3; ++m) {
        test_layout layout = layout_random(500 + m, 10, 0);
        koala_config cfg;
        koala_config_init(&cfg, methods[m]);
        test_pair a, b, c;
        assert_int_equal(pair_init(&a, &cfg, &layout, KOALA_FLOAT64, 501, 0), KOALA_OK);
        double *lr = malloc(layout.n * sizeof *lr), *wd = malloc(layout.n * sizeof *wd);
        random_values(lr, layout.n, 502, 2.0, 0);
        random_values(wd, layout.n, 503, 0.05, 1);
        assert_int_equal(koala_set_tensor_lr(a.opt, lr, NULL), KOALA_OK);
        assert_int_equal(koala_set_tensor_weight_decay(a.opt, wd, NULL), KOALA_OK);
        test_step step;
        step_alloc(&step, &layout);
        for (unsigned k = 0; k < 3; ++k) {
            assert_int_equal(pair_predict(&a), KOALA_OK);
            step_fill(&step, &layout, 501, k, 0, 0);
            assert_int_equal(pair_update(&a, &step), KOALA_OK);
        }
        size_t n;
        unsigned char *ck = save_state(a.opt, &n);
        /* b loads the checkpoint, c only copies the parameters */
        assert_int_equal(pair_init(&b, &cfg, &layout, KOALA_FLOAT64, 504, 0), KOALA_OK);
        assert_int_equal(pair_init(&c, &cfg, &layout, KOALA_FLOAT64, 504, 0), KOALA_OK);
        assert_int_equal(koala_state_load(b.opt, ck, n, NULL), KOALA_OK);
        assert_int_equal(koala_state_load(c.opt, ck, n, NULL), KOALA_OK);
        assert_int_equal(koala_set_tensor_lr(c.opt, NULL, NULL), KOALA_OK);
        assert_int_equal(koala_set_tensor_weight_decay(c.opt, NULL, NULL), KOALA_OK);
        buffers_copy(b.params, a.params, &layout, KOALA_FLOAT64);
        buffers_copy(c.params, a.params, &layout, KOALA_FLOAT64);
        for (unsigned k = 3; k < 8; ++k) {
            if (k == 6) { /* NULL restores the defaults on both */
                assert_int_equal(koala_set_tensor_lr(a.opt, NULL, NULL), KOALA_OK);
                assert_int_equal(koala_set_tensor_lr(b.opt, NULL, NULL), KOALA_OK);
                assert_int_equal(koala_set_tensor_weight_decay(a.opt, NULL, NULL), KOALA_OK);
                assert_int_equal(koala_set_tensor_weight_decay(b.opt, NULL, NULL), KOALA_OK);
            }
            test_pair *ps[] = {&a, &b, &c};
            for (int p = 0; p < 3; ++p) {
                assert_int_equal(pair_predict(ps[p]), KOALA_OK);
                step_fill(&step, &layout, 501, k, 0, 0);
                assert_int_equal(pair_update(ps[p], &step), KOALA_OK);
            }
            if (!buffers_equal(a.params, b.params, &layout, KOALA_FLOAT64))
                fail_msg("%s: step %u after the load differs", method_name(methods[m]), k);
            if (k == 3 && buffers_equal(a.params, c.params, &layout, KOALA_FLOAT64))
                fail_msg("%s: the per-tensor values made no difference", method_name(methods[m]));
        }
        size_t na, nb;
        unsigned char *ca = save_state(a.opt, &na), *cb = save_state(b.opt, &nb);
        assert_true(na == nb && memcmp(ca, cb, na) == 0);
        free(ca);
        free(cb);
        free(ck);
        free(lr);
        free(wd);
        step_free(&step, &layout);
        pair_free(&a);
        pair_free(&b);
        pair_free(&c);
        layout_free(&layout);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_reference),
        cmocka_unit_test(test_checkpoint_round_trip),
    };
    return cmocka_run_group_tests_name("tensor_hyper", tests, NULL, NULL);
}
