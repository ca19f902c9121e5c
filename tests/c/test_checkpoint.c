/*
 * test_checkpoint.c - koala_state_size / save / load.
 *
 *  - Round trip: save after k steps (between update and predict, and
 *    between predict and update), load into a FRESH optimizer created with
 *    the default config (the checkpoint restores config and lr), continue:
 *    parameters and state are bit-identical (memcmp) to the run that never
 *    stopped. Both methods, both dtypes.
 *  - Corruption: every single byte flipped (two patterns), every truncation,
 *    trailing garbage, fields rewritten with a re-sealed checksum, and
 *    checkpoints of another method, dtype or layout: KOALA_ERROR_BAD_STATE
 *    with a message, and the target optimizer unchanged (its own saved
 *    bytes compare equal before and after).
 *  - Saving into a too-small buffer: KOALA_ERROR_INVALID_ARGUMENT, the
 *    buffer untouched.
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

/* A config far from the defaults, so a load that forgot the config shows. */
static void custom_config(koala_method method, koala_config *cfg) {
    koala_config_init(cfg, method);
    cfg->lr = 0.7;
    cfg->weight_decay = 5e-4;
    cfg->alpha_r = 0.8;
    cfg->sigma = 0.1;
    cfg->q = 0.6;
    cfg->sw = 0.2;
    cfg->sc = 0.03;
    cfg->sv = 0.15;
    cfg->a = 0.8;
    cfg->qw = 0.02;
    cfg->qv = 0.005;
}

/* ---- round trip ---------------------------------------------------------- */

enum { SAVE_AFTER_UPDATE = 0, SAVE_AFTER_PREDICT = 1 };

static void round_trip(const test_variant *v, int phase) {
    enum { K = 7, TOTAL = 20 };
    koala_config cfg;
    custom_config(v->method, &cfg);
    const size_t sizes[] = {3, 40000, 1, 7, 32769};
    test_layout layout = layout_make(5, sizes);
    test_pair run;
    assert_int_equal(pair_init(&run, &cfg, &layout, v->dtype, 3, 0), KOALA_OK);
    test_step step;
    step_alloc(&step, &layout);

    unsigned char *ckpt = NULL;
    size_t ckpt_size = 0;
    void **params_at_save = buffers_alloc(&layout, v->dtype);
    for (unsigned k = 0; k < TOTAL; ++k) {
        if (k == 4) pair_set_lr(&run, 0.35); /* the checkpoint must carry the new lr */
        assert_int_equal(pair_predict(&run), KOALA_OK);
        if (k == K && phase == SAVE_AFTER_PREDICT) {
            ckpt = save_state(run.opt, &ckpt_size);
            buffers_copy(params_at_save, run.params, &layout, v->dtype);
        }
        step_fill(&step, &layout, 3, k, 10, k == 12);
        assert_int_equal(pair_update(&run, &step), KOALA_OK);
        if (k == K && phase == SAVE_AFTER_UPDATE) {
            ckpt = save_state(run.opt, &ckpt_size);
            buffers_copy(params_at_save, run.params, &layout, v->dtype);
        }
    }

    /* A fresh optimizer with the default config and other parameters. */
    koala_config defaults;
    koala_config_init(&defaults, v->method);
    test_pair resumed;
    assert_int_equal(pair_init(&resumed, &defaults, &layout, v->dtype, 999, 0), KOALA_OK);
    assert_int_equal(koala_state_load(resumed.opt, ckpt, ckpt_size, NULL), KOALA_OK);
    buffers_copy(resumed.params, params_at_save, &layout, v->dtype);
    /* The loaded optimizer saves the very bytes it loaded. */
    size_t again_size;
    unsigned char *again = save_state(resumed.opt, &again_size);
    assert_int_equal(again_size, ckpt_size);
    assert_memory_equal(again, ckpt, ckpt_size);
    free(again);
    /* Saved after update K: resume at predict K+1. Saved after predict K:
     * the loaded optimizer is predicted already, so resume at update K. */
    const unsigned resume = phase == SAVE_AFTER_UPDATE ? K + 1 : K;
    for (unsigned k = resume; k < TOTAL; ++k) {
        if (k == K) /* (SAVE_AFTER_PREDICT) a predict now is out of order */
            assert_int_equal(koala_predict(resumed.opt, resumed.params, NULL),
                             KOALA_ERROR_BAD_STATE);
        else
            assert_int_equal(pair_predict(&resumed), KOALA_OK);
        step_fill(&step, &layout, 3, k, 10, k == 12);
        assert_int_equal(pair_update(&resumed, &step), KOALA_OK);
    }
    if (!buffers_equal(run.params, resumed.params, &layout, v->dtype))
        fail_msg("%s: parameters differ after resuming", v->name);
    size_t a_size, b_size;
    unsigned char *a = save_state(run.opt, &a_size);
    unsigned char *b = save_state(resumed.opt, &b_size);
    assert_int_equal(a_size, b_size);
    assert_memory_equal(a, b, a_size);
    free(a);
    free(b);
    free(ckpt);
    buffers_free(params_at_save, &layout);
    step_free(&step, &layout);
    pair_free(&run);
    pair_free(&resumed);
    layout_free(&layout);
}

