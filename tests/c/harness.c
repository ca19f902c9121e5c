/*
 * harness.c - shared helpers of the C tests (see harness.h).
 */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- random numbers ------------------------------------------------------ */

void rng_seed(test_rng *rng, uint64_t seed) { rng->state = seed ^ 0x6a09e667f3bcc909ull; }

uint64_t rng_u64(test_rng *rng) {
    uint64_t z = (rng->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double rng_unit(test_rng *rng) { return (double)(rng_u64(rng) >> 11) * 0x1.0p-53; }

double rng_range(test_rng *rng, double lo, double hi) { return lo + (hi - lo) * rng_unit(rng); }

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) abort(); /* a test machine out of memory: nothing sensible to test */
    return p;
}

/* ---- layouts ------------------------------------------------------------- */

test_layout layout_make(size_t n, const size_t *sizes) {
    test_layout l;
    l.n = n;
    l.sizes = xmalloc(n * sizeof *l.sizes);
    l.total = 0;
    for (size_t i = 0; i < n; ++i) {
        l.sizes[i] = sizes[i];
        l.total += sizes[i];
    }
    return l;
}

test_layout layout_random(uint64_t seed, size_t max_tensors, int large) {
    /* Small sizes are common (biases, norms); the large ones sit just around
     * the library's chunk (32768) and parallel threshold (65536). */
    static const size_t small[] = {1, 1, 2, 3, 5, 7, 13, 31, 64, 97, 128, 257, 1009, 4099};
    static const size_t big[] = {32767, 32768, 32769, 65537};
    test_rng rng;
    rng_seed(&rng, seed);
    const size_t n = 1 + (size_t)(rng_u64(&rng) % max_tensors);
    size_t *sizes = xmalloc(n * sizeof *sizes);
    size_t n_big = 0;
    for (size_t i = 0; i < n; ++i) {
        /* Big tensors only in `large` layouts, and at most one besides the
         * forced 65537, to keep the float64 model cheap. */
        if (large && n_big < 1 && rng_unit(&rng) < 0.08) {
            sizes[i] = big[rng_u64(&rng) % 4];
            ++n_big;
        } else {
            sizes[i] = small[rng_u64(&rng) % (sizeof small / sizeof small[0])];
        }
    }
    if (large) sizes[rng_u64(&rng) % n] = 65537;
    test_layout l = layout_make(n, sizes);
    free(sizes);
    return l;
}

void layout_free(test_layout *layout) {
    free(layout->sizes);
    layout->sizes = NULL;
    layout->n = layout->total = 0;
}

/* ---- steps ----------------------------------------------------------------- */

void step_alloc(test_step *step, const test_layout *layout) {
    step->kind = xmalloc(layout->n * sizeof *step->kind);
    step->grad = xmalloc(layout->n * sizeof *step->grad);
    for (size_t i = 0; i < layout->n; ++i)
        step->grad[i] = xmalloc(layout->sizes[i] * sizeof(double));
}

void step_free(test_step *step, const test_layout *layout) {
    for (size_t i = 0; i < layout->n; ++i) free(step->grad[i]);
    free(step->grad);
    free(step->kind);
}

void step_fill(test_step *step, const test_layout *layout, uint64_t seed, unsigned step_index,
               int skip_percent, int all_skipped) {
    test_rng rng;
    rng_seed(&rng, seed * 0x2545f4914f6cdd1dull + step_index * 0x9e3779b97f4a7c15ull + 1);
    step->loss = rng_range(&rng, 0.5, 3.0);
    step->loss_var = step->loss * step->loss + rng_range(&rng, 0.0, 2.0);
    for (size_t i = 0; i < layout->n; ++i) {
        const size_t n = layout->sizes[i];
        grad_kind kind = GRAD_NORMAL;
        const double u = rng_unit(&rng) * 100.0;
        if (all_skipped)
            kind = (grad_kind)(GRAD_NULL + (i + step_index) % 3);
        else if (u < skip_percent * 0.5)
            kind = GRAD_NULL;
        else if (u < skip_percent * 0.75)
            kind = GRAD_TINY;
        else if (u < skip_percent)
            kind = GRAD_ZERO;
        step->kind[i] = kind;
        /* Uniform entries of variance 1/3, scaled so that |g| ~ norm. */
        const double norm = exp(rng_range(&rng, log(0.05), log(5.0)));
        const double scale = kind == GRAD_TINY ? 1e-12 / sqrt((double)n)
                                               : norm * sqrt(3.0 / (double)n);
        for (size_t j = 0; j < n; ++j)
            step->grad[i][j] = kind == GRAD_ZERO ? 0.0 : scale * rng_range(&rng, -1.0, 1.0);
    }
}

