/*
 * test_hand_checked.c - the first steps of KOALA-V, KOALA-M and KOALA++ on
 * tiny problems, with every expected number worked out by hand (in the
 * comments, from ALGORITHM.md sections 3, 4 and 7), not computed by code.
 *
 * The numbers are chosen so that the arithmetic stays exact or nearly so;
 * float64 must agree to 1e-12, float32 to 1e-6 (the float32 inputs 0.8,
 * 2.2, 0.01 ... are themselves rounded by ~6e-8 relative).
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

static double tolerance(koala_dtype dtype) { return dtype == KOALA_FLOAT64 ? 1e-12 : 1e-6; }

static void expect_near(double got, double want, koala_dtype dtype, const char *what) {
    const double scale = fabs(want) > 1.0 ? fabs(want) : 1.0;
    if (!(fabs(got - want) <= tolerance(dtype) * scale))
        fail_msg("%s (%s): got %.17g, expected %.17g", what,
                 dtype == KOALA_FLOAT64 ? "float64" : "float32", got, want);
}

static void expect_tensor(const void *buf, koala_dtype dtype, const double *want, size_t n,
                          const char *what) {
    for (size_t j = 0; j < n; ++j) expect_near(buffer_get(buf, j, dtype), want[j], dtype, what);
}

static void set_tensor(void *buf, koala_dtype dtype, const double *values, size_t n) {
    for (size_t j = 0; j < n; ++j) {
        if (dtype == KOALA_FLOAT32)
            ((float *)buf)[j] = (float)values[j];
        else
            ((double *)buf)[j] = values[j];
    }
}

static koala_info info_of(const koala_optimizer *opt) {
    koala_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    assert_int_equal(koala_get_info(opt, NULL, &info), KOALA_OK);
    return info;
}

/*
 * KOALA-V. Config: sigma = 1, q = 1, online R (R0 = 1, alpha_r = 0.9),
 * weight_decay wd = 0.5, lr = 1. Three tensors:
 *   x1 = (2, 0),  g1 = (0, 1)
 *   x2 = (0, -2), g2 = (2, 0)
 *   x3 = (5),     no gradient (NULL): skipped
 * loss L = 2, loss_var M = 11.
 *
 * predict:  sigma-hat = 1 + 1 = 2.
 * update:   R = 0.9 * 1 + 0.1 * 11 = 2.
 *   block 1: h1 = g1 + 0.5 x1 = (0,1) + (1,0) = (1, 1), a1 = |h1|^2 = 2
 *            S1 = sigma-hat a1 + R = 2*2 + 2 = 6
 *            block loss = L + wd/2 |x1|^2 = 2 + 0.25*4 = 3
 *            c1 = lr * 3 * sigma-hat / S1 = 3*2/6 = 1
 *            x1 <- x1 - c1 g1 (RAW gradient) = (2, 0) - (0, 1) = (2, -1)
 *            rho1 = a1 / S1 = 2/6 = 1/3
 *   block 2: h2 = (2,0) + 0.5 (0,-2) = (2, -1), a2 = 5
 *            S2 = 2*5 + 2 = 12, block loss = 2 + 0.25*4 = 3
 *            c2 = 3*2/12 = 0.5
 *            x2 <- (0, -2) - 0.5 (2, 0) = (-1, -2)
 *            rho2 = 5/12
 *   sigma <- sigma-hat - sigma-hat^2 max(rho) = 2 - 4 * 5/12 = 1/3
 *   (check with the stable form: sigma-hat * min R/S = 2 * 2/12 = 1/3)
 * next predict: sigma-hat = 1/3 + 1 = 4/3.
 */
