/*
 * The bad-input matrix: every entry point of koala.h misused in every way we
 * could think of. One table row per misuse; every row asserts
 *   - the exact status,
 *   - that koala_last_error() is non-empty, comes from THIS call and names
 *     the argument (a substring),
 *   - that nothing changed: parameters and gradients byte for byte, the
 *     optimizer's checkpoint bytes and koala_info, and *out for koala_create.
 *
 * The same table prints the README matrix (`test_bad_inputs --markdown`);
 * check_doc_matrix.py fails the suite when doc/readme/hardening.md is stale.
 *
 * C99, knows only koala.h (the checkpoint cases rebuild the documented byte
 * format of checkpoint.h themselves).
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

#include "koala.h"

/* ---- the fixture: one optimizer of a small, uneven layout ---------------- */

#define N_TENSORS 3
static const size_t kSizes[N_TENSORS] = {5, 3, 7};

typedef enum { FX_V32, FX_V64, FX_M32, FX_M64 } fx_kind;
typedef enum { IDLE, PREDICTED } fx_phase;

typedef struct {
    koala_method method;
    koala_dtype dtype;
    koala_optimizer *opt;   /* after two full steps (and a predict if PREDICTED) */
    koala_optimizer *donor; /* same layout, one step further: source of checkpoints */
    void *params[N_TENSORS];
    const void *grads[N_TENSORS];
    void *grad_nan;         /* tensor 1's gradient with one NaN element */
    void *grad_inf;         /* tensor 1's gradient with one +Inf element */
    koala_optimizer *created; /* koala_create's out slot, holds a sentinel */
} fixture;

static char sentinel_object;
#define SENTINEL ((koala_optimizer *)(void *)&sentinel_object)
static int some_stream_object;
#define SOME_STREAM ((void *)&some_stream_object)

static size_t elem_size(koala_dtype d) { return d == KOALA_FLOAT64 ? 8 : 4; }

static void set_value(void *buf, koala_dtype d, size_t i, double v) {
    if (d == KOALA_FLOAT64)
        ((double *)buf)[i] = v;
    else
        ((float *)buf)[i] = (float)v;
}

static void *filled(koala_dtype d, size_t n, double base, double step) {
    void *p = malloc(n * elem_size(d));
    size_t i;
    assert_non_null(p);
    for (i = 0; i < n; ++i) set_value(p, d, i, base + step * (double)i);
    return p;
}

static void full_step(koala_optimizer *opt, void *const *params, const void *const *grads) {
    assert_int_equal(koala_predict(opt, params, NULL), KOALA_OK);
    assert_int_equal(koala_update(opt, 0.5, 0.3, params, grads, NULL), KOALA_OK);
}

static void fixture_make(fixture *f, fx_kind kind, fx_phase phase) {
    koala_config cfg;
    void *donor_params[N_TENSORS];
    size_t t;
    memset(f, 0, sizeof *f);
    f->method = (kind == FX_V32 || kind == FX_V64) ? KOALA_VANILLA : KOALA_MOMENTUM;
    f->dtype = (kind == FX_V32 || kind == FX_M32) ? KOALA_FLOAT32 : KOALA_FLOAT64;
    koala_config_init(&cfg, f->method);
    cfg.weight_decay = 1e-3;
    for (t = 0; t < N_TENSORS; ++t) {
        f->params[t] = filled(f->dtype, kSizes[t], 0.25 * (double)(t + 1), -0.0625);
        f->grads[t] = filled(f->dtype, kSizes[t], 0.5 - 0.1 * (double)t, 0.03125);
        donor_params[t] = filled(f->dtype, kSizes[t], 0.1, 0.01);
    }
    f->grad_nan = filled(f->dtype, kSizes[1], 0.5, 0.03125);
    set_value(f->grad_nan, f->dtype, 1, NAN);
    f->grad_inf = filled(f->dtype, kSizes[1], 0.5, 0.03125);
    set_value(f->grad_inf, f->dtype, 2, INFINITY);
    assert_int_equal(koala_create(&cfg, N_TENSORS, kSizes, f->dtype, KOALA_HOST, &f->opt),
                     KOALA_OK);
    assert_int_equal(koala_create(&cfg, N_TENSORS, kSizes, f->dtype, KOALA_HOST, &f->donor),
                     KOALA_OK);
    full_step(f->opt, f->params, f->grads);
    full_step(f->opt, f->params, f->grads);
    if (phase == PREDICTED) assert_int_equal(koala_predict(f->opt, f->params, NULL), KOALA_OK);
    for (t = 0; t < 3; ++t) full_step(f->donor, donor_params, f->grads);
    for (t = 0; t < N_TENSORS; ++t) free(donor_params[t]);
    f->created = SENTINEL;
}

static void fixture_free(fixture *f) {
    size_t t;
    koala_destroy(f->opt);
    koala_destroy(f->donor);
    for (t = 0; t < N_TENSORS; ++t) {
        free(f->params[t]);
        free((void *)f->grads[t]);
    }
    free(f->grad_nan);
    free(f->grad_inf);
    if (f->created != SENTINEL) koala_destroy(f->created);
}

/* ---- snapshots: everything a failing call must leave alone --------------- */

typedef struct {
    unsigned char *bytes;
    size_t size;
} blob;

static void blob_append(blob *b, const void *p, size_t n) {
    b->bytes = realloc(b->bytes, b->size + n);
    assert_non_null(b->bytes);
    memcpy(b->bytes + b->size, p, n);
    b->size += n;
}

static blob snapshot(const fixture *f) {
    blob b = {NULL, 0};
    size_t t, state_size = 0;
    unsigned char *state;
    koala_info info;
    const size_t e = elem_size(f->dtype);
    for (t = 0; t < N_TENSORS; ++t) {
        blob_append(&b, f->params[t], kSizes[t] * e);
        blob_append(&b, f->grads[t], kSizes[t] * e);
    }
    blob_append(&b, f->grad_nan, kSizes[1] * e);
    blob_append(&b, f->grad_inf, kSizes[1] * e);
    assert_int_equal(koala_state_size(f->opt, &state_size), KOALA_OK);
    state = malloc(state_size);
    assert_non_null(state);
    assert_int_equal(koala_state_save(f->opt, state, state_size, NULL), KOALA_OK);
    blob_append(&b, state, state_size);
    free(state);
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    assert_int_equal(koala_get_info(f->opt, NULL, &info), KOALA_OK);
    blob_append(&b, &info, sizeof info);
    blob_append(&b, &f->created, sizeof f->created);
    return b;
}

