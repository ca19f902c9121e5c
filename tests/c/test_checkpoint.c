/*
 * test_checkpoint.c - koala_state_size / save / load.
 *
 *  - Round trip: save after k steps (between update and predict, and
 *    between predict and update), load into a FRESH optimizer created with
 *    the default config (the checkpoint restores config and lr), continue:
 *    parameters and state are bit-identical (memcmp) to the run that never
 *    stopped. KOALA-V, KOALA-M and KOALA++, float32 and float64.
 *  - Corruption: every single byte flipped (three patterns), every
 *    truncation, trailing garbage, fields of the version-2 format rewritten
 *    with a re-sealed checksum (offsets from the format documented in
 *    src/checkpoint.h), and checkpoints of another method, dtype or layout:
 *    KOALA_ERROR_BAD_STATE with a message, and the target optimizer
 *    unchanged (its own saved bytes compare equal before and after).
 *  - Saving into a too-small buffer: KOALA_ERROR_INVALID_ARGUMENT, the
 *    buffer untouched.
 *  - Checkpoints written by libkoala 1.0 (tests/c/data, made by 1.0 itself):
 *    they load, the filter scalars, steps, phase, config and buffers are
 *    exactly 1.0's, and the continuation follows what 1.0 computed (see
 *    v1_tolerance for why not bit for bit).
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
#include "v1_problem.h"

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

static uint64_t get_u64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static uint32_t get_u32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static double get_f64(const unsigned char *p) {
    double v;
    memcpy(&v, p, 8);
    return v;
}

/* Offsets into a version-2 checkpoint of an n-tensor optimizer, from the
 * format documented in src/checkpoint.h (not from its code):
 *   magic[8] 0, u32 version 8, u32 method 12, u32 dtype 16, u32 buffers 20,
 *   u64 n_tensors 24, u64 sizes[n] 32,
 *   u64 n_global, u64 global_elements, u64 global_index[n],
 *   u32 sharded, u32 hyper-parameter flags (bit 0 lr, bit 1 wd),
 *   f64 config[12] (lr weight_decay r alpha_r sigma q sw sc sv a qw qv),
 *   u32 config[4] (stochastic_rounding asymmetric fused_predict 0), u64 seed,
 *   u64 scalar count, f64 scalars[count], f64 tensor lr[n_global] (bit 0),
 *   f64 tensor weight decay[n_global] (bit 1), buffers, u64 checksum.
 * The scalar block is scalars.h's: sigma p00 p01 p11 r qw skipped_steps
 * steps phase pending_d2 lr_scale (= KOALA_SCALAR_LR_SCALE) and 5 reserved
 * doubles, then per tensor KOALA-M's state flag or KOALA++'s (S', seen). */
typedef struct {
    size_t n_global, global_elements, global_index, sharded, flags;
    size_t config, config_ints, seed, scalar_count, scalars, tensor_lr, tensor_wd;
    size_t n_scalars;
} v2_offsets;

enum { SC_SIGMA, SC_P00, SC_P01, SC_P11, SC_R, SC_QW, SC_SKIPPED, SC_STEPS, SC_PHASE,
       SC_PENDING_D2, SC_LR_SCALE, SC_HEADER = 16 };

static v2_offsets v2_offsets_of(const unsigned char *ckpt, size_t n_tensors) {
    v2_offsets o;
    o.n_global = 32 + 8 * n_tensors;
    o.global_elements = o.n_global + 8;
    o.global_index = o.global_elements + 8;
    o.sharded = o.global_index + 8 * n_tensors;
    o.flags = o.sharded + 4;
    o.config = o.flags + 4;
    o.config_ints = o.config + 8 * 12;
    o.seed = o.config_ints + 4 * 4;
    o.scalar_count = o.seed + 8;
    o.scalars = o.scalar_count + 8;
    o.n_scalars = (size_t)get_u64(ckpt + o.scalar_count);
    o.tensor_lr = o.scalars + 8 * o.n_scalars;
    o.tensor_wd = o.tensor_lr + ((get_u32(ckpt + o.flags) & 1) ? 8 * get_u64(ckpt + o.n_global) : 0);
    return o;
}

