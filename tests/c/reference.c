/*
 * reference.c - the float64 model of KOALA-V / KOALA-M / KOALA++ (see
 * reference.h). Section numbers refer to ALGORITHM.md.
 */
#include "reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Hard-coded constants of the official code (section 8). */
#define REF_SKIP_NORM 1e-9 /* skip a block whose RAW gradient norm is below this */
/* q_w <- 0.9 q_w + 0.1 sqrt(d2)/n and xbar <- 0.9 xbar + 0.1 x, written with
 * the literal constants of the official code. */
#define REF_EMA_KEEP 0.9
#define REF_EMA_TAKE 0.1

static double dot(const double *a, const double *b, size_t n) {
    double s = 0.0;
    for (size_t j = 0; j < n; ++j) s += a[j] * b[j];
    return s;
}

int ref_init(ref_koala *k, const ref_config *cfg, size_t n_tensors, const size_t *sizes) {
    memset(k, 0, sizeof *k);
    k->cfg = *cfg;
    k->n_tensors = n_tensors;
    k->sizes = malloc(n_tensors * sizeof *k->sizes);
    if (!k->sizes) return -1;
    memcpy(k->sizes, sizes, n_tensors * sizeof *sizes);
    for (size_t i = 0; i < n_tensors; ++i) k->total += sizes[i];
    k->sigma = cfg->sigma;
    k->p00 = cfg->sw;
    k->p01 = cfg->sc;
    k->p11 = cfg->sv;
    k->qw = cfg->qw;
    k->r = cfg->r >= 0 ? cfg->r : 1.0; /* R0 = 1 for the online estimate */
    k->steps = 0;
    k->last_prior = cfg->method == REF_MOMENTUM ? cfg->sw : cfg->sigma;
    k->lr_scale = malloc((n_tensors ? n_tensors : 1) * sizeof *k->lr_scale);
    k->tensor_wd = malloc((n_tensors ? n_tensors : 1) * sizeof *k->tensor_wd);
    if (!k->lr_scale || !k->tensor_wd) return -1;
    ref_set_tensor_lr(k, NULL);
    ref_set_tensor_wd(k, NULL);
    if (cfg->method == REF_PLUSPLUS) {
        k->pp_v = calloc(n_tensors ? n_tensors : 1, sizeof *k->pp_v);
        k->pp_h = calloc(n_tensors ? n_tensors : 1, sizeof *k->pp_h);
        k->pp_s = calloc(n_tensors ? n_tensors : 1, sizeof *k->pp_s);
        k->pp_seen = calloc(n_tensors ? n_tensors : 1, sizeof *k->pp_seen);
        if (!k->pp_v || !k->pp_h || !k->pp_s || !k->pp_seen) return -1;
        for (size_t i = 0; i < n_tensors; ++i) {
            k->pp_v[i] = calloc(sizes[i], sizeof(double));
            k->pp_h[i] = calloc(sizes[i], sizeof(double));
            if (!k->pp_v[i] || !k->pp_h[i]) return -1;
        }
    }
    if (cfg->method == REF_MOMENTUM) {
        k->velocity = calloc(n_tensors, sizeof *k->velocity);
        k->xbar = calloc(n_tensors, sizeof *k->xbar);
        if (!k->velocity || !k->xbar) return -1;
        for (size_t i = 0; i < n_tensors; ++i) {
            k->velocity[i] = calloc(sizes[i], sizeof(double));
            k->xbar[i] = calloc(sizes[i], sizeof(double));
            if (!k->velocity[i] || !k->xbar[i]) return -1;
        }
    }
    return 0;
}

void ref_free(ref_koala *k) {
    if (k->velocity)
        for (size_t i = 0; i < k->n_tensors; ++i) free(k->velocity[i]);
    if (k->xbar)
        for (size_t i = 0; i < k->n_tensors; ++i) free(k->xbar[i]);
    free(k->velocity);
    free(k->xbar);
    if (k->pp_v)
        for (size_t i = 0; i < k->n_tensors; ++i) free(k->pp_v[i]);
    if (k->pp_h)
        for (size_t i = 0; i < k->n_tensors; ++i) free(k->pp_h[i]);
    free(k->pp_v);
    free(k->pp_h);
    free(k->pp_s);
    free(k->pp_seen);
    free(k->lr_scale);
    free(k->tensor_wd);
    free(k->sizes);
    memset(k, 0, sizeof *k);
}

