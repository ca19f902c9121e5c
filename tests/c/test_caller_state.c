/*
 * test_caller_state.c - cfg.caller_state = 1 (koala_state_layout,
 * koala_state_init, koala_bind_state): the caller owns the per-parameter
 * buffers and the block of filter scalars.
 *
 *   - For every method and dtype, an optimizer on caller-owned state and one
 *     on library-owned state, fed the same data, give the same bits after
 *     every predict and update (parameters, koala_get_info, and at the end
 *     their checkpoints byte for byte).
 *   - The caller-owned state moves to fresh memory before every call (the
 *     old copy is overwritten with NaN bytes before it is freed, so a
 *     library that kept using it would go wrong at once).
 *   - A checkpoint saved from caller-owned state loads into a library-owned
 *     optimizer and the other way round; all four continue with the same
 *     bits.
 *   - scalars[KOALA_SCALAR_LR_SCALE] multiplies cfg.lr: a run with cfg.lr =
 *     0.5 and the slot set to s equals a library-owned run with
 *     koala_set_lr(0.5 s) bit for bit (0.5 s is exact), and s = 0 stops the
 *     parameters.
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

static const koala_method methods[] = {KOALA_VANILLA, KOALA_MOMENTUM, KOALA_PLUSPLUS};
static const koala_dtype dtypes[] = {KOALA_FLOAT64, KOALA_FLOAT32, KOALA_BFLOAT16, KOALA_FLOAT16};
static const char *method_name(koala_method m) {
    return m == KOALA_VANILLA ? "V" : m == KOALA_MOMENTUM ? "M" : "++";
}
static const char *dtype_name(koala_dtype d) {
    return d == KOALA_FLOAT64 ? "f64" : d == KOALA_FLOAT32 ? "f32" : d == KOALA_BFLOAT16 ? "bf16" : "fp16";
}

static koala_info info_of(const koala_optimizer *opt) {
    koala_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (koala_get_info(opt, NULL, &info) != KOALA_OK) fail_msg("koala_get_info: %s", koala_last_error());
    return info;
}

static int same_info(const koala_info *a, const koala_info *b) {
    return a->steps == b->steps && a->phase == b->phase && a->sigma == b->sigma &&
           a->p00 == b->p00 && a->p01 == b->p01 && a->p11 == b->p11 && a->r == b->r &&
           a->qw == b->qw;
}

/* Moves the pair's caller-owned state to fresh memory and rebinds. */
static void move_state(test_pair *pair) {
    const test_layout *l = pair->layout;
    const size_t eb = dtype_bytes(pair->state_dtype);
    for (size_t k = 0; k < pair->state_buffers * l->n; ++k) {
        const size_t bytes = l->sizes[k % l->n] * eb;
        void *fresh = malloc(bytes);
        if (!fresh) abort();
        memcpy(fresh, pair->state[k], bytes);
        memset(pair->state[k], 0xff, bytes); /* NaN in every float type */
        free(pair->state[k]);
        pair->state[k] = fresh;
    }
    double *scalars = malloc(pair->scalar_count * sizeof *scalars);
    if (!scalars) abort();
    memcpy(scalars, pair->scalars, pair->scalar_count * sizeof *scalars);
    memset(pair->scalars, 0xff, pair->scalar_count * sizeof *scalars);
    free(pair->scalars);
    pair->scalars = scalars;
    if (koala_bind_state(pair->opt, pair->state, pair->scalars) != KOALA_OK)
        fail_msg("koala_bind_state: %s", koala_last_error());
}

static void expect_same(const test_pair *a, const test_pair *b, const char *what, unsigned k,
                        const char *name) {
    if (!buffers_equal(a->params, b->params, a->layout, a->dtype))
        fail_msg("%s: %s %u: parameters differ", name, what, k);
    const koala_info ia = info_of(a->opt), ib = info_of(b->opt);
    if (!same_info(&ia, &ib)) fail_msg("%s: %s %u: filter scalars differ", name, what, k);
}

static void predict_update(test_pair *p, test_step *step) {
    if (pair_predict(p) != KOALA_OK) fail_msg("predict: %s", koala_last_error());
    if (pair_update(p, step) != KOALA_OK) fail_msg("update: %s", koala_last_error());
}