static void test_resealed_bad_fields(void **state) {
    const test_variant *v = *state;
    const size_t sizes[] = {3, 5};
    const double tensor_lr[2] = {0.5, 2.0}, tensor_wd[2] = {1e-3, 0.0};
    test_layout src_layout, dst_layout;
    test_pair *src = trained(v, 2, sizes, &src_layout, 31);
    test_pair *dst = trained(v, 2, sizes, &dst_layout, 32);
    /* Per-tensor hyper-parameters, so their section is in the checkpoint. */
    assert_int_equal(koala_set_tensor_lr(src->opt, tensor_lr, NULL), KOALA_OK);
    assert_int_equal(koala_set_tensor_weight_decay(src->opt, tensor_wd, NULL), KOALA_OK);
    size_t size;
    unsigned char *good = save_state(src->opt, &size);
    unsigned char *bad = malloc(size);
    assert_non_null(bad);
    const v2_offsets o = v2_offsets_of(good, 2);
    const size_t sc = o.scalars, ts = o.scalars + 8 * SC_HEADER; /* per-tensor scalars */

    /* The offsets are right: the documented fields hold what this
     * optimizer has, and re-sealing an unmodified copy changes nothing. */
    assert_int_equal(get_u32(good + 8), 2);
    assert_int_equal(get_u32(good + 12), v->method);
    assert_int_equal(get_u32(good + 16), v->dtype);
    assert_int_equal(get_u64(good + 24), 2);
    assert_int_equal(get_u64(good + 32), 3);
    assert_int_equal(get_u64(good + 40), 5);
    assert_int_equal(get_u64(good + o.n_global), 2);
    assert_int_equal(get_u64(good + o.global_elements), 8);
    assert_int_equal(get_u64(good + o.global_index + 8), 1);
    assert_int_equal(get_u32(good + o.sharded), 0);
    assert_int_equal(get_u32(good + o.flags), 3);
    assert_true(get_f64(good + o.config + 8) == 5e-4);      /* weight_decay */
    assert_true(get_f64(good + o.config + 3 * 8) == 0.8);   /* alpha_r */
    assert_int_equal(o.n_scalars,
                     SC_HEADER + 2 * (v->method == KOALA_MOMENTUM ? 1
                                      : v->method == KOALA_PLUSPLUS ? 2 : 0));
    assert_true(get_f64(good + sc + 8 * SC_STEPS) == 3.0);
    assert_true(get_f64(good + sc + 8 * SC_PHASE) == 0.0);
    assert_true(get_f64(good + sc + 8 * SC_LR_SCALE) == 1.0);
    assert_true(get_f64(good + o.tensor_lr + 8) == 2.0);
    assert_true(get_f64(good + o.tensor_wd) == 1e-3);
    memcpy(bad, good, size);
    reseal(bad, size);
    assert_memory_equal(bad, good, size);

    enum { ALL, V_ONLY, M_ONLY, P_ONLY, NOT_M }; /* fields a method ignores are not validated */
    const struct {
        const char *what;
        size_t offset;
        int width; /* 4 or 8 bytes (integers) or -8 (a double) */
        double value;
        int methods;
        const char *needle; /* the message names it */
    } edits[] = {
        {"format version 3", 8, 4, 3, ALL, "version 3"},
        {"unknown method 9", 12, 4, 9, ALL, "method 9"},
        {"unknown dtype 9", 16, 4, 9, ALL, "dtype 9"},
        {"buffers per tensor 1", 20, 4, 1, ALL, "buffers"},
        {"n_tensors 3", 24, 8, 3, ALL, "3 tensors"},
        {"first size 4", 32, 8, 4, ALL, "tensor 0"},
        {"n_global 3", o.n_global, 8, 3, ALL, "shard layout"},
        {"global_elements 9", o.global_elements, 8, 9, ALL, "shard layout"},
        {"global_index[1] 0", o.global_index + 8, 8, 0, ALL, "shard layout"},
        {"sharded 1", o.sharded, 4, 1, ALL, "shard layout"},
        {"hyper-parameter flags 4", o.flags, 4, 4, ALL, "flags"},
        {"hyper-parameter flags 1 (wd section left in)", o.flags, 4, 1, ALL, "size is"},
        {"negative lr", o.config + 0 * 8, -8, -1.0, ALL, "cfg->lr"},
        {"NaN weight decay", o.config + 1 * 8, -8, NAN, ALL, "cfg->weight_decay"},
        {"r = -Inf", o.config + 2 * 8, -8, -INFINITY, ALL, "cfg->r"},
        {"alpha_r 1", o.config + 3 * 8, -8, 1.0, ALL, "cfg->alpha_r"},
        {"negative sigma", o.config + 4 * 8, -8, -1.0, NOT_M, "cfg->sigma"},
        {"negative q", o.config + 5 * 8, -8, -1.0, NOT_M, "cfg->q"},
        {"sc^2 > sw sv", o.config + 7 * 8, -8, 10.0, M_ONLY, "cfg->sc"},
        {"a = 1", o.config + 9 * 8, -8, 1.0, M_ONLY, "cfg->a"},
        {"NaN qv", o.config + 11 * 8, -8, NAN, M_ONLY, "cfg->qv"},
        {"stochastic_rounding 2", o.config_ints, 4, 2, ALL, "config flags"},
        {"asymmetric 2", o.config_ints + 4, 4, 2, ALL, "config flags"},
        {"fused_predict 2", o.config_ints + 8, 4, 2, ALL, "config flags"},
        {"config pad 1", o.config_ints + 12, 4, 1, ALL, "config flags"},
        {"scalar count + 1", o.scalar_count, 8, (double)(o.n_scalars + 1), ALL, "scalars"},
        {"NaN sigma", sc + 8 * SC_SIGMA, -8, NAN, V_ONLY, "filter scalar 0"},
        {"negative sigma scalar", sc + 8 * SC_SIGMA, -8, -1.0, V_ONLY, "filter scalar 0"},
        {"negative p00", sc + 8 * SC_P00, -8, -1.0, M_ONLY, "filter scalar 1"},
        {"Inf p01", sc + 8 * SC_P01, -8, INFINITY, M_ONLY, "filter scalar 2"},
        {"p01 = 10 (P indefinite)", sc + 8 * SC_P01, -8, 10.0, M_ONLY, "semi-definite"},
        {"negative p11", sc + 8 * SC_P11, -8, -0.5, M_ONLY, "filter scalar 3"},
        {"negative R", sc + 8 * SC_R, -8, -0.5, ALL, "filter scalar 4"},
        {"NaN qw", sc + 8 * SC_QW, -8, NAN, M_ONLY, "filter scalar 5"},
        {"skipped steps -1", sc + 8 * SC_SKIPPED, -8, -1.0, ALL, "step counts"},
        {"steps 1e300", sc + 8 * SC_STEPS, -8, 1e300, ALL, "step counts"},
        {"steps NaN", sc + 8 * SC_STEPS, -8, NAN, ALL, "step counts"},
        {"phase 3", sc + 8 * SC_PHASE, -8, 3.0, ALL, "phase"},
        {"phase 0.5", sc + 8 * SC_PHASE, -8, 0.5, ALL, "phase"},
        {"pending |xbar - x|^2 negative", sc + 8 * SC_PENDING_D2, -8, -1.0, ALL, "scalars 9-10"},
        {"lr scale NaN", sc + 8 * SC_LR_SCALE, -8, NAN, ALL, "scalars 9-10"},
        {"lr scale -1", sc + 8 * SC_LR_SCALE, -8, -1.0, ALL, "scalars 9-10"},
        {"KOALA-M tensor flag 5", ts, -8, 5.0, M_ONLY, "state flag"},
        {"KOALA-M tensor flag 'ahead' without fused_predict", ts + 8, -8, 1.0, M_ONLY,
         "state flag"},
        {"KOALA++ seen 2", ts + 8, -8, 2.0, P_ONLY, "KOALA++ scalars"},
        {"KOALA++ S' = 0 on a seen tensor", ts + 16, -8, 0.0, P_ONLY, "KOALA++ scalars"},
        {"KOALA++ S' NaN on a seen tensor", ts + 16, -8, NAN, P_ONLY, "KOALA++ scalars"},
        {"tensor lr[1] -1", o.tensor_lr + 8, -8, -1.0, ALL, "lr[1]"},
        {"tensor weight decay[0] NaN", o.tensor_wd, -8, NAN, ALL, "weight_decay[0]"},
    };
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; ++i) {
        const int m = edits[i].methods;
        if ((m == V_ONLY && v->method != KOALA_VANILLA) ||
            (m == M_ONLY && v->method != KOALA_MOMENTUM) ||
            (m == P_ONLY && v->method != KOALA_PLUSPLUS) ||
            (m == NOT_M && v->method == KOALA_MOMENTUM))
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
        assert_true(memcmp(bad, good, size) != 0); /* the edit changed something */
        reseal(bad, size);
        expect_rejected(dst->opt, bad, size, edits[i].what, edits[i].offset);
        if (!strstr(koala_last_error(), edits[i].needle))
            fail_msg("%s: the message does not name '%s': %s", edits[i].what, edits[i].needle,
                     koala_last_error());
    }
    /* The source's own checkpoint still loads (the rejections were the edits). */
    assert_int_equal(koala_state_load(dst->opt, good, size, NULL), KOALA_OK);
    free(good);
    free(bad);
    drop(src, &src_layout);
    drop(dst, &dst_layout);
}

