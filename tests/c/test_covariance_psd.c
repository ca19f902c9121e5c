/* KOALA-M's 2x2 covariance stays positive semi-definite, also where rounding
 * could push it out (ALGORITHM.md 9.4): a singular initial P (sc^2 == sw*sv),
 * no process noise, tiny variances. A run must never report p00 < 0,
 * p11 < 0 or p01^2 > p00*p11, and every state it reaches must load back
 * from its own checkpoint. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <koala.h>

static double next_uniform(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*state >> 11) / 9007199254740992.0 - 0.5;
}

static void run(double sw, double sc, double sv, double qw, double qv, double a) {
    enum { N0 = 5, N1 = 3, STEPS = 200 };
    double x0[N0], x1[N1], g0[N0], g1[N1];
    uint64_t rng = 42;
    for (int i = 0; i < N0; ++i) x0[i] = next_uniform(&rng);
    for (int i = 0; i < N1; ++i) x1[i] = next_uniform(&rng);
    const size_t sizes[2] = {N0, N1};
    void *params[2] = {x0, x1};
    const void *grads[2] = {g0, g1};

    koala_config cfg;
    koala_config_init(&cfg, KOALA_MOMENTUM);
    cfg.sw = sw;
    cfg.sc = sc;
    cfg.sv = sv;
    cfg.qw = qw;
    cfg.qv = qv;
    cfg.a = a;
    cfg.r = 1e-30; /* a near-zero R makes the update shrink P as hard as it can */
    koala_optimizer *opt = NULL;
    assert_int_equal(koala_create(&cfg, 2, sizes, KOALA_FLOAT64, KOALA_HOST, &opt), KOALA_OK);
    size_t bytes = 0;
    assert_int_equal(koala_state_size(opt, &bytes), KOALA_OK);
    unsigned char *blob = malloc(bytes);
    assert_non_null(blob);

    for (int step = 0; step < STEPS; ++step) {
        assert_int_equal(koala_predict(opt, params, NULL), KOALA_OK);
        for (int i = 0; i < N0; ++i) g0[i] = next_uniform(&rng) * 1e-3;
        for (int i = 0; i < N1; ++i) g1[i] = next_uniform(&rng);
        assert_int_equal(koala_update(opt, 0.5, 0.3, params, grads, NULL), KOALA_OK);

        koala_info info;
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        assert_int_equal(koala_get_info(opt, NULL, &info), KOALA_OK);
        assert_true(info.p00 >= 0.0);
        assert_true(info.p11 >= 0.0);
        assert_true(info.p01 * info.p01 <= info.p00 * info.p11 * (1.0 + 1e-12));
        /* The library's own state always loads back. */
        assert_int_equal(koala_state_save(opt, blob, bytes, NULL), KOALA_OK);
        assert_int_equal(koala_state_load(opt, blob, bytes, NULL), KOALA_OK);
    }
    free(blob);
    koala_destroy(opt);
}

static void singular_initial_covariance(void **state) {
    (void)state;
    run(0.1, 0.1, 0.1, 0.0, 0.0, 0.9);    /* P0 = [[.1,.1],[.1,.1]]: det 0 */
    run(0.1, -0.1, 0.1, 0.0, 0.0, 0.5);
}

static void tiny_variances(void **state) {
    (void)state;
    run(1e-150, 1e-150, 1e-150, 0.0, 0.0, 0.9);
    run(1e-300, 0.0, 1e-300, 0.0, 0.0, 0.0);
}

static void no_velocity_noise(void **state) {
    (void)state;
    run(0.1, 0.0, 0.0, 0.01, 0.0, 0.9);   /* P11 starts at 0 and gets no noise */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(singular_initial_covariance),
        cmocka_unit_test(tiny_variances),
        cmocka_unit_test(no_velocity_noise),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