static void caller_vs_library(koala_method method, koala_dtype dtype) {
    char name[64];
    snprintf(name, sizeof name, "%s %s", method_name(method), dtype_name(dtype));
    const uint64_t seed = 200 + (uint64_t)method * 10 + (uint64_t)dtype;
    test_layout layout = layout_random(seed, 10, 1);
    koala_config cfg;
    koala_config_init(&cfg, method);
    cfg.weight_decay = 5e-4;
    test_pair lib, own;
    assert_int_equal(pair_init(&lib, &cfg, &layout, dtype, seed, 0), KOALA_OK);
    cfg.caller_state = 1;
    assert_int_equal(pair_init(&own, &cfg, &layout, dtype, seed, 0), KOALA_OK);
    koala_dtype sd;
    size_t per, count;
    assert_int_equal(koala_state_layout(lib.opt, &per, &sd, &count), KOALA_OK);
    assert_int_equal(per, method == KOALA_VANILLA ? 0 : 2);
    assert_int_equal(sd, dtype == KOALA_FLOAT64 ? KOALA_FLOAT64 : KOALA_FLOAT32);
    assert_int_equal(count, own.scalar_count);
    assert_true(own.scalars[KOALA_SCALAR_LR_SCALE] == 1.0);

    test_step step;
    step_alloc(&step, &layout);
    const unsigned steps = 30, save_at = 12;
    test_pair from_own, from_lib; /* library-owned loading own's checkpoint, and vice versa */
    int forks = 0;
    for (unsigned k = 0; k < steps; ++k) {
        if (k == 17) { /* an lr change goes through both */
            pair_set_lr(&lib, 0.5);
            pair_set_lr(&own, 0.5);
            if (forks) {
                pair_set_lr(&from_own, 0.5);
                pair_set_lr(&from_lib, 0.5);
            }
        }
        move_state(&own);
        if (forks) move_state(&from_lib);
        step_fill(&step, &layout, seed, k, 15, 0);
        assert_int_equal(pair_predict(&lib), KOALA_OK);
        assert_int_equal(pair_predict(&own), KOALA_OK);
        expect_same(&lib, &own, "predict", k, name);
        move_state(&own);
        assert_int_equal(pair_update(&lib, &step), KOALA_OK);
        step_fill(&step, &layout, seed, k, 15, 0);
        assert_int_equal(pair_update(&own, &step), KOALA_OK);
        expect_same(&lib, &own, "update", k, name);
        if (forks) {
            step_fill(&step, &layout, seed, k, 15, 0);
            predict_update(&from_own, &step);
            step_fill(&step, &layout, seed, k, 15, 0);
            predict_update(&from_lib, &step);
            expect_same(&lib, &from_own, "update (library state from a caller-state checkpoint)", k, name);
            expect_same(&lib, &from_lib, "update (caller state from a library checkpoint)", k, name);
        }
        if (k + 1 == save_at) {
            size_t n_lib, n_own;
            unsigned char *ck_lib = save_state(lib.opt, &n_lib), *ck_own = save_state(own.opt, &n_own);
            if (n_lib != n_own || memcmp(ck_lib, ck_own, n_lib) != 0)
                fail_msg("%s: the checkpoints of caller and library state differ", name);
            cfg.caller_state = 0;
            assert_int_equal(pair_init(&from_own, &cfg, &layout, dtype, seed + 1, 0), KOALA_OK);
            cfg.caller_state = 1;
            assert_int_equal(pair_init(&from_lib, &cfg, &layout, dtype, seed + 2, 0), KOALA_OK);
            if (koala_state_load(from_own.opt, ck_own, n_own, NULL) != KOALA_OK)
                fail_msg("%s: load of a caller-state checkpoint: %s", name, koala_last_error());
            if (koala_state_load(from_lib.opt, ck_lib, n_lib, NULL) != KOALA_OK)
                fail_msg("%s: load into caller state: %s", name, koala_last_error());
            /* the load wrote the caller's memory */
            for (size_t b = 0; b < own.state_buffers * layout.n; ++b)
                assert_memory_equal(from_lib.state[b], own.state[b],
                                    layout.sizes[b % layout.n] * dtype_bytes(own.state_dtype));
            assert_memory_equal(from_lib.scalars, own.scalars, own.scalar_count * sizeof(double));
            buffers_copy(from_own.params, lib.params, &layout, dtype);
            buffers_copy(from_lib.params, lib.params, &layout, dtype);
            forks = 1;
            free(ck_lib);
            free(ck_own);
        }
    }
    size_t n1, n2;
    unsigned char *c1 = save_state(lib.opt, &n1), *c2 = save_state(own.opt, &n2);
    if (n1 != n2 || memcmp(c1, c2, n1) != 0) fail_msg("%s: final checkpoints differ", name);
    free(c1);
    free(c2);
    step_free(&step, &layout);
    pair_free(&from_own);
    pair_free(&from_lib);
    pair_free(&own);
    pair_free(&lib);
    layout_free(&layout);
}