void ref_set_lr(ref_koala *k, double lr) { k->cfg.lr = lr; }

void ref_set_tensor_lr(ref_koala *k, const double *scale) {
    for (size_t i = 0; i < k->n_tensors; ++i) k->lr_scale[i] = scale ? scale[i] : 1.0;
}

void ref_set_tensor_wd(ref_koala *k, const double *weight_decay) {
    for (size_t i = 0; i < k->n_tensors; ++i)
        k->tensor_wd[i] = weight_decay ? weight_decay[i] : k->cfg.weight_decay;
}

/* Section 3.2 (vanilla) and 4.2 (momentum). */
void ref_predict(ref_koala *k, double *const *params) {
    if (k->cfg.method == REF_PLUSPLUS) return; /* section 7.3: predict() is a no-op */
    if (k->cfg.method == REF_VANILLA) {
        k->sigma = k->sigma + k->cfg.q;
        k->last_prior = k->sigma;
        return;
    }
    const double a = k->cfg.a;
    /* 1. d2 over ALL blocks, on the posterior x before the shift. */
    double d2 = 0.0;
    for (size_t i = 0; i < k->n_tensors; ++i)
        for (size_t j = 0; j < k->sizes[i]; ++j) {
            const double d = k->xbar[i][j] - params[i][j];
            d2 += d * d;
        }
    /* 2. x <- x + v, v <- a v. */
    for (size_t i = 0; i < k->n_tensors; ++i)
        for (size_t j = 0; j < k->sizes[i]; ++j) {
            params[i][j] += k->velocity[i][j];
            k->velocity[i][j] *= a;
        }
    /* 3. q_w EMA of the un-squared distance over n. */
    k->qw = REF_EMA_KEEP * k->qw + REF_EMA_TAKE * (sqrt(d2) / (double)k->total);
    /* 4. P-hat = F P F^T + diag(q_w, q_v), F = [[1, 1], [0, a]]. */
    const double p00 = k->p00, p01 = k->p01, p11 = k->p11;
    k->p00 = p00 + 2.0 * p01 + p11 + k->qw;
    k->p01 = a * (p01 + p11);
    k->p11 = a * a * p11 + k->cfg.qv;
    k->last_prior = k->p00;
}

/* A block is skipped when it has no gradient or its RAW norm is tiny. */
static int block_skipped(const double *g, size_t n) {
    return g == NULL || sqrt(dot(g, g, n)) < REF_SKIP_NORM;
}

/* Section 7.2 / 7.3: KOALA++'s update of every tensor, with R already
 * updated. Each tensor is its own filter: it is skipped (state untouched)
 * like a KOALA block, and on its first visit its "previous" quantities are
 * those of P0 = sigma I: v' = sigma H, H' = H, S' = H'.v' + Q|H'|^2 + R. */
static void plusplus_update(ref_koala *k, double loss, double *const *params,
                            const double *const *grads) {
    const double Q = k->cfg.q, R = k->r;
    for (size_t i = 0; i < k->n_tensors; ++i) {
        const size_t n = k->sizes[i];
        const double *g = grads[i];
        double *x = params[i];
        if (block_skipped(g, n)) continue;
        const double wd = k->tensor_wd[i], lr = k->cfg.lr * k->lr_scale[i];
        double *v = k->pp_v[i], *Hp = k->pp_h[i];
        double *H = malloc(n * sizeof *H);
        if (!H) abort();
        for (size_t j = 0; j < n; ++j) H[j] = g[j] + wd * x[j];
        if (!k->pp_seen[i]) {
            for (size_t j = 0; j < n; ++j) {
                v[j] = k->cfg.sigma * H[j];
                Hp[j] = H[j];
            }
            k->pp_s[i] = dot(Hp, v, n) + Q * dot(Hp, Hp, n) + R;
        }
        const double hp_hp = dot(Hp, Hp, n);  /* x_ of koalap.py */
        const double hp_v = dot(Hp, v, n);    /* y */
        const double h_v = dot(H, v, n), h_hp = dot(H, Hp, n);
        const double lambda = (h_v + Q * h_hp) / k->pp_s[i];
        const double alpha = h_hp / hp_hp;
        const double w = k->cfg.asymmetric ? 0.0
                                           : h_v / hp_hp - h_hp * hp_v / (hp_hp * hp_hp);
        /* v <- (alpha - lambda) v' + Q (H - lambda H') + w H', in place:
         * element j of the new v needs only element j of v' and H'. */
        for (size_t j = 0; j < n; ++j)
            v[j] = (alpha - lambda) * v[j] + Q * (H[j] - lambda * Hp[j]) + w * Hp[j];
        /* S = (v + Q H).H + R, directly from the new vectors. */
        double S = R;
        for (size_t j = 0; j < n; ++j) S += (v[j] + Q * H[j]) * H[j];
        const double layer_loss = loss + 0.5 * wd * dot(x, x, n); /* x before the step */
        const double c = lr * layer_loss / S;
        for (size_t j = 0; j < n; ++j) {
            x[j] = x[j] - c * (v[j] + Q * H[j]);
            Hp[j] = H[j];
        }
        k->pp_s[i] = S;
        k->pp_seen[i] = 1;
        free(H);
    }
}