static void vanilla_case(koala_dtype dtype) {
    koala_config cfg;
    koala_config_init(&cfg, KOALA_VANILLA);
    cfg.sigma = 1.0;
    cfg.q = 1.0;
    cfg.weight_decay = 0.5;
    const size_t sizes[] = {2, 2, 1};
    koala_optimizer *opt = NULL;
    assert_int_equal(koala_create(&cfg, 3, sizes, dtype, KOALA_HOST, &opt), KOALA_OK);
    const test_layout layout = {3, (size_t *)sizes, 5};
    void **x = buffers_alloc(&layout, dtype);
    void **g = buffers_alloc(&layout, dtype);
    set_tensor(x[0], dtype, (const double[]){2, 0}, 2);
    set_tensor(x[1], dtype, (const double[]){0, -2}, 2);
    set_tensor(x[2], dtype, (const double[]){5}, 1);
    set_tensor(g[0], dtype, (const double[]){0, 1}, 2);
    set_tensor(g[1], dtype, (const double[]){2, 0}, 2);
    const void *grads[] = {g[0], g[1], NULL};

    assert_int_equal(koala_predict(opt, x, NULL), KOALA_OK);
    koala_info info = info_of(opt);
    expect_near(info.sigma, 2.0, dtype, "V sigma-hat");
    expect_near(info.r, 1.0, dtype, "V R0");
    assert_int_equal(info.steps, 0);

    assert_int_equal(koala_update(opt, 2.0, 11.0, x, grads, NULL), KOALA_OK);
    info = info_of(opt);
    expect_near(info.r, 2.0, dtype, "V R");
    expect_near(info.sigma, 1.0 / 3.0, dtype, "V sigma");
    assert_int_equal(info.steps, 1);
    expect_tensor(x[0], dtype, (const double[]){2, -1}, 2, "V x1");
    expect_tensor(x[1], dtype, (const double[]){-1, -2}, 2, "V x2");
    expect_tensor(x[2], dtype, (const double[]){5}, 1, "V x3 (skipped)");

    assert_int_equal(koala_predict(opt, NULL, NULL), KOALA_OK); /* vanilla: params unused */
    info = info_of(opt);
    expect_near(info.sigma, 4.0 / 3.0, dtype, "V second sigma-hat");

    buffers_free(x, &layout);
    buffers_free(g, &layout);
    koala_destroy(opt);
}