/* ---- buffers ----------------------------------------------------------------- */

size_t dtype_bytes(koala_dtype dtype) {
    switch (dtype) {
    case KOALA_FLOAT32: return sizeof(float);
    case KOALA_BFLOAT16:
    case KOALA_FLOAT16: return sizeof(uint16_t);
    default: return sizeof(double);
    }
}

/* ---- 16-bit formats, written from their definitions ----------------------
 * (not from the library's bit tricks): a binary format with `digits`
 * significant bits, smallest normal exponent emin and largest finite value
 * `max`. Rounding is done in float64 arithmetic with nearbyint (the default
 * rounding mode rounds ties to even). */
static double round_to_format(double v, int digits, int emin, double max) {
    if (v == 0.0 || !isfinite(v)) return v;
    int e2;
    frexp(v, &e2);         /* |v| = f 2^e2, f in [0.5, 1): leading bit 2^(e2-1) */
    int lead = e2 - 1;
    if (lead < emin) lead = emin; /* subnormal: the spacing stays 2^(emin - digits + 1) */
    const int quantum = lead - (digits - 1);
    const double r = ldexp(nearbyint(ldexp(v, -quantum)), quantum);
    if (fabs(r) > max) return copysign(INFINITY, v);
    return r;
}

double round_bf16(double v) { return round_to_format(v, 8, -126, ldexp(255.0, 120)); }
double round_fp16(double v) { return round_to_format(v, 11, -14, 65504.0); }

uint16_t bf16_bits(double v) {
    /* A bfloat16 value is a float32 whose low 16 bits are zero. */
    const float f = (float)round_bf16(v);
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)(u >> 16);
}

