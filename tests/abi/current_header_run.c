/*
 * current_header_run.c - the half of test_abi_1_0 that is built against
 * TODAY's koala.h: the same training run as the 1.0-header half
 * (abi_problem.h), whose results that half compares with its own. Only
 * plain C types cross between the two translation units.
 */
#include <koala.h>
#include <string.h>

#include "abi_problem.h"

/* Runs ABI_STEPS steps of (method, dtype) with a config from
 * koala_config_init (today's struct size and defaults). Writes the
 * parameters (abi_elements() doubles) and the info fields 1.0 had:
 * steps, skipped_steps, sigma, p00, p01, p11, r, qw (8 doubles).
 * Returns KOALA_OK or the first failing status. */
int abi_current_run(int method, int dtype, double *params_out, double *info_out) {
    koala_config cfg;
    koala_optimizer *opt = NULL;
    abi_tensors s;
    koala_info info;
    koala_status st;
    koala_config_init(&cfg, (koala_method)method);
    if (cfg.struct_size != sizeof cfg) return KOALA_ERROR_INVALID_ARGUMENT;
    ABI_CONFIGURE(cfg);
    st = koala_create(&cfg, ABI_TENSORS, abi_sizes, (koala_dtype)dtype, KOALA_HOST, &opt);
    if (st != KOALA_OK) return st;
    abi_tensors_init(&s, (koala_dtype)dtype);
    st = abi_train(opt, &s, 0, ABI_STEPS, NULL);
    if (st == KOALA_OK) {
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        st = koala_get_info(opt, NULL, &info);
    }
    if (st == KOALA_OK) {
        abi_flatten(&s, params_out);
        info_out[0] = (double)info.steps;
        info_out[1] = (double)info.skipped_steps;
        info_out[2] = info.sigma;
        info_out[3] = info.p00;
        info_out[4] = info.p01;
        info_out[5] = info.p11;
        info_out[6] = info.r;
        info_out[7] = info.qw;
    }
    koala_destroy(opt);
    return st;
}