/*
 * KOALA-M. Config: sw = 1, sc = 0.5, sv = 1 (P = [[1, .5], [.5, 1]]),
 * a = 0.5, initial qw = 0, qv = 0.25, wd = 0.01, online R, lr = 1.
 * Tensors (v = x-bar = 0 at the start):
 *   x1 = (20, 20),  g1 = (0.8, -0.2)
 *   x2 = (20, -20), g2 = (-0.2, 2.2)
 *   x3 = (30),      no gradient (NULL): skipped, but part of n and d2
 * n = 5. loss L = 1, loss_var M = 31.
 *
 * predict:
 *   d2 = |x-bar - x|^2 over ALL tensors = 800 + 800 + 900 = 2500, sqrt = 50
 *   x <- x + v (v = 0: unchanged), v <- a v = 0
 *   qw <- 0.9 * 0 + 0.1 * 50 / 5 = 1
 *   P-hat00 = P00 + 2 P01 + P11 + qw = 1 + 1 + 1 + 1 = 4
 *   P-hat01 = a (P01 + P11) = 0.5 * 1.5 = 0.75
 *   P-hat11 = a^2 P11 + qv = 0.25 + 0.25 = 0.5
 * update: R = 0.9 * 1 + 0.1 * 31 = 4
 *   block 1: h1 = g1 + 0.01 x1 = (0.8 + 0.2, -0.2 + 0.2) = (1, 0), a1 = 1
 *            block loss = L + wd/2 |x1|^2 = 1 + 0.005 * 800 = 5
 *            S1 = a1 P-hat00 + R = 4 + 4 = 8
 *            k1 = 5 * 4 / 8 = 2.5,  k2 = 5 * 0.75 / 8 = 0.46875
 *            x1 <- x1 - k1 h1 (REGULARISED gradient) = (17.5, 20)
 *            v1 <- 0 - k2 h1 = (-0.46875, 0)
 *            x-bar1 <- 0.9 * 0 + 0.1 x1 = (1.75, 2)
 *            rho1 = 1/8
 *   block 2: h2 = (-0.2 + 0.2, 2.2 - 0.2) = (0, 2), a2 = 4, block loss = 5
 *            S2 = 4*4 + 4 = 20, k1 = 5*4/20 = 1, k2 = 5*0.75/20 = 0.1875
 *            x2 <- (20, -20) - (0, 2) = (20, -22)
 *            v2 <- (0, -0.375),  x-bar2 <- (2, -2.2)
 *            rho2 = 4/20 = 0.2
 *   h~ = max rho = 0.2, c = (P-hat00, P-hat01) = (4, 0.75):
 *   P00 = 4 - 0.2 * 16 = 0.8
 *   P01 = 0.75 - 0.2 * 4 * 0.75 = 0.15
 *   P11 = 0.5 - 0.2 * 0.5625 = 0.3875
 *   x3 stays 30 (its x-bar stays 0).
 * second predict:
 *   d2 = |(1.75, 2) - (17.5, 20)|^2 + |(2, -2.2) - (20, -22)|^2 + |0 - 30|^2
 *      = (15.75^2 + 18^2) + (18^2 + 19.8^2) + 900
 *      = (248.0625 + 324) + (324 + 392.04) + 900 = 2188.1025
 *   x1 <- (17.5 - 0.46875, 20) = (17.03125, 20),  v1 <- 0.5 v1 = (-0.234375, 0)
 *   x2 <- (20, -22 - 0.375) = (20, -22.375),      v2 <- (0, -0.1875)
 *   qw <- 0.9 * 1 + 0.1 * sqrt(2188.1025) / 5 = 0.9 + 0.02 sqrt(2188.1025)
 *   P-hat00 = 0.8 + 2 * 0.15 + 0.3875 + qw = 1.4875 + qw
 *   P-hat01 = 0.5 * (0.15 + 0.3875) = 0.26875
 *   P-hat11 = 0.25 * 0.3875 + 0.25 = 0.346875
 */
