/*
 * abi_problem.h - the short training run that test_abi_1_0.c (built against
 * the frozen 1.0 header) and current_header_run.c (built against today's
 * koala.h) both make, so their numbers can be compared bit for bit.
 *
 * Include it after either header: it uses only the step functions and enum
 * values, which are the same in both (no struct crosses it).
 *
 * The problem: a least-squares fit of three tensors to fixed targets,
 * L(x) = 0.5 * s_k * |x - target|^2 / N on step k (s_k varies the scale), so
 * the gradients depend on the parameters and any difference in a step shows
 * in every later one. Tensor 1 has no gradient (NULL) on step 4; koala_set_lr
 * changes the target multiplier before step 7; the loss goes by value, or
 * through koala_update_ptr as float32 or float64, depending on the step.
 */
#ifndef KOALA_ABI_PROBLEM_H
#define KOALA_ABI_PROBLEM_H

#include <math.h>
#include <stddef.h>

#define ABI_TENSORS 3
#define ABI_STEPS 12
#define ABI_SAVE_AT 5 /* a checkpoint after this many whole steps */
#define ABI_MAX_ELEMENTS 11

static const size_t abi_sizes[ABI_TENSORS] = {5, 3, 11};

static size_t abi_elements(void) {
    size_t n = 0, t;
    for (t = 0; t < ABI_TENSORS; ++t) n += abi_sizes[t];
    return n;
}

static double abi_get(const void *buf, koala_dtype dtype, size_t i) {
    return dtype == KOALA_FLOAT32 ? (double)((const float *)buf)[i] : ((const double *)buf)[i];
}

static void abi_set(void *buf, koala_dtype dtype, size_t i, double v) {
    if (dtype == KOALA_FLOAT32)
        ((float *)buf)[i] = (float)v;
    else
        ((double *)buf)[i] = v;
}

/* The caller's tensors: parameters and gradients of one dtype. */
typedef struct {
    koala_dtype dtype;
    double store[2][ABI_TENSORS][ABI_MAX_ELEMENTS]; /* float or double storage, large enough */
    void *params[ABI_TENSORS];
    void *grad_bufs[ABI_TENSORS];
} abi_tensors;

static void abi_tensors_init(abi_tensors *s, koala_dtype dtype) {
    size_t t, i;
    s->dtype = dtype;
    for (t = 0; t < ABI_TENSORS; ++t) {
        s->params[t] = s->store[0][t];
        s->grad_bufs[t] = s->store[1][t];
        for (i = 0; i < abi_sizes[t]; ++i) {
            abi_set(s->params[t], dtype, i, 0.3 * sin(1.0 + (double)i + 2.0 * (double)t));
            abi_set(s->grad_bufs[t], dtype, i, 0.0);
        }
    }
}

static double abi_target(size_t t, size_t i) { return 0.5 * cos(0.7 * (double)i + (double)t); }

/* Loss, loss_var and gradients at the current parameters, for step k. */
static void abi_measure(abi_tensors *s, unsigned k, double *loss, double *loss_var) {
    const double scale = 1.0 + 0.25 * (double)(k % 3), n = (double)abi_elements();
    double sum = 0.0;
    size_t t, i;
    for (t = 0; t < ABI_TENSORS; ++t)
        for (i = 0; i < abi_sizes[t]; ++i) {
            const double r = abi_get(s->params[t], s->dtype, i) - abi_target(t, i);
            sum += r * r;
            abi_set(s->grad_bufs[t], s->dtype, i, scale * r / n);
        }
    *loss = 0.5 * scale * sum / n;
    *loss_var = 1.3 * *loss * *loss; /* a mean of squares is >= the squared mean */
}

/* Called after every library call of a step (the 1.0 program checks its
 * guard bytes there); may be NULL. */
typedef void (*abi_after_call)(const char *what, koala_status st);

static koala_status abi_checked(koala_status st, const char *what, abi_after_call after) {
    if (after) after(what, st);
    return st;
}

/* Steps first..last-1 of the run. Returns the first failing status. */
static koala_status abi_train(koala_optimizer *opt, abi_tensors *s, unsigned first,
                              unsigned last, abi_after_call after) {
    unsigned k;
    for (k = first; k < last; ++k) {
        const void *grads[ABI_TENSORS];
        double loss, loss_var;
        koala_status st;
        size_t t;
        if (k == 7) {
            st = abi_checked(koala_set_lr(opt, 0.6), "koala_set_lr", after);
            if (st != KOALA_OK) return st;
        }
        st = abi_checked(koala_predict(opt, s->params, NULL), "koala_predict", after);
        if (st != KOALA_OK) return st;
        abi_measure(s, k, &loss, &loss_var);
        for (t = 0; t < ABI_TENSORS; ++t) grads[t] = s->grad_bufs[t];
        if (k == 4) grads[1] = NULL;
        if (k % 3 == 0) {
            st = abi_checked(koala_update(opt, loss, loss_var, s->params, grads, NULL),
                             "koala_update", after);
        } else if (k % 3 == 1) {
            st = abi_checked(koala_update_ptr(opt, &loss, &loss_var, KOALA_FLOAT64, s->params,
                                              grads, NULL),
                             "koala_update_ptr (float64)", after);
        } else {
            const float l32 = (float)loss, v32 = (float)loss_var;
            st = abi_checked(koala_update_ptr(opt, &l32, &v32, KOALA_FLOAT32, s->params, grads,
                                              NULL),
                             "koala_update_ptr (float32)", after);
        }
        if (st != KOALA_OK) return st;
    }
    return KOALA_OK;
}

/* The parameters as float64 values, tensor after tensor. */
static void abi_flatten(const abi_tensors *s, double *out) {
    size_t t, i, k = 0;
    for (t = 0; t < ABI_TENSORS; ++t)
        for (i = 0; i < abi_sizes[t]; ++i) out[k++] = abi_get(s->params[t], s->dtype, i);
}

/* The configuration both programs train with, from the method's defaults. */
#define ABI_CONFIGURE(cfg)                                            \
    do {                                                              \
        (cfg).weight_decay = 5e-4;                                    \
        if ((cfg).method == KOALA_VANILLA) (cfg).sigma = 0.1;         \
        else (cfg).qw = 0.02;                                         \
    } while (0)

#endif