static void test_caller_equals_library(void **state) {
    (void)state;
    for (size_t m = 0; m < 3; ++m)
        for (size_t d = 0; d < 4; ++d) caller_vs_library(methods[m], dtypes[d]);
}

/* scalars[KOALA_SCALAR_LR_SCALE] = s with cfg.lr = 0.5 against
 * koala_set_lr(0.5 s) on library state, over a schedule of s. */
static void test_lr_scale_slot(void **state) {
    (void)state;
    static const double scales[] = {1.0, 0.6, 0.6, 1.5, 0.0, 0.0, 0.2, 1.0};
    for (size_t m = 0; m < 3; ++m)
        for (size_t d = 0; d < 2; ++d) {
            const koala_method method = methods[m];
            const koala_dtype dtype = dtypes[d];
            test_layout layout = layout_random(300 + m, 8, 0);
            koala_config cfg;
            koala_config_init(&cfg, method);
            cfg.lr = 0.5;
            cfg.weight_decay = 1e-3;
            test_pair lib, own;
            assert_int_equal(pair_init(&lib, &cfg, &layout, dtype, 301, 1), KOALA_OK);
            cfg.caller_state = 1;
            assert_int_equal(pair_init(&own, &cfg, &layout, dtype, 301, 0), KOALA_OK);
            test_step step;
            step_alloc(&step, &layout);
            void **before = buffers_alloc(&layout, dtype);
            for (unsigned k = 0; k < sizeof scales / sizeof scales[0]; ++k) {
                own.scalars[KOALA_SCALAR_LR_SCALE] = scales[k];
                pair_set_lr(&lib, 0.5 * scales[k]); /* the reference follows lib */
                assert_int_equal(pair_predict(&lib), KOALA_OK);
                assert_int_equal(pair_predict(&own), KOALA_OK);
                buffers_copy(before, own.params, &layout, dtype);
                step_fill(&step, &layout, 301, k, 0, 0);
                assert_int_equal(pair_update(&lib, &step), KOALA_OK);
                step_fill(&step, &layout, 301, k, 0, 0);
                assert_int_equal(pair_update(&own, &step), KOALA_OK);
                if (!buffers_equal(lib.params, own.params, &layout, dtype))
                    fail_msg("%s %s: step %u with lr scale %g differs from koala_set_lr(%g)",
                             method_name(method), dtype_name(dtype), k, scales[k], 0.5 * scales[k]);
                /* and it is the reference's step with lr = 0.5 s */
                const double e = pair_param_error(&lib);
                if (!(e <= (dtype == KOALA_FLOAT64 ? 1e-12 : 1e-5)))
                    fail_msg("%s %s: step %u: %g from the reference", method_name(method),
                             dtype_name(dtype), k, e);
                /* s = 0: no step (KOALA-M's predict still moves x by v) */
                if (scales[k] == 0.0 && !buffers_equal(before, own.params, &layout, dtype))
                    fail_msg("%s %s: lr scale 0 moved the parameters", method_name(method), dtype_name(dtype));
                if (scales[k] != 0.0 && buffers_equal(before, own.params, &layout, dtype))
                    fail_msg("%s %s: lr scale %g did not move the parameters", method_name(method),
                             dtype_name(dtype), scales[k]);
            }
            buffers_free(before, &layout);
            step_free(&step, &layout);
            pair_free(&own);
            pair_free(&lib);
            layout_free(&layout);
        }
}

/* A caller's lr multiplier that is negative or not finite is refused by the
 * update (INVALID_ARGUMENT naming the slot), with nothing changed. */