static void test_round_trip_after_update(void **state) {
    round_trip(*state, SAVE_AFTER_UPDATE);
}

static void test_round_trip_after_predict(void **state) {
    round_trip(*state, SAVE_AFTER_PREDICT);
}

/* ---- corruption ------------------------------------------------------------ */

/* An optimizer with some history, for a given layout. */
static test_pair *trained(const test_variant *v, size_t n, const size_t *sizes, test_layout *layout,
                          uint64_t seed) {
    koala_config cfg;
    custom_config(v->method, &cfg);
    *layout = layout_make(n, sizes);
    test_pair *pair = malloc(sizeof *pair);
    assert_non_null(pair);
    assert_int_equal(pair_init(pair, &cfg, layout, v->dtype, seed, 0), KOALA_OK);
    test_step step;
    step_alloc(&step, layout);
    for (unsigned k = 0; k < 3; ++k) {
        assert_int_equal(pair_predict(pair), KOALA_OK);
        step_fill(&step, layout, seed, k, 0, 0);
        assert_int_equal(pair_update(pair, &step), KOALA_OK);
    }
    step_free(&step, layout);
    return pair;
}

static void drop(test_pair *pair, test_layout *layout) {
    pair_free(pair);
    free(pair);
    layout_free(layout);
}

/* Loads `buf` into `target`, expecting BAD_STATE, a message, and no change. */
static void expect_rejected(koala_optimizer *target, const void *buf, size_t size,
                            const char *what, size_t where) {
    size_t before_size, after_size;
    unsigned char *before = save_state(target, &before_size);
    const koala_status st = koala_state_load(target, buf, size, NULL);
    if (st != KOALA_ERROR_BAD_STATE)
        fail_msg("%s at %zu: status %d, expected KOALA_ERROR_BAD_STATE", what, where, (int)st);
    const char *msg = koala_last_error();
    if (!msg || !*msg) fail_msg("%s at %zu: no message", what, where);
    unsigned char *after = save_state(target, &after_size);
    if (before_size != after_size || memcmp(before, after, before_size) != 0)
        fail_msg("%s at %zu: the target optimizer changed", what, where);
    free(before);
    free(after);
}

static void test_byte_flips_and_truncation(void **state) {
    const test_variant *v = *state;
    const size_t sizes[] = {3, 5};
    test_layout src_layout, dst_layout;
    test_pair *src = trained(v, 2, sizes, &src_layout, 11);
    test_pair *dst = trained(v, 2, sizes, &dst_layout, 12); /* same layout, other history */
    size_t size;
    unsigned char *good = save_state(src->opt, &size);
    unsigned char *bad = malloc(size + 64);
    assert_non_null(bad);

    /* Every byte: header, sizes, config, scalars, phase, buffers, checksum. */
    static const unsigned char flips[] = {0x01, 0x80, 0xff};
    for (size_t f = 0; f < sizeof flips; ++f)
        for (size_t i = 0; i < size; ++i) {
            memcpy(bad, good, size);
            bad[i] ^= flips[f];
            expect_rejected(dst->opt, bad, size, "flipped byte", i);
        }
    /* Every truncation, down to nothing. */
    for (size_t n = 0; n < size; ++n) expect_rejected(dst->opt, good, n, "truncated to", n);
    /* Trailing garbage of a few lengths and fills. */
    static const size_t extra[] = {1, 7, 8, 9, 64};
    for (size_t e = 0; e < sizeof extra / sizeof extra[0]; ++e) {
        memcpy(bad, good, size);
        memset(bad + size, e % 2 ? 0x00 : 0xa5, extra[e]);
        expect_rejected(dst->opt, bad, size + extra[e], "trailing garbage", extra[e]);
    }
    /* The good checkpoint still loads (the rejections were not flukes). */
    assert_int_equal(koala_state_load(dst->opt, good, size, NULL), KOALA_OK);
    free(good);
    free(bad);
    drop(src, &src_layout);
    drop(dst, &dst_layout);
}