static void momentum_case(koala_dtype dtype) {
    koala_config cfg;
    koala_config_init(&cfg, KOALA_MOMENTUM);
    cfg.sw = 1.0;
    cfg.sc = 0.5;
    cfg.sv = 1.0;
    cfg.a = 0.5;
    cfg.qw = 0.0;
    cfg.qv = 0.25;
    cfg.weight_decay = 0.01;
    const size_t sizes[] = {2, 2, 1};
    koala_optimizer *opt = NULL;
    assert_int_equal(koala_create(&cfg, 3, sizes, dtype, KOALA_HOST, &opt), KOALA_OK);
    const test_layout layout = {3, (size_t *)sizes, 5};
    void **x = buffers_alloc(&layout, dtype);
    void **g = buffers_alloc(&layout, dtype);
    set_tensor(x[0], dtype, (const double[]){20, 20}, 2);
    set_tensor(x[1], dtype, (const double[]){20, -20}, 2);
    set_tensor(x[2], dtype, (const double[]){30}, 1);
    set_tensor(g[0], dtype, (const double[]){0.8, -0.2}, 2);
    set_tensor(g[1], dtype, (const double[]){-0.2, 2.2}, 2);
    const void *grads[] = {g[0], g[1], NULL};

    assert_int_equal(koala_predict(opt, x, NULL), KOALA_OK);
    koala_info info = info_of(opt);
    expect_near(info.qw, 1.0, dtype, "M qw");
    expect_near(info.p00, 4.0, dtype, "M P-hat00");
    expect_near(info.p01, 0.75, dtype, "M P-hat01");
    expect_near(info.p11, 0.5, dtype, "M P-hat11");
    expect_tensor(x[0], dtype, (const double[]){20, 20}, 2, "M x1-hat");
    expect_tensor(x[1], dtype, (const double[]){20, -20}, 2, "M x2-hat");

    assert_int_equal(koala_update(opt, 1.0, 31.0, x, grads, NULL), KOALA_OK);
    info = info_of(opt);
    expect_near(info.r, 4.0, dtype, "M R");
    expect_near(info.p00, 0.8, dtype, "M P00");
    expect_near(info.p01, 0.15, dtype, "M P01");
    expect_near(info.p11, 0.3875, dtype, "M P11");
    expect_near(info.qw, 1.0, dtype, "M qw after update");
    assert_int_equal(info.steps, 1);
    expect_tensor(x[0], dtype, (const double[]){17.5, 20}, 2, "M x1");
    expect_tensor(x[1], dtype, (const double[]){20, -22}, 2, "M x2");
    expect_tensor(x[2], dtype, (const double[]){30}, 1, "M x3 (skipped)");

    assert_int_equal(koala_predict(opt, x, NULL), KOALA_OK);
    info = info_of(opt);
    const double qw = 0.9 + 0.02 * sqrt(2188.1025);
    expect_near(info.qw, qw, dtype, "M second qw");
    expect_near(info.p00, 1.4875 + qw, dtype, "M second P-hat00");
    expect_near(info.p01, 0.26875, dtype, "M second P-hat01");
    expect_near(info.p11, 0.346875, dtype, "M second P-hat11");
    expect_tensor(x[0], dtype, (const double[]){17.03125, 20}, 2, "M second x1-hat");
    expect_tensor(x[1], dtype, (const double[]){20, -22.375}, 2, "M second x2-hat");
    expect_tensor(x[2], dtype, (const double[]){30}, 1, "M second x3-hat");

    buffers_free(x, &layout);
    buffers_free(g, &layout);
    koala_destroy(opt);
}