/* Section 3.3 (vanilla) and 4.3 (momentum). */
void ref_update(ref_koala *k, double loss, double loss_var, double *const *params,
                const double *const *grads) {
    const int momentum = k->cfg.method == REF_MOMENTUM;
    /* 1. R is updated before it is used. */
    if (k->cfg.r < 0) k->r = k->cfg.alpha_r * k->r + (1.0 - k->cfg.alpha_r) * loss_var;
    const double R = k->r;
    if (k->cfg.method == REF_PLUSPLUS) {
        plusplus_update(k, loss, params, grads);
        k->steps++;
        return;
    }
    const double prior = momentum ? k->p00 : k->sigma; /* sigma-hat or P-hat00 */
    const double prior01 = k->p01;
    double max_rho = 0.0;
    int any_block = 0;
    for (size_t i = 0; i < k->n_tensors; ++i) {
        const size_t n = k->sizes[i];
        const double *g = grads[i];
        double *x = params[i];
        if (block_skipped(g, n)) continue;
        const double wd = k->tensor_wd[i], lr = k->cfg.lr * k->lr_scale[i];
        /* h = g + wd x and its squared norm; the block's own L2 term. */
        double a_i = 0.0, xx = 0.0;
        for (size_t j = 0; j < n; ++j) {
            const double h = g[j] + wd * x[j];
            a_i += h * h;
            xx += x[j] * x[j];
        }
        const double S = prior * a_i + R;
        /* S == 0 needs a_i == 0 and R == 0: the official code would divide by
         * zero; libkoala's contract leaves such a block alone. The tests never
         * produce it, this only keeps the model total. */
        if (!(S > 0.0)) continue;
        const double block_loss = loss + 0.5 * wd * xx;
        if (momentum) {
            const double k1 = lr * block_loss * prior / S;
            const double k2 = lr * block_loss * prior01 / S;
            double *v = k->velocity[i], *xb = k->xbar[i];
            for (size_t j = 0; j < n; ++j) {
                const double h = g[j] + wd * x[j]; /* on x-hat, before this step */
                x[j] = x[j] - k1 * h;              /* along the REGULARISED gradient */
                v[j] = v[j] - k2 * h;
                xb[j] = REF_EMA_KEEP * xb[j] + REF_EMA_TAKE * x[j];
            }
        } else {
            const double c = lr * block_loss * prior / S;
            for (size_t j = 0; j < n; ++j) x[j] = x[j] - c * g[j]; /* along the RAW gradient */
        }
        const double rho = a_i / S;
        if (!any_block || rho > max_rho) max_rho = rho;
        any_block = 1;
    }
    /* 3. Covariance shrink with the max over active blocks, reference form.
     * With no active block (the reference code crashes there) the covariance
     * keeps its prediction (ALGORITHM.md D14). */
    if (any_block) {
        if (momentum) {
            const double c0 = prior, c1 = prior01;
            k->p00 = k->p00 - max_rho * c0 * c0;
            k->p01 = k->p01 - max_rho * c0 * c1;
            k->p11 = k->p11 - max_rho * c1 * c1;
        } else {
            k->sigma = prior - prior * prior * max_rho;
        }
    }
    k->steps++;
}
