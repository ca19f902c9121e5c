/*
 * test_nonfinite_order.c - steps that must change nothing.
 *
 *  - A NaN or Inf loss, loss_var or gradient element: koala_update returns
 *    KOALA_ERROR_NOT_FINITE with a message; parameters, gradients and the
 *    optimizer's state (its checkpoint bytes and koala_get_info) stay
 *    byte-identical; the optimizer stays predicted, so retrying with finite
 *    data works, and the run then matches the float64 reference that never
 *    saw the bad step.
 *  - Calls out of order (update before predict, predict twice, update
 *    twice): KOALA_ERROR_BAD_STATE, nothing changed.
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

/* Everything a failed call must leave alone. */
typedef struct snapshot {
    unsigned char *state;
    size_t state_size;
    koala_info info;
    void **params;
    void **grads;
} snapshot;

static koala_info get_info(const koala_optimizer *opt) {
    koala_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    assert_int_equal(koala_get_info(opt, NULL, &info), KOALA_OK);
    return info;
}

static void take(snapshot *s, const test_pair *pair) {
    s->state = save_state(pair->opt, &s->state_size);
    s->info = get_info(pair->opt);
    s->params = buffers_alloc(pair->layout, pair->dtype);
    s->grads = buffers_alloc(pair->layout, pair->dtype);
    buffers_copy(s->params, pair->params, pair->layout, pair->dtype);
    buffers_copy(s->grads, pair->grads, pair->layout, pair->dtype);
}

static void expect_unchanged(const snapshot *s, const test_pair *pair, const char *what) {
    size_t size;
    unsigned char *now = save_state(pair->opt, &size);
    const koala_info info = get_info(pair->opt);
    if (size != s->state_size || memcmp(now, s->state, size) != 0)
        fail_msg("%s: the optimizer state changed", what);
    if (memcmp(&info, &s->info, sizeof info) != 0) fail_msg("%s: koala_get_info changed", what);
    if (!buffers_equal(s->params, pair->params, pair->layout, pair->dtype))
        fail_msg("%s: the parameters changed", what);
    if (!buffers_equal(s->grads, pair->grads, pair->layout, pair->dtype))
        fail_msg("%s: the gradients changed", what);
    free(now);
}

static void release(snapshot *s, const test_pair *pair) {
    free(s->state);
    buffers_free(s->params, pair->layout);
    buffers_free(s->grads, pair->layout);
}

static void set_element(void *buf, size_t j, koala_dtype dtype, double v) {
    if (dtype == KOALA_FLOAT32)
        ((float *)buf)[j] = (float)v;
    else
        ((double *)buf)[j] = v;
}

static void expect_message(const char *what) {
    const char *msg = koala_last_error();
    if (!msg || !*msg) fail_msg("%s: koala_last_error() is empty", what);
}

/* One bad input: which number is poisoned and with what. */
typedef struct poison {
    const char *name;
    int target;    /* 0 loss, 1 loss_var, 2 a gradient element */
    double value;
    size_t tensor; /* gradient: tensor index and element */
    size_t element;
} poison;

static void test_non_finite(void **state) {
    const test_variant *v = *state;
    koala_config cfg;
    koala_config_init(&cfg, v->method);
    cfg.weight_decay = 5e-4;
    /* Tensor 2 is split into 3 chunks and takes the OpenMP path. */
    const size_t sizes[] = {5, 1, 70001, 13};
    test_layout layout = layout_make(4, sizes);
    test_pair pair;
    assert_int_equal(pair_init(&pair, &cfg, &layout, v->dtype, 77, 1), KOALA_OK);
    test_step step;
    step_alloc(&step, &layout);
    for (unsigned k = 0; k < 4; ++k) {
        assert_int_equal(pair_predict(&pair), KOALA_OK);
        step_fill(&step, &layout, 77, k, 0, 0);
        assert_int_equal(pair_update(&pair, &step), KOALA_OK);
    }
    const poison poisons[] = {
        {"loss NaN", 0, NAN, 0, 0},
        {"loss +Inf", 0, INFINITY, 0, 0},
        {"loss -Inf", 0, -INFINITY, 0, 0},
        {"loss_var NaN", 1, NAN, 0, 0},
        {"loss_var +Inf", 1, INFINITY, 0, 0},
        {"grad NaN, first tensor", 2, NAN, 0, 0},
        {"grad +Inf, 1-element tensor", 2, INFINITY, 1, 0},
        {"grad -Inf, third chunk of the big tensor", 2, -INFINITY, 2, 70000},
        {"grad NaN, second chunk of the big tensor", 2, NAN, 2, 40000},
        {"grad NaN, last tensor", 2, NAN, 3, 12},
    };
    const size_t n_poisons = sizeof poisons / sizeof poisons[0];
    for (unsigned k = 4; k < 4 + 2 * (unsigned)n_poisons; ++k) {
        assert_int_equal(pair_predict(&pair), KOALA_OK);
        step_fill(&step, &layout, 77, k, 0, 0);
        if (k % 2 == 0) { /* every other step carries a bad input first */
            const poison *p = &poisons[(k - 4) / 2];
            pair_load_grads(&pair, &step);
            double loss = step.loss, loss_var = step.loss_var;
            if (p->target == 0) loss = p->value;
            if (p->target == 1) loss_var = p->value;
            if (p->target == 2) set_element(pair.grads[p->tensor], p->element, v->dtype, p->value);
            snapshot s;
            take(&s, &pair);
            const koala_status st =
                koala_update(pair.opt, loss, loss_var, pair.params, pair.grad_args, NULL);
            if (st != KOALA_ERROR_NOT_FINITE)
                fail_msg("%s, %s: status %d, expected KOALA_ERROR_NOT_FINITE", v->name, p->name,
                         (int)st);
            expect_message(p->name);
            expect_unchanged(&s, &pair, p->name);
            /* The same through koala_update_ptr with float32 and float64 losses. */
            const float l32 = (float)loss, v32 = (float)loss_var;
            assert_int_equal(koala_update_ptr(pair.opt, &l32, &v32, KOALA_FLOAT32, pair.params,
                                              pair.grad_args, NULL),
                             KOALA_ERROR_NOT_FINITE);
            expect_unchanged(&s, &pair, p->name);
            assert_int_equal(koala_update_ptr(pair.opt, &loss, &loss_var, KOALA_FLOAT64,
                                              pair.params, pair.grad_args, NULL),
                             KOALA_ERROR_NOT_FINITE);
            expect_unchanged(&s, &pair, p->name);
            release(&s, &pair);
        }
        /* Retry with the finite data: still predicted, so update succeeds. */
        assert_int_equal(pair_update(&pair, &step), KOALA_OK);
        const double tol = v->dtype == KOALA_FLOAT64 ? 1e-9 : 1e-4; /* as test_reference_match */
        const char *what = NULL;
        const double e_info = pair_info_error(&pair, &what);
        if (!(e_info <= tol)) fail_msg("%s: after step %u, %s differs by %g", v->name, k, what, e_info);
        const double e_par = pair_param_error(&pair);
        if (!(e_par <= tol)) fail_msg("%s: after step %u, params differ by %g", v->name, k, e_par);
    }
    const koala_info info = get_info(pair.opt);
    assert_int_equal(info.steps, 4 + 2 * n_poisons); /* failed calls are not steps */
    assert_int_equal(info.skipped_steps, 0);        /* host: reported, not skipped */
    step_free(&step, &layout);
    pair_free(&pair);
    layout_free(&layout);
}