/* ---- checkpoints written by libkoala 1.0 ------------------------------------ */

/* tests/c/data/README.md: gen_v1_data.c made these with libkoala 1.0
 * (commit f596f19) from the run of v1_problem.h. */
static const char *const kV1Sets[] = {
    "v1_v32_nowd_updated", "v1_v32_nowd_predicted", "v1_v32_wd_updated", "v1_v32_wd_predicted",
    "v1_v64_nowd_updated", "v1_v64_nowd_predicted", "v1_v64_wd_updated", "v1_v64_wd_predicted",
    "v1_m32_nowd_updated", "v1_m32_nowd_predicted", "v1_m32_wd_updated", "v1_m32_wd_predicted",
    "v1_m64_nowd_updated", "v1_m64_nowd_predicted", "v1_m64_wd_updated", "v1_m64_wd_predicted",
};
enum { N_V1_SETS = sizeof kV1Sets / sizeof kV1Sets[0] };

static unsigned char *read_data_file(const char *set, const char *ext, size_t *size) {
    const char *dir = getenv("KOALA_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.%s", dir ? dir : "tests/c/data", set, ext);
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s (KOALA_TEST_DATA names the data directory)", path);
    unsigned char *buf = NULL;
    size_t n = 0, cap = 0, got;
    do {
        if (n == cap) {
            cap = cap ? 2 * cap : 4096;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got > 0);
    fclose(f);
    *size = n;
    return buf;
}

/* This library's continuation differs from 1.0's in the last bits, because
 * it sums differently, by design:
 *   - |g + wd x|^2 is formed from the sums g.g, g.x, x.x instead of being
 *     summed element by element (src/kalman_block.h), so with weight decay
 *     the norm rounds differently;
 *   - float32 (and 16-bit) data are summed in float32 blocks of 512
 *     elements before float64, over 16 lanes instead of 8
 *     (src/cpu_kernels.cpp, commit a43a2c1);
 *   - KOALA-M's |xbar - x|^2 is summed by the update pass, and only the
 *     tensors it skipped are added at predict (src/method_momentum.h), in
 *     another order than 1.0's single sum at predict.
 * Each moves a sum by a few ulps (of float64, or of float32 for float32
 * data); the gains and covariances inherit that relative size. Measured on
 * these sets: float64 without weight decay bit-identical, with it at most
 * 1.8e-16; float32 at most 9.8e-8 (parameters) and 1.7e-8 (scalars); at
 * commit b0f0eb7, before the float32 blocks, every set without weight decay
 * was bit-identical. The tolerances below are 50 and 10 times those worst
 * cases, and far below what any decoding error gives (a field of the 1.0
 * checkpoint read wrongly, P01 for P11, moves the results by 1e-4 or more).
 * What must be exact is checked bit for bit right after the load: filter
 * scalars, step count, phase, lr, config and buffers. */
static double v1_tolerance(koala_dtype dtype) { return dtype == KOALA_FLOAT32 ? 1e-6 : 1e-14; }

typedef struct {
    double params, info; /* worst norm-relative deviation from 1.0 over the continuation */
    int bit_identical;
} v1_deviation;

static void set_param(void *p, koala_dtype d, size_t i, double v) {
    if (d == KOALA_FLOAT32)
        ((float *)p)[i] = (float)v;
    else
        ((double *)p)[i] = v;
}

static v1_deviation v1_continue(const char *set) {
    size_t ckpt_size, exp_size;
    unsigned char *ckpt = read_data_file(set, "ckpt", &ckpt_size);
    unsigned char *exp = read_data_file(set, "expected", &exp_size);
    const unsigned char *e = exp;
    v1_deviation dev = {0.0, 0.0, 1};

    /* The expected-results file (v1_problem.h). */
    if (exp_size < 8 || memcmp(e, V1_EXPECTED_MAGIC, 8) != 0) fail_msg("%s: not an expected file", set);
    e += 8;
    const koala_method method = (koala_method)get_u64(e);
    const koala_dtype dtype = (koala_dtype)get_u64(e + 8);
    assert_int_equal(get_u64(e + 16), V1_TENSORS);
    e += 24;
    for (size_t t = 0; t < V1_TENSORS; ++t, e += 8) assert_int_equal(get_u64(e), v1_sizes[t]);
    assert_int_equal(get_u64(e), V1_BEFORE);
    assert_int_equal(get_u64(e + 8), V1_AFTER);
    const int phase = (int)get_u64(e + 16);
    e += 32; /* phase, weight_decay */
    const size_t per_step = 8 * (V1_ELEMENTS + 7);
    assert_int_equal(exp_size, (size_t)(e - exp) + 8 * V1_ELEMENTS + V1_AFTER * per_step);

    /* The 1.0 checkpoint, read by the version-1 format of src/checkpoint.h:
     * magic, u32 version 1, method, dtype, buffers, u64 n, u64 sizes[n],
     * f64 config[12], f64 sigma p00 p01 p11 r qw, u64 steps, u64 skipped,
     * u32 predicted, u32 0, buffers, u64 checksum. */
    const size_t n = V1_TENSORS, v1_config = 32 + 8 * n, v1_filter = v1_config + 96;
    assert_int_equal(get_u32(ckpt + 8), 1);
    assert_int_equal(get_u32(ckpt + 12), method);
    assert_int_equal(get_u32(ckpt + 16), dtype);
    assert_int_equal(get_u64(ckpt + v1_filter + 48), V1_BEFORE);
    assert_int_equal(get_u32(ckpt + v1_filter + 64), (uint32_t)phase);
    const size_t elem = dtype == KOALA_FLOAT32 ? 4 : 8;
    const size_t buffer_bytes = (method == KOALA_MOMENTUM ? 2 : 0) * V1_ELEMENTS * elem;
    assert_int_equal(ckpt_size, v1_filter + 48 + 16 + 8 + buffer_bytes + 8);

    /* Load it into an optimizer made with the DEFAULT config. */
    koala_config cfg;
    koala_config_init(&cfg, method);
    koala_optimizer *opt = NULL;
    assert_int_equal(koala_create(&cfg, V1_TENSORS, v1_sizes, dtype, KOALA_HOST, &opt), KOALA_OK);
    if (koala_state_load(opt, ckpt, ckpt_size, NULL) != KOALA_OK)
        fail_msg("%s: koala_state_load: %s", set, koala_last_error());

    /* Exact right after the load: filter scalars, steps, phase, lr. */
    koala_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    assert_int_equal(koala_get_info(opt, NULL, &info), KOALA_OK);
    const double loaded[6] = {info.sigma, info.p00, info.p01, info.p11, info.r, info.qw};
    for (int k = 0; k < 6; ++k)
        if (memcmp(&loaded[k], ckpt + v1_filter + 8 * k, 8) != 0)
            fail_msg("%s: filter scalar %d is %.17g after the load, %.17g in the checkpoint", set,
                     k, loaded[k], get_f64(ckpt + v1_filter + 8 * k));
    assert_int_equal(info.steps, V1_BEFORE);
    assert_int_equal(info.skipped_steps, 0);
    assert_int_equal(info.phase, phase);
    assert_true(info.lr == get_f64(ckpt + v1_config));
    /* ... and what it saves now holds 1.0's config and buffers, bit for bit. */
    size_t v2_size;
    unsigned char *v2 = save_state(opt, &v2_size);
    const v2_offsets o = v2_offsets_of(v2, n);
    assert_int_equal(get_u32(v2 + 8), 2);
    assert_memory_equal(v2 + o.config, ckpt + v1_config, 96);
    assert_memory_equal(v2 + v2_size - 8 - buffer_bytes, ckpt + ckpt_size - 8 - buffer_bytes,
                        buffer_bytes);
    free(v2);

    /* The parameters at the save, then 1.0's continuation. */
    double store[V1_TENSORS][2 * V1_ELEMENTS], grad_store[V1_TENSORS][2 * V1_ELEMENTS];
    void *params[V1_TENSORS];
    const void *grads[V1_TENSORS];
    for (size_t t = 0; t < V1_TENSORS; ++t) {
        params[t] = store[t];
        for (size_t i = 0; i < v1_sizes[t]; ++i, e += 8) set_param(params[t], dtype, i, get_f64(e));
    }
    for (unsigned k = V1_BEFORE; k < V1_BEFORE + V1_AFTER; ++k) {
        if (phase == 1 && k == V1_BEFORE)
            /* Saved between predict and update: the loaded optimizer is predicted. */
            assert_int_equal(koala_predict(opt, params, NULL), KOALA_ERROR_BAD_STATE);
        else
            assert_int_equal(koala_predict(opt, params, NULL), KOALA_OK);
        for (size_t t = 0; t < V1_TENSORS; ++t) {
            for (size_t i = 0; i < v1_sizes[t]; ++i) set_param(grad_store[t], dtype, i, v1_grad(k, t, i));
            grads[t] = v1_grad_is_null(k, t) ? NULL : grad_store[t];
        }
        if (k == V1_SET_LR_STEP) assert_int_equal(koala_set_lr(opt, V1_SET_LR), KOALA_OK);
        assert_int_equal(koala_update(opt, v1_loss(k), v1_loss_var(k), params, grads, NULL),
                         KOALA_OK);
        for (size_t t = 0; t < V1_TENSORS; ++t) {
            double diff = 0.0, norm = 0.0;
            for (size_t i = 0; i < v1_sizes[t]; ++i, e += 8) {
                const double lib = buffer_get(params[t], i, dtype), want = get_f64(e);
                if (memcmp(&lib, &want, 8) != 0) dev.bit_identical = 0;
                diff += (lib - want) * (lib - want);
                norm += want * want;
            }
            const double err = sqrt(diff / norm);
            if (!(err <= dev.params)) dev.params = err;
        }
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        assert_int_equal(koala_get_info(opt, NULL, &info), KOALA_OK);
        const double got[6] = {info.sigma, info.p00, info.p01, info.p11, info.r, info.qw};
        /* P is measured against its scale (p00 + p11), the others as themselves. */
        const double p_scale = fabs(get_f64(e + 8)) + fabs(get_f64(e + 24));
        for (int f = 0; f < 6; ++f, e += 8) {
            const double want = get_f64(e);
            if (memcmp(&got[f], &want, 8) != 0) dev.bit_identical = 0;
            const double scale = (f >= 1 && f <= 3) ? p_scale : fabs(want);
            const double err = scale > 0.0 ? fabs(got[f] - want) / scale : fabs(got[f] - want);
            if (!(err <= dev.info)) dev.info = err;
        }
        assert_int_equal(info.steps, get_u64(e));
        e += 8;
    }
    koala_destroy(opt);
    free(ckpt);
    free(exp);
    return dev;
}

static void test_v1_checkpoint_continues(void **state) {
    const char *set = *state;
    const koala_dtype dtype = strstr(set, "32") ? KOALA_FLOAT32 : KOALA_FLOAT64;
    const v1_deviation dev = v1_continue(set);
    const double tol = v1_tolerance(dtype);
    printf("# %s: %s; largest deviation from 1.0: parameters %.3g, filter scalars %.3g "
           "(tolerance %g)\n",
           set, dev.bit_identical ? "bit-identical to 1.0" : "not bit-identical", dev.params,
           dev.info, tol);
    if (!(dev.params <= tol) || !(dev.info <= tol))
        fail_msg("%s: continuation differs from libkoala 1.0's by %.3g (parameters) / %.3g "
                 "(filter scalars), more than %g",
                 set, dev.params, dev.info, tol);
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

/* The harness's four method x dtype variants, and KOALA++. */
static const test_variant kVariants[] = {
    {"V float64", KOALA_VANILLA, KOALA_FLOAT64},   {"V float32", KOALA_VANILLA, KOALA_FLOAT32},
    {"M float64", KOALA_MOMENTUM, KOALA_FLOAT64},  {"M float32", KOALA_MOMENTUM, KOALA_FLOAT32},
    {"++ float64", KOALA_PLUSPLUS, KOALA_FLOAT64}, {"++ float32", KOALA_PLUSPLUS, KOALA_FLOAT32},
};

int main(void) {
    enum { N = sizeof kVariants / sizeof kVariants[0], KINDS = 6 };
    struct CMUnitTest tests[KINDS * N + N_V1_SETS];
    static char names[KINDS * N + N_V1_SETS][80];
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
            struct CMUnitTest c = cmocka_unit_test_prestate(kinds[k].fn, (void *)&kVariants[i]);
            snprintf(names[t], sizeof names[t], "%s, %s", kinds[k].name, kVariants[i].name);
            c.name = names[t];
            tests[t] = c;
        }
    for (size_t i = 0; i < N_V1_SETS; ++i, ++t) {
        struct CMUnitTest c = cmocka_unit_test_prestate(test_v1_checkpoint_continues,
                                                        (void *)kV1Sets[i]);
        snprintf(names[t], sizeof names[t], "1.0 checkpoint %s continues as 1.0 did", kV1Sets[i]);
        c.name = names[t];
        tests[t] = c;
    }
    return _cmocka_run_group_tests("checkpoint", tests, t, NULL, NULL);
}
