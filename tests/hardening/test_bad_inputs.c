/*
 * The bad-input matrix: every entry point of koala.h misused in every way we
 * could think of. One table row per misuse; every row asserts
 *   - the exact status,
 *   - that koala_last_error() is non-empty, comes from THIS call and names
 *     the argument (a substring),
 *   - that nothing changed: parameters, gradients and every other caller
 *     buffer the call was given (partial sums, caller-owned state,
 *     koala_posterior's output) byte for byte, the optimizer's checkpoint
 *     bytes and koala_info, and *out for koala_create / koala_create_sharded.
 *     koala_update_end failing after its phase check leaves the optimizer
 *     predicted again (koala.h): those rows check the phase is 1, call
 *     koala_update_begin anew, and then require everything as before.
 *
 * The same table prints the README matrix (`test_bad_inputs --markdown`);
 * check_doc_matrix.py fails the suite when README.md's copy is stale.
 *
 * C99, knows only koala.h (the checkpoint cases rebuild the documented byte
 * formats of src/checkpoint.h themselves).
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
#define N_ELEMENTS 15
/* Sharded fixtures: local tensors 0 and 1 are two pieces of global tensor 0,
 * local tensor 2 is global tensor 1 (one process holding all of the model). */
#define N_GLOBAL 2
static const size_t kGlobalIndex[N_TENSORS] = {0, 0, 1};

typedef enum {
    FX_V32, FX_V64, FX_M32, FX_M64, FX_P32, FX_P64, /* KOALA-V, -M, ++ x float32 / float64 */
    FX_VB16,       /* KOALA-V, bfloat16 */
    FX_MF16,       /* KOALA-M, float16 */
    FX_SHARD,      /* KOALA-M float64, sharded, an all-reduce callback */
    FX_SHARD_NOCB, /* KOALA++ float32, sharded, no callback (two-phase form only) */
    FX_SHARD_MORE, /* KOALA-V float64, sharded, shard->global_elements 20: 5 elements the
                      other processes should hold are missing (every update fails) */
    FX_CALLER,     /* KOALA-M float32, caller-owned state, bound */
    FX_UNBOUND     /* KOALA-M float32, caller-owned state, nothing bound */
} fx_kind;
/* The phase the fixture is left in. BEGUN_PARTIAL: koala_update_begin ran
 * with tensor 1's gradient NULL (so global tensor 0 has a gradient on one
 * piece and none on the other). */
typedef enum { IDLE, PREDICTED, BEGUN, BEGUN_PARTIAL } fx_phase;

static const struct {
    const char *name;
    koala_method method;
    koala_dtype dtype;
    int sharded;      /* 0, or 1 with a callback, 2 without, 3 with 5 elements missing */
    int caller_state; /* 0, 1 bound, 2 unbound */
} kKinds[] = {
    {"KOALA-V float32", KOALA_VANILLA, KOALA_FLOAT32, 0, 0},
    {"KOALA-V float64", KOALA_VANILLA, KOALA_FLOAT64, 0, 0},
    {"KOALA-M float32", KOALA_MOMENTUM, KOALA_FLOAT32, 0, 0},
    {"KOALA-M float64", KOALA_MOMENTUM, KOALA_FLOAT64, 0, 0},
    {"KOALA++ float32", KOALA_PLUSPLUS, KOALA_FLOAT32, 0, 0},
    {"KOALA++ float64", KOALA_PLUSPLUS, KOALA_FLOAT64, 0, 0},
    {"KOALA-V bfloat16", KOALA_VANILLA, KOALA_BFLOAT16, 0, 0},
    {"KOALA-M float16", KOALA_MOMENTUM, KOALA_FLOAT16, 0, 0},
    {"sharded KOALA-M float64", KOALA_MOMENTUM, KOALA_FLOAT64, 1, 0},
    {"sharded KOALA++ float32, no callback", KOALA_PLUSPLUS, KOALA_FLOAT32, 2, 0},
    {"sharded KOALA-V float64, elements missing", KOALA_VANILLA, KOALA_FLOAT64, 3, 0},
    {"KOALA-M float32, caller-owned state", KOALA_MOMENTUM, KOALA_FLOAT32, 0, 1},
    {"KOALA-M float32, caller-owned state unbound", KOALA_MOMENTUM, KOALA_FLOAT32, 0, 2},
};

typedef struct {
    fx_kind kind;
    koala_method method;
    koala_dtype dtype;
    koala_optimizer *opt;   /* after two full steps (where it can step), then `phase` */
    koala_optimizer *donor; /* same layout, library-owned, one step further: checkpoints */
    void *params[N_TENSORS];
    const void *grads[N_TENSORS];
    void *grad_nan;         /* tensor 1's gradient with one NaN element */
    void *grad_inf;         /* tensor 1's gradient with one +Inf element */
    double *sums;           /* koala_sums_size doubles (filled by koala_update_begin if BEGUN) */
    size_t n_sums;
    void *state[2 * N_TENSORS]; /* caller-owned state: buffer b of tensor i at b * N + i */
    double *scalars;
    size_t n_buffers, n_scalars, state_elem;
    void *posterior[N_TENSORS]; /* koala_posterior's output */
    koala_optimizer *created;   /* koala_create's out slot, holds a sentinel */
} fixture;

static char sentinel_object;
#define SENTINEL ((koala_optimizer *)(void *)&sentinel_object)
static int some_stream_object;
#define SOME_STREAM ((void *)&some_stream_object)

static size_t elem_size(koala_dtype d) {
    return d == KOALA_FLOAT64 ? 8 : d == KOALA_FLOAT32 ? 4 : 2;
}

/* A float as IEEE binary16 (round toward zero; the fixture's values are
 * normal or zero, and NaN / Inf keep their meaning). */
static uint16_t to_fp16(float f) {
    uint32_t u, a;
    memcpy(&u, &f, 4);
    a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7e00u;
    if (a >= 0x47800000u) return (uint16_t)(((u >> 16) & 0x8000u) | 0x7c00u); /* Inf */
    if (a < 0x38800000u) return (uint16_t)((u >> 16) & 0x8000u);             /* to +-0 */
    return (uint16_t)(((u >> 16) & 0x8000u) | ((a - 0x38000000u) >> 13));
}

static void set_value(void *buf, koala_dtype d, size_t i, double v) {
    const float f = (float)v;
    uint32_t u;
    switch (d) {
    case KOALA_FLOAT64: ((double *)buf)[i] = v; break;
    case KOALA_FLOAT32: ((float *)buf)[i] = f; break;
    case KOALA_BFLOAT16:
        memcpy(&u, &f, 4);
        ((uint16_t *)buf)[i] = (uint16_t)(u >> 16); /* NaN stays NaN: its top bits are set */
        break;
    default: ((uint16_t *)buf)[i] = to_fp16(f); break;
    }
}

static void *filled(koala_dtype d, size_t n, double base, double step) {
    void *p = malloc(n * elem_size(d));
    size_t i;
    assert_non_null(p);
    for (i = 0; i < n; ++i) set_value(p, d, i, base + step * (double)i);
    return p;
}

/* The all-reduce of a process that is alone in its group: the sums are
 * already complete. g_allreduce_rc != 0 makes it fail like a broken
 * communicator would, after scribbling NaN over the buffer. */
static int g_allreduce_rc = 0;
static int allreduce(double *buf, size_t count, void *stream, void *user) {
    size_t i;
    (void)stream;
    (void)user;
    if (g_allreduce_rc == 0) return 0;
    for (i = 0; i < count; ++i) buf[i] = NAN;
    return g_allreduce_rc;
}

static koala_shard shard_of(int sharded) {
    koala_shard s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    s.n_global = N_GLOBAL;
    s.global_index = kGlobalIndex;
    s.global_elements = sharded == 3 ? N_ELEMENTS + 5 : N_ELEMENTS;
    s.allreduce = sharded == 2 ? NULL : allreduce;
    return s;
}

static koala_config fixture_config(fx_kind kind, int caller_state) {
    koala_config cfg;
    koala_config_init(&cfg, kKinds[kind].method);
    cfg.weight_decay = 1e-3;
    cfg.caller_state = caller_state;
    return cfg;
}

static koala_optimizer *fixture_create(fx_kind kind, int caller_state, int sharded) {
    const koala_config cfg = fixture_config(kind, caller_state);
    koala_optimizer *opt = NULL;
    if (sharded) {
        const koala_shard shard = shard_of(sharded);
        assert_int_equal(koala_create_sharded(&cfg, N_TENSORS, kSizes, &shard, kKinds[kind].dtype,
                                              KOALA_HOST, &opt),
                         KOALA_OK);
    } else {
        assert_int_equal(koala_create(&cfg, N_TENSORS, kSizes, kKinds[kind].dtype, KOALA_HOST,
                                      &opt),
                         KOALA_OK);
    }
    return opt;
}

/* One whole step the way the fixture's optimizer can take it. */
static void full_step(koala_optimizer *opt, int no_callback, void *const *params,
                      const void *const *grads, double *sums) {
    assert_int_equal(koala_predict(opt, params, NULL), KOALA_OK);
    if (no_callback) {
        assert_int_equal(koala_update_begin(opt, params, grads, sums, NULL), KOALA_OK);
        assert_int_equal(koala_update_end(opt, 0.5, 0.3, params, grads, sums, NULL), KOALA_OK);
    } else {
        assert_int_equal(koala_update(opt, 0.5, 0.3, params, grads, NULL), KOALA_OK);
    }
}

/* Per-tensor hyper-parameters some fixtures carry, so that a failing
 * koala_set_tensor_* is seen to keep them. */
static const double kTensorLr[N_TENSORS] = {1.0, 0.5, 2.0};
static const double kTensorWd[N_TENSORS] = {1e-3, 0.0, 2e-3};