static void test_call_order(void **state) {
    const test_variant *v = *state;
    koala_config cfg;
    koala_config_init(&cfg, v->method);
    const size_t sizes[] = {3, 70000};
    test_layout layout = layout_make(2, sizes);
    test_pair pair;
    assert_int_equal(pair_init(&pair, &cfg, &layout, v->dtype, 5, 0), KOALA_OK);
    test_step step;
    step_alloc(&step, &layout);
    step_fill(&step, &layout, 5, 0, 0, 0);
    pair_load_grads(&pair, &step);
    const double loss = step.loss, loss_var = step.loss_var;
    snapshot s;

    /* 1. update on a fresh optimizer (no predict yet). */
    take(&s, &pair);
    assert_int_equal(koala_update(pair.opt, loss, loss_var, pair.params, pair.grad_args, NULL),
                     KOALA_ERROR_BAD_STATE);
    expect_message("update before predict");
    expect_unchanged(&s, &pair, "update before predict");
    assert_int_equal(koala_update_ptr(pair.opt, &loss, &loss_var, KOALA_FLOAT64, pair.params,
                                      pair.grad_args, NULL),
                     KOALA_ERROR_BAD_STATE);
    expect_unchanged(&s, &pair, "update_ptr before predict");
    release(&s, &pair);

    /* 2. predict twice: the second one must not move x or P again. */
    assert_int_equal(koala_predict(pair.opt, pair.params, NULL), KOALA_OK);
    take(&s, &pair);
    assert_int_equal(koala_predict(pair.opt, pair.params, NULL), KOALA_ERROR_BAD_STATE);
    expect_message("predict twice");
    expect_unchanged(&s, &pair, "predict twice");
    release(&s, &pair);

    /* 3. update twice. */
    assert_int_equal(koala_update(pair.opt, loss, loss_var, pair.params, pair.grad_args, NULL),
                     KOALA_OK);
    take(&s, &pair);
    assert_int_equal(koala_update(pair.opt, loss, loss_var, pair.params, pair.grad_args, NULL),
                     KOALA_ERROR_BAD_STATE);
    expect_message("update twice");
    expect_unchanged(&s, &pair, "update twice");
    release(&s, &pair);

    /* 4. and the sequence goes on normally. */
    assert_int_equal(koala_predict(pair.opt, pair.params, NULL), KOALA_OK);
    assert_int_equal(koala_update(pair.opt, loss, loss_var, pair.params, pair.grad_args, NULL),
                     KOALA_OK);
    assert_int_equal(get_info(pair.opt).steps, 2);
    step_free(&step, &layout);
    pair_free(&pair);
    layout_free(&layout);
}

int main(void) {
    enum { N = sizeof test_variants / sizeof test_variants[0] };
    struct CMUnitTest tests[2 * N];
    static char names[2 * N][64];
    for (size_t i = 0; i < N; ++i) {
        struct CMUnitTest a = cmocka_unit_test_prestate(test_non_finite, (void *)&test_variants[i]);
        snprintf(names[i], sizeof names[i], "non-finite input changes nothing, %s",
                 test_variants[i].name);
        a.name = names[i];
        tests[i] = a;
        struct CMUnitTest b = cmocka_unit_test_prestate(test_call_order, (void *)&test_variants[i]);
        snprintf(names[N + i], sizeof names[N + i], "call order errors, %s", test_variants[i].name);
        b.name = names[N + i];
        tests[N + i] = b;
    }
    return _cmocka_run_group_tests("nonfinite_order", tests, 2 * N, NULL, NULL);
}
