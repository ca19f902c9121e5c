/*
 * test_update_ptr.c - koala_update_ptr with a float32 or float64 host loss
 * does exactly what koala_update does with the same numbers (float32 losses
 * widen exactly to double). (Thread-count independence: test_threads.c.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

static void make_config(koala_method method, koala_config *cfg) {
    koala_config_init(cfg, method);
    cfg->weight_decay = 5e-4; /* exercises the |x|^2 and g.x sums too */
    if (method == KOALA_VANILLA) cfg->sigma = 0.1;
}

/* ---- 1. koala_update_ptr == koala_update ----------------------------------- */

/* Out of line on purpose: Debian 12's GCC 12.2 at -O2/-O3 miscompiled the
 * inline form `step.loss = (double)loss32; step.loss_var = (double)var32;`
 * (inside an if, after float copies of the same fields): its SLP vectorizer
 * dropped both stores (fine with -O1 or -fno-tree-slp-vectorize; it
 * reproduces in a standalone file with no cmocka and no libkoala). */
static double __attribute__((noinline)) round_to_float(double v) {
    volatile float f = (float)v;
    return (double)f;
}

static void update_ptr_case(const test_variant *v, koala_dtype loss_dtype) {
    koala_config cfg;
    make_config(v->method, &cfg);
    test_layout layout = layout_random(31, 12, 0);
    test_pair by_value, by_ptr;
    assert_int_equal(pair_init(&by_value, &cfg, &layout, v->dtype, 31, 0), KOALA_OK);
    assert_int_equal(pair_init(&by_ptr, &cfg, &layout, v->dtype, 31, 0), KOALA_OK);
    test_step step;
    step_alloc(&step, &layout);
    for (unsigned k = 0; k < 25; ++k) {
        assert_int_equal(pair_predict(&by_value), KOALA_OK);
        assert_int_equal(pair_predict(&by_ptr), KOALA_OK);
        step_fill(&step, &layout, 31, k, 15, 0);
        /* A float32 caller holds float losses: round them first; koala_update
         * then gets their exact widening, koala_update_ptr the floats. */
        if (loss_dtype == KOALA_FLOAT32) {
            step.loss = round_to_float(step.loss);
            step.loss_var = round_to_float(step.loss_var);
        }
        const float loss32 = (float)step.loss, var32 = (float)step.loss_var;
        const double loss64 = step.loss, var64 = step.loss_var;
        assert_int_equal(pair_update(&by_value, &step), KOALA_OK);
        const void *lp = loss_dtype == KOALA_FLOAT32 ? (const void *)&loss32 : (const void *)&loss64;
        const void *vp = loss_dtype == KOALA_FLOAT32 ? (const void *)&var32 : (const void *)&var64;
        /* The same gradients (pair_update wrote them into by_value's buffers). */
        for (size_t i = 0; i < layout.n; ++i) {
            memcpy(by_ptr.grads[i], by_value.grads[i], layout.sizes[i] * dtype_bytes(v->dtype));
            by_ptr.grad_args[i] = step.kind[i] == GRAD_NULL ? NULL : by_ptr.grads[i];
        }
        assert_int_equal(koala_update_ptr(by_ptr.opt, lp, vp, loss_dtype, by_ptr.params,
                                          by_ptr.grad_args, NULL),
                         KOALA_OK);
        if (!buffers_equal(by_value.params, by_ptr.params, &layout, v->dtype))
            fail_msg("%s, loss %s: parameters differ after step %u", v->name,
                     loss_dtype == KOALA_FLOAT32 ? "float32" : "float64", k);
    }
    size_t na, nb;
    unsigned char *a = save_state(by_value.opt, &na);
    unsigned char *b = save_state(by_ptr.opt, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    free(a);
    free(b);
    step_free(&step, &layout);
    pair_free(&by_value);
    pair_free(&by_ptr);
    layout_free(&layout);
}

static void test_update_ptr(void **state) {
    const test_variant *v = *state;
    update_ptr_case(v, KOALA_FLOAT32);
    update_ptr_case(v, KOALA_FLOAT64);
}

int main(void) {
    enum { N = sizeof test_variants / sizeof test_variants[0] };
    struct CMUnitTest tests[N];
    static char names[N][64];
    for (size_t i = 0; i < N; ++i) {
        struct CMUnitTest a = cmocka_unit_test_prestate(test_update_ptr, (void *)&test_variants[i]);
        snprintf(names[i], sizeof names[i], "update_ptr equals update, %s", test_variants[i].name);
        a.name = names[i];
        tests[i] = a;
    }
    return _cmocka_run_group_tests("update_ptr", tests, N, NULL, NULL);
}