static void fixture_make(fixture *f, fx_kind kind, fx_phase phase) {
    const int sharded = kKinds[kind].sharded, caller = kKinds[kind].caller_state;
    const int can_step = sharded != 3 && caller != 2;
    void *donor_params[N_TENSORS];
    double *donor_sums;
    size_t t, k;
    memset(f, 0, sizeof *f);
    f->kind = kind;
    f->method = kKinds[kind].method;
    f->dtype = kKinds[kind].dtype;
    for (t = 0; t < N_TENSORS; ++t) {
        f->params[t] = filled(f->dtype, kSizes[t], 0.25 * (double)(t + 1), -0.0625);
        f->grads[t] = filled(f->dtype, kSizes[t], 0.5 - 0.1 * (double)t, 0.03125);
        f->posterior[t] = filled(f->dtype, kSizes[t], -3.0, 0.0);
        donor_params[t] = filled(f->dtype, kSizes[t], 0.1, 0.01);
    }
    f->grad_nan = filled(f->dtype, kSizes[1], 0.5, 0.03125);
    set_value(f->grad_nan, f->dtype, 1, NAN);
    f->grad_inf = filled(f->dtype, kSizes[1], 0.5, 0.03125);
    set_value(f->grad_inf, f->dtype, 2, INFINITY);

    f->opt = fixture_create(kind, caller != 0, sharded);
    assert_int_equal(koala_sums_size(f->opt, &f->n_sums), KOALA_OK);
    f->sums = malloc(f->n_sums * sizeof *f->sums);
    assert_non_null(f->sums);
    for (k = 0; k < f->n_sums; ++k) f->sums[k] = 0.125 * (double)k;
    if (caller) {
        koala_dtype state_dtype;
        assert_int_equal(koala_state_layout(f->opt, &f->n_buffers, &state_dtype, &f->n_scalars),
                         KOALA_OK);
        f->state_elem = elem_size(state_dtype);
        for (k = 0; k < f->n_buffers * N_TENSORS; ++k) {
            f->state[k] = malloc(kSizes[k % N_TENSORS] * f->state_elem);
            assert_non_null(f->state[k]);
        }
        f->scalars = malloc(f->n_scalars * sizeof *f->scalars);
        assert_non_null(f->scalars);
        assert_int_equal(koala_state_init(f->opt, f->state, f->scalars, NULL), KOALA_OK);
        if (caller == 1) assert_int_equal(koala_bind_state(f->opt, f->state, f->scalars), KOALA_OK);
    }
    if (kind == FX_M64) {
        assert_int_equal(koala_set_tensor_lr(f->opt, kTensorLr, NULL), KOALA_OK);
        assert_int_equal(koala_set_tensor_weight_decay(f->opt, kTensorWd, NULL), KOALA_OK);
    }
    if (can_step) {
        full_step(f->opt, sharded == 2, f->params, f->grads, f->sums);
        full_step(f->opt, sharded == 2, f->params, f->grads, f->sums);
    }
    if (phase != IDLE) assert_int_equal(koala_predict(f->opt, f->params, NULL), KOALA_OK);
    if (phase == BEGUN)
        assert_int_equal(koala_update_begin(f->opt, f->params, f->grads, f->sums, NULL), KOALA_OK);
    if (phase == BEGUN_PARTIAL) {
        const void *g[N_TENSORS];
        g[0] = f->grads[0];
        g[1] = NULL;
        g[2] = f->grads[2];
        assert_int_equal(koala_update_begin(f->opt, f->params, g, f->sums, NULL), KOALA_OK);
    }

    /* The donor: library-owned, with a callback, one whole step further. */
    f->donor = fixture_create(kind, 0, sharded == 2 ? 1 : sharded);
    if (kind == FX_M64) {
        assert_int_equal(koala_set_tensor_lr(f->donor, kTensorLr, NULL), KOALA_OK);
        assert_int_equal(koala_set_tensor_weight_decay(f->donor, kTensorWd, NULL), KOALA_OK);
    }
    donor_sums = malloc(f->n_sums * sizeof *donor_sums);
    assert_non_null(donor_sums);
    if (sharded != 3)
        for (k = 0; k < 3; ++k) full_step(f->donor, 0, donor_params, f->grads, donor_sums);
    free(donor_sums);
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
        free(f->posterior[t]);
    }
    for (t = 0; t < f->n_buffers * N_TENSORS; ++t) free(f->state[t]);
    free(f->scalars);
    free(f->sums);
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
    koala_status st;
    const size_t e = elem_size(f->dtype);
    for (t = 0; t < N_TENSORS; ++t) {
        blob_append(&b, f->params[t], kSizes[t] * e);
        blob_append(&b, f->grads[t], kSizes[t] * e);
        blob_append(&b, f->posterior[t], kSizes[t] * e);
    }
    blob_append(&b, f->grad_nan, kSizes[1] * e);
    blob_append(&b, f->grad_inf, kSizes[1] * e);
    blob_append(&b, f->sums, f->n_sums * sizeof *f->sums);
    for (t = 0; t < f->n_buffers * N_TENSORS; ++t)
        blob_append(&b, f->state[t], kSizes[t % N_TENSORS] * f->state_elem);
    if (f->scalars) blob_append(&b, f->scalars, f->n_scalars * sizeof *f->scalars);
    /* The optimizer's checkpoint and info (an unbound caller-state optimizer
     * has neither: its status is recorded instead). */
    assert_int_equal(koala_state_size(f->opt, &state_size), KOALA_OK);
    state = malloc(state_size);
    assert_non_null(state);
    st = koala_state_save(f->opt, state, state_size, NULL);
    blob_append(&b, &st, sizeof st);
    if (st == KOALA_OK) blob_append(&b, state, state_size);
    free(state);
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    st = koala_get_info(f->opt, NULL, &info);
    blob_append(&b, &st, sizeof st);
    if (st == KOALA_OK) blob_append(&b, &info, sizeof info);
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