static void test_other_method_dtype_layout(void **state) {
    const test_variant *v = *state;
    const size_t sizes[] = {3, 5};
    test_layout layout;
    test_pair *target = trained(v, 2, sizes, &layout, 21);

    /* Sources that differ in exactly one of method, dtype, layout. */
    const test_variant other_method = {"", v->method == KOALA_VANILLA ? KOALA_MOMENTUM : KOALA_VANILLA,
                                  v->dtype};
    const test_variant other_dtype = {"", v->method,
                                 v->dtype == KOALA_FLOAT32 ? KOALA_FLOAT64 : KOALA_FLOAT32};
    const size_t swapped[] = {5, 3}, longer[] = {3, 5, 1}, shorter[] = {3}, bigger[] = {3, 6};
    struct {
        const char *what;
        const test_variant *v;
        size_t n;
        const size_t *sizes;
    } sources[] = {
        {"other method", &other_method, 2, sizes}, {"other dtype", &other_dtype, 2, sizes},
        {"sizes swapped", v, 2, swapped},          {"one more tensor", v, 3, longer},
        {"one tensor less", v, 1, shorter},        {"one element more", v, 2, bigger},
    };
    for (size_t i = 0; i < sizeof sources / sizeof sources[0]; ++i) {
        test_layout src_layout;
        test_pair *src = trained(sources[i].v, sources[i].n, sources[i].sizes, &src_layout, 22);
        size_t size;
        unsigned char *ckpt = save_state(src->opt, &size);
        expect_rejected(target->opt, ckpt, size, sources[i].what, i);
        free(ckpt);
        drop(src, &src_layout);
    }
    drop(target, &layout);
}

/* The checksum of checkpoint.h's format (FNV-1a over little-endian 64-bit
 * words, zero-padded tail, seeded with the length, final xor-shift), so the
 * test can rewrite a field and re-seal it: such a checkpoint passes the
 * checksum and must still be rejected by the field checks. */
static uint64_t format_checksum(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
    }
    if (i < n) {
        uint64_t w = 0;
        memcpy(&w, p + i, n - i);
        h = (h ^ w) * 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

static void reseal(unsigned char *buf, size_t size) {
    const uint64_t sum = format_checksum(buf, size - 8);
    memcpy(buf + size - 8, &sum, 8);
}

static void test_resealed_bad_fields(void **state) {
    const test_variant *v = *state;
    const size_t sizes[] = {3, 5};
    test_layout src_layout, dst_layout;
    test_pair *src = trained(v, 2, sizes, &src_layout, 31);
    test_pair *dst = trained(v, 2, sizes, &dst_layout, 32);
    size_t size;
    unsigned char *good = save_state(src->opt, &size);
    unsigned char *bad = malloc(size);
    assert_non_null(bad);
    /* Offsets from checkpoint.h: magic 0, version 8, method 12, dtype 16,
     * buffers 20, n_tensors 24, sizes 32.., then 12 config doubles, 6
     * filter doubles, steps, skipped, phase u32, zero u32. */
    const size_t n = 2, config = 32 + 8 * n, filter = config + 8 * 12, phase = filter + 8 * 6 + 16;

    /* Sanity: re-sealing an unmodified copy gives the same bytes. */
    memcpy(bad, good, size);
    reseal(bad, size);
    assert_memory_equal(bad, good, size);

    enum { BOTH, MOMENTUM_ONLY, VANILLA_ONLY }; /* fields a method ignores are not validated */
    struct {
        const char *what;
        size_t offset;
        int width; /* 4 or 8 bytes (integers) or -8 (a double) */
        double value;
        int methods;
    } edits[] = {
        {"format version 2", 8, 4, 2, BOTH},
        {"unknown method 7", 12, 4, 7, BOTH},
        {"unknown dtype 3", 16, 4, 3, BOTH},
        {"buffers per tensor 1", 20, 4, 1, BOTH},
        {"n_tensors 3", 24, 8, 3, BOTH},
        {"first size 4", 32, 8, 4, BOTH},
        {"negative lr", config + 0 * 8, -8, -1.0, BOTH},
        {"NaN weight decay", config + 1 * 8, -8, NAN, BOTH},
        {"alpha_r 1", config + 3 * 8, -8, 1.0, BOTH},
        {"negative q", config + 5 * 8, -8, -1.0, VANILLA_ONLY},
        {"sc^2 > sw sv", config + 7 * 8, -8, 10.0, MOMENTUM_ONLY},
        {"a = 1", config + 9 * 8, -8, 1.0, MOMENTUM_ONLY},
        {"NaN sigma", filter + 0 * 8, -8, NAN, VANILLA_ONLY},
        {"negative sigma", filter + 0 * 8, -8, -1.0, VANILLA_ONLY},
        {"negative p00", filter + 1 * 8, -8, -1.0, MOMENTUM_ONLY},
        {"Inf p01", filter + 2 * 8, -8, INFINITY, MOMENTUM_ONLY},
        {"negative R", filter + 4 * 8, -8, -0.5, BOTH},
        {"NaN qw", filter + 5 * 8, -8, NAN, MOMENTUM_ONLY},
        {"phase 2", phase, 4, 2, BOTH},
        {"nonzero pad", phase + 4, 4, 1, BOTH},
    };
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; ++i) {
        if (edits[i].methods == (v->method == KOALA_MOMENTUM ? VANILLA_ONLY : MOMENTUM_ONLY))
            continue;
        memcpy(bad, good, size);
        if (edits[i].width == 4) {
            const uint32_t u = (uint32_t)edits[i].value;
            memcpy(bad + edits[i].offset, &u, 4);
        } else if (edits[i].width == 8) {
            const uint64_t u = (uint64_t)edits[i].value;
            memcpy(bad + edits[i].offset, &u, 8);
        } else {
            memcpy(bad + edits[i].offset, &edits[i].value, 8);
        }
        reseal(bad, size);
        expect_rejected(dst->opt, bad, size, edits[i].what, edits[i].offset);
    }
    free(good);
    free(bad);
    drop(src, &src_layout);
    drop(dst, &dst_layout);
}