static void test_bad_lr_scale_slot(void **state) {
    (void)state;
    static const double bad[] = {NAN, INFINITY, -1.0};
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; ++b) {
        test_layout layout = layout_random(400 + b, 4, 0);
        koala_config cfg;
        koala_config_init(&cfg, KOALA_MOMENTUM);
        cfg.caller_state = 1;
        test_pair own;
        assert_int_equal(pair_init(&own, &cfg, &layout, KOALA_FLOAT64, 401, 0), KOALA_OK);
        test_step step;
        step_alloc(&step, &layout);
        assert_int_equal(pair_predict(&own), KOALA_OK);
        own.scalars[KOALA_SCALAR_LR_SCALE] = bad[b];
        void **before = buffers_alloc(&layout, KOALA_FLOAT64);
        buffers_copy(before, own.params, &layout, KOALA_FLOAT64);
        size_t n_before, n_after;
        unsigned char *s_before = save_state(own.opt, &n_before);
        step_fill(&step, &layout, 401, 0, 0, 0);
        pair_load_grads(&own, &step);
        assert_int_equal(koala_update(own.opt, 0.5, 0.3, own.params, own.grad_args, NULL),
                         KOALA_ERROR_INVALID_ARGUMENT);
        assert_non_null(strstr(koala_last_error(), "scalars[10]"));
        unsigned char *s_after = save_state(own.opt, &n_after);
        assert_int_equal(n_before, n_after);
        assert_memory_equal(s_before, s_after, n_before);
        assert_true(buffers_equal(before, own.params, &layout, KOALA_FLOAT64));
        free(s_before);
        free(s_after);
        buffers_free(before, &layout);
        step_free(&step, &layout);
        pair_free(&own);
        layout_free(&layout);
    }
}

/* The calls that need state refuse an unbound caller-state optimizer, and
 * the caller-state entries refuse a library-owned one. */
static void test_unbound_and_wrong_mode(void **state) {
    (void)state;
    const size_t sizes[] = {4, 3};
    for (size_t m = 0; m < 3; ++m) {
        koala_config cfg;
        koala_config_init(&cfg, methods[m]);
        cfg.caller_state = 1;
        koala_optimizer *opt = NULL;
        assert_int_equal(koala_create(&cfg, 2, sizes, KOALA_FLOAT32, KOALA_HOST, &opt), KOALA_OK);
        float a[4] = {1, 2, 3, 4}, b[3] = {1, 2, 3};
        void *params[] = {a, b};
        const void *grads[] = {a, b};
        assert_int_equal(koala_predict(opt, params, NULL), KOALA_ERROR_BAD_STATE);
        assert_int_equal(koala_update(opt, 1.0, 1.0, params, grads, NULL), KOALA_ERROR_BAD_STATE);
        koala_info info;
        info.struct_size = sizeof info;
        assert_int_equal(koala_get_info(opt, NULL, &info), KOALA_ERROR_BAD_STATE);
        unsigned char buf[4096];
        size_t n = 0;
        assert_int_equal(koala_state_size(opt, &n), KOALA_OK);
        assert_true(n <= sizeof buf);
        assert_int_equal(koala_state_save(opt, buf, sizeof buf, NULL), KOALA_ERROR_BAD_STATE);
        koala_destroy(opt);

        cfg.caller_state = 0;
        assert_int_equal(koala_create(&cfg, 2, sizes, KOALA_FLOAT32, KOALA_HOST, &opt), KOALA_OK);
        double scalars[256];
        float s0[4], s1[3], s2[4], s3[3];
        void *bufs[] = {s0, s1, s2, s3};
        assert_int_equal(koala_state_init(opt, bufs, scalars, NULL), KOALA_ERROR_INVALID_ARGUMENT);
        assert_int_equal(koala_bind_state(opt, bufs, scalars), KOALA_ERROR_INVALID_ARGUMENT);
        koala_destroy(opt);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_caller_equals_library),
        cmocka_unit_test(test_lr_scale_slot),
        cmocka_unit_test(test_bad_lr_scale_slot),
        cmocka_unit_test(test_unbound_and_wrong_mode),
    };
    return cmocka_run_group_tests_name("caller_state", tests, NULL, NULL);
}
