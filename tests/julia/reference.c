/*
 * reference.c - prints what the C ABI computes, for the Julia tests.
 *
 *   koala_julia_reference layout
 *       sizeof and field offsets of koala_config and koala_info
 *   koala_julia_reference run METHOD DTYPE STEPS
 *       METHOD vanilla|momentum|plusplus, DTYPE f32|f64: runs STEPS default-config
 *       predict/update iterations through the C ABI on the inputs below and
 *       prints the parameters ("param T V1 V2 ...") and the info scalars.
 *
 * The inputs are exactly representable (multiples of 1/64, 1/(k+1)
 * computed in double) so that runtests.jl builds the very same arrays.
 * Numbers are printed with enough digits to round-trip exactly.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "koala.h"

#define N_TENSORS 3
static const size_t sizes[N_TENSORS] = {5, 3, 4};

/* Keep in step with runtests.jl: reference_inputs. */
static double param0(size_t t, size_t i) { return ((double)((i * 5 + t * 3) % 9) - 4.0) / 8.0; }
static double grad(size_t k, size_t t, size_t i) {
    return ((double)((i * 7 + t * 2 + k * 3) % 11) - 5.0) / 64.0;
}
static double loss_of(size_t k) { return 1.0 / (double)(k + 1); }
static double loss_var_of(size_t k) { return 1.5 / (double)((k + 1) * (k + 1)); }

static int layout(void) {
    printf("config %zu", sizeof(koala_config));
    printf(" %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu",
           offsetof(koala_config, struct_size), offsetof(koala_config, method),
           offsetof(koala_config, lr), offsetof(koala_config, weight_decay),
           offsetof(koala_config, r), offsetof(koala_config, alpha_r),
           offsetof(koala_config, sigma), offsetof(koala_config, q), offsetof(koala_config, sw),
           offsetof(koala_config, sc), offsetof(koala_config, sv), offsetof(koala_config, a),
           offsetof(koala_config, qw), offsetof(koala_config, qv));
    printf(" %zu %zu %zu %zu %zu %zu\n", /* since 1.1 */
           offsetof(koala_config, threads), offsetof(koala_config, stochastic_rounding),
           offsetof(koala_config, seed), offsetof(koala_config, asymmetric),
           offsetof(koala_config, fused_predict), offsetof(koala_config, caller_state));
    printf("info %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu", sizeof(koala_info),
           offsetof(koala_info, struct_size), offsetof(koala_info, steps),
           offsetof(koala_info, skipped_steps), offsetof(koala_info, sigma),
           offsetof(koala_info, p00), offsetof(koala_info, p01), offsetof(koala_info, p11),
           offsetof(koala_info, r), offsetof(koala_info, qw));
    printf(" %zu %zu %zu\n", /* since 1.1 */
           offsetof(koala_info, lr), offsetof(koala_info, threads), offsetof(koala_info, phase));
    return 0;
}

static int fail(const char *what, koala_status st) {
    fprintf(stderr, "%s: %s\n", what, koala_last_error());
    return (int)st;
}

static int run(koala_method method, int f64, size_t steps) {
    koala_config cfg;
    koala_config_init(&cfg, method);
    koala_optimizer *opt = NULL;
    koala_status st = koala_create(&cfg, N_TENSORS, sizes, f64 ? KOALA_FLOAT64 : KOALA_FLOAT32,
                                   KOALA_HOST, &opt);
    if (st != KOALA_OK) return fail("koala_create", st);

    size_t esize = f64 ? sizeof(double) : sizeof(float);
    void *params[N_TENSORS];
    void *grads[N_TENSORS];
    for (size_t t = 0; t < N_TENSORS; ++t) {
        params[t] = malloc(sizes[t] * esize);
        grads[t] = malloc(sizes[t] * esize);
        for (size_t i = 0; i < sizes[t]; ++i) {
            if (f64) ((double *)params[t])[i] = param0(t, i);
            else ((float *)params[t])[i] = (float)param0(t, i);
        }
    }
    for (size_t k = 0; k < steps; ++k) {
        for (size_t t = 0; t < N_TENSORS; ++t)
            for (size_t i = 0; i < sizes[t]; ++i) {
                if (f64) ((double *)grads[t])[i] = grad(k, t, i);
                else ((float *)grads[t])[i] = (float)grad(k, t, i);
            }
        st = koala_predict(opt, params, NULL);
        if (st != KOALA_OK) return fail("koala_predict", st);
        st = koala_update(opt, loss_of(k), loss_var_of(k), params, (const void *const *)grads, NULL);
        if (st != KOALA_OK) return fail("koala_update", st);
    }
    for (size_t t = 0; t < N_TENSORS; ++t) {
        printf("param %zu", t + 1);
        for (size_t i = 0; i < sizes[t]; ++i) {
            if (f64) printf(" %.17g", ((double *)params[t])[i]);
            else printf(" %.9g", (double)((float *)params[t])[i]);
        }
        printf("\n");
        free(params[t]);
        free(grads[t]);
    }
    koala_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    st = koala_get_info(opt, NULL, &info);
    if (st != KOALA_OK) return fail("koala_get_info", st);
    printf("info %llu %.17g %.17g %.17g %.17g %.17g %.17g\n", (unsigned long long)info.steps,
           info.sigma, info.p00, info.p01, info.p11, info.r, info.qw);
    koala_destroy(opt);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "layout") == 0) return layout();
    if (argc == 5 && strcmp(argv[1], "run") == 0) {
        koala_method method = strcmp(argv[2], "momentum") == 0   ? KOALA_MOMENTUM
                              : strcmp(argv[2], "plusplus") == 0 ? KOALA_PLUSPLUS
                                                                 : KOALA_VANILLA;
        return run(method, strcmp(argv[3], "f64") == 0, (size_t)atoi(argv[4]));
    }
    fprintf(stderr, "usage: %s layout | run vanilla|momentum|plusplus f32|f64 STEPS\n", argv[0]);
    return 2;
}