/* ---- helpers the cases call ---------------------------------------------- */

static koala_config config_of(koala_method m) {
    koala_config c;
    koala_config_init(&c, m);
    return c;
}

static koala_status create_cfg(fixture *f, const koala_config *c) {
    return koala_create(c, N_TENSORS, kSizes, KOALA_FLOAT32, KOALA_HOST, &f->created);
}

static koala_status create_layout(fixture *f, size_t n, const size_t *sizes, koala_dtype d,
                                  koala_memory mem) {
    koala_config c = config_of(KOALA_MOMENTUM);
    return koala_create(&c, n, sizes, d, mem, &f->created);
}

static koala_status update_with(fixture *f, double loss, double loss_var) {
    return koala_update(f->opt, loss, loss_var, f->params, f->grads, NULL);
}

static koala_status update_with_grad1(fixture *f, const void *g1) {
    const void *g[N_TENSORS];
    g[0] = f->grads[0];
    g[1] = g1;
    g[2] = f->grads[2];
    return koala_update(f->opt, 0.5, 0.3, f->params, g, NULL);
}

/* The checkpoint format of src/checkpoint.h (offsets into the byte string)
 * and its checksum, rebuilt here so the cases can forge checkpoints whose
 * checksum is right but whose contents are not. */
enum {
    CKP_VERSION = 8,
    CKP_N_TENSORS = 24,
    CKP_SIZES = 32,
    CKP_CONFIG = CKP_SIZES + 8 * N_TENSORS, /* 12 doubles: lr first */
    CKP_FILTER = CKP_CONFIG + 8 * 12,       /* 6 doubles: sigma p00 p01 p11 r qw */
    CKP_PHASE = CKP_FILTER + 8 * 6 + 16     /* u32 predicted, after steps and skipped */
};

