/*
 * Regression tests for bugs the hardening work found (fuzzers, sanitizers).
 * Each test names the finding; doc/readme/hardening.md lists them.
 * The bad-input matrix (test_bad_inputs.c) covers the others:
 *   - negative loss_var accepted, driving the online R negative
 *     (rows "loss_var = -1", "*loss_var = -0.25");
 *   - out-of-range enum values read as C++ enums, undefined behaviour that
 *     UBSan reports (rows "dtype = 5", "loss_dtype = 9", "cfg->method = 4",
 *     run under -fsanitize=undefined by tools/hardening.sh);
 *   - koala_update_ptr's NOT_FINITE message naming koala_update;
 *   - a checkpoint with an indefinite KOALA-M covariance accepted (found by
 *     fuzz_state_load; row "stored momentum P01 = 10").
 * Crash inputs of the fuzzers are also kept in fuzz/corpus/ (regress-*),
 * replayed by tools/hardening.sh.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "koala.h"

static unsigned char *save(const koala_optimizer *opt, size_t *size) {
    unsigned char *buf;
    assert_int_equal(koala_state_size(opt, size), KOALA_OK);
    buf = malloc(*size);
    assert_non_null(buf);
    assert_int_equal(koala_state_save(opt, buf, *size, NULL), KOALA_OK);
    return buf;
}

/* One step, then the optimizer's own checkpoint must load back (into a new
 * optimizer of the same layout) and save to the same bytes. */