/*
 * KOALA++ (section 7.2/7.3). Config: sigma = 1 (P0 = I), q = Q = 1, online
 * R (R0 = 1, alpha_r = 0.9), weight_decay wd = 0.5, lr = 1 for step 1 and
 * 61/64 from step 2 on (koala_set_lr). Two tensors:
 *   A = (2, 0), B = (4).
 * Caller-owned state (cfg.caller_state = 1) when `caller` is set, so that
 * the buffers v and H' (koala_state_layout: buffer 0 = v, 1 = previous H)
 * can be checked too.
 *
 * Step 1: L = 2, M = 11 -> R = 0.9 + 1.1 = 2. gA = (0, 1), B: NULL (skipped).
 *   A: H = g + wd x = (0, 1) + (1, 0) = (1, 1).
 *      first visit: v' = sigma H = (1, 1), H' = H, S' = H'.v' + Q|H'|^2 + R = 2 + 2 + 2 = 6
 *      lambda = (H.v' + Q H.H') / S' = (2 + 2) / 6 = 2/3
 *      alpha = H.H' / |H'|^2 = 1,  w = H.v'/|H'|^2 - (H.H')(H'.v')/|H'|^4 = 1 - 1 = 0
 *      v = (alpha - lambda) v' + Q (H - lambda H') + w H' = (1/3)(1,1) + (1/3)(1,1) = (2/3, 2/3)
 *      S = (v + Q H).H + R = (5/3, 5/3).(1, 1) + 2 = 16/3
 *      layer loss = L + wd/2 |x|^2 = 2 + 0.25 * 4 = 3
 *      x <- x - lr 3 (5/3, 5/3) / (16/3) = (2, 0) - (15/16, 15/16) = (17/16, -15/16)
 *   B: untouched (x, v, H' stay 4, 0, 0).
 *
 * Step 2: lr = 61/64, L = 255/512, M = 2 -> R = 0.9 * 2 + 0.1 * 2 = 2.
 *   A: gA = (15/32, 15/32): H = gA + 0.5 (17/16, -15/16) = (1, 0).
 *      v' = (2/3, 2/3), H' = (1, 1), S' = 16/3
 *      |H'|^2 = 2, H'.v' = 4/3, H.v' = 2/3, H.H' = 1
 *      lambda = (2/3 + 1) / (16/3) = 5/16,  alpha = 1/2
 *      w = (2/3)/2 - 1 (4/3) / 4 = 0   (v' is parallel to H' after a first visit)
 *      v = (1/2 - 5/16)(2/3, 2/3) + ((1, 0) - 5/16 (1, 1)) = (1/8, 1/8) + (11/16, -5/16)
 *        = (13/16, -3/16)
 *      S = (v + Q H).H + R = (29/16, -3/16).(1, 0) + 2 = 61/16
 *      layer loss = 255/512 + 0.25 |(17/16, -15/16)|^2 = 255/512 + 0.25 * 514/256 = 1
 *      x <- x - (61/64) (29/16, -3/16) (16/61) = (68/64 - 29/64, -60/64 + 3/64) = (39/64, -57/64)
 *   B: gB = 1, first visit at this step: H = 1 + 0.5 * 4 = 3,
 *      v' = 3, H' = 3, S' = 9 + 9 + 2 = 20 (the R of THIS update)
 *      lambda = (9 + 9) / 20 = 0.9, alpha = 1, w = 9/9 - 9 * 9 / 81 = 0
 *      v = 0.1 * 3 + (3 - 0.9 * 3) = 0.6,  S = (0.6 + 3) * 3 + 2 = 12.8
 *      layer loss = 255/512 + 0.25 * 16 = 2303/512
 *      x <- 4 - (61/64)(2303/512)(3.6 / 12.8) = 4 - 61 * 2303 * 9 / 2^20 = 4 - 1264347/1048576
 *
 * Step 3: L = 5807/8192, M = 2 -> R = 2. gB = 1e-12 (below 1e-9: B skipped,
 *   its x, v = 0.6 and H' = 3 persist).
 *   A: gA = (-39/128, 185/128): H = gA + 0.5 (39/64, -57/64) = (0, 1).
 *      v' = (13/16, -3/16), H' = (1, 0), S' = 61/16
 *      |H'|^2 = 1, H'.v' = 13/16, H.v' = -3/16, H.H' = 0
 *      lambda = (-3/16) / (61/16) = -3/61,  alpha = 0
 *      w = -3/16 - 0 = -3/16   (symmetric; 0 when asymmetric)
 *      v = (3/61)(13/16, -3/16) + ((0, 1) + (3/61)(1, 0)) + w (1, 0)
 *        symmetric:  (39/976 + 48/976 - 183/976, -9/976 + 1) = (-6/61, 967/976)
 *        asymmetric: (87/976, 967/976)
 *      S = (v + Q H).H + R = 967/976 + 1 + 2 = 3895/976 (both: H = (0, 1))
 *      layer loss = 5807/8192 + 0.25 (39^2 + 57^2)/4096 = 5807/8192 + 2385/8192 = 1
 *      x <- x - (61/64)(976/3895)(v + Q H), (61/64)(976/3895) = 930.25/3895:
 *        symmetric:  v + QH = (-6/61, 1943/976)
 *                    x = (39/64 + 91.5/3895, -57/64 - 118523/249280)
 *        asymmetric: v + QH = (87/976, 1943/976)
 *                    x = (39/64 - 5307/249280, -57/64 - 118523/249280)
 */
static void expect_state(const test_pair *pair, size_t buffer, size_t tensor, const double *want,
                         size_t n, const char *what) {
    if (!pair->state) return;
    const void *b = pair->state[buffer * pair->layout->n + tensor];
    for (size_t j = 0; j < n; ++j)
        expect_near(buffer_get(b, j, pair->state_dtype), want[j], pair->dtype, what);
}