static uint64_t ckp_checksum(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull ^ (uint64_t)n;
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

static unsigned char *saved_state(const koala_optimizer *opt, size_t *size) {
    unsigned char *buf;
    assert_int_equal(koala_state_size(opt, size), KOALA_OK);
    buf = malloc(*size);
    assert_non_null(buf);
    assert_int_equal(koala_state_save(opt, buf, *size, NULL), KOALA_OK);
    return buf;
}

static void reseal(unsigned char *buf, size_t size) {
    const uint64_t sum = ckp_checksum(buf, size - 8);
    memcpy(buf + size - 8, &sum, 8);
}

/* Loads the donor's checkpoint after `edit` changed it (and, if `fix_sum`,
 * after recomputing the checksum). */
typedef void (*ckp_edit)(unsigned char *buf, size_t *size);

static koala_status load_edited(fixture *f, ckp_edit edit, int fix_sum) {
    size_t size;
    unsigned char *buf = saved_state(f->donor, &size);
    koala_status st;
    edit(buf, &size);
    if (fix_sum) reseal(buf, size);
    st = koala_state_load(f->opt, buf, size, NULL);
    free(buf);
    return st;
}

static void put_u32(unsigned char *buf, size_t at, uint32_t v) { memcpy(buf + at, &v, 4); }
static void put_u64(unsigned char *buf, size_t at, uint64_t v) { memcpy(buf + at, &v, 8); }
static void put_f64(unsigned char *buf, size_t at, double v) { memcpy(buf + at, &v, 8); }

static void edit_truncate(unsigned char *b, size_t *n) { (void)b; *n -= 1; }
static void edit_flip(unsigned char *b, size_t *n) { b[*n / 2] ^= 0x10; }
static void edit_magic(unsigned char *b, size_t *n) { (void)n; b[0] = 'X'; }
static void edit_version(unsigned char *b, size_t *n) { (void)n; put_u32(b, CKP_VERSION, 2); }
static void edit_n_tensors(unsigned char *b, size_t *n) { (void)n; put_u64(b, CKP_N_TENSORS, 2); }
static void edit_size1(unsigned char *b, size_t *n) { (void)n; put_u64(b, CKP_SIZES + 8, 4); }
static void edit_lr_nan(unsigned char *b, size_t *n) { (void)n; put_f64(b, CKP_CONFIG, NAN); }
static void edit_alpha_one(unsigned char *b, size_t *n) { (void)n; put_f64(b, CKP_CONFIG + 24, 1.0); }
static void edit_sigma_neg(unsigned char *b, size_t *n) { (void)n; put_f64(b, CKP_FILTER, -1.0); }
static void edit_r_inf(unsigned char *b, size_t *n) { (void)n; put_f64(b, CKP_FILTER + 32, INFINITY); }
static void edit_p_indefinite(unsigned char *b, size_t *n) { (void)n; put_f64(b, CKP_FILTER + 16, 10.0); }
static void edit_phase(unsigned char *b, size_t *n) { (void)n; put_u32(b, CKP_PHASE, 2); }
static void edit_grow(unsigned char *b, size_t *n) { (void)b; *n -= 8; } /* shorter by one word, resealed */

/* A checkpoint of a different layout: the same sizes under another method. */
static koala_status load_other(fixture *f, koala_method m, koala_dtype d, size_t n,
                               const size_t *sizes) {
    koala_config c = config_of(m);
    koala_optimizer *other = NULL;
    size_t size;
    unsigned char *buf;
    koala_status st;
    assert_int_equal(koala_create(&c, n, sizes, d, KOALA_HOST, &other), KOALA_OK);
    buf = saved_state(other, &size);
    koala_destroy(other);
    st = koala_state_load(f->opt, buf, size, NULL);
    free(buf);
    return st;
}

/* ---- the cases ------------------------------------------------------------ */

#define CASE(name) static koala_status name(fixture *f)
#define UNUSED (void)f

/* koala_create */
CASE(create_cfg_null) { return koala_create(NULL, N_TENSORS, kSizes, KOALA_FLOAT32, KOALA_HOST, &f->created); }
CASE(create_struct_size_0) { koala_config c = config_of(KOALA_VANILLA); c.struct_size = 0; return create_cfg(f, &c); }
CASE(create_struct_size_small) { koala_config c = config_of(KOALA_VANILLA); c.struct_size = sizeof c - 8; return create_cfg(f, &c); }
CASE(create_struct_tail) {
    /* A caller compiled against a newer koala.h whose appended field is set. */
    struct { koala_config c; double newer_field; } big;
    memset(&big, 0, sizeof big);
    koala_config_init(&big.c, KOALA_VANILLA);
    big.c.struct_size = sizeof big;
    big.newer_field = 1.0;
    return create_cfg(f, &big.c);
}
CASE(create_struct_size_huge) { koala_config c = config_of(KOALA_VANILLA); c.struct_size = (size_t)1 << 40; return create_cfg(f, &c); }
CASE(create_method_0) { koala_config c = config_of((koala_method)0); return create_cfg(f, &c); }
CASE(create_method_3) { koala_config c = config_of((koala_method)3); return create_cfg(f, &c); }
CASE(create_dtype_0) { return create_layout(f, N_TENSORS, kSizes, (koala_dtype)0, KOALA_HOST); }
CASE(create_dtype_3) { return create_layout(f, N_TENSORS, kSizes, (koala_dtype)3, KOALA_HOST); }
CASE(create_memory_0) { return create_layout(f, N_TENSORS, kSizes, KOALA_FLOAT32, (koala_memory)0); }
CASE(create_memory_3) { return create_layout(f, N_TENSORS, kSizes, KOALA_FLOAT32, (koala_memory)3); }
CASE(create_n_tensors_0) { return create_layout(f, 0, kSizes, KOALA_FLOAT32, KOALA_HOST); }
CASE(create_sizes_null) { return create_layout(f, N_TENSORS, NULL, KOALA_FLOAT32, KOALA_HOST); }
CASE(create_size_zero) { const size_t s[3] = {5, 0, 7}; return create_layout(f, 3, s, KOALA_FLOAT32, KOALA_HOST); }
CASE(create_size_max) { const size_t s[2] = {SIZE_MAX, 1}; return create_layout(f, 2, s, KOALA_FLOAT64, KOALA_HOST); }
CASE(create_size_sum_overflow) {
    /* Each size alone is plausible; their byte total is not. */
    const size_t s[2] = {(size_t)1 << 57, (size_t)1 << 57};
    return create_layout(f, 2, s, KOALA_FLOAT64, KOALA_HOST);
}
CASE(create_n_tensors_huge) { return create_layout(f, SIZE_MAX, kSizes, KOALA_FLOAT32, KOALA_HOST); }
CASE(create_out_null) { koala_config c = config_of(KOALA_VANILLA); UNUSED; return koala_create(&c, N_TENSORS, kSizes, KOALA_FLOAT32, KOALA_HOST, NULL); }

#define CFG_CASE(name, method, field, value) \
    CASE(name) { koala_config c = config_of(method); c.field = (value); return create_cfg(f, &c); }
CFG_CASE(cfg_lr_negative, KOALA_VANILLA, lr, -1.0)
CFG_CASE(cfg_lr_nan, KOALA_VANILLA, lr, NAN)
CFG_CASE(cfg_lr_inf, KOALA_MOMENTUM, lr, INFINITY)
CFG_CASE(cfg_wd_negative, KOALA_VANILLA, weight_decay, -5e-4)
CFG_CASE(cfg_wd_nan, KOALA_MOMENTUM, weight_decay, NAN)
CFG_CASE(cfg_wd_inf, KOALA_VANILLA, weight_decay, INFINITY)
CFG_CASE(cfg_r_negative, KOALA_VANILLA, r, -1.0)
CFG_CASE(cfg_r_inf, KOALA_MOMENTUM, r, INFINITY)
CFG_CASE(cfg_r_minus_inf, KOALA_VANILLA, r, -INFINITY)
CFG_CASE(cfg_alpha_r_one, KOALA_VANILLA, alpha_r, 1.0)
CFG_CASE(cfg_alpha_r_negative, KOALA_MOMENTUM, alpha_r, -0.1)
CFG_CASE(cfg_alpha_r_nan, KOALA_VANILLA, alpha_r, NAN)
CFG_CASE(cfg_sigma_negative, KOALA_VANILLA, sigma, -0.1)
CFG_CASE(cfg_sigma_nan, KOALA_VANILLA, sigma, NAN)
CFG_CASE(cfg_sigma_inf, KOALA_VANILLA, sigma, INFINITY)
CFG_CASE(cfg_q_negative, KOALA_VANILLA, q, -1.0)
CFG_CASE(cfg_q_nan, KOALA_VANILLA, q, NAN)
CFG_CASE(cfg_q_inf, KOALA_VANILLA, q, INFINITY)
CFG_CASE(cfg_sw_negative, KOALA_MOMENTUM, sw, -0.1)
CFG_CASE(cfg_sw_nan, KOALA_MOMENTUM, sw, NAN)
CFG_CASE(cfg_sv_negative, KOALA_MOMENTUM, sv, -0.1)
CFG_CASE(cfg_sv_inf, KOALA_MOMENTUM, sv, INFINITY)
CFG_CASE(cfg_sc_nan, KOALA_MOMENTUM, sc, NAN)
CFG_CASE(cfg_sc_indefinite, KOALA_MOMENTUM, sc, 0.2) /* 0.2^2 > 0.1 * 0.1 */
CFG_CASE(cfg_sc_indefinite_neg, KOALA_MOMENTUM, sc, -0.11)
CFG_CASE(cfg_a_one, KOALA_MOMENTUM, a, 1.0)
CFG_CASE(cfg_a_negative, KOALA_MOMENTUM, a, -0.5)
CFG_CASE(cfg_a_nan, KOALA_MOMENTUM, a, NAN)
CFG_CASE(cfg_qw_negative, KOALA_MOMENTUM, qw, -0.01)
CFG_CASE(cfg_qw_inf, KOALA_MOMENTUM, qw, INFINITY)
CFG_CASE(cfg_qv_negative, KOALA_MOMENTUM, qv, -0.01)
CFG_CASE(cfg_qv_nan, KOALA_MOMENTUM, qv, NAN)

/* koala_predict */
CASE(predict_opt_null) { return koala_predict(NULL, f->params, NULL); }
CASE(predict_params_null) { return koala_predict(f->opt, NULL, NULL); }
CASE(predict_param1_null) { void *p[N_TENSORS]; p[0] = f->params[0]; p[1] = NULL; p[2] = f->params[2]; return koala_predict(f->opt, p, NULL); }
CASE(predict_stream) { return koala_predict(f->opt, f->params, SOME_STREAM); }
CASE(predict_twice) { return koala_predict(f->opt, f->params, NULL); }

/* koala_update */
CASE(update_opt_null) { return koala_update(NULL, 0.5, 0.3, f->params, f->grads, NULL); }
CASE(update_params_null) { return koala_update(f->opt, 0.5, 0.3, NULL, f->grads, NULL); }
CASE(update_param2_null) { void *p[N_TENSORS]; p[0] = f->params[0]; p[1] = f->params[1]; p[2] = NULL; return koala_update(f->opt, 0.5, 0.3, p, f->grads, NULL); }
CASE(update_grads_null) { return koala_update(f->opt, 0.5, 0.3, f->params, NULL, NULL); }
CASE(update_stream) { return koala_update(f->opt, 0.5, 0.3, f->params, f->grads, SOME_STREAM); }
CASE(update_before_predict) { return update_with(f, 0.5, 0.3); }
CASE(update_loss_nan) { return update_with(f, NAN, 0.3); }
CASE(update_loss_inf) { return update_with(f, INFINITY, 0.3); }
CASE(update_loss_var_nan) { return update_with(f, 0.5, NAN); }
CASE(update_loss_var_inf) { return update_with(f, 0.5, INFINITY); }
CASE(update_loss_var_negative) { return update_with(f, 0.5, -1.0); }
CASE(update_grad_nan) { return update_with_grad1(f, f->grad_nan); }
CASE(update_grad_inf) { return update_with_grad1(f, f->grad_inf); }

/* koala_update_ptr */
static koala_status update_ptr_with(fixture *f, const void *loss, const void *loss_var,
                                    koala_dtype d) {
    return koala_update_ptr(f->opt, loss, loss_var, d, f->params, f->grads, NULL);
}
static const double kLoss = 0.5, kLossVar = 0.3;
CASE(update_ptr_opt_null) { return koala_update_ptr(NULL, &kLoss, &kLossVar, KOALA_FLOAT64, f->params, f->grads, NULL); }
CASE(update_ptr_loss_null) { return update_ptr_with(f, NULL, &kLossVar, KOALA_FLOAT64); }
CASE(update_ptr_loss_var_null) { return update_ptr_with(f, &kLoss, NULL, KOALA_FLOAT64); }
CASE(update_ptr_dtype_0) { return update_ptr_with(f, &kLoss, &kLossVar, (koala_dtype)0); }
CASE(update_ptr_dtype_9) { return update_ptr_with(f, &kLoss, &kLossVar, (koala_dtype)9); }
CASE(update_ptr_grads_null) { return koala_update_ptr(f->opt, &kLoss, &kLossVar, KOALA_FLOAT64, f->params, NULL, NULL); }
CASE(update_ptr_before_predict) { return update_ptr_with(f, &kLoss, &kLossVar, KOALA_FLOAT64); }
CASE(update_ptr_loss_nan32) { const float l = NAN, v = 0.3f; return update_ptr_with(f, &l, &v, KOALA_FLOAT32); }
CASE(update_ptr_loss_var_inf64) { const double v = -INFINITY; return update_ptr_with(f, &kLoss, &v, KOALA_FLOAT64); }
CASE(update_ptr_loss_var_negative) { const float l = 0.5f, v = -0.25f; return update_ptr_with(f, &l, &v, KOALA_FLOAT32); }

/* koala_get_info */
CASE(info_opt_null) { koala_info i; UNUSED; memset(&i, 0, sizeof i); i.struct_size = sizeof i; return koala_get_info(NULL, NULL, &i); }
CASE(info_out_null) { return koala_get_info(f->opt, NULL, NULL); }
CASE(info_struct_size_0) { koala_info i; memset(&i, 0, sizeof i); return koala_get_info(f->opt, NULL, &i); }
CASE(info_struct_size_small) { koala_info i; memset(&i, 0, sizeof i); i.struct_size = sizeof i - 8; return koala_get_info(f->opt, NULL, &i); }
CASE(info_stream) { koala_info i; memset(&i, 0, sizeof i); i.struct_size = sizeof i; return koala_get_info(f->opt, SOME_STREAM, &i); }

/* koala_set_lr */
CASE(set_lr_opt_null) { UNUSED; return koala_set_lr(NULL, 0.5); }
CASE(set_lr_negative) { return koala_set_lr(f->opt, -0.5); }
CASE(set_lr_nan) { return koala_set_lr(f->opt, NAN); }
CASE(set_lr_inf) { return koala_set_lr(f->opt, INFINITY); }
CASE(set_lr_minus_inf) { return koala_set_lr(f->opt, -INFINITY); }

/* koala_state_size / koala_state_save */
CASE(state_size_opt_null) { size_t n = 0; UNUSED; return koala_state_size(NULL, &n); }
CASE(state_size_bytes_null) { return koala_state_size(f->opt, NULL); }
CASE(save_opt_null) { unsigned char b[16]; UNUSED; return koala_state_save(NULL, b, sizeof b, NULL); }
CASE(save_buf_null) { return koala_state_save(f->opt, NULL, 1 << 16, NULL); }
CASE(save_too_small) {
    size_t size;
    unsigned char *buf;
    koala_status st;
    assert_int_equal(koala_state_size(f->opt, &size), KOALA_OK);
    buf = malloc(size);
    assert_non_null(buf);
    memset(buf, 0xA5, size);
    st = koala_state_save(f->opt, buf, size - 1, NULL);
    {   /* the caller's buffer is not touched either */
        size_t i;
        for (i = 0; i < size; ++i) assert_int_equal(buf[i], 0xA5);
    }
    free(buf);
    return st;
}
CASE(save_size_0) { unsigned char b[1] = {0}; return koala_state_save(f->opt, b, 0, NULL); }
CASE(save_stream) { unsigned char b[1 << 12]; return koala_state_save(f->opt, b, sizeof b, SOME_STREAM); }

/* koala_state_load */
CASE(load_opt_null) { unsigned char b[64] = {0}; UNUSED; return koala_state_load(NULL, b, sizeof b, NULL); }
CASE(load_buf_null) { return koala_state_load(f->opt, NULL, 100, NULL); }
CASE(load_size_0) { unsigned char b[1] = {0}; return koala_state_load(f->opt, b, 0, NULL); }
CASE(load_stream) { size_t n; unsigned char *b = saved_state(f->donor, &n); koala_status st = koala_state_load(f->opt, b, n, SOME_STREAM); free(b); return st; }
CASE(load_garbage) { unsigned char b[256]; size_t i; for (i = 0; i < sizeof b; ++i) b[i] = (unsigned char)(i * 37 + 11); return koala_state_load(f->opt, b, sizeof b, NULL); }
CASE(load_bad_magic) { return load_edited(f, edit_magic, 1); }
CASE(load_truncated) { return load_edited(f, edit_truncate, 0); }
CASE(load_flipped_bit) { return load_edited(f, edit_flip, 0); }
CASE(load_short_resealed) { return load_edited(f, edit_grow, 1); }
CASE(load_version_2) { return load_edited(f, edit_version, 1); }
CASE(load_other_n_tensors) { return load_edited(f, edit_n_tensors, 1); }
CASE(load_other_size) { return load_edited(f, edit_size1, 1); }
CASE(load_cfg_lr_nan) { return load_edited(f, edit_lr_nan, 1); }
CASE(load_cfg_alpha_r_one) { return load_edited(f, edit_alpha_one, 1); }
CASE(load_filter_negative) { return load_edited(f, edit_sigma_neg, 1); }
CASE(load_filter_r_inf) { return load_edited(f, edit_r_inf, 1); }
CASE(load_p_indefinite) { return load_edited(f, edit_p_indefinite, 1); }
CASE(load_phase_2) { return load_edited(f, edit_phase, 1); }
CASE(load_other_method) { return load_other(f, f->method == KOALA_VANILLA ? KOALA_MOMENTUM : KOALA_VANILLA, f->dtype, N_TENSORS, kSizes); }
CASE(load_other_dtype) { return load_other(f, f->method, f->dtype == KOALA_FLOAT32 ? KOALA_FLOAT64 : KOALA_FLOAT32, N_TENSORS, kSizes); }
CASE(load_other_layout) { const size_t s[N_TENSORS] = {5, 7, 3}; return load_other(f, f->method, f->dtype, N_TENSORS, s); }

/* ---- the table ------------------------------------------------------------ */

typedef struct {
    const char *name;
    const char *entry;     /* the function the message must name */
    const char *misuse;    /* for the README */
    fx_kind fixture;
    fx_phase phase;
    koala_status expect;
    const char *needle;    /* the message must contain this (names the argument) */
    koala_status (*run)(fixture *f);
} bad_case;

#define INV KOALA_ERROR_INVALID_ARGUMENT
#define BAD KOALA_ERROR_BAD_STATE
#define NF KOALA_ERROR_NOT_FINITE
#define UNS KOALA_ERROR_UNSUPPORTED
#define ROW(fn, entry, misuse, fx, ph, st, needle) {#fn, entry, misuse, fx, ph, st, needle, fn}

static const bad_case kCases[] = {
    ROW(create_cfg_null, "koala_create", "cfg = NULL", FX_V32, IDLE, INV, "cfg is NULL"),
    ROW(create_struct_size_0, "koala_create", "cfg->struct_size = 0 (koala_config_init not called)", FX_V32, IDLE, INV, "cfg->struct_size"),
    ROW(create_struct_size_small, "koala_create", "cfg->struct_size = sizeof - 8 (older, smaller struct)", FX_V32, IDLE, INV, "cfg->struct_size"),
    ROW(create_struct_tail, "koala_create", "larger struct, unknown appended field non-zero", FX_V32, IDLE, UNS, "beyond byte"),
    ROW(create_struct_size_huge, "koala_create", "cfg->struct_size = 2^40", FX_V32, IDLE, INV, "cfg->struct_size"),
    ROW(create_method_0, "koala_create", "cfg->method = 0", FX_V32, IDLE, INV, "cfg->method"),
    ROW(create_method_3, "koala_create", "cfg->method = 3", FX_V32, IDLE, INV, "cfg->method"),
    ROW(create_dtype_0, "koala_create", "dtype = 0", FX_V32, IDLE, INV, "dtype"),
    ROW(create_dtype_3, "koala_create", "dtype = 3", FX_V32, IDLE, INV, "dtype"),
    ROW(create_memory_0, "koala_create", "memory = 0", FX_V32, IDLE, INV, "memory"),
    ROW(create_memory_3, "koala_create", "memory = 3", FX_V32, IDLE, INV, "memory"),
    ROW(create_n_tensors_0, "koala_create", "n_tensors = 0", FX_V32, IDLE, INV, "n_tensors"),
    ROW(create_sizes_null, "koala_create", "sizes = NULL", FX_V32, IDLE, INV, "sizes is NULL"),
    ROW(create_size_zero, "koala_create", "sizes[1] = 0", FX_V32, IDLE, INV, "sizes[1]"),
    ROW(create_size_max, "koala_create", "sizes[0] = SIZE_MAX", FX_V32, IDLE, INV, "sizes[0]"),
    ROW(create_size_sum_overflow, "koala_create", "sizes = {2^57, 2^57} float64 (byte total overflows)", FX_V32, IDLE, INV, "sizes[1]"),
    ROW(create_n_tensors_huge, "koala_create", "n_tensors = SIZE_MAX", FX_V32, IDLE, INV, "n_tensors"),
    ROW(create_out_null, "koala_create", "out = NULL", FX_V32, IDLE, INV, "out is NULL"),
    ROW(cfg_lr_negative, "koala_create", "cfg->lr = -1", FX_V32, IDLE, INV, "cfg->lr"),
    ROW(cfg_lr_nan, "koala_create", "cfg->lr = NaN", FX_V32, IDLE, INV, "cfg->lr"),
    ROW(cfg_lr_inf, "koala_create", "cfg->lr = +Inf (momentum)", FX_V32, IDLE, INV, "cfg->lr"),
    ROW(cfg_wd_negative, "koala_create", "cfg->weight_decay = -5e-4", FX_V32, IDLE, INV, "cfg->weight_decay"),
    ROW(cfg_wd_nan, "koala_create", "cfg->weight_decay = NaN (momentum)", FX_V32, IDLE, INV, "cfg->weight_decay"),
    ROW(cfg_wd_inf, "koala_create", "cfg->weight_decay = +Inf", FX_V32, IDLE, INV, "cfg->weight_decay"),
    ROW(cfg_r_negative, "koala_create", "cfg->r = -1", FX_V32, IDLE, INV, "cfg->r"),
    ROW(cfg_r_inf, "koala_create", "cfg->r = +Inf (momentum)", FX_V32, IDLE, INV, "cfg->r"),
    ROW(cfg_r_minus_inf, "koala_create", "cfg->r = -Inf", FX_V32, IDLE, INV, "cfg->r"),
    ROW(cfg_alpha_r_one, "koala_create", "cfg->alpha_r = 1", FX_V32, IDLE, INV, "cfg->alpha_r"),
    ROW(cfg_alpha_r_negative, "koala_create", "cfg->alpha_r = -0.1 (momentum)", FX_V32, IDLE, INV, "cfg->alpha_r"),
    ROW(cfg_alpha_r_nan, "koala_create", "cfg->alpha_r = NaN", FX_V32, IDLE, INV, "cfg->alpha_r"),
    ROW(cfg_sigma_negative, "koala_create", "cfg->sigma = -0.1 (vanilla)", FX_V32, IDLE, INV, "cfg->sigma"),
    ROW(cfg_sigma_nan, "koala_create", "cfg->sigma = NaN", FX_V32, IDLE, INV, "cfg->sigma"),
    ROW(cfg_sigma_inf, "koala_create", "cfg->sigma = +Inf", FX_V32, IDLE, INV, "cfg->sigma"),
    ROW(cfg_q_negative, "koala_create", "cfg->q = -1 (vanilla)", FX_V32, IDLE, INV, "cfg->q"),
    ROW(cfg_q_nan, "koala_create", "cfg->q = NaN", FX_V32, IDLE, INV, "cfg->q"),
    ROW(cfg_q_inf, "koala_create", "cfg->q = +Inf", FX_V32, IDLE, INV, "cfg->q"),
    ROW(cfg_sw_negative, "koala_create", "cfg->sw = -0.1 (momentum)", FX_V32, IDLE, INV, "cfg->sw"),
    ROW(cfg_sw_nan, "koala_create", "cfg->sw = NaN", FX_V32, IDLE, INV, "cfg->sw"),
    ROW(cfg_sv_negative, "koala_create", "cfg->sv = -0.1", FX_V32, IDLE, INV, "cfg->sv"),
    ROW(cfg_sv_inf, "koala_create", "cfg->sv = +Inf", FX_V32, IDLE, INV, "cfg->sv"),
    ROW(cfg_sc_nan, "koala_create", "cfg->sc = NaN", FX_V32, IDLE, INV, "cfg->sc"),
    ROW(cfg_sc_indefinite, "koala_create", "cfg->sc = 0.2 with sw = sv = 0.1 (P indefinite)", FX_V32, IDLE, INV, "cfg->sc"),
    ROW(cfg_sc_indefinite_neg, "koala_create", "cfg->sc = -0.11 with sw = sv = 0.1", FX_V32, IDLE, INV, "cfg->sc"),
    ROW(cfg_a_one, "koala_create", "cfg->a = 1", FX_V32, IDLE, INV, "cfg->a"),
    ROW(cfg_a_negative, "koala_create", "cfg->a = -0.5", FX_V32, IDLE, INV, "cfg->a"),
    ROW(cfg_a_nan, "koala_create", "cfg->a = NaN", FX_V32, IDLE, INV, "cfg->a"),
    ROW(cfg_qw_negative, "koala_create", "cfg->qw = -0.01", FX_V32, IDLE, INV, "cfg->qw"),
    ROW(cfg_qw_inf, "koala_create", "cfg->qw = +Inf", FX_V32, IDLE, INV, "cfg->qw"),
    ROW(cfg_qv_negative, "koala_create", "cfg->qv = -0.01", FX_V32, IDLE, INV, "cfg->qv"),
    ROW(cfg_qv_nan, "koala_create", "cfg->qv = NaN", FX_V32, IDLE, INV, "cfg->qv"),

    ROW(predict_opt_null, "koala_predict", "opt = NULL", FX_M32, IDLE, INV, "opt is NULL"),
    ROW(predict_params_null, "koala_predict", "params = NULL (momentum)", FX_M32, IDLE, INV, "params is NULL"),
    ROW(predict_param1_null, "koala_predict", "params[1] = NULL (momentum)", FX_M64, IDLE, INV, "params[1]"),
    ROW(predict_stream, "koala_predict", "stream != NULL on a host optimizer", FX_V32, IDLE, INV, "stream"),
    ROW(predict_twice, "koala_predict", "predict twice without update", FX_M32, PREDICTED, BAD, "twice"),

    ROW(update_opt_null, "koala_update", "opt = NULL", FX_V32, PREDICTED, INV, "opt is NULL"),
    ROW(update_params_null, "koala_update", "params = NULL", FX_V64, PREDICTED, INV, "params is NULL"),
    ROW(update_param2_null, "koala_update", "params[2] = NULL", FX_M32, PREDICTED, INV, "params[2]"),
    ROW(update_grads_null, "koala_update", "grads = NULL", FX_M64, PREDICTED, INV, "grads is NULL"),
    ROW(update_stream, "koala_update", "stream != NULL on a host optimizer", FX_V32, PREDICTED, INV, "stream"),
    ROW(update_before_predict, "koala_update", "update without predict", FX_M32, IDLE, BAD, "koala_predict"),
    ROW(update_loss_nan, "koala_update", "loss = NaN", FX_V32, PREDICTED, NF, "loss"),
    ROW(update_loss_inf, "koala_update", "loss = +Inf (momentum)", FX_M64, PREDICTED, NF, "loss"),
    ROW(update_loss_var_nan, "koala_update", "loss_var = NaN", FX_V64, PREDICTED, NF, "loss_var"),
    ROW(update_loss_var_inf, "koala_update", "loss_var = +Inf (momentum)", FX_M32, PREDICTED, NF, "loss_var"),
    ROW(update_loss_var_negative, "koala_update", "loss_var = -1 (a mean of squares)", FX_V32, PREDICTED, INV, "loss_var"),
    ROW(update_grad_nan, "koala_update", "one gradient element NaN (float32)", FX_V32, PREDICTED, NF, "gradient"),
    ROW(update_grad_inf, "koala_update", "one gradient element +Inf (momentum, float64)", FX_M64, PREDICTED, NF, "gradient"),

    ROW(update_ptr_opt_null, "koala_update_ptr", "opt = NULL", FX_V32, PREDICTED, INV, "opt is NULL"),
    ROW(update_ptr_loss_null, "koala_update_ptr", "loss = NULL", FX_M32, PREDICTED, INV, "loss is NULL"),
    ROW(update_ptr_loss_var_null, "koala_update_ptr", "loss_var = NULL", FX_V64, PREDICTED, INV, "loss_var is NULL"),
    ROW(update_ptr_dtype_0, "koala_update_ptr", "loss_dtype = 0", FX_V32, PREDICTED, INV, "loss_dtype"),
    ROW(update_ptr_dtype_9, "koala_update_ptr", "loss_dtype = 9", FX_M64, PREDICTED, INV, "loss_dtype"),
    ROW(update_ptr_grads_null, "koala_update_ptr", "grads = NULL", FX_M32, PREDICTED, INV, "grads is NULL"),
    ROW(update_ptr_before_predict, "koala_update_ptr", "update_ptr without predict", FX_V64, IDLE, BAD, "koala_predict"),
    ROW(update_ptr_loss_nan32, "koala_update_ptr", "*loss = NaN (float32)", FX_M32, PREDICTED, NF, "loss"),
    ROW(update_ptr_loss_var_inf64, "koala_update_ptr", "*loss_var = -Inf (float64)", FX_V64, PREDICTED, NF, "loss_var"),
    ROW(update_ptr_loss_var_negative, "koala_update_ptr", "*loss_var = -0.25 (float32)", FX_M32, PREDICTED, INV, "loss_var"),

    ROW(info_opt_null, "koala_get_info", "opt = NULL", FX_V32, IDLE, INV, "opt is NULL"),
    ROW(info_out_null, "koala_get_info", "out = NULL", FX_V32, IDLE, INV, "out is NULL"),
    ROW(info_struct_size_0, "koala_get_info", "out->struct_size = 0", FX_M32, IDLE, INV, "struct_size"),
    ROW(info_struct_size_small, "koala_get_info", "out->struct_size = sizeof - 8", FX_V64, IDLE, INV, "struct_size"),
    ROW(info_stream, "koala_get_info", "stream != NULL on a host optimizer", FX_M64, IDLE, INV, "stream"),

    ROW(set_lr_opt_null, "koala_set_lr", "opt = NULL", FX_V32, IDLE, INV, "opt is NULL"),
    ROW(set_lr_negative, "koala_set_lr", "lr = -0.5", FX_V32, IDLE, INV, "lr is"),
    ROW(set_lr_nan, "koala_set_lr", "lr = NaN", FX_M32, PREDICTED, INV, "lr is"),
    ROW(set_lr_inf, "koala_set_lr", "lr = +Inf", FX_V64, IDLE, INV, "lr is"),
    ROW(set_lr_minus_inf, "koala_set_lr", "lr = -Inf", FX_M64, IDLE, INV, "lr is"),

    ROW(state_size_opt_null, "koala_state_size", "opt = NULL", FX_V32, IDLE, INV, "opt is NULL"),
    ROW(state_size_bytes_null, "koala_state_size", "bytes = NULL", FX_V32, IDLE, INV, "bytes is NULL"),
    ROW(save_opt_null, "koala_state_save", "opt = NULL", FX_V32, IDLE, INV, "opt is NULL"),
    ROW(save_buf_null, "koala_state_save", "buf = NULL", FX_M32, IDLE, INV, "buf is NULL"),
    ROW(save_too_small, "koala_state_save", "size = koala_state_size - 1", FX_M64, IDLE, INV, "size is"),
    ROW(save_size_0, "koala_state_save", "size = 0", FX_V32, IDLE, INV, "size is"),
    ROW(save_stream, "koala_state_save", "stream != NULL on a host optimizer", FX_V64, IDLE, INV, "stream"),

    ROW(load_opt_null, "koala_state_load", "opt = NULL", FX_V32, IDLE, INV, "opt is NULL"),
    ROW(load_buf_null, "koala_state_load", "buf = NULL", FX_V32, IDLE, INV, "buf is NULL"),
    ROW(load_size_0, "koala_state_load", "size = 0", FX_M32, IDLE, BAD, "magic"),
    ROW(load_stream, "koala_state_load", "stream != NULL on a host optimizer", FX_M64, IDLE, INV, "stream"),
    ROW(load_garbage, "koala_state_load", "256 bytes of garbage", FX_V32, IDLE, BAD, "magic"),
    ROW(load_bad_magic, "koala_state_load", "valid checkpoint, magic changed", FX_M32, IDLE, BAD, "magic"),
    ROW(load_truncated, "koala_state_load", "valid checkpoint minus its last byte", FX_M64, PREDICTED, BAD, "checksum"),
    ROW(load_flipped_bit, "koala_state_load", "valid checkpoint, one bit flipped", FX_M32, IDLE, BAD, "checksum"),
    ROW(load_short_resealed, "koala_state_load", "one word shorter, checksum recomputed", FX_M64, IDLE, BAD, "size is"),
    ROW(load_version_2, "koala_state_load", "format version 2 (checksum recomputed)", FX_V32, IDLE, BAD, "version"),
    ROW(load_other_n_tensors, "koala_state_load", "n_tensors field 2 (checksum recomputed)", FX_V64, IDLE, BAD, "tensors"),
    ROW(load_other_size, "koala_state_load", "sizes[1] field 4 (checksum recomputed)", FX_M32, IDLE, BAD, "tensor 1"),
    ROW(load_cfg_lr_nan, "koala_state_load", "stored lr NaN (checksum recomputed)", FX_M64, IDLE, BAD, "cfg->lr"),
    ROW(load_cfg_alpha_r_one, "koala_state_load", "stored alpha_r 1 (checksum recomputed)", FX_V32, PREDICTED, BAD, "cfg->alpha_r"),
    ROW(load_filter_negative, "koala_state_load", "stored sigma -1 (checksum recomputed)", FX_V64, IDLE, BAD, "filter scalar"),
    ROW(load_filter_r_inf, "koala_state_load", "stored R +Inf (checksum recomputed)", FX_M32, IDLE, BAD, "filter scalar"),
    ROW(load_p_indefinite, "koala_state_load", "stored momentum P01 = 10 (P indefinite; checksum recomputed)", FX_M64, IDLE, BAD, "semi-definite"),
    ROW(load_phase_2, "koala_state_load", "stored phase flag 2 (checksum recomputed)", FX_M64, IDLE, BAD, "phase"),
    ROW(load_other_method, "koala_state_load", "checkpoint of the other method", FX_V32, IDLE, BAD, "method"),
    ROW(load_other_dtype, "koala_state_load", "checkpoint of the other dtype", FX_M64, IDLE, BAD, "dtype"),
    ROW(load_other_layout, "koala_state_load", "checkpoint of sizes {5, 7, 3} instead of {5, 3, 7}", FX_M32, IDLE, BAD, "tensor 1"),
};
#define N_CASES (sizeof kCases / sizeof kCases[0])

/* ---- running one case ----------------------------------------------------- */

/* Leaves a known, unrelated message in this thread's error slot, so the case
 * must overwrite it to pass. */
static void prime_last_error(void) {
    assert_int_equal(koala_set_lr(NULL, 1.0), KOALA_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(koala_last_error(), "koala_set_lr"));
}

/* Runs the case and returns its message in msg (for the README). */
static void run_case(const bad_case *c, char *msg, size_t msg_size) {
    fixture f;
    blob before, after;
    koala_status st;
    const char *err;
    fixture_make(&f, c->fixture, c->phase);
    before = snapshot(&f);
    prime_last_error();
    st = c->run(&f);
    err = koala_last_error();
    snprintf(msg, msg_size, "%s", err);
    if (st != c->expect)
        fail_msg("%s: status %d (%s), expected %d; message: %s", c->name, (int)st,
                 koala_status_string(st), (int)c->expect, err);
    if (err[0] == '\0') fail_msg("%s: empty koala_last_error()", c->name);
    if (strcmp(c->entry, "koala_set_lr") != 0 && strstr(err, "koala_set_lr") != NULL)
        fail_msg("%s: stale message from an earlier call: %s", c->name, err);
    if (strncmp(err, c->entry, strlen(c->entry)) != 0 || err[strlen(c->entry)] != ':')
        fail_msg("%s: message does not start with '%s:': %s", c->name, c->entry, err);
    if (strstr(err, c->needle) == NULL)
        fail_msg("%s: message does not name '%s': %s", c->name, c->needle, err);
    after = snapshot(&f);
    assert_int_equal(before.size, after.size);
    if (memcmp(before.bytes, after.bytes, before.size) != 0)
        fail_msg("%s: the failing call changed parameters, gradients, state or *out", c->name);
    free(before.bytes);
    free(after.bytes);
    fixture_free(&f);
}

static void test_case(void **state) {
    char msg[600];
    run_case((const bad_case *)*state, msg, sizeof msg);
}

/* Every failure leaves the optimizer usable: a whole step after it succeeds
 * (a failure must not wedge the predict/update phase). */
static void test_still_usable_after_failure(void **state) {
    fixture f;
    size_t i;
    (void)state;
    for (i = 0; i < N_CASES; ++i) {
        const bad_case *c = &kCases[i];
        fixture_make(&f, c->fixture, c->phase);
        (void)c->run(&f);
        if (c->phase == IDLE) assert_int_equal(koala_predict(f.opt, f.params, NULL), KOALA_OK);
        assert_int_equal(koala_update(f.opt, 0.5, 0.3, f.params, f.grads, NULL), KOALA_OK);
        fixture_free(&f);
    }
}

static const char *status_name(koala_status s) {
    switch (s) {
    case KOALA_OK: return "OK";
    case KOALA_ERROR_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case KOALA_ERROR_OUT_OF_MEMORY: return "OUT_OF_MEMORY";
    case KOALA_ERROR_NOT_FINITE: return "NOT_FINITE";
    case KOALA_ERROR_UNSUPPORTED: return "UNSUPPORTED";
    case KOALA_ERROR_CUDA: return "CUDA";
    case KOALA_ERROR_BAD_STATE: return "BAD_STATE";
    case KOALA_ERROR_COMMUNICATION: return "COMMUNICATION";
    }
    return "?";
}

/* Markdown-safe copy: '|' would split a table cell. */
static void print_cell(const char *s) {
    for (; *s; ++s) {
        if (*s == '|')
            fputs("\\|", stdout);
        else
            putchar(*s);
    }
}

static int print_markdown(void) {
    size_t i;
    char msg[600];
    printf("| # | function | misuse | status | message (excerpt checked: **bold**) |\n");
    printf("|---|---|---|---|---|\n");
    for (i = 0; i < N_CASES; ++i) {
        const bad_case *c = &kCases[i];
        const char *hit;
        run_case(c, msg, sizeof msg);
        hit = strstr(msg, c->needle);
        printf("| %zu | `%s` | ", i + 1, c->entry);
        print_cell(c->misuse);
        printf(" | %s | ", status_name(c->expect));
        /* the message with the asserted substring in bold */
        {
            const size_t pre = (size_t)(hit - msg);
            char part[600];
            memcpy(part, msg, pre);
            part[pre] = '\0';
            print_cell(part);
            fputs("**", stdout);
            print_cell(c->needle);
            fputs("**", stdout);
            print_cell(hit + strlen(c->needle));
        }
        printf(" |\n");
    }
    return 0;
}

int main(int argc, char **argv) {
    struct CMUnitTest tests[N_CASES + 1];
    size_t i;
    if (argc > 1 && strcmp(argv[1], "--markdown") == 0) return print_markdown();
    for (i = 0; i < N_CASES; ++i) {
        struct CMUnitTest t = {0};
        t.name = kCases[i].name;
        t.test_func = test_case;
        t.initial_state = (void *)&kCases[i];
        tests[i] = t;
    }
    {
        struct CMUnitTest t = {0};
        t.name = "still_usable_after_failure";
        t.test_func = test_still_usable_after_failure;
        tests[N_CASES] = t;
    }
    return _cmocka_run_group_tests("bad_inputs", tests, N_CASES + 1, NULL, NULL);
}