static void step_and_round_trip(const koala_config *cfg) {
    const size_t sizes[2] = {3, 2};
    float x0[3] = {0.5f, -0.25f, 1.0f}, x1[2] = {0.1f, 0.2f};
    const float g0[3] = {0.3f, -0.1f, 0.2f}, g1[2] = {-0.5f, 0.25f};
    void *params[2];
    const void *grads[2];
    koala_optimizer *opt = NULL, *copy = NULL;
    unsigned char *a, *b;
    size_t na, nb;
    params[0] = x0;
    params[1] = x1;
    grads[0] = g0;
    grads[1] = g1;
    assert_int_equal(koala_create(cfg, 2, sizes, KOALA_FLOAT32, KOALA_HOST, &opt), KOALA_OK);
    assert_int_equal(koala_predict(opt, params, NULL), KOALA_OK);
    assert_int_equal(koala_update(opt, 0.5, 0.3, params, grads, NULL), KOALA_OK);
    a = save(opt, &na);
    assert_int_equal(koala_create(cfg, 2, sizes, KOALA_FLOAT32, KOALA_HOST, &copy), KOALA_OK);
    assert_int_equal(koala_state_load(copy, a, na, NULL), KOALA_OK);
    b = save(copy, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    free(a);
    free(b);
    koala_destroy(opt);
    koala_destroy(copy);
}

/* Found by fuzz_api_args: koala_create validates only the fields the method
 * uses, but the loader checked all six filter scalars, so a KOALA-V optimizer
 * created with (ignored) momentum fields such as qw = -1 could not load its
 * own checkpoint ("checkpoint filter scalar 5 is -1"). */
static void test_vanilla_ignores_momentum_fields_in_checkpoint(void **state) {
    koala_config cfg;
    (void)state;
    koala_config_init(&cfg, KOALA_VANILLA);
    cfg.qw = -1.0;
    cfg.sw = -2.0;
    cfg.sv = NAN;
    cfg.sc = INFINITY;
    cfg.a = 7.0;
    step_and_round_trip(&cfg);
}

/* The same, the other way round: KOALA-M ignores sigma and q. */
static void test_momentum_ignores_vanilla_fields_in_checkpoint(void **state) {
    koala_config cfg;
    (void)state;
    koala_config_init(&cfg, KOALA_MOMENTUM);
    cfg.sigma = -1.0;
    cfg.q = NAN;
    step_and_round_trip(&cfg);
}

/* Found by fuzz_state_load (seed regress-p00-negative-after-predict, a 1.0
 * checkpoint with NaN in its buffers): a KOALA-M step on non-finite weights
 * (not rejected when weight decay is 0, as the norm pass then never reads
 * them) leaves the pending |xbar - x|^2 of the next predict NaN; the state
 * saved, but koala_state_load refused it ("checkpoint scalars 9-10 are
 * invalid"). The predict keeps q_w for such a sum, so the loader now takes it. */
static void test_momentum_nonfinite_weights_checkpoint_loads(void **state) {
    const size_t n = 4;
    double x[4] = {1.0, 2.0, INFINITY, 4.0};
    const double g[4] = {0.1, 0.2, 0.3, 0.4};
    void *params[1];
    const void *grads[1];
    koala_config cfg;
    koala_optimizer *opt = NULL, *copy = NULL;
    unsigned char *a, *b;
    size_t na, nb;
    (void)state;
    params[0] = x;
    grads[0] = g;
    koala_config_init(&cfg, KOALA_MOMENTUM);
    assert_int_equal(koala_create(&cfg, 1, &n, KOALA_FLOAT64, KOALA_HOST, &opt), KOALA_OK);
    assert_int_equal(koala_predict(opt, params, NULL), KOALA_OK);
    assert_int_equal(koala_update(opt, 0.5, 0.3, params, grads, NULL), KOALA_OK);
    a = save(opt, &na);
    assert_int_equal(koala_create(&cfg, 1, &n, KOALA_FLOAT64, KOALA_HOST, &copy), KOALA_OK);
    if (koala_state_load(copy, a, na, NULL) != KOALA_OK)
        fail_msg("the optimizer's own checkpoint does not load: %s", koala_last_error());
    b = save(copy, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    /* and the run goes on: predict keeps q_w for a non-finite sum */
    assert_int_equal(koala_predict(copy, params, NULL), KOALA_OK);
    free(a);
    free(b);
    koala_destroy(opt);
    koala_destroy(copy);
}

/* KOALA-M's next-predict |xbar - x|^2, accumulated by the float32 update
 * pass: a term beyond float32's range (x = 3e19 gives 9e38) must count (it
 * was summed in float32 blocks, and an overflowing block contributed 0, so
 * q_w adapted from the other blocks only). Read through caller-owned state. */
static void test_momentum_pending_d2_beyond_float32(void **state) {
    const size_t size = 4;
    float x[4] = {1.0f, 2.0f, 3e19f, 4.0f};
    const float g[4] = {0.5f, 0.25f, 0.125f, 1.0f};
    void *params[1] = {x};
    const void *grads[1] = {g};
    float v[4], xbar[4];
    void *buffers[2] = {v, xbar};
    double scalars[64];
    koala_config cfg;
    koala_optimizer *opt;
    size_t count = 0;
    (void)state;
    koala_config_init(&cfg, KOALA_MOMENTUM);
    cfg.caller_state = 1;
    assert_int_equal(koala_create(&cfg, 1, &size, KOALA_FLOAT32, KOALA_HOST, &opt), KOALA_OK);
    assert_int_equal(koala_state_layout(opt, NULL, NULL, &count), KOALA_OK);
    assert_true(count <= 64);
    assert_int_equal(koala_state_init(opt, buffers, scalars, NULL), KOALA_OK);
    assert_int_equal(koala_bind_state(opt, buffers, scalars), KOALA_OK);
    assert_int_equal(koala_predict(opt, params, NULL), KOALA_OK);
    assert_int_equal(koala_update(opt, 0.5, 0.3, params, grads, NULL), KOALA_OK);
    {   /* scalar 9: the pending sum, what the next predict adds to */
        double expect = 0.0;
        size_t i;
        for (i = 0; i < 4; ++i) {
            const double d = (double)xbar[i] - (double)x[i];
            expect += d * d;
        }
        assert_true(expect > 1e38 && isfinite(expect));
        assert_true(fabs(scalars[9] - expect) <= 1e-12 * expect);
    }
    koala_destroy(opt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vanilla_ignores_momentum_fields_in_checkpoint),
        cmocka_unit_test(test_momentum_ignores_vanilla_fields_in_checkpoint),
        cmocka_unit_test(test_momentum_nonfinite_weights_checkpoint_loads),
        cmocka_unit_test(test_momentum_pending_d2_beyond_float32),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