static void plusplus_case(koala_dtype dtype, int asymmetric, int caller) {
    koala_config cfg;
    koala_config_init(&cfg, KOALA_PLUSPLUS);
    assert_true(cfg.sigma == 1.0 && cfg.q == 1.0 && isnan(cfg.r) && cfg.alpha_r == 0.9);
    assert_true(cfg.lr == 1.0 && cfg.weight_decay == 0.0 && cfg.asymmetric == 0);
    cfg.weight_decay = 0.5;
    cfg.asymmetric = asymmetric;
    cfg.caller_state = caller;
    const size_t sizes[] = {2, 1};
    test_layout layout = layout_make(2, sizes);
    test_pair pair; /* the library side only: every expected number is below */
    assert_int_equal(pair_init(&pair, &cfg, &layout, dtype, 1, 0), KOALA_OK);
    if (caller) {
        assert_int_equal(pair.state_buffers, 2);
        assert_int_equal(pair.state_dtype, dtype);
    }
    void **x = pair.params, **g = pair.grads;
    set_tensor(x[0], dtype, (const double[]){2, 0}, 2);
    set_tensor(x[1], dtype, (const double[]){4}, 1);

    /* step 1 */
    assert_int_equal(koala_predict(pair.opt, NULL, NULL), KOALA_OK); /* a no-op */
    expect_tensor(x[0], dtype, (const double[]){2, 0}, 2, "++ predict leaves A");
    set_tensor(g[0], dtype, (const double[]){0, 1}, 2);
    const void *grads1[] = {g[0], NULL};
    assert_int_equal(koala_update(pair.opt, 2.0, 11.0, x, grads1, NULL), KOALA_OK);
    koala_info info = info_of(pair.opt);
    expect_near(info.r, 2.0, dtype, "++ R after step 1");
    assert_int_equal(info.steps, 1);
    expect_tensor(x[0], dtype, (const double[]){17.0 / 16, -15.0 / 16}, 2, "++ A after step 1");
    expect_tensor(x[1], dtype, (const double[]){4}, 1, "++ B after step 1 (skipped)");
    expect_state(&pair, 0, 0, (const double[]){2.0 / 3, 2.0 / 3}, 2, "++ v_A after step 1");
    expect_state(&pair, 1, 0, (const double[]){1, 1}, 2, "++ H_A after step 1");
    expect_state(&pair, 0, 1, (const double[]){0}, 1, "++ v_B after step 1 (untouched)");
    expect_state(&pair, 1, 1, (const double[]){0}, 1, "++ H_B after step 1 (untouched)");

    /* step 2 */
    assert_int_equal(koala_set_lr(pair.opt, 61.0 / 64), KOALA_OK);
    assert_int_equal(koala_predict(pair.opt, NULL, NULL), KOALA_OK);
    set_tensor(g[0], dtype, (const double[]){15.0 / 32, 15.0 / 32}, 2);
    set_tensor(g[1], dtype, (const double[]){1}, 1);
    const void *grads2[] = {g[0], g[1]};
    assert_int_equal(koala_update(pair.opt, 255.0 / 512, 2.0, x, grads2, NULL), KOALA_OK);
    info = info_of(pair.opt);
    expect_near(info.r, 2.0, dtype, "++ R after step 2");
    expect_tensor(x[0], dtype, (const double[]){39.0 / 64, -57.0 / 64}, 2, "++ A after step 2");
    expect_tensor(x[1], dtype, (const double[]){4.0 - 1264347.0 / 1048576}, 1,
                  "++ B after step 2 (first visit)");
    expect_state(&pair, 0, 0, (const double[]){13.0 / 16, -3.0 / 16}, 2, "++ v_A after step 2");
    expect_state(&pair, 1, 0, (const double[]){1, 0}, 2, "++ H_A after step 2");
    expect_state(&pair, 0, 1, (const double[]){0.6}, 1, "++ v_B after step 2");
    expect_state(&pair, 1, 1, (const double[]){3}, 1, "++ H_B after step 2");

    /* step 3 */
    assert_int_equal(koala_predict(pair.opt, NULL, NULL), KOALA_OK);
    set_tensor(g[0], dtype, (const double[]){-39.0 / 128, 185.0 / 128}, 2);
    set_tensor(g[1], dtype, (const double[]){1e-12}, 1);
    assert_int_equal(koala_update(pair.opt, 5807.0 / 8192, 2.0, x, grads2, NULL), KOALA_OK);
    info = info_of(pair.opt);
    expect_near(info.r, 2.0, dtype, "++ R after step 3");
    assert_int_equal(info.steps, 3);
    const double ax = asymmetric ? 39.0 / 64 - 5307.0 / 249280 : 39.0 / 64 + 91.5 / 3895;
    expect_tensor(x[0], dtype, (const double[]){ax, -57.0 / 64 - 118523.0 / 249280}, 2,
                  asymmetric ? "++ A after step 3 (asymmetric)" : "++ A after step 3");
    expect_tensor(x[1], dtype, (const double[]){4.0 - 1264347.0 / 1048576}, 1,
                  "++ B after step 3 (skipped)");
    const double vx = asymmetric ? 87.0 / 976 : -6.0 / 61;
    expect_state(&pair, 0, 0, (const double[]){vx, 967.0 / 976}, 2, "++ v_A after step 3");
    expect_state(&pair, 1, 0, (const double[]){0, 1}, 2, "++ H_A after step 3");
    expect_state(&pair, 0, 1, (const double[]){0.6}, 1, "++ v_B after step 3 (kept)");
    expect_state(&pair, 1, 1, (const double[]){3}, 1, "++ H_B after step 3 (kept)");

    pair_free(&pair);
    layout_free(&layout);
}

