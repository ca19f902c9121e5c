/*
 * reference.h - an independent float64 model of KOALA-V, KOALA-M and KOALA++.
 *
 * Written from ALGORITHM.md sections 3 and 4 (the official code's update
 * rules) and section 7 (KOALA++, the official koalap.py's semantics),
 * sharing no code with src/: it includes neither src/ headers nor
 * koala.h, keeps its own config struct, and uses the REFERENCE covariance
 * forms (sigma - sigma^2 max rho and P - h~ c c^T), not the library's
 * algebraically equal "stable" forms. Agreement with the library therefore
 * checks the library's algebra, not a copy of it.
 *
 * Everything is float64 and computed in the plainest order (one loop per
 * block, left to right). The tests feed it exactly the numbers they feed
 * the library (float32 inputs are rounded first, then widened).
 */
#ifndef KOALA_TEST_REFERENCE_H
#define KOALA_TEST_REFERENCE_H

#include <stddef.h>
#include <stdint.h>

enum { REF_VANILLA = 1, REF_MOMENTUM = 2, REF_PLUSPLUS = 3 };

/* Hyper-parameters (ALGORITHM.md section 8). r < 0 selects the online R. */
typedef struct ref_config {
    int method;
    double lr, weight_decay;
    double r;        /* fixed R >= 0, or negative for the online EMA with R0 = 1 */
    double alpha_r;
    double sigma, q;                 /* vanilla; KOALA++: P0 = sigma I and Q */
    double sw, sc, sv, a, qw, qv;    /* momentum */
    int asymmetric;                  /* KOALA++: 1 = w_k = 0 */
} ref_config;

typedef struct ref_koala {
    ref_config cfg;
    size_t n_tensors;
    size_t *sizes;
    size_t total;           /* n of ALGORITHM.md: all parameters, skipped or not */
    double sigma;           /* vanilla */
    double p00, p01, p11;   /* momentum */
    double r, qw;
    uint64_t steps;         /* completed updates */
    double last_prior;      /* sigma-hat / P-hat00 of the latest predict: a scale for
                               comparing covariances that cancel to ~0 when R ~ 0 */
    double **velocity;      /* momentum: v_i, zero at start */
    double **xbar;          /* momentum: slow average x-bar_i, zero at start */
    /* KOALA++ (section 7.3), per tensor: v and H of its last update, S of
     * its last update, and whether it was ever updated (first visit). */
    double **pp_v, **pp_h;
    double *pp_s;
    int *pp_seen;
    /* Per-tensor hyper-parameters (koala_set_tensor_lr / _weight_decay):
     * tensor i steps with lr * lr_scale[i] and uses weight decay tensor_wd[i]. */
    double *lr_scale;
    double *tensor_wd;
} ref_koala;

/* Returns 0 on success, -1 on allocation failure. */
int ref_init(ref_koala *k, const ref_config *cfg, size_t n_tensors, const size_t *sizes);
void ref_free(ref_koala *k);

/* The time update. params[i] holds sizes[i] doubles (momentum moves them). */
void ref_predict(ref_koala *k, double *const *params);

/* The measurement update. grads[i] == NULL means "no gradient this step". */
void ref_update(ref_koala *k, double loss, double loss_var, double *const *params,
                const double *const *grads);

void ref_set_lr(ref_koala *k, double lr);
/* NULL restores 1 (lr) / cfg.weight_decay (weight decay) for every tensor. */
void ref_set_tensor_lr(ref_koala *k, const double *scale);
void ref_set_tensor_wd(ref_koala *k, const double *weight_decay);

#endif
