#include "api_checks.h"

#include <cmath>

namespace koala {

koala_status check_handle(const koala_optimizer *opt, const char *what) {
    if (!opt) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: opt is NULL", what);
    return KOALA_OK;
}

koala_status check_stream(const koala_optimizer *opt, void *stream, const char *what) {
    if (opt->memory == KOALA_HOST && stream)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: stream must be NULL for a host-memory optimizer", what);
    return KOALA_OK;
}

koala_status check_params(const koala_optimizer *opt, void *const *params, const char *what) {
    const size_t n = opt->layout.n_tensors();
    if (!params && n > 0) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: params is NULL", what);
    for (size_t i = 0; i < n; ++i)
        if (!params[i]) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: params[%zu] is NULL", what, i);
    return KOALA_OK;
}

koala_status check_grads(const koala_optimizer *opt, const void *const *grads, const char *what) {
    if (!grads && opt->layout.n_tensors() > 0)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: grads is NULL (pass an array whose entries may be NULL)", what);
    return KOALA_OK;
}

koala_status check_loss_dtype(int dtype, const char *what, const char *name) {
    if (dtype != KOALA_FLOAT32 && dtype != KOALA_FLOAT64)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: %s is %d; expected KOALA_FLOAT32 (1) or KOALA_FLOAT64 (2)", what, name,
                    dtype);
    return KOALA_OK;
}

koala_status check_loss_var(double loss_var, const char *what, const char *name) {
    if (std::isfinite(loss_var) && loss_var < 0)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: %s is %g; it is the mean of squared per-sample losses and must be >= 0",
                    what, name, loss_var);
    return KOALA_OK;
}

koala_status check_bound(const koala_optimizer *opt, const char *what) {
    if (opt->cfg.caller_state && !opt->bound)
        return fail(KOALA_ERROR_BAD_STATE,
                    "%s: this optimizer has caller-owned state (cfg.caller_state) and none is "
                    "bound; call koala_bind_state first",
                    what);
    return KOALA_OK;
}

int phase_of(const koala_optimizer *opt) {
    if (opt->memory == KOALA_HOST) return static_cast<int>(header(opt).phase);
    if (!opt->cfg.caller_state) return opt->device_phase;
    return -1;  // in the caller's device memory
}

void set_phase(koala_optimizer *opt, int phase) {
    if (opt->memory == KOALA_HOST)
        header(opt).phase = phase;
    else
        opt->device_phase = phase;
}

koala_status check_phase(const koala_optimizer *opt, unsigned allowed, const char *what) {
    const int phase = phase_of(opt);
    if (phase < 0 || (allowed & (1u << phase))) return KOALA_OK;
    if (allowed == (1u << kUpdated))
        return fail(KOALA_ERROR_BAD_STATE, "%s: called twice without koala_update in between",
                    what);
    if (phase == kUpdated)
        return fail(KOALA_ERROR_BAD_STATE,
                    "%s: called without a koala_predict since the last update (predict before "
                    "the forward pass, update after backward)",
                    what);
    return fail(KOALA_ERROR_BAD_STATE,
                "%s: called without koala_update_begin since the last predict (phase 2 needs "
                "phase 1's sums)",
                what);
}

}  // namespace koala