static void test_plusplus_first_steps(void **state) {
    (void)state;
    for (int caller = 0; caller < 2; ++caller)
        for (int asymmetric = 0; asymmetric < 2; ++asymmetric) {
            plusplus_case(KOALA_FLOAT64, asymmetric, caller);
            plusplus_case(KOALA_FLOAT32, asymmetric, caller);
        }
}

static void test_vanilla_first_step_float64(void **state) {
    (void)state;
    vanilla_case(KOALA_FLOAT64);
}
static void test_vanilla_first_step_float32(void **state) {
    (void)state;
    vanilla_case(KOALA_FLOAT32);
}
static void test_momentum_first_step_float64(void **state) {
    (void)state;
    momentum_case(KOALA_FLOAT64);
}
static void test_momentum_first_step_float32(void **state) {
    (void)state;
    momentum_case(KOALA_FLOAT32);
}

/* The defaults koala_config_init promises (ALGORITHM.md section 8). */
static void test_config_defaults(void **state) {
    (void)state;
    koala_config c;
    koala_config_init(&c, KOALA_MOMENTUM);
    assert_int_equal(c.struct_size, sizeof c);
    assert_int_equal(c.method, KOALA_MOMENTUM);
    assert_true(c.lr == 1.0 && c.weight_decay == 0.0 && isnan(c.r) && c.alpha_r == 0.9);
    assert_true(c.sigma == 1.0 && c.q == 1.0);
    assert_true(c.sw == 0.1 && c.sc == 0.0 && c.sv == 0.1 && c.a == 0.9);
    assert_true(c.qw == 0.01 && c.qv == 0.01);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vanilla_first_step_float64),
        cmocka_unit_test(test_vanilla_first_step_float32),
        cmocka_unit_test(test_momentum_first_step_float64),
        cmocka_unit_test(test_momentum_first_step_float32),
        cmocka_unit_test(test_plusplus_first_steps),
        cmocka_unit_test(test_config_defaults),
    };
    return cmocka_run_group_tests_name("hand_checked", tests, NULL, NULL);
}