static koala_status create_shard(fixture *f, const koala_shard *s) {
    koala_config c = config_of(KOALA_MOMENTUM);
    return koala_create_sharded(&c, N_TENSORS, kSizes, s, KOALA_FLOAT64, KOALA_HOST, &f->created);
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

static koala_status end_with(fixture *f, double loss, double loss_var, const void *g1) {
    const void *g[N_TENSORS];
    g[0] = f->grads[0];
    g[1] = g1;
    g[2] = f->grads[2];
    return koala_update_end(f->opt, loss, loss_var, f->params, g, f->sums, NULL);
}

/* The checkpoint formats of src/checkpoint.h (offsets into the byte string)
 * and their checksum, rebuilt here so the cases can forge checkpoints whose
 * checksum is right but whose contents are not. Version 2, N_TENSORS
 * tensors: magic, u32 version, method, dtype, buffers, u64 n_tensors,
 * sizes[n]; u64 n_global, global_elements, global_index[n]; u32 sharded,
 * u32 flags; f64 config[12]; u32 config[4]; u64 seed; u64 scalar count,
 * f64 scalars (scalars.h: sigma p00 p01 p11 r qw skipped steps phase ...);
 * per-tensor lr / weight decay (flags); buffers; u64 checksum. */
enum {
    CKP_VERSION = 8,
    CKP_METHOD = 12,
    CKP_N_TENSORS = 24,
    CKP_SIZES = 32,
    CKP_N_GLOBAL = CKP_SIZES + 8 * N_TENSORS,
    CKP_GLOBAL_INDEX = CKP_N_GLOBAL + 16,
    CKP_SHARDED = CKP_GLOBAL_INDEX + 8 * N_TENSORS,
    CKP_FLAGS = CKP_SHARDED + 4,
    CKP_CONFIG = CKP_FLAGS + 4,             /* 12 doubles: lr first */
    CKP_CONFIG_INTS = CKP_CONFIG + 8 * 12,  /* stochastic_rounding asymmetric fused_predict 0 */
    CKP_SCALAR_COUNT = CKP_CONFIG_INTS + 16 + 8,
    CKP_SCALARS = CKP_SCALAR_COUNT + 8,     /* sigma p00 p01 p11 r qw skipped steps phase */
    SCALAR_HEADER = 16                      /* doubles before the per-tensor scalars */
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
static size_t per_tensor_scalars(void) { return CKP_SCALARS + 8 * SCALAR_HEADER; }
static size_t tensor_lr_at(const unsigned char *b) {
    uint64_t count;
    memcpy(&count, b + CKP_SCALAR_COUNT, 8);
    return CKP_SCALARS + 8 * (size_t)count;
}

static void edit_truncate(unsigned char *b, size_t *n) { (void)b; *n -= 1; }
static void edit_flip(unsigned char *b, size_t *n) { b[*n / 2] ^= 0x10; }
static void edit_magic(unsigned char *b, size_t *n) { (void)n; b[0] = 'X'; }
static void edit_version(unsigned char *b, size_t *n) { (void)n; put_u32(b, CKP_VERSION, 3); }
static void edit_n_tensors(unsigned char *b, size_t *n) { (void)n; put_u64(b, CKP_N_TENSORS, 2); }
static void edit_size1(unsigned char *b, size_t *n) { (void)n; put_u64(b, CKP_SIZES + 8, 4); }
static void edit_n_global(unsigned char *b, size_t *n) { (void)n; put_u64(b, CKP_N_GLOBAL, 4); }
static void edit_global_index(unsigned char *b, size_t *n) { (void)n; put_u64(b, CKP_GLOBAL_INDEX + 16, 0); }
static void edit_flags(unsigned char *b, size_t *n) { (void)n; put_u32(b, CKP_FLAGS, 4); }
static void edit_lr_nan(unsigned char *b, size_t *n) { (void)n; put_f64(b, CKP_CONFIG, NAN); }
static void edit_alpha_one(unsigned char *b, size_t *n) { (void)n; put_f64(b, CKP_CONFIG + 24, 1.0); }
static void edit_stochastic(unsigned char *b, size_t *n) { (void)n; put_u32(b, CKP_CONFIG_INTS, 2); }
static void edit_scalar_count(unsigned char *b, size_t *n) { (void)n; put_u64(b, CKP_SCALAR_COUNT, 17); }
static void edit_sigma_neg(unsigned char *b, size_t *n) { (void)n; put_f64(b, CKP_SCALARS, -1.0); }
static void edit_r_inf(unsigned char *b, size_t *n) { (void)n; put_f64(b, CKP_SCALARS + 32, INFINITY); }
static void edit_p_indefinite(unsigned char *b, size_t *n) { (void)n; put_f64(b, CKP_SCALARS + 16, 10.0); }
static void edit_phase(unsigned char *b, size_t *n) { (void)n; put_f64(b, CKP_SCALARS + 64, 3.0); }
static void edit_pp_seen(unsigned char *b, size_t *n) { (void)n; put_f64(b, per_tensor_scalars() + 8, 2.0); }
static void edit_tensor_lr(unsigned char *b, size_t *n) { (void)n; put_f64(b, tensor_lr_at(b) + 8, -1.0); }
static void edit_grow(unsigned char *b, size_t *n) { (void)b; *n -= 8; } /* shorter by one word, resealed */

/* A checkpoint of a different layout. */
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

/* A libkoala 1.0 checkpoint (format version 1 of src/checkpoint.h) of a
 * fresh KOALA-M float64 optimizer of the fixture's layout: magic, u32 1,
 * method, dtype, buffers, u64 n, sizes[n], f64 config[12], f64 sigma p00
 * p01 p11 r qw, u64 steps, u64 skipped, u32 predicted, u32 0, buffers,
 * u64 checksum. */
static unsigned char *forged_v1(size_t *size) {
    const koala_config c = config_of(KOALA_MOMENTUM);
    const double config[12] = {c.lr, c.weight_decay, c.r, c.alpha_r, c.sigma, c.q,
                               c.sw, c.sc,           c.sv, c.a,      c.qw,    c.qv};
    const double filter[6] = {c.sigma, c.sw, c.sc, c.sv, 1.0, c.qw};
    const size_t n = 32 + 8 * N_TENSORS + 8 * 18 + 16 + 8 + 2 * N_ELEMENTS * 8 + 8;
    unsigned char *b = calloc(1, n);
    size_t t, at;
    assert_non_null(b);
    memcpy(b, "KOALACKP", 8);
    put_u32(b, 8, 1);
    put_u32(b, 12, KOALA_MOMENTUM);
    put_u32(b, 16, KOALA_FLOAT64);
    put_u32(b, 20, 2);
    put_u64(b, 24, N_TENSORS);
    for (t = 0; t < N_TENSORS; ++t) put_u64(b, 32 + 8 * t, kSizes[t]);
    at = 32 + 8 * N_TENSORS;
    for (t = 0; t < 12; ++t, at += 8) put_f64(b, at, config[t]);
    for (t = 0; t < 6; ++t, at += 8) put_f64(b, at, filter[t]);
    reseal(b, n); /* steps, phase and buffers stay 0 */
    *size = n;
    return b;
}

/* ---- the cases ------------------------------------------------------------ */

#define CASE(name) static koala_status name(fixture *f)
#define UNUSED (void)f

/* koala_create */
CASE(create_cfg_null) { return koala_create(NULL, N_TENSORS, kSizes, KOALA_FLOAT32, KOALA_HOST, &f->created); }
CASE(create_struct_size_0) { koala_config c = config_of(KOALA_VANILLA); c.struct_size = 0; return create_cfg(f, &c); }
CASE(create_struct_size_small) { koala_config c = config_of(KOALA_VANILLA); c.struct_size = KOALA_CONFIG_SIZE_1_0 - 8; return create_cfg(f, &c); }
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
CASE(create_method_4) { koala_config c = config_of((koala_method)4); return create_cfg(f, &c); }
CASE(create_dtype_0) { return create_layout(f, N_TENSORS, kSizes, (koala_dtype)0, KOALA_HOST); }
CASE(create_dtype_5) { return create_layout(f, N_TENSORS, kSizes, (koala_dtype)5, KOALA_HOST); }
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
CASE(create_size_bf16_state) {
    /* 2^60 bfloat16 elements are 2^61 bytes, but their float32 state is 2^62 per buffer. */
    const size_t s[1] = {(size_t)1 << 60};
    return create_layout(f, 1, s, KOALA_BFLOAT16, KOALA_HOST);
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
CFG_CASE(cfg_pp_sigma_negative, KOALA_PLUSPLUS, sigma, -1.0)
CFG_CASE(cfg_pp_sigma_nan, KOALA_PLUSPLUS, sigma, NAN)
CFG_CASE(cfg_pp_q_negative, KOALA_PLUSPLUS, q, -0.5)
CFG_CASE(cfg_pp_q_nan, KOALA_PLUSPLUS, q, NAN)
CFG_CASE(cfg_threads_negative, KOALA_VANILLA, threads, -1)
CFG_CASE(cfg_threads_huge, KOALA_MOMENTUM, threads, 2000)
CFG_CASE(cfg_stochastic_rounding_2, KOALA_VANILLA, stochastic_rounding, 2)
CFG_CASE(cfg_asymmetric_2, KOALA_PLUSPLUS, asymmetric, 2)
CFG_CASE(cfg_fused_predict_2, KOALA_MOMENTUM, fused_predict, 2)
CFG_CASE(cfg_caller_state_2, KOALA_MOMENTUM, caller_state, 2)

/* koala_create_sharded */
#define SHARD_CASE(name, field, value) \
    CASE(name) { koala_shard s = shard_of(1); s.field = (value); return create_shard(f, &s); }
CASE(shard_null) { return create_shard(f, NULL); }
SHARD_CASE(shard_struct_size_0, struct_size, 0)
SHARD_CASE(shard_struct_size_small, struct_size, sizeof(koala_shard) - 8)
SHARD_CASE(shard_n_global_0, n_global, 0)
CASE(shard_index_out_of_range) {
    static const size_t idx[N_TENSORS] = {0, 2, 1};
    koala_shard s = shard_of(1);
    s.global_index = idx;
    return create_shard(f, &s);
}
SHARD_CASE(shard_index_null_too_many, global_index, NULL) /* 3 local tensors, n_global 2 */
SHARD_CASE(shard_elements_small, global_elements, N_ELEMENTS - 1)
SHARD_CASE(shard_elements_huge, global_elements, ((uint64_t)1 << 53) + 1)
CASE(shard_cfg_null) { koala_shard s = shard_of(1); return koala_create_sharded(NULL, N_TENSORS, kSizes, &s, KOALA_FLOAT64, KOALA_HOST, &f->created); }
CASE(shard_sizes_null) { koala_shard s = shard_of(1); koala_config c = config_of(KOALA_VANILLA); return koala_create_sharded(&c, N_TENSORS, NULL, &s, KOALA_FLOAT64, KOALA_HOST, &f->created); }
CASE(shard_dtype_5) { koala_shard s = shard_of(1); koala_config c = config_of(KOALA_VANILLA); return koala_create_sharded(&c, N_TENSORS, kSizes, &s, (koala_dtype)5, KOALA_HOST, &f->created); }
CASE(shard_out_null) { koala_shard s = shard_of(1); koala_config c = config_of(KOALA_VANILLA); UNUSED; return koala_create_sharded(&c, N_TENSORS, kSizes, &s, KOALA_FLOAT64, KOALA_HOST, NULL); }

/* koala_predict */
CASE(predict_opt_null) { return koala_predict(NULL, f->params, NULL); }
CASE(predict_params_null) { return koala_predict(f->opt, NULL, NULL); }
CASE(predict_param1_null) { void *p[N_TENSORS]; p[0] = f->params[0]; p[1] = NULL; p[2] = f->params[2]; return koala_predict(f->opt, p, NULL); }
CASE(predict_stream) { return koala_predict(f->opt, f->params, SOME_STREAM); }
CASE(predict_twice) { return koala_predict(f->opt, f->params, NULL); }
CASE(predict_unbound) { return koala_predict(f->opt, f->params, NULL); }

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
CASE(update_unbound) { return update_with(f, 0.5, 0.3); }
CASE(update_shard_no_callback) { return update_with(f, 0.5, 0.3); }
CASE(update_shard_callback_fails) {
    koala_status st;
    g_allreduce_rc = 3;
    st = update_with(f, 0.5, 0.3);
    g_allreduce_rc = 0;
    return st;
}
CASE(update_shard_elements_missing) { return update_with(f, 0.5, 0.3); }
CASE(update_shard_partial_grads) { return update_with_grad1(f, NULL); }

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
CASE(update_ptr_dtype_bf16) { return update_ptr_with(f, &kLoss, &kLossVar, KOALA_BFLOAT16); }
CASE(update_ptr_dtype_fp16) { return update_ptr_with(f, &kLoss, &kLossVar, KOALA_FLOAT16); }
CASE(update_ptr_grads_null) { return koala_update_ptr(f->opt, &kLoss, &kLossVar, KOALA_FLOAT64, f->params, NULL, NULL); }
CASE(update_ptr_before_predict) { return update_ptr_with(f, &kLoss, &kLossVar, KOALA_FLOAT64); }
CASE(update_ptr_loss_nan32) { const float l = NAN, v = 0.3f; return update_ptr_with(f, &l, &v, KOALA_FLOAT32); }
CASE(update_ptr_loss_var_inf64) { const double v = -INFINITY; return update_ptr_with(f, &kLoss, &v, KOALA_FLOAT64); }
CASE(update_ptr_loss_var_negative) { const float l = 0.5f, v = -0.25f; return update_ptr_with(f, &l, &v, KOALA_FLOAT32); }
CASE(update_ptr_shard_callback_fails) {
    koala_status st;
    g_allreduce_rc = -1;
    st = update_ptr_with(f, &kLoss, &kLossVar, KOALA_FLOAT64);
    g_allreduce_rc = 0;
    return st;
}

/* koala_sums_size */
CASE(sums_size_opt_null) { size_t n = 0; UNUSED; return koala_sums_size(NULL, &n); }
CASE(sums_size_count_null) { return koala_sums_size(f->opt, NULL); }

/* koala_update_begin */
CASE(begin_opt_null) { return koala_update_begin(NULL, f->params, f->grads, f->sums, NULL); }
CASE(begin_sums_null) { return koala_update_begin(f->opt, f->params, f->grads, NULL, NULL); }
CASE(begin_params_null) { return koala_update_begin(f->opt, NULL, f->grads, f->sums, NULL); }
CASE(begin_param1_null) { void *p[N_TENSORS]; p[0] = f->params[0]; p[1] = NULL; p[2] = f->params[2]; return koala_update_begin(f->opt, p, f->grads, f->sums, NULL); }
CASE(begin_grads_null) { return koala_update_begin(f->opt, f->params, NULL, f->sums, NULL); }
CASE(begin_stream) { return koala_update_begin(f->opt, f->params, f->grads, f->sums, SOME_STREAM); }
CASE(begin_before_predict) { return koala_update_begin(f->opt, f->params, f->grads, f->sums, NULL); }
CASE(begin_unbound) { return koala_update_begin(f->opt, f->params, f->grads, f->sums, NULL); }

/* koala_update_end */
CASE(end_opt_null) { return koala_update_end(NULL, 0.5, 0.3, f->params, f->grads, f->sums, NULL); }
CASE(end_sums_null) { return koala_update_end(f->opt, 0.5, 0.3, f->params, f->grads, NULL, NULL); }
CASE(end_params_null) { return koala_update_end(f->opt, 0.5, 0.3, NULL, f->grads, f->sums, NULL); }
CASE(end_grads_null) { return koala_update_end(f->opt, 0.5, 0.3, f->params, NULL, f->sums, NULL); }
CASE(end_stream) { return koala_update_end(f->opt, 0.5, 0.3, f->params, f->grads, f->sums, SOME_STREAM); }
CASE(end_without_begin) { return end_with(f, 0.5, 0.3, f->grads[1]); }
CASE(end_before_predict) { return end_with(f, 0.5, 0.3, f->grads[1]); }
CASE(end_loss_nan) { return end_with(f, NAN, 0.3, f->grads[1]); }
CASE(end_loss_var_negative) { return end_with(f, 0.5, -2.0, f->grads[1]); }
CASE(end_grad_dropped) { return end_with(f, 0.5, 0.3, NULL); }
CASE(end_grad_added) { return end_with(f, 0.5, 0.3, f->grads[1]); }
CASE(end_partial_grads) { return end_with(f, 0.5, 0.3, NULL); }
CASE(end_elements_missing) { return end_with(f, 0.5, 0.3, f->grads[1]); }
CASE(end_unbound) { return end_with(f, 0.5, 0.3, f->grads[1]); }

/* koala_update_end_ptr */
static koala_status end_ptr_with(fixture *f, const void *loss, const void *loss_var,
                                 koala_dtype d, const double *sums) {
    return koala_update_end_ptr(f->opt, loss, loss_var, d, f->params, f->grads, sums, NULL);
}
CASE(end_ptr_opt_null) { return koala_update_end_ptr(NULL, &kLoss, &kLossVar, KOALA_FLOAT64, f->params, f->grads, f->sums, NULL); }
CASE(end_ptr_loss_null) { return end_ptr_with(f, NULL, &kLossVar, KOALA_FLOAT64, f->sums); }
CASE(end_ptr_loss_var_null) { return end_ptr_with(f, &kLoss, NULL, KOALA_FLOAT64, f->sums); }
CASE(end_ptr_dtype_bf16) { return end_ptr_with(f, &kLoss, &kLossVar, KOALA_BFLOAT16, f->sums); }
CASE(end_ptr_sums_null) { return end_ptr_with(f, &kLoss, &kLossVar, KOALA_FLOAT64, NULL); }
CASE(end_ptr_without_begin) { return end_ptr_with(f, &kLoss, &kLossVar, KOALA_FLOAT64, f->sums); }
CASE(end_ptr_loss_nan32) { const float l = NAN, v = 0.3f; return end_ptr_with(f, &l, &v, KOALA_FLOAT32, f->sums); }

/* koala_get_info */
CASE(info_opt_null) { koala_info i; UNUSED; memset(&i, 0, sizeof i); i.struct_size = sizeof i; return koala_get_info(NULL, NULL, &i); }
CASE(info_out_null) { return koala_get_info(f->opt, NULL, NULL); }
CASE(info_struct_size_0) { koala_info i; memset(&i, 0, sizeof i); return koala_get_info(f->opt, NULL, &i); }
CASE(info_struct_size_small) { koala_info i; memset(&i, 0, sizeof i); i.struct_size = KOALA_INFO_SIZE_1_0 - 8; return koala_get_info(f->opt, NULL, &i); }
CASE(info_stream) { koala_info i; memset(&i, 0, sizeof i); i.struct_size = sizeof i; return koala_get_info(f->opt, SOME_STREAM, &i); }
CASE(info_unbound) { koala_info i; memset(&i, 0, sizeof i); i.struct_size = sizeof i; return koala_get_info(f->opt, NULL, &i); }

/* koala_set_lr */
CASE(set_lr_opt_null) { UNUSED; return koala_set_lr(NULL, 0.5); }
CASE(set_lr_negative) { return koala_set_lr(f->opt, -0.5); }
CASE(set_lr_nan) { return koala_set_lr(f->opt, NAN); }
CASE(set_lr_inf) { return koala_set_lr(f->opt, INFINITY); }
CASE(set_lr_minus_inf) { return koala_set_lr(f->opt, -INFINITY); }

/* koala_set_tensor_lr / koala_set_tensor_weight_decay */
CASE(tensor_lr_opt_null) { UNUSED; return koala_set_tensor_lr(NULL, kTensorLr, NULL); }
CASE(tensor_lr_negative) { const double s[N_TENSORS] = {1.0, -0.5, 1.0}; return koala_set_tensor_lr(f->opt, s, NULL); }
CASE(tensor_lr_nan) { const double s[N_TENSORS] = {1.0, 1.0, NAN}; return koala_set_tensor_lr(f->opt, s, NULL); }
CASE(tensor_lr_inf) { const double s[N_TENSORS] = {INFINITY, 1.0, 1.0}; return koala_set_tensor_lr(f->opt, s, NULL); }
CASE(tensor_lr_stream) { return koala_set_tensor_lr(f->opt, kTensorLr, SOME_STREAM); }
CASE(tensor_lr_sharded_nan) { const double s[N_GLOBAL] = {1.0, NAN}; return koala_set_tensor_lr(f->opt, s, NULL); }
CASE(tensor_wd_opt_null) { UNUSED; return koala_set_tensor_weight_decay(NULL, kTensorWd, NULL); }
CASE(tensor_wd_negative) { const double w[N_TENSORS] = {-1e-4, 0.0, 0.0}; return koala_set_tensor_weight_decay(f->opt, w, NULL); }
CASE(tensor_wd_nan) { const double w[N_TENSORS] = {0.0, 0.0, NAN}; return koala_set_tensor_weight_decay(f->opt, w, NULL); }
CASE(tensor_wd_inf) { const double w[N_TENSORS] = {0.0, INFINITY, 0.0}; return koala_set_tensor_weight_decay(f->opt, w, NULL); }
CASE(tensor_wd_stream) { return koala_set_tensor_weight_decay(f->opt, kTensorWd, SOME_STREAM); }

/* koala_posterior */
CASE(posterior_opt_null) { return koala_posterior(NULL, f->params, f->posterior, NULL); }
CASE(posterior_params_null) { return koala_posterior(f->opt, NULL, f->posterior, NULL); }
CASE(posterior_out_null) { return koala_posterior(f->opt, f->params, NULL, NULL); }
CASE(posterior_out1_null) { void *o[N_TENSORS]; o[0] = f->posterior[0]; o[1] = NULL; o[2] = f->posterior[2]; return koala_posterior(f->opt, f->params, o, NULL); }
CASE(posterior_out_is_params) { void *o[N_TENSORS]; o[0] = f->posterior[0]; o[1] = f->posterior[1]; o[2] = f->params[2]; return koala_posterior(f->opt, f->params, o, NULL); }
CASE(posterior_stream) { return koala_posterior(f->opt, f->params, f->posterior, SOME_STREAM); }
CASE(posterior_predicted) { return koala_posterior(f->opt, f->params, f->posterior, NULL); }
CASE(posterior_unbound) { return koala_posterior(f->opt, f->params, f->posterior, NULL); }

/* koala_state_layout / koala_state_init / koala_bind_state */
CASE(layout_opt_null) { size_t b, s; koala_dtype d; UNUSED; return koala_state_layout(NULL, &b, &d, &s); }
CASE(state_init_opt_null) { return koala_state_init(NULL, f->state, f->scalars, NULL); }
CASE(state_init_library_owned) { return koala_state_init(f->opt, f->state, f->scalars, NULL); }
CASE(state_init_scalars_null) { return koala_state_init(f->opt, f->state, NULL, NULL); }
CASE(state_init_buffers_null) { return koala_state_init(f->opt, NULL, f->scalars, NULL); }
CASE(state_init_buffer3_null) {
    void *b[2 * N_TENSORS];
    memcpy(b, f->state, sizeof b);
    b[3] = NULL; /* buffer 1 (x-bar) of tensor 0 */
    return koala_state_init(f->opt, b, f->scalars, NULL);
}
CASE(state_init_stream) { return koala_state_init(f->opt, f->state, f->scalars, SOME_STREAM); }
CASE(bind_opt_null) { return koala_bind_state(NULL, f->state, f->scalars); }
CASE(bind_library_owned) {
    /* Pointers that would be valid for a caller-state optimizer of the layout. */
    double scalars[64] = {0};
    float buffers[2 * N_TENSORS][8];
    void *b[2 * N_TENSORS];
    size_t k;
    UNUSED;
    for (k = 0; k < 2 * N_TENSORS; ++k) b[k] = buffers[k];
    return koala_bind_state(f->opt, b, scalars);
}
CASE(bind_scalars_null) { return koala_bind_state(f->opt, f->state, NULL); }
CASE(bind_buffers_null) { return koala_bind_state(f->opt, NULL, f->scalars); }
CASE(bind_buffer5_null) {
    void *b[2 * N_TENSORS];
    memcpy(b, f->state, sizeof b);
    b[5] = NULL; /* buffer 1 (x-bar) of tensor 2 */
    return koala_bind_state(f->opt, b, f->scalars);
}
CASE(bind_garbage_phase) {
    /* A block that koala_state_init did not write: phase 7. */
    double *s = malloc(f->n_scalars * sizeof *s);
    koala_status st;
    assert_non_null(s);
    memcpy(s, f->scalars, f->n_scalars * sizeof *s);
    s[8] = 7.0;
    st = koala_bind_state(f->opt, f->state, s);
    free(s);
    return st;
}

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
CASE(save_unbound) { unsigned char b[1 << 12]; return koala_state_save(f->opt, b, sizeof b, NULL); }

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
CASE(load_version_3) { return load_edited(f, edit_version, 1); }
CASE(load_other_n_tensors) { return load_edited(f, edit_n_tensors, 1); }
CASE(load_other_size) { return load_edited(f, edit_size1, 1); }
CASE(load_n_global) { return load_edited(f, edit_n_global, 1); }
CASE(load_global_index) { return load_edited(f, edit_global_index, 1); }
CASE(load_flags) { return load_edited(f, edit_flags, 1); }
CASE(load_cfg_lr_nan) { return load_edited(f, edit_lr_nan, 1); }
CASE(load_cfg_alpha_r_one) { return load_edited(f, edit_alpha_one, 1); }
CASE(load_cfg_stochastic) { return load_edited(f, edit_stochastic, 1); }
CASE(load_scalar_count) { return load_edited(f, edit_scalar_count, 1); }
CASE(load_filter_negative) { return load_edited(f, edit_sigma_neg, 1); }
CASE(load_filter_r_inf) { return load_edited(f, edit_r_inf, 1); }
CASE(load_p_indefinite) { return load_edited(f, edit_p_indefinite, 1); }
CASE(load_phase_3) { return load_edited(f, edit_phase, 1); }
CASE(load_pp_seen) { return load_edited(f, edit_pp_seen, 1); }
CASE(load_tensor_lr) { return load_edited(f, edit_tensor_lr, 1); }
CASE(load_other_method) { return load_other(f, f->method == KOALA_VANILLA ? KOALA_MOMENTUM : KOALA_VANILLA, f->dtype, N_TENSORS, kSizes); }
CASE(load_other_dtype) { return load_other(f, f->method, f->dtype == KOALA_FLOAT32 ? KOALA_FLOAT64 : KOALA_FLOAT32, N_TENSORS, kSizes); }
CASE(load_other_layout) { const size_t s[N_TENSORS] = {5, 7, 3}; return load_other(f, f->method, f->dtype, N_TENSORS, s); }
CASE(load_unsharded_into_sharded) { return load_other(f, f->method, f->dtype, N_TENSORS, kSizes); }
CASE(load_v1_into_sharded) {
    size_t size;
    unsigned char *v1 = forged_v1(&size);
    koala_optimizer *plain = NULL;
    koala_config c = config_of(KOALA_MOMENTUM);
    koala_status st;
    /* The forged 1.0 checkpoint is valid: an unsharded optimizer takes it. */
    assert_int_equal(koala_create(&c, N_TENSORS, kSizes, KOALA_FLOAT64, KOALA_HOST, &plain), KOALA_OK);
    assert_int_equal(koala_state_load(plain, v1, size, NULL), KOALA_OK);
    koala_destroy(plain);
    st = koala_state_load(f->opt, v1, size, NULL);
    free(v1);
    return st;
}
CASE(load_unbound) { size_t n; unsigned char *b = saved_state(f->donor, &n); koala_status st = koala_state_load(f->opt, b, n, NULL); free(b); return st; }

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
    int predicted_again;   /* koala_update_end(_ptr) past its phase check: as koala.h says,
                              nothing changes but the phase, which goes back to "predicted" */
} bad_case;

#define INV KOALA_ERROR_INVALID_ARGUMENT
#define BAD KOALA_ERROR_BAD_STATE
#define NF KOALA_ERROR_NOT_FINITE
#define UNS KOALA_ERROR_UNSUPPORTED
#define COMM KOALA_ERROR_COMMUNICATION
#define ROW(fn, entry, misuse, fx, ph, st, needle) {#fn, entry, misuse, fx, ph, st, needle, fn, 0}
#define ROW_AGAIN(fn, entry, misuse, fx, ph, st, needle) \
    {#fn, entry, misuse, fx, ph, st, needle, fn, 1}

static const bad_case kCases[] = {
    ROW(create_cfg_null, "koala_create", "cfg = NULL", FX_V32, IDLE, INV, "cfg is NULL"),
    ROW(create_struct_size_0, "koala_create", "cfg->struct_size = 0 (koala_config_init not called)", FX_V32, IDLE, INV, "cfg->struct_size"),
    ROW(create_struct_size_small, "koala_create", "cfg->struct_size = the 1.0 size - 8 (smaller than any libkoala's struct)", FX_V32, IDLE, INV, "cfg->struct_size"),
    ROW(create_struct_tail, "koala_create", "larger struct, unknown appended field non-zero", FX_V32, IDLE, UNS, "beyond byte"),
    ROW(create_struct_size_huge, "koala_create", "cfg->struct_size = 2^40", FX_V32, IDLE, INV, "cfg->struct_size"),
    ROW(create_method_0, "koala_create", "cfg->method = 0", FX_V32, IDLE, INV, "cfg->method"),
    ROW(create_method_4, "koala_create", "cfg->method = 4", FX_V32, IDLE, INV, "cfg->method"),
    ROW(create_dtype_0, "koala_create", "dtype = 0", FX_V32, IDLE, INV, "dtype"),
    ROW(create_dtype_5, "koala_create", "dtype = 5", FX_V32, IDLE, INV, "dtype"),
    ROW(create_memory_0, "koala_create", "memory = 0", FX_V32, IDLE, INV, "memory"),
    ROW(create_memory_3, "koala_create", "memory = 3", FX_V32, IDLE, INV, "memory"),
    ROW(create_n_tensors_0, "koala_create", "n_tensors = 0", FX_V32, IDLE, INV, "n_tensors"),
    ROW(create_sizes_null, "koala_create", "sizes = NULL", FX_V32, IDLE, INV, "sizes is NULL"),
    ROW(create_size_zero, "koala_create", "sizes[1] = 0", FX_V32, IDLE, INV, "sizes[1]"),
    ROW(create_size_max, "koala_create", "sizes[0] = SIZE_MAX", FX_V32, IDLE, INV, "sizes[0]"),
    ROW(create_size_sum_overflow, "koala_create", "sizes = {2^57, 2^57} float64 (byte total overflows)", FX_V32, IDLE, INV, "sizes[1]"),
    ROW(create_size_bf16_state, "koala_create", "sizes = {2^60} bfloat16 (its float32 state overflows)", FX_V32, IDLE, INV, "sizes[0]"),
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
    ROW(cfg_pp_sigma_negative, "koala_create", "cfg->sigma = -1 (KOALA++: P0 = sigma I)", FX_V32, IDLE, INV, "cfg->sigma"),
    ROW(cfg_pp_sigma_nan, "koala_create", "cfg->sigma = NaN (KOALA++)", FX_V32, IDLE, INV, "cfg->sigma"),
    ROW(cfg_pp_q_negative, "koala_create", "cfg->q = -0.5 (KOALA++)", FX_V32, IDLE, INV, "cfg->q"),
    ROW(cfg_pp_q_nan, "koala_create", "cfg->q = NaN (KOALA++)", FX_V32, IDLE, INV, "cfg->q"),
    ROW(cfg_threads_negative, "koala_create", "cfg->threads = -1", FX_V32, IDLE, INV, "cfg->threads"),
    ROW(cfg_threads_huge, "koala_create", "cfg->threads = 2000", FX_V32, IDLE, INV, "cfg->threads"),
    ROW(cfg_stochastic_rounding_2, "koala_create", "cfg->stochastic_rounding = 2", FX_V32, IDLE, INV, "cfg->stochastic_rounding"),
    ROW(cfg_asymmetric_2, "koala_create", "cfg->asymmetric = 2 (KOALA++)", FX_V32, IDLE, INV, "cfg->asymmetric"),
    ROW(cfg_fused_predict_2, "koala_create", "cfg->fused_predict = 2 (momentum)", FX_V32, IDLE, INV, "cfg->fused_predict"),
    ROW(cfg_caller_state_2, "koala_create", "cfg->caller_state = 2", FX_V32, IDLE, INV, "cfg->caller_state"),

    ROW(shard_null, "koala_create_sharded", "shard = NULL", FX_V32, IDLE, INV, "shard is NULL"),
    ROW(shard_struct_size_0, "koala_create_sharded", "shard->struct_size = 0", FX_V32, IDLE, INV, "shard->struct_size"),
    ROW(shard_struct_size_small, "koala_create_sharded", "shard->struct_size = sizeof - 8", FX_V32, IDLE, INV, "shard->struct_size"),
    ROW(shard_n_global_0, "koala_create_sharded", "shard->n_global = 0", FX_V32, IDLE, INV, "shard->n_global is 0"),
    ROW(shard_index_out_of_range, "koala_create_sharded", "shard->global_index[1] = 2 with n_global = 2", FX_V32, IDLE, INV, "shard->global_index[1]"),
    ROW(shard_index_null_too_many, "koala_create_sharded", "shard->global_index = NULL with n_tensors 3 > n_global 2", FX_V32, IDLE, INV, "shard->global_index is NULL"),
    ROW(shard_elements_small, "koala_create_sharded", "shard->global_elements = 14, fewer than this process's 15", FX_V32, IDLE, INV, "shard->global_elements"),
    ROW(shard_elements_huge, "koala_create_sharded", "shard->global_elements = 2^53 + 1", FX_V32, IDLE, INV, "shard->global_elements"),
    ROW(shard_cfg_null, "koala_create_sharded", "cfg = NULL", FX_V32, IDLE, INV, "cfg is NULL"),
    ROW(shard_sizes_null, "koala_create_sharded", "sizes = NULL with n_tensors 3", FX_V32, IDLE, INV, "sizes is NULL"),
    ROW(shard_dtype_5, "koala_create_sharded", "dtype = 5", FX_V32, IDLE, INV, "dtype"),
    ROW(shard_out_null, "koala_create_sharded", "out = NULL", FX_V32, IDLE, INV, "out is NULL"),

    ROW(predict_opt_null, "koala_predict", "opt = NULL", FX_M32, IDLE, INV, "opt is NULL"),
    ROW(predict_params_null, "koala_predict", "params = NULL (momentum)", FX_M32, IDLE, INV, "params is NULL"),
    ROW(predict_param1_null, "koala_predict", "params[1] = NULL (momentum)", FX_M64, IDLE, INV, "params[1]"),
    ROW(predict_params_null, "koala_predict", "params = NULL (momentum, float16)", FX_MF16, IDLE, INV, "params is NULL"),
    ROW(predict_stream, "koala_predict", "stream != NULL on a host optimizer", FX_V32, IDLE, INV, "stream"),
    ROW(predict_twice, "koala_predict", "predict twice without update", FX_M32, PREDICTED, BAD, "twice"),
    ROW(predict_twice, "koala_predict", "predict twice without update (KOALA++)", FX_P64, PREDICTED, BAD, "twice"),
    ROW(predict_twice, "koala_predict", "predict after koala_update_begin", FX_M64, BEGUN, BAD, "twice"),
    ROW(predict_unbound, "koala_predict", "caller-owned state, nothing bound", FX_UNBOUND, IDLE, BAD, "koala_bind_state"),

    ROW(update_opt_null, "koala_update", "opt = NULL", FX_V32, PREDICTED, INV, "opt is NULL"),
    ROW(update_params_null, "koala_update", "params = NULL", FX_V64, PREDICTED, INV, "params is NULL"),
    ROW(update_param2_null, "koala_update", "params[2] = NULL", FX_M32, PREDICTED, INV, "params[2]"),
    ROW(update_param2_null, "koala_update", "params[2] = NULL (KOALA++)", FX_P32, PREDICTED, INV, "params[2]"),
    ROW(update_grads_null, "koala_update", "grads = NULL", FX_M64, PREDICTED, INV, "grads is NULL"),
    ROW(update_stream, "koala_update", "stream != NULL on a host optimizer", FX_V32, PREDICTED, INV, "stream"),
    ROW(update_before_predict, "koala_update", "update without predict", FX_M32, IDLE, BAD, "koala_predict"),
    ROW(update_before_predict, "koala_update", "update without predict (KOALA++)", FX_P64, IDLE, BAD, "koala_predict"),
    ROW(update_loss_nan, "koala_update", "loss = NaN", FX_V32, PREDICTED, NF, "loss"),
    ROW(update_loss_inf, "koala_update", "loss = +Inf (momentum)", FX_M64, PREDICTED, NF, "loss"),
    ROW(update_loss_nan, "koala_update", "loss = NaN (KOALA++)", FX_P32, PREDICTED, NF, "loss"),
    ROW(update_loss_var_nan, "koala_update", "loss_var = NaN", FX_V64, PREDICTED, NF, "loss_var"),
    ROW(update_loss_var_inf, "koala_update", "loss_var = +Inf (momentum)", FX_M32, PREDICTED, NF, "loss_var"),
    ROW(update_loss_var_negative, "koala_update", "loss_var = -1 (a mean of squares)", FX_V32, PREDICTED, INV, "loss_var"),
    ROW(update_grad_nan, "koala_update", "one gradient element NaN (float32)", FX_V32, PREDICTED, NF, "gradient"),
    ROW(update_grad_inf, "koala_update", "one gradient element +Inf (momentum, float64)", FX_M64, PREDICTED, NF, "gradient"),
    ROW(update_grad_nan, "koala_update", "one gradient element NaN (KOALA++ float64)", FX_P64, PREDICTED, NF, "gradient"),
    ROW(update_grad_nan, "koala_update", "one gradient element NaN (bfloat16)", FX_VB16, PREDICTED, NF, "gradient"),
    ROW(update_grad_inf, "koala_update", "one gradient element +Inf (momentum, float16)", FX_MF16, PREDICTED, NF, "gradient"),
    ROW(update_unbound, "koala_update", "caller-owned state, nothing bound", FX_UNBOUND, IDLE, BAD, "koala_bind_state"),
    ROW(update_shard_no_callback, "koala_update", "sharded optimizer created with allreduce = NULL", FX_SHARD_NOCB, PREDICTED, INV, "allreduce is NULL"),
    ROW(update_shard_callback_fails, "koala_update", "the all-reduce callback returns 3 (and scribbles NaN)", FX_SHARD, PREDICTED, COMM, "returned 3"),
    ROW(update_shard_elements_missing, "koala_update", "sharded: the processes' sizes add up to 15, shard->global_elements is 20", FX_SHARD_MORE, PREDICTED, INV, "global_elements is 20"),
    ROW(update_shard_partial_grads, "koala_update", "sharded: one piece of global tensor 0 has a gradient, the other NULL", FX_SHARD, PREDICTED, INV, "global tensor 0"),

    ROW(update_ptr_opt_null, "koala_update_ptr", "opt = NULL", FX_V32, PREDICTED, INV, "opt is NULL"),
    ROW(update_ptr_loss_null, "koala_update_ptr", "loss = NULL", FX_M32, PREDICTED, INV, "loss is NULL"),
    ROW(update_ptr_loss_var_null, "koala_update_ptr", "loss_var = NULL", FX_V64, PREDICTED, INV, "loss_var is NULL"),
    ROW(update_ptr_dtype_0, "koala_update_ptr", "loss_dtype = 0", FX_V32, PREDICTED, INV, "loss_dtype"),
    ROW(update_ptr_dtype_9, "koala_update_ptr", "loss_dtype = 9", FX_M64, PREDICTED, INV, "loss_dtype"),
    ROW(update_ptr_dtype_bf16, "koala_update_ptr", "loss_dtype = KOALA_BFLOAT16 (a loss is float32 or float64)", FX_VB16, PREDICTED, INV, "loss_dtype"),
    ROW(update_ptr_dtype_fp16, "koala_update_ptr", "loss_dtype = KOALA_FLOAT16", FX_MF16, PREDICTED, INV, "loss_dtype"),
    ROW(update_ptr_grads_null, "koala_update_ptr", "grads = NULL", FX_M32, PREDICTED, INV, "grads is NULL"),
    ROW(update_ptr_before_predict, "koala_update_ptr", "update_ptr without predict", FX_V64, IDLE, BAD, "koala_predict"),
    ROW(update_ptr_loss_nan32, "koala_update_ptr", "*loss = NaN (float32)", FX_M32, PREDICTED, NF, "loss"),
    ROW(update_ptr_loss_var_inf64, "koala_update_ptr", "*loss_var = -Inf (float64)", FX_V64, PREDICTED, NF, "loss_var"),
    ROW(update_ptr_loss_var_negative, "koala_update_ptr", "*loss_var = -0.25 (float32)", FX_M32, PREDICTED, INV, "loss_var"),
    ROW(update_ptr_shard_callback_fails, "koala_update_ptr", "the all-reduce callback returns -1", FX_SHARD, PREDICTED, COMM, "returned -1"),

    ROW(sums_size_opt_null, "koala_sums_size", "opt = NULL", FX_SHARD, IDLE, INV, "opt is NULL"),
    ROW(sums_size_count_null, "koala_sums_size", "count = NULL", FX_SHARD, IDLE, INV, "count is NULL"),

    ROW(begin_opt_null, "koala_update_begin", "opt = NULL", FX_SHARD, PREDICTED, INV, "opt is NULL"),
    ROW(begin_sums_null, "koala_update_begin", "sums = NULL", FX_SHARD_NOCB, PREDICTED, INV, "sums is NULL"),
    ROW(begin_params_null, "koala_update_begin", "params = NULL", FX_P32, PREDICTED, INV, "params is NULL"),
    ROW(begin_param1_null, "koala_update_begin", "params[1] = NULL", FX_SHARD, PREDICTED, INV, "params[1]"),
    ROW(begin_grads_null, "koala_update_begin", "grads = NULL", FX_V64, PREDICTED, INV, "grads is NULL"),
    ROW(begin_stream, "koala_update_begin", "stream != NULL on a host optimizer", FX_M32, PREDICTED, INV, "stream"),
    ROW(begin_before_predict, "koala_update_begin", "phase 1 without predict", FX_SHARD, IDLE, BAD, "koala_predict"),
    ROW(begin_unbound, "koala_update_begin", "caller-owned state, nothing bound", FX_UNBOUND, IDLE, BAD, "koala_bind_state"),

    ROW(end_opt_null, "koala_update_end", "opt = NULL", FX_SHARD, BEGUN, INV, "opt is NULL"),
    ROW_AGAIN(end_sums_null, "koala_update_end", "sums = NULL", FX_SHARD_NOCB, BEGUN, INV, "sums is NULL"),
    ROW(end_params_null, "koala_update_end", "params = NULL", FX_M64, BEGUN, INV, "params is NULL"),
    ROW(end_grads_null, "koala_update_end", "grads = NULL", FX_P64, BEGUN, INV, "grads is NULL"),
    ROW(end_stream, "koala_update_end", "stream != NULL on a host optimizer", FX_V32, BEGUN, INV, "stream"),
    ROW(end_without_begin, "koala_update_end", "phase 2 without phase 1 (predicted only)", FX_SHARD, PREDICTED, BAD, "koala_update_begin"),
    ROW(end_before_predict, "koala_update_end", "phase 2 without predict", FX_SHARD_NOCB, IDLE, BAD, "koala_predict"),
    ROW_AGAIN(end_loss_nan, "koala_update_end", "loss = NaN", FX_SHARD, BEGUN, NF, "loss"),
    ROW_AGAIN(end_loss_var_negative, "koala_update_end", "loss_var = -2", FX_P32, BEGUN, INV, "loss_var"),
    ROW_AGAIN(end_grad_dropped, "koala_update_end", "grads[1] = NULL where koala_update_begin had a gradient", FX_V32, BEGUN, INV, "grads[1] is NULL"),
    ROW_AGAIN(end_grad_dropped, "koala_update_end", "grads[1] = NULL where koala_update_begin had a gradient (KOALA-M float16)", FX_MF16, BEGUN, INV, "grads[1] is NULL"),
    ROW_AGAIN(end_grad_added, "koala_update_end", "grads[1] set where koala_update_begin had NULL", FX_V64, BEGUN_PARTIAL, INV, "grads[1] is set"),
    ROW_AGAIN(end_partial_grads, "koala_update_end", "sums of a global tensor with a gradient on one piece and NULL on the other", FX_SHARD, BEGUN_PARTIAL, INV, "global tensor 0"),
    ROW_AGAIN(end_partial_grads, "koala_update_end", "the same, no callback (KOALA++)", FX_SHARD_NOCB, BEGUN_PARTIAL, INV, "global tensor 0"),
    ROW_AGAIN(end_elements_missing, "koala_update_end", "sums whose element count (15) disagrees with shard->global_elements (20)", FX_SHARD_MORE, BEGUN, INV, "global_elements is 20"),
    ROW(end_unbound, "koala_update_end", "caller-owned state, nothing bound", FX_UNBOUND, IDLE, BAD, "koala_bind_state"),

    ROW(end_ptr_opt_null, "koala_update_end_ptr", "opt = NULL", FX_SHARD, BEGUN, INV, "opt is NULL"),
    ROW_AGAIN(end_ptr_loss_null, "koala_update_end_ptr", "loss = NULL", FX_SHARD, BEGUN, INV, "loss is NULL"),
    ROW_AGAIN(end_ptr_loss_var_null, "koala_update_end_ptr", "loss_var = NULL", FX_V64, BEGUN, INV, "loss_var is NULL"),
    ROW_AGAIN(end_ptr_dtype_bf16, "koala_update_end_ptr", "loss_dtype = KOALA_BFLOAT16", FX_VB16, BEGUN, INV, "loss_dtype"),
    ROW_AGAIN(end_ptr_sums_null, "koala_update_end_ptr", "sums = NULL", FX_M32, BEGUN, INV, "sums is NULL"),
    ROW(end_ptr_without_begin, "koala_update_end_ptr", "phase 2 without phase 1", FX_P64, PREDICTED, BAD, "koala_update_begin"),
    ROW_AGAIN(end_ptr_loss_nan32, "koala_update_end_ptr", "*loss = NaN (float32)", FX_SHARD_NOCB, BEGUN, NF, "loss"),

    ROW(info_opt_null, "koala_get_info", "opt = NULL", FX_V32, IDLE, INV, "opt is NULL"),
    ROW(info_out_null, "koala_get_info", "out = NULL", FX_V32, IDLE, INV, "out is NULL"),
    ROW(info_struct_size_0, "koala_get_info", "out->struct_size = 0", FX_M32, IDLE, INV, "struct_size"),
    ROW(info_struct_size_small, "koala_get_info", "out->struct_size = the 1.0 size - 8", FX_V64, IDLE, INV, "struct_size"),
    ROW(info_stream, "koala_get_info", "stream != NULL on a host optimizer", FX_M64, IDLE, INV, "stream"),
    ROW(info_unbound, "koala_get_info", "caller-owned state, nothing bound", FX_UNBOUND, IDLE, BAD, "koala_bind_state"),

    ROW(set_lr_opt_null, "koala_set_lr", "opt = NULL", FX_V32, IDLE, INV, "opt is NULL"),
    ROW(set_lr_negative, "koala_set_lr", "lr = -0.5", FX_V32, IDLE, INV, "lr is"),
    ROW(set_lr_nan, "koala_set_lr", "lr = NaN", FX_M32, PREDICTED, INV, "lr is"),
    ROW(set_lr_inf, "koala_set_lr", "lr = +Inf", FX_V64, IDLE, INV, "lr is"),
    ROW(set_lr_minus_inf, "koala_set_lr", "lr = -Inf", FX_M64, IDLE, INV, "lr is"),

    ROW(tensor_lr_opt_null, "koala_set_tensor_lr", "opt = NULL", FX_M64, IDLE, INV, "opt is NULL"),
    ROW(tensor_lr_negative, "koala_set_tensor_lr", "scale[1] = -0.5 (per-tensor lr already set)", FX_M64, IDLE, INV, "scale[1]"),
    ROW(tensor_lr_nan, "koala_set_tensor_lr", "scale[2] = NaN", FX_M64, PREDICTED, INV, "scale[2]"),
    ROW(tensor_lr_inf, "koala_set_tensor_lr", "scale[0] = +Inf (KOALA++)", FX_P32, IDLE, INV, "scale[0]"),
    ROW(tensor_lr_stream, "koala_set_tensor_lr", "stream != NULL on a host optimizer", FX_V32, IDLE, INV, "stream"),
    ROW(tensor_lr_sharded_nan, "koala_set_tensor_lr", "sharded: scale[1] (global tensor 1) = NaN", FX_SHARD, IDLE, INV, "scale[1]"),
    ROW(tensor_wd_opt_null, "koala_set_tensor_weight_decay", "opt = NULL", FX_M64, IDLE, INV, "opt is NULL"),
    ROW(tensor_wd_negative, "koala_set_tensor_weight_decay", "weight_decay[0] = -1e-4 (per-tensor values already set)", FX_M64, IDLE, INV, "weight_decay[0]"),
    ROW(tensor_wd_nan, "koala_set_tensor_weight_decay", "weight_decay[2] = NaN", FX_V64, PREDICTED, INV, "weight_decay[2]"),
    ROW(tensor_wd_inf, "koala_set_tensor_weight_decay", "weight_decay[1] = +Inf (KOALA++)", FX_P64, IDLE, INV, "weight_decay[1]"),
    ROW(tensor_wd_stream, "koala_set_tensor_weight_decay", "stream != NULL on a host optimizer", FX_M32, IDLE, INV, "stream"),

    ROW(posterior_opt_null, "koala_posterior", "opt = NULL", FX_M32, IDLE, INV, "opt is NULL"),
    ROW(posterior_params_null, "koala_posterior", "params = NULL", FX_V32, IDLE, INV, "params is NULL"),
    ROW(posterior_out_null, "koala_posterior", "out = NULL", FX_M64, IDLE, INV, "out is NULL"),
    ROW(posterior_out1_null, "koala_posterior", "out[1] = NULL", FX_P32, IDLE, INV, "out[1] is NULL"),
    ROW(posterior_out_is_params, "koala_posterior", "out[2] == params[2]", FX_M32, IDLE, INV, "out[2] is params[2]"),
    ROW(posterior_out_is_params, "koala_posterior", "out[2] == params[2] (bfloat16)", FX_VB16, IDLE, INV, "out[2] is params[2]"),
    ROW(posterior_stream, "koala_posterior", "stream != NULL on a host optimizer", FX_V64, IDLE, INV, "stream"),
    ROW(posterior_predicted, "koala_posterior", "KOALA-M between predict and update (params hold the prediction)", FX_M32, PREDICTED, BAD, "between koala_predict and koala_update"),
    ROW(posterior_predicted, "koala_posterior", "KOALA-M after koala_update_begin", FX_M64, BEGUN, BAD, "between koala_predict and koala_update"),
    ROW(posterior_unbound, "koala_posterior", "caller-owned state, nothing bound", FX_UNBOUND, IDLE, BAD, "koala_bind_state"),

    ROW(layout_opt_null, "koala_state_layout", "opt = NULL", FX_CALLER, IDLE, INV, "opt is NULL"),
    ROW(state_init_opt_null, "koala_state_init", "opt = NULL", FX_CALLER, IDLE, INV, "opt is NULL"),
    ROW(state_init_library_owned, "koala_state_init", "an optimizer that owns its state", FX_M32, IDLE, INV, "owns its state"),
    ROW(state_init_scalars_null, "koala_state_init", "scalars = NULL", FX_CALLER, IDLE, INV, "scalars is NULL"),
    ROW(state_init_buffers_null, "koala_state_init", "buffers = NULL (momentum: 2 per tensor)", FX_CALLER, IDLE, INV, "buffers is NULL"),
    ROW(state_init_buffer3_null, "koala_state_init", "buffers[3] = NULL", FX_CALLER, IDLE, INV, "buffers[3]"),
    ROW(state_init_stream, "koala_state_init", "stream != NULL on a host optimizer", FX_CALLER, IDLE, INV, "stream"),
    ROW(bind_opt_null, "koala_bind_state", "opt = NULL", FX_CALLER, IDLE, INV, "opt is NULL"),
    ROW(bind_library_owned, "koala_bind_state", "an optimizer that owns its state", FX_M32, PREDICTED, INV, "owns its state"),
    ROW(bind_scalars_null, "koala_bind_state", "scalars = NULL (state bound before)", FX_CALLER, PREDICTED, INV, "scalars is NULL"),
    ROW(bind_buffers_null, "koala_bind_state", "buffers = NULL", FX_CALLER, IDLE, INV, "buffers is NULL"),
    ROW(bind_buffer5_null, "koala_bind_state", "buffers[5] = NULL", FX_UNBOUND, IDLE, INV, "buffers[5]"),
    ROW(bind_garbage_phase, "koala_bind_state", "a scalar block whose phase slot holds 7", FX_CALLER, IDLE, INV, "scalars[8]"),
    ROW(bind_garbage_phase, "koala_bind_state", "a scalar block whose phase slot holds 7 (nothing bound yet)", FX_UNBOUND, IDLE, INV, "scalars[8]"),

    ROW(state_size_opt_null, "koala_state_size", "opt = NULL", FX_V32, IDLE, INV, "opt is NULL"),
    ROW(state_size_bytes_null, "koala_state_size", "bytes = NULL", FX_V32, IDLE, INV, "bytes is NULL"),
    ROW(save_opt_null, "koala_state_save", "opt = NULL", FX_V32, IDLE, INV, "opt is NULL"),
    ROW(save_buf_null, "koala_state_save", "buf = NULL", FX_M32, IDLE, INV, "buf is NULL"),
    ROW(save_too_small, "koala_state_save", "size = koala_state_size - 1", FX_M64, IDLE, INV, "size is"),
    ROW(save_too_small, "koala_state_save", "size = koala_state_size - 1 (sharded)", FX_SHARD, BEGUN, INV, "size is"),
    ROW(save_size_0, "koala_state_save", "size = 0", FX_V32, IDLE, INV, "size is"),
    ROW(save_stream, "koala_state_save", "stream != NULL on a host optimizer", FX_V64, IDLE, INV, "stream"),
    ROW(save_unbound, "koala_state_save", "caller-owned state, nothing bound", FX_UNBOUND, IDLE, BAD, "koala_bind_state"),

    ROW(load_opt_null, "koala_state_load", "opt = NULL", FX_V32, IDLE, INV, "opt is NULL"),
    ROW(load_buf_null, "koala_state_load", "buf = NULL", FX_V32, IDLE, INV, "buf is NULL"),
    ROW(load_size_0, "koala_state_load", "size = 0", FX_M32, IDLE, BAD, "magic"),
    ROW(load_stream, "koala_state_load", "stream != NULL on a host optimizer", FX_M64, IDLE, INV, "stream"),
    ROW(load_garbage, "koala_state_load", "256 bytes of garbage", FX_V32, IDLE, BAD, "magic"),
    ROW(load_bad_magic, "koala_state_load", "valid checkpoint, magic changed", FX_M32, IDLE, BAD, "magic"),
    ROW(load_truncated, "koala_state_load", "valid checkpoint minus its last byte", FX_M64, PREDICTED, BAD, "checksum"),
    ROW(load_flipped_bit, "koala_state_load", "valid checkpoint, one bit flipped", FX_M32, IDLE, BAD, "checksum"),
    ROW(load_flipped_bit, "koala_state_load", "valid checkpoint, one bit flipped (KOALA++)", FX_P32, BEGUN, BAD, "checksum"),
    ROW(load_short_resealed, "koala_state_load", "one word shorter, checksum recomputed", FX_M64, IDLE, BAD, "size is"),
    ROW(load_version_3, "koala_state_load", "format version 3 (checksum recomputed)", FX_V32, IDLE, BAD, "version 3"),
    ROW(load_other_n_tensors, "koala_state_load", "n_tensors field 2 (checksum recomputed)", FX_V64, IDLE, BAD, "tensors"),
    ROW(load_other_size, "koala_state_load", "sizes[1] field 4 (checksum recomputed)", FX_M32, IDLE, BAD, "tensor 1"),
    ROW(load_n_global, "koala_state_load", "n_global field 4 (checksum recomputed)", FX_P64, IDLE, BAD, "shard layout"),
    ROW(load_global_index, "koala_state_load", "sharded: global_index[2] field 0 (checksum recomputed)", FX_SHARD, IDLE, BAD, "shard layout"),
    ROW(load_flags, "koala_state_load", "hyper-parameter flags 4 (checksum recomputed)", FX_V32, IDLE, BAD, "flags"),
    ROW(load_cfg_lr_nan, "koala_state_load", "stored lr NaN (checksum recomputed)", FX_M64, IDLE, BAD, "cfg->lr"),
    ROW(load_cfg_alpha_r_one, "koala_state_load", "stored alpha_r 1 (checksum recomputed)", FX_V32, PREDICTED, BAD, "cfg->alpha_r"),
    ROW(load_cfg_stochastic, "koala_state_load", "stored stochastic_rounding 2 (checksum recomputed)", FX_VB16, IDLE, BAD, "config flags"),
    ROW(load_scalar_count, "koala_state_load", "scalar count 17 (checksum recomputed)", FX_V64, IDLE, BAD, "scalars"),
    ROW(load_filter_negative, "koala_state_load", "stored sigma -1 (checksum recomputed)", FX_V64, IDLE, BAD, "filter scalar"),
    ROW(load_filter_r_inf, "koala_state_load", "stored R +Inf (checksum recomputed)", FX_M32, IDLE, BAD, "filter scalar"),
    ROW(load_p_indefinite, "koala_state_load", "stored momentum P01 = 10 (P indefinite; checksum recomputed)", FX_M64, IDLE, BAD, "semi-definite"),
    ROW(load_phase_3, "koala_state_load", "stored phase 3 (checksum recomputed)", FX_M64, IDLE, BAD, "phase"),
    ROW(load_pp_seen, "koala_state_load", "stored KOALA++ first-visit flag 2 (checksum recomputed)", FX_P64, IDLE, BAD, "KOALA++ scalars"),
    ROW(load_tensor_lr, "koala_state_load", "stored per-tensor lr[1] = -1 (checksum recomputed)", FX_M64, IDLE, BAD, "lr[1]"),
    ROW(load_other_method, "koala_state_load", "checkpoint of the other method", FX_V32, IDLE, BAD, "method"),
    ROW(load_other_method, "koala_state_load", "KOALA-V checkpoint into KOALA++", FX_P32, IDLE, BAD, "method"),
    ROW(load_other_dtype, "koala_state_load", "checkpoint of the other dtype", FX_M64, IDLE, BAD, "dtype"),
    ROW(load_other_dtype, "koala_state_load", "float32 checkpoint into bfloat16", FX_VB16, IDLE, BAD, "dtype"),
    ROW(load_other_layout, "koala_state_load", "checkpoint of sizes {5, 7, 3} instead of {5, 3, 7}", FX_M32, IDLE, BAD, "tensor 1"),
    ROW(load_unsharded_into_sharded, "koala_state_load", "unsharded checkpoint of the same sizes into a sharded optimizer", FX_SHARD, IDLE, BAD, "shard layout"),
    ROW(load_v1_into_sharded, "koala_state_load", "a libkoala 1.0 checkpoint into a sharded optimizer", FX_SHARD, IDLE, BAD, "version 1"),
    ROW(load_unbound, "koala_state_load", "caller-owned state, nothing bound", FX_UNBOUND, IDLE, BAD, "koala_bind_state"),
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
        fail_msg("%s (%s): status %d (%s), expected %d; message: %s", c->name,
                 kKinds[c->fixture].name, (int)st, koala_status_string(st), (int)c->expect, err);
    if (err[0] == '\0') fail_msg("%s: empty koala_last_error()", c->name);
    if (strcmp(c->entry, "koala_set_lr") != 0 && strstr(err, "koala_set_lr") != NULL)
        fail_msg("%s: stale message from an earlier call: %s", c->name, err);
    if (strncmp(err, c->entry, strlen(c->entry)) != 0 || err[strlen(c->entry)] != ':')
        fail_msg("%s: message does not start with '%s:': %s", c->name, c->entry, err);
    if (strstr(err, c->needle) == NULL)
        fail_msg("%s: message does not name '%s': %s", c->name, c->needle, err);
    if (c->predicted_again) {
        /* Predicted again: phase 1 anew (with the gradients the fixture's
         * phase 1 had) writes the same sums, and then nothing may differ. */
        const void *g[N_TENSORS];
        koala_info info;
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        assert_int_equal(koala_get_info(f.opt, NULL, &info), KOALA_OK);
        if (info.phase != 1)
            fail_msg("%s: phase %d after the failure, expected 1 (predicted again)", c->name,
                     info.phase);
        memcpy(g, f.grads, sizeof g);
        if (c->phase == BEGUN_PARTIAL) g[1] = NULL;
        assert_int_equal(koala_update_begin(f.opt, f.params, g, f.sums, NULL), KOALA_OK);
    }
    after = snapshot(&f);
    assert_int_equal(before.size, after.size);
    if (memcmp(before.bytes, after.bytes, before.size) != 0)
        fail_msg("%s (%s): the failing call changed parameters, gradients, caller buffers, "
                 "state or *out", c->name, kKinds[c->fixture].name);
    free(before.bytes);
    free(after.bytes);
    fixture_free(&f);
}

static void test_case(void **state) {
    char msg[600];
    run_case((const bad_case *)*state, msg, sizeof msg);
}

/* Every failure leaves the optimizer usable: the step it was in the middle
 * of completes (a failure must not wedge the predict/update phase). A
 * fixture that cannot step (elements missing) is left out; an unbound one
 * is bound first. */
static void test_still_usable_after_failure(void **state) {
    fixture f;
    size_t i;
    (void)state;
    for (i = 0; i < N_CASES; ++i) {
        const bad_case *c = &kCases[i];
        const int no_callback = kKinds[c->fixture].sharded == 2;
        if (kKinds[c->fixture].sharded == 3) continue;
        fixture_make(&f, c->fixture, c->phase);
        (void)c->run(&f);
        if (kKinds[c->fixture].caller_state == 2)
            assert_int_equal(koala_bind_state(f.opt, f.state, f.scalars), KOALA_OK);
        if (c->phase == IDLE) {
            full_step(f.opt, no_callback, f.params, f.grads, f.sums);
        } else if (c->phase == BEGUN_PARTIAL) {
            /* start phase 1 again with the full gradients */
            assert_int_equal(koala_update_begin(f.opt, f.params, f.grads, f.sums, NULL), KOALA_OK);
            assert_int_equal(koala_update_end(f.opt, 0.5, 0.3, f.params, f.grads, f.sums, NULL),
                             KOALA_OK);
        } else if (c->phase == BEGUN) {
            if (c->predicted_again)
                assert_int_equal(koala_update_begin(f.opt, f.params, f.grads, f.sums, NULL),
                                 KOALA_OK);
            assert_int_equal(koala_update_end(f.opt, 0.5, 0.3, f.params, f.grads, f.sums, NULL),
                             KOALA_OK);
        } else if (no_callback) {
            assert_int_equal(koala_update_begin(f.opt, f.params, f.grads, f.sums, NULL), KOALA_OK);
            assert_int_equal(koala_update_end(f.opt, 0.5, 0.3, f.params, f.grads, f.sums, NULL),
                             KOALA_OK);
        } else {
            assert_int_equal(koala_update(f.opt, 0.5, 0.3, f.params, f.grads, NULL), KOALA_OK);
        }
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
        printf(" | %s%s | ", status_name(c->expect), c->predicted_again ? ", predicted again" : "");
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
    static struct CMUnitTest tests[N_CASES + 1];
    static char names[N_CASES][96];
    size_t i;
    if (argc > 1 && strcmp(argv[1], "--markdown") == 0) return print_markdown();
    for (i = 0; i < N_CASES; ++i) {
        struct CMUnitTest t = {0};
        /* A case function may serve several rows (other fixtures): the row
         * number keeps the names unique. */
        snprintf(names[i], sizeof names[i], "%zu %s", i + 1, kCases[i].name);
        t.name = names[i];
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