double bf16_value(uint16_t bits) {
    const uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t fp16_bits(double v) {
    const double r = round_fp16(v);
    const uint16_t sign = signbit(r) ? 0x8000u : 0u;
    const double a = fabs(r);
    if (isnan(r)) return 0x7e00u;
    if (isinf(a)) return (uint16_t)(sign | 0x7c00u);
    if (a < ldexp(1.0, -14)) return (uint16_t)(sign | (uint16_t)ldexp(a, 24)); /* subnormal */
    int e2;
    const double f = frexp(a, &e2); /* a = f 2^e2, f in [0.5, 1) */
    const unsigned exponent = (unsigned)(e2 - 1 + 15);
    const unsigned mantissa = (unsigned)ldexp(2.0 * f - 1.0, 10);
    return (uint16_t)(sign | (exponent << 10) | mantissa);
}

double fp16_value(uint16_t bits) {
    const double sign = (bits & 0x8000u) ? -1.0 : 1.0;
    const unsigned e = (bits >> 10) & 0x1fu, m = bits & 0x3ffu;
    if (e == 0) return sign * ldexp((double)m, -24);
    if (e == 31) return m ? NAN : sign * INFINITY;
    return sign * ldexp(1024.0 + m, (int)e - 25);
}

void **buffers_alloc(const test_layout *layout, koala_dtype dtype) {
    void **b = xmalloc(layout->n * sizeof *b);
    for (size_t i = 0; i < layout->n; ++i) {
        b[i] = xmalloc(layout->sizes[i] * dtype_bytes(dtype));
        memset(b[i], 0, layout->sizes[i] * dtype_bytes(dtype));
    }
    return b;
}

void buffers_free(void **buffers, const test_layout *layout) {
    if (!buffers) return;
    for (size_t i = 0; i < layout->n; ++i) free(buffers[i]);
    free(buffers);
}

void buffers_copy(void **dst, void *const *src, const test_layout *layout, koala_dtype dtype) {
    for (size_t i = 0; i < layout->n; ++i)
        memcpy(dst[i], src[i], layout->sizes[i] * dtype_bytes(dtype));
}

int buffers_equal(void *const *a, void *const *b, const test_layout *layout, koala_dtype dtype) {
    for (size_t i = 0; i < layout->n; ++i)
        if (memcmp(a[i], b[i], layout->sizes[i] * dtype_bytes(dtype)) != 0) return 0;
    return 1;
}

double buffer_get(const void *buffer, size_t j, koala_dtype dtype) {
    switch (dtype) {
    case KOALA_FLOAT32: return (double)((const float *)buffer)[j];
    case KOALA_BFLOAT16: return bf16_value(((const uint16_t *)buffer)[j]);
    case KOALA_FLOAT16: return fp16_value(((const uint16_t *)buffer)[j]);
    default: return ((const double *)buffer)[j];
    }
}

void buffer_set(void *buffer, size_t j, koala_dtype dtype, double value) {
    switch (dtype) {
    case KOALA_FLOAT32: ((float *)buffer)[j] = (float)value; break;
    case KOALA_BFLOAT16: ((uint16_t *)buffer)[j] = bf16_bits(value); break;
    case KOALA_FLOAT16: ((uint16_t *)buffer)[j] = fp16_bits(value); break;
    default: ((double *)buffer)[j] = value; break;
    }
}

/* ---- pair ---------------------------------------------------------------------- */

ref_config ref_config_from(const koala_config *cfg) {
    ref_config r;
    r.method = cfg->method == KOALA_MOMENTUM    ? REF_MOMENTUM
               : cfg->method == KOALA_PLUSPLUS ? REF_PLUSPLUS
                                               : REF_VANILLA;
    r.lr = cfg->lr;
    r.weight_decay = cfg->weight_decay;
    r.r = isnan(cfg->r) ? -1.0 : cfg->r;
    r.alpha_r = cfg->alpha_r;
    r.sigma = cfg->sigma;
    r.q = cfg->q;
    r.sw = cfg->sw;
    r.sc = cfg->sc;
    r.sv = cfg->sv;
    r.a = cfg->a;
    r.qw = cfg->qw;
    r.qv = cfg->qv;
    r.asymmetric = cfg->asymmetric;
    return r;
}

koala_status pair_init(test_pair *pair, const koala_config *cfg, const test_layout *layout,
                       koala_dtype dtype, uint64_t seed, int with_reference) {
    memset(pair, 0, sizeof *pair);
    pair->layout = layout;
    pair->dtype = dtype;
    pair->with_reference = with_reference;
    koala_status st = koala_create(cfg, layout->n, layout->sizes, dtype, KOALA_HOST, &pair->opt);
    if (st != KOALA_OK) return st;
    if (cfg->caller_state) {
        st = koala_state_layout(pair->opt, &pair->state_buffers, &pair->state_dtype,
                                &pair->scalar_count);
        if (st != KOALA_OK) return st;
        pair->state = xmalloc((pair->state_buffers * layout->n + 1) * sizeof *pair->state);
        for (size_t b = 0; b < pair->state_buffers; ++b)
            for (size_t i = 0; i < layout->n; ++i)
                pair->state[b * layout->n + i] =
                    xmalloc(layout->sizes[i] * dtype_bytes(pair->state_dtype));
        pair->scalars = xmalloc(pair->scalar_count * sizeof *pair->scalars);
        st = koala_state_init(pair->opt, pair->state, pair->scalars, NULL);
        if (st == KOALA_OK) st = koala_bind_state(pair->opt, pair->state, pair->scalars);
        if (st != KOALA_OK) return st;
    }
    pair->params = buffers_alloc(layout, dtype);
    pair->grads = buffers_alloc(layout, dtype);
    pair->grad_args = xmalloc(layout->n * sizeof *pair->grad_args);
    if (with_reference) {
        const ref_config rc = ref_config_from(cfg);
        if (ref_init(&pair->ref, &rc, layout->n, layout->sizes) != 0) abort();
        pair->ref_params = (double **)buffers_alloc(layout, KOALA_FLOAT64);
        pair->ref_grads = xmalloc(layout->n * sizeof *pair->ref_grads);
        pair->start_norm = xmalloc(layout->n * sizeof *pair->start_norm);
    }
    test_rng rng;
    rng_seed(&rng, seed ^ 0x5bd1e995ull);
    for (size_t i = 0; i < layout->n; ++i) {
        const double scale = rng_range(&rng, 0.1, 2.0);
        for (size_t j = 0; j < layout->sizes[i]; ++j) {
            buffer_set(pair->params[i], j, dtype, scale * rng_range(&rng, -1.0, 1.0));
            if (with_reference) pair->ref_params[i][j] = buffer_get(pair->params[i], j, dtype);
        }
        if (with_reference) {
            double nn = 0.0;
            for (size_t j = 0; j < layout->sizes[i]; ++j)
                nn += pair->ref_params[i][j] * pair->ref_params[i][j];
            pair->start_norm[i] = sqrt(nn);
        }
    }
    return KOALA_OK;
}

void pair_free(test_pair *pair) {
    koala_destroy(pair->opt);
    if (pair->state) {
        for (size_t k = 0; k < pair->state_buffers * pair->layout->n; ++k) free(pair->state[k]);
        free(pair->state);
        free(pair->scalars);
    }
    buffers_free(pair->params, pair->layout);
    buffers_free(pair->grads, pair->layout);
    free(pair->grad_args);
    if (pair->with_reference) {
        buffers_free((void **)pair->ref_params, pair->layout);
        free(pair->ref_grads);
        free(pair->start_norm);
        ref_free(&pair->ref);
    }
    memset(pair, 0, sizeof *pair);
}

koala_status pair_predict(test_pair *pair) {
    const koala_status st = koala_predict(pair->opt, pair->params, NULL);
    if (st == KOALA_OK && pair->with_reference) ref_predict(&pair->ref, pair->ref_params);
    return st;
}

void pair_load_grads(test_pair *pair, test_step *step) {
    const test_layout *l = pair->layout;
    for (size_t i = 0; i < l->n; ++i) {
        for (size_t j = 0; j < l->sizes[i]; ++j) {
            buffer_set(pair->grads[i], j, pair->dtype, step->grad[i][j]);
            step->grad[i][j] = buffer_get(pair->grads[i], j, pair->dtype);
        }
        const int has = step->kind[i] != GRAD_NULL;
        pair->grad_args[i] = has ? pair->grads[i] : NULL;
        if (pair->with_reference) pair->ref_grads[i] = has ? step->grad[i] : NULL;
    }
}

koala_status pair_update(test_pair *pair, test_step *step) {
    pair_load_grads(pair, step);
    const koala_status st = koala_update(pair->opt, step->loss, step->loss_var, pair->params,
                                         pair->grad_args, NULL);
    if (st == KOALA_OK && pair->with_reference)
        ref_update(&pair->ref, step->loss, step->loss_var, pair->ref_params,
                   (const double *const *)pair->ref_grads);
    return st;
}

void pair_set_lr(test_pair *pair, double lr) {
    if (koala_set_lr(pair->opt, lr) != KOALA_OK) abort();
    if (pair->with_reference) ref_set_lr(&pair->ref, lr);
}

koala_status pair_set_tensor_lr(test_pair *pair, const double *scale) {
    const koala_status st = koala_set_tensor_lr(pair->opt, scale, NULL);
    if (st == KOALA_OK && pair->with_reference) ref_set_tensor_lr(&pair->ref, scale);
    return st;
}

koala_status pair_set_tensor_wd(test_pair *pair, const double *weight_decay) {
    const koala_status st = koala_set_tensor_weight_decay(pair->opt, weight_decay, NULL);
    if (st == KOALA_OK && pair->with_reference) ref_set_tensor_wd(&pair->ref, weight_decay);
    return st;
}

double pair_param_error(const test_pair *pair) {
    double worst = 0.0;
    for (size_t i = 0; i < pair->layout->n; ++i) {
        double diff = 0.0, ref = 0.0;
        for (size_t j = 0; j < pair->layout->sizes[i]; ++j) {
            const double r = pair->ref_params[i][j];
            const double d = buffer_get(pair->params[i], j, pair->dtype) - r;
            diff += d * d;
            ref += r * r;
        }
        double scale = sqrt(ref);
        if (pair->start_norm[i] > scale) scale = pair->start_norm[i];
        const double err = scale > 0.0 ? sqrt(diff) / scale : sqrt(diff);
        if (!(err <= worst)) worst = err; /* NaN propagates as the worst */
    }
    return worst;
}

static void track(double lib, double ref, double scale, const char *name, double *worst,
                  const char **what) {
    double den = fabs(ref) > scale ? fabs(ref) : scale;
    double err = den > 0.0 ? fabs(lib - ref) / den : fabs(lib - ref);
    if (!(err <= *worst)) {
        *worst = err;
        if (what) *what = name;
    }
}

double pair_info_error(const test_pair *pair, const char **what) {
    koala_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (what) *what = "none";
    if (koala_get_info(pair->opt, NULL, &info) != KOALA_OK) {
        if (what) *what = "koala_get_info failed";
        return INFINITY;
    }
    const ref_koala *k = &pair->ref;
    if (info.steps != k->steps) {
        if (what) *what = "steps";
        return INFINITY;
    }
    double worst = 0.0;
    track(info.r, k->r, 0.0, "r", &worst, what);
    if (k->cfg.method == REF_PLUSPLUS) {
        /* KOALA++ keeps no shared covariance: R is its one global scalar. */
    } else if (k->cfg.method == REF_VANILLA) {
        track(info.sigma, k->sigma, fabs(k->last_prior), "sigma", &worst, what);
    } else {
        double scale = fabs(k->last_prior);
        if (fabs(k->p11) > scale) scale = fabs(k->p11);
        track(info.p00, k->p00, scale, "p00", &worst, what);
        track(info.p01, k->p01, scale, "p01", &worst, what);
        track(info.p11, k->p11, scale, "p11", &worst, what);
        track(info.qw, k->qw, 0.0, "qw", &worst, what);
    }
    return worst;
}

double pair_plusplus_state_error(const test_pair *pair) {
    const test_layout *l = pair->layout;
    if (!pair->state || pair->state_buffers != 2) return INFINITY;
    double worst = 0.0;
    for (int which = 0; which < 2; ++which) {
        double *const *ref = which == 0 ? pair->ref.pp_v : pair->ref.pp_h;
        for (size_t i = 0; i < l->n; ++i) {
            const void *lib = pair->state[(size_t)which * l->n + i];
            double diff = 0.0, norm = 0.0, h_norm = 0.0;
            for (size_t j = 0; j < l->sizes[i]; ++j) {
                const double d = buffer_get(lib, j, pair->state_dtype) - ref[i][j];
                diff += d * d;
                norm += ref[i][j] * ref[i][j];
                h_norm += pair->ref.pp_h[i][j] * pair->ref.pp_h[i][j];
            }
            /* v enters the step as v + Q H: measure it against Q |H| too, so
             * that a v that cancels to rounding noise (R = 0 makes the first
             * v exactly 0 in exact arithmetic) is not compared to itself. */
            if (which == 0 && pair->ref.cfg.q * pair->ref.cfg.q * h_norm > norm)
                norm = pair->ref.cfg.q * pair->ref.cfg.q * h_norm;
            const double err = norm > 0.0 ? sqrt(diff / norm) : sqrt(diff);
            if (!(err <= worst)) worst = err;
        }
    }
    return worst;
}

double pair_momentum_state_error(const test_pair *pair) {
    const test_layout *l = pair->layout;
    const size_t elem = dtype_bytes(pair->dtype);
    const size_t buffers = 2 * l->total * elem;
    size_t size;
    unsigned char *ckpt = save_state(pair->opt, &size);
    if (size < buffers + 8) {
        free(ckpt);
        return INFINITY;
    }
    double worst = 0.0;
    /* The checkpoint ends with the buffers (v, then x-bar), then the checksum. */
    const unsigned char *p = ckpt + size - 8 - buffers;
    for (int which = 0; which < 2; ++which) {
        double *const *ref = which == 0 ? pair->ref.velocity : pair->ref.xbar;
        for (size_t i = 0; i < l->n; ++i) {
            double diff = 0.0, norm = 0.0;
            for (size_t j = 0; j < l->sizes[i]; ++j) {
                double lib;
                if (pair->dtype == KOALA_FLOAT32) {
                    float f;
                    memcpy(&f, p + j * elem, sizeof f);
                    lib = f;
                } else {
                    memcpy(&lib, p + j * elem, sizeof lib);
                }
                diff += (lib - ref[i][j]) * (lib - ref[i][j]);
                norm += ref[i][j] * ref[i][j];
            }
            p += l->sizes[i] * elem;
            const double err = norm > 0.0 ? sqrt(diff / norm) : sqrt(diff);
            if (!(err <= worst)) worst = err;
        }
    }
    free(ckpt);
    return worst;
}

unsigned char *save_state(const koala_optimizer *opt, size_t *size) {
    if (koala_state_size(opt, size) != KOALA_OK) abort();
    unsigned char *buf = xmalloc(*size);
    if (koala_state_save(opt, buf, *size, NULL) != KOALA_OK) abort();
    return buf;
}

const test_variant test_variants[N_TEST_VARIANTS] = {
    {"V float64", KOALA_VANILLA, KOALA_FLOAT64},
    {"V float32", KOALA_VANILLA, KOALA_FLOAT32},
    {"M float64", KOALA_MOMENTUM, KOALA_FLOAT64},
    {"M float32", KOALA_MOMENTUM, KOALA_FLOAT32},
};
