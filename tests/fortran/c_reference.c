/*
 * c_reference.c - the C side of the Fortran tests.
 *
 * The Fortran test links this file and asks it two things:
 *  - the true C layout of koala_config / koala_info (sizeof, offsetof), to
 *    compare with the bind(C) derived types of `module koala`;
 *  - koala.h's size macros (KOALA_CONFIG_SIZE_1_0, ...);
 *  - the result of running the same steps through the C ABI directly, to
 *    compare with the run through the Fortran wrappers (which must be
 *    identical bit for bit: the binding does no arithmetic).
 */
#include <stddef.h>
#include <string.h>

#include "koala.h"

size_t ref_config_layout(size_t offsets[20]) {
    size_t k = 0;
    offsets[k++] = offsetof(koala_config, struct_size);
    offsets[k++] = offsetof(koala_config, method);
    offsets[k++] = offsetof(koala_config, lr);
    offsets[k++] = offsetof(koala_config, weight_decay);
    offsets[k++] = offsetof(koala_config, r);
    offsets[k++] = offsetof(koala_config, alpha_r);
    offsets[k++] = offsetof(koala_config, sigma);
    offsets[k++] = offsetof(koala_config, q);
    offsets[k++] = offsetof(koala_config, sw);
    offsets[k++] = offsetof(koala_config, sc);
    offsets[k++] = offsetof(koala_config, sv);
    offsets[k++] = offsetof(koala_config, a);
    offsets[k++] = offsetof(koala_config, qw);
    offsets[k++] = offsetof(koala_config, qv);
    offsets[k++] = offsetof(koala_config, threads);
    offsets[k++] = offsetof(koala_config, stochastic_rounding);
    offsets[k++] = offsetof(koala_config, seed);
    offsets[k++] = offsetof(koala_config, asymmetric);
    offsets[k++] = offsetof(koala_config, fused_predict);
    offsets[k++] = offsetof(koala_config, caller_state);
    return sizeof(koala_config);
}

size_t ref_info_layout(size_t offsets[12]) {
    size_t k = 0;
    offsets[k++] = offsetof(koala_info, struct_size);
    offsets[k++] = offsetof(koala_info, steps);
    offsets[k++] = offsetof(koala_info, skipped_steps);
    offsets[k++] = offsetof(koala_info, sigma);
    offsets[k++] = offsetof(koala_info, p00);
    offsets[k++] = offsetof(koala_info, p01);
    offsets[k++] = offsetof(koala_info, p11);
    offsets[k++] = offsetof(koala_info, r);
    offsets[k++] = offsetof(koala_info, qw);
    offsets[k++] = offsetof(koala_info, lr);
    offsets[k++] = offsetof(koala_info, threads);
    offsets[k++] = offsetof(koala_info, phase);
    return sizeof(koala_info);
}

size_t ref_shard_layout(size_t offsets[6]) {
    size_t k = 0;
    offsets[k++] = offsetof(koala_shard, struct_size);
    offsets[k++] = offsetof(koala_shard, n_global);
    offsets[k++] = offsetof(koala_shard, global_index);
    offsets[k++] = offsetof(koala_shard, global_elements);
    offsets[k++] = offsetof(koala_shard, allreduce);
    offsets[k++] = offsetof(koala_shard, user);
    return sizeof(koala_shard);
}

/* koala.h's 1.0 sizes and the lr slot of the caller-owned scalars. */
void ref_constants(size_t out[3]) {
    out[0] = KOALA_CONFIG_SIZE_1_0;
    out[1] = KOALA_INFO_SIZE_1_0;
    out[2] = KOALA_SCALAR_LR_SCALE;
}

/* Runs `steps` predict/update iterations of a default-config optimizer
 * (koala_config_init, the header's macro: the whole 1.1 struct) of
 * `method` over two float32 tensors x1[n1], x2[n2] (updated in place), with
 * the gradients of step k at g1[k*n1..], g2[k*n2..] and the losses at
 * loss[k], loss_var[k]. Fills *info. Returns the first non-OK status. */
int ref_run_f32(int method, int steps, size_t n1, size_t n2, float *x1, float *x2,
                const float *g1, const float *g2, const double *loss, const double *loss_var,
                koala_info *info) {
    koala_config cfg;
    koala_config_init(&cfg, (koala_method)method);
    size_t sizes[2] = {n1, n2};
    koala_optimizer *opt = NULL;
    koala_status st = koala_create(&cfg, 2, sizes, KOALA_FLOAT32, KOALA_HOST, &opt);
    if (st != KOALA_OK) return (int)st;
    void *params[2] = {x1, x2};
    for (int k = 0; k < steps && st == KOALA_OK; ++k) {
        const void *grads[2] = {g1 + (size_t)k * n1, g2 + (size_t)k * n2};
        st = koala_predict(opt, params, NULL);
        if (st == KOALA_OK) st = koala_update(opt, loss[k], loss_var[k], params, grads, NULL);
    }
    if (st == KOALA_OK) {
        memset(info, 0, sizeof *info);
        info->struct_size = sizeof *info;
        st = koala_get_info(opt, NULL, info);
    }
    koala_destroy(opt);
    return (int)st;
}