static void test_save_too_small(void **state) {
    const test_variant *v = *state;
    const size_t sizes[] = {3, 5};
    test_layout layout;
    test_pair *pair = trained(v, 2, sizes, &layout, 41);
    size_t size;
    assert_int_equal(koala_state_size(pair->opt, &size), KOALA_OK);
    unsigned char *buf = malloc(size);
    assert_non_null(buf);
    const size_t tries[] = {0, 1, size / 2, size - 8, size - 1};
    for (size_t i = 0; i < sizeof tries / sizeof tries[0]; ++i) {
        memset(buf, 0x5a, size);
        assert_int_equal(koala_state_save(pair->opt, buf, tries[i], NULL),
                         KOALA_ERROR_INVALID_ARGUMENT);
        const char *msg = koala_last_error();
        assert_true(msg && *msg);
        for (size_t j = 0; j < size; ++j)
            if (buf[j] != 0x5a) fail_msg("save with size %zu wrote byte %zu", tries[i], j);
    }
    /* Exactly koala_state_size bytes is enough. */
    assert_int_equal(koala_state_save(pair->opt, buf, size, NULL), KOALA_OK);
    free(buf);
    drop(pair, &layout);
}

int main(void) {
    enum { N = sizeof test_variants / sizeof test_variants[0], KINDS = 6 };
    struct CMUnitTest tests[KINDS * N];
    static char names[KINDS * N][80];
    const struct {
        const char *name;
        CMUnitTestFunction fn;
    } kinds[KINDS] = {
        {"round trip saved after update", test_round_trip_after_update},
        {"round trip saved after predict", test_round_trip_after_predict},
        {"byte flips, truncation, trailing bytes rejected", test_byte_flips_and_truncation},
        {"other method, dtype, layout rejected", test_other_method_dtype_layout},
        {"re-sealed bad fields rejected", test_resealed_bad_fields},
        {"save into a too-small buffer", test_save_too_small},
    };
    size_t t = 0;
    for (size_t k = 0; k < KINDS; ++k)
        for (size_t i = 0; i < N; ++i, ++t) {
            struct CMUnitTest c = cmocka_unit_test_prestate(kinds[k].fn, (void *)&test_variants[i]);
            snprintf(names[t], sizeof names[t], "%s, %s", kinds[k].name, test_variants[i].name);
            c.name = names[t];
            tests[t] = c;
        }
    return _cmocka_run_group_tests("checkpoint", tests, t, NULL, NULL);
}
