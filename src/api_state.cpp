// The ABI boundary of everything around the step: inspection, hyper-
// parameters, checkpoints, caller-owned state, the posterior view and the
// diagnostics.
#include <cmath>
#include <cstring>

#include "api_checks.h"
#include "checkpoint.h"
#include "config.h"
#include "cpu_path.h"
#include "method_momentum.h"
#include "numeric.h"
#include "state.h"

using namespace koala;

namespace {

constexpr const char *kStatusNames[] = {
    "KOALA_OK: success",
    "KOALA_ERROR_INVALID_ARGUMENT: an argument is NULL, out of range or inconsistent",
    "KOALA_ERROR_OUT_OF_MEMORY: an allocation failed",
    "KOALA_ERROR_NOT_FINITE: the loss or a gradient norm is not finite",
    "KOALA_ERROR_UNSUPPORTED: not supported by this build or machine",
    "KOALA_ERROR_CUDA: a CUDA runtime call failed",
    "KOALA_ERROR_BAD_STATE: bad checkpoint, or predict/update called out of order",
    "KOALA_ERROR_COMMUNICATION: the all-reduce callback failed",
};

// The common head of the entries that take (opt, stream).
koala_status check_opt_stream(const koala_optimizer *opt, void *stream, const char *what) {
    koala_status st = check_handle(opt, what);
    if (st == KOALA_OK) st = check_stream(opt, stream, what);
    return st;
}

// Per-tensor values: n finite values >= 0.
koala_status check_tensor_values(const double *v, size_t n, const char *name, const char *what) {
    for (size_t j = 0; j < n; ++j)
        if (!std::isfinite(v[j]) || v[j] < 0)
            return fail(KOALA_ERROR_INVALID_ARGUMENT,
                        "%s: %s[%zu] is %g; it must be finite and >= 0", what, name, j, v[j]);
    return KOALA_OK;
}

koala_status check_caller_state(const koala_optimizer *opt, const char *what) {
    if (!opt->cfg.caller_state)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: this optimizer owns its state (create it with cfg.caller_state = 1 to "
                    "pass your own)",
                    what);
    return KOALA_OK;
}

koala_status check_state_pointers(const koala_optimizer *opt, void *const *buffers,
                                  const double *scalars, const char *what) {
    if (!scalars) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: scalars is NULL", what);
    const size_t n = buffers_per_tensor(opt->cfg.method) * opt->layout.n_tensors();
    if (n == 0) return KOALA_OK;
    if (!buffers) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: buffers is NULL", what);
    for (size_t k = 0; k < n; ++k)
        if (!buffers[k])
            return fail(KOALA_ERROR_INVALID_ARGUMENT,
                        "%s: buffers[%zu] (buffer %zu of tensor %zu) is NULL", what, k,
                        k / opt->layout.n_tensors(), k % opt->layout.n_tensors());
    return KOALA_OK;
}

std::vector<double> initial_scalars(const koala_optimizer *opt) {
    std::vector<double> s(scalar_count(opt), 0.0);
    *reinterpret_cast<ScalarHeader *>(s.data()) = initial_header(opt->cfg);
    return s;
}

}  // namespace

extern "C" {

KOALA_API koala_status koala_get_info(const koala_optimizer *opt, void *stream, koala_info *out) {
    const char *what = "koala_get_info";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_opt_stream(opt, stream, what);
        if (st != KOALA_OK) return st;
        if (!out) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: out is NULL", what);
        if (out->struct_size < KOALA_INFO_SIZE_1_0 || out->struct_size > kMaxStructSize)
            return fail(KOALA_ERROR_INVALID_ARGUMENT,
                        "%s: out->struct_size is %zu; set it to sizeof(koala_info) (%zu in "
                        "this libkoala, %zu in 1.0)",
                        what, out->struct_size, sizeof(koala_info),
                        static_cast<size_t>(KOALA_INFO_SIZE_1_0));
        st = check_bound(opt, what);
        if (st != KOALA_OK) return st;
        std::vector<double> scalars;
        st = read_scalars(opt, stream, scalars);
        if (st != KOALA_OK) return st;
        const ScalarHeader &h = *reinterpret_cast<const ScalarHeader *>(scalars.data());
        koala_info info{};
        info.struct_size = out->struct_size;
        info.steps = static_cast<uint64_t>(h.steps);
        info.skipped_steps = static_cast<uint64_t>(h.skipped_steps);
        info.sigma = h.sigma;
        info.p00 = h.p00;
        info.p01 = h.p01;
        info.p11 = h.p11;
        info.r = h.r;
        info.qw = h.qw;
        info.lr = opt->cfg.lr;
        info.threads = opt->memory == KOALA_HOST ? opt->threads : 0;
        info.phase = static_cast<int>(h.phase);
        // What fits in the caller's struct; a larger one keeps its tail.
        std::memcpy(out, &info, out->struct_size < sizeof info ? out->struct_size : sizeof info);
        return KOALA_OK;
    });
}

KOALA_API koala_status koala_set_lr(koala_optimizer *opt, double lr) {
    const char *what = "koala_set_lr";
    koala_status st = check_handle(opt, what);
    if (st != KOALA_OK) return st;
    if (!std::isfinite(lr) || lr < 0)
        return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: lr is %g; it must be finite and >= 0",
                    what, lr);
    opt->cfg.lr = lr;
    return KOALA_OK;
}

KOALA_API koala_status koala_set_tensor_lr(koala_optimizer *opt, const double *scale,
                                           void *stream) {
    const char *what = "koala_set_tensor_lr";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_opt_stream(opt, stream, what);
        if (st == KOALA_OK && scale)
            st = check_tensor_values(scale, opt->layout.n_global, "scale", what);
        if (st != KOALA_OK) return st;
        std::vector<double> previous = std::move(opt->tensor_lr);
        opt->tensor_lr = scale ? std::vector<double>(scale, scale + opt->layout.n_global)
                               : std::vector<double>();
        st = push_tensor_hyper(opt, opt->tensor_lr, opt->tensor_wd, stream);
        if (st != KOALA_OK) opt->tensor_lr = std::move(previous);
        return st;
    });
}

KOALA_API koala_status koala_set_tensor_weight_decay(koala_optimizer *opt,
                                                     const double *weight_decay, void *stream) {
    const char *what = "koala_set_tensor_weight_decay";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_opt_stream(opt, stream, what);
        if (st == KOALA_OK && weight_decay)
            st = check_tensor_values(weight_decay, opt->layout.n_global, "weight_decay", what);
        if (st != KOALA_OK) return st;
        std::vector<double> previous = std::move(opt->tensor_wd);
        opt->tensor_wd = weight_decay
                             ? std::vector<double>(weight_decay, weight_decay + opt->layout.n_global)
                             : std::vector<double>();
        st = push_tensor_hyper(opt, opt->tensor_lr, opt->tensor_wd, stream);
        if (st != KOALA_OK) {
            opt->tensor_wd = std::move(previous);
            return st;
        }
        opt->plan.tensor_wd = opt->tensor_wd.empty()
                                  ? std::vector<double>(opt->layout.n_global, opt->cfg.weight_decay)
                                  : opt->tensor_wd;
        return KOALA_OK;
    });
}

KOALA_API koala_status koala_state_size(const koala_optimizer *opt, size_t *bytes) {
    const char *what = "koala_state_size";
    koala_status st = check_handle(opt, what);
    if (st != KOALA_OK) return st;
    if (!bytes) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: bytes is NULL", what);
    *bytes = checkpoint_size(opt);
    return KOALA_OK;
}

KOALA_API koala_status koala_state_save(const koala_optimizer *opt, void *buf, size_t size,
                                        void *stream) {
    const char *what = "koala_state_save";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_opt_stream(opt, stream, what);
        if (st != KOALA_OK) return st;
        if (!buf) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: buf is NULL", what);
        st = check_bound(opt, what);
        if (st != KOALA_OK) return st;
        return checkpoint_save(opt, buf, size, stream);
    });
}

KOALA_API koala_status koala_state_load(koala_optimizer *opt, const void *buf, size_t size,
                                        void *stream) {
    const char *what = "koala_state_load";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_opt_stream(opt, stream, what);
        if (st != KOALA_OK) return st;
        if (!buf) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: buf is NULL", what);
        st = check_bound(opt, what);
        if (st != KOALA_OK) return st;
        return checkpoint_load(opt, buf, size, stream);
    });
}

KOALA_API koala_status koala_state_layout(const koala_optimizer *opt, size_t *buffers_per_tensor,
                                          koala_dtype *state_dtype, size_t *scalar_count) {
    const char *what = "koala_state_layout";
    koala_status st = check_handle(opt, what);
    if (st != KOALA_OK) return st;
    if (buffers_per_tensor) *buffers_per_tensor = koala::buffers_per_tensor(opt->cfg.method);
    if (state_dtype) *state_dtype = koala::state_dtype(opt->dtype);
    if (scalar_count) *scalar_count = koala::scalar_count(opt);
    return KOALA_OK;
}

KOALA_API koala_status koala_state_init(koala_optimizer *opt, void *const *buffers,
                                        double *scalars, void *stream) {
    const char *what = "koala_state_init";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_opt_stream(opt, stream, what);
        if (st == KOALA_OK) st = check_caller_state(opt, what);
        if (st == KOALA_OK) st = check_state_pointers(opt, buffers, scalars, what);
        if (st != KOALA_OK) return st;
        const std::vector<double> initial = initial_scalars(opt);
        if (opt->device) {
            const koala_plugin_ops *ops = plugin(&st);
            if (!ops) return st;
            char msg[256];
            st = ops->init_state(opt->device, buffers, scalars, initial.data(), stream, msg,
                                 sizeof msg);
            if (st != KOALA_OK) return plugin_fail(st, msg);
            return KOALA_OK;
        }
        const size_t n = opt->layout.n_tensors(), elem = dtype_bytes(state_dtype(opt->dtype));
        for (size_t k = 0; k < buffers_per_tensor(opt->cfg.method) * n; ++k)
            std::memset(buffers[k], 0, opt->layout.sizes[k % n] * elem);
        std::memcpy(scalars, initial.data(), initial.size() * sizeof(double));
        return KOALA_OK;
    });
}

KOALA_API koala_status koala_bind_state(koala_optimizer *opt, void *const *buffers,
                                        double *scalars) {
    const char *what = "koala_bind_state";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_handle(opt, what);
        if (st == KOALA_OK) st = check_caller_state(opt, what);
        if (st == KOALA_OK) st = check_state_pointers(opt, buffers, scalars, what);
        if (st != KOALA_OK) return st;
        if (opt->memory == KOALA_HOST) {
            const double phase = reinterpret_cast<const ScalarHeader *>(scalars)->phase;
            if (!(phase == kUpdated || phase == kPredicted || phase == kBegun))
                return fail(KOALA_ERROR_INVALID_ARGUMENT,
                            "%s: scalars[8] (the phase) is %g: not a libkoala scalar block "
                            "(koala_state_init writes one)",
                            what, phase);
        }
        const size_t n = buffers_per_tensor(opt->cfg.method) * opt->layout.n_tensors();
        if (opt->device) {
            const koala_plugin_ops *ops = plugin(&st);
            if (!ops) return st;
            char msg[256];
            st = ops->bind_state(opt->device, buffers, scalars, msg, sizeof msg);
            if (st != KOALA_OK) return plugin_fail(st, msg);
        }
        opt->state.buffers.assign(buffers, buffers + n);
        opt->state.scalars = scalars;
        opt->bound = true;
        return KOALA_OK;
    });
}

KOALA_API koala_status koala_posterior(const koala_optimizer *opt, void *const *params,
                                       void *const *out, void *stream) {
    const char *what = "koala_posterior";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_opt_stream(opt, stream, what);
        if (st == KOALA_OK) st = check_params(opt, params, what);
        if (st == KOALA_OK && !out) st = fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: out is NULL", what);
        for (size_t i = 0; st == KOALA_OK && i < opt->layout.n_tensors(); ++i) {
            if (!out[i]) st = fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: out[%zu] is NULL", what, i);
            else if (out[i] == params[i])
                st = fail(KOALA_ERROR_INVALID_ARGUMENT,
                          "%s: out[%zu] is params[%zu]; the posterior needs its own buffer",
                          what, i, i);
        }
        if (st == KOALA_OK) st = check_bound(opt, what);
        // Fused mode too (koala.h): after its predict, the tensors the last
        // update skipped hold x + v like the others but their v is decayed
        // (flag kPlain), so x_pred - v is not their posterior.
        if (st == KOALA_OK && opt->cfg.method == KOALA_MOMENTUM &&
            phase_of(opt) != kUpdated && phase_of(opt) >= 0)
            st = fail(KOALA_ERROR_BAD_STATE,
                      "%s: between koala_predict and koala_update a KOALA-M optimizer's "
                      "parameters hold the prediction; call it after koala_update",
                      what);
        if (st != KOALA_OK) return st;
        if (opt->device) {
            const koala_plugin_ops *ops = plugin(&st);
            if (!ops) return st;
            char msg[256];
            st = ops->posterior(opt->device, &opt->cfg, params, out, stream, msg, sizeof msg);
            if (st != KOALA_OK) return plugin_fail(st, msg);
            return KOALA_OK;
        }
        host_posterior(opt, params, out);
        return KOALA_OK;
    });
}

KOALA_API const char *koala_status_string(koala_status s) {
    const int i = static_cast<int>(s);
    if (i < 0 || i >= static_cast<int>(sizeof kStatusNames / sizeof kStatusNames[0]))
        return "unknown koala_status";
    return kStatusNames[i];
}

KOALA_API const char *koala_last_error(void) { return koala::last_error(); }

KOALA_API unsigned koala_version(void) { return KOALA_VERSION_NUMBER; }

KOALA_API koala_status koala_device_probe(void) {
    return guarded("koala_device_probe", []() -> koala_status {
        koala_status st;
        const koala_plugin_ops *ops = plugin(&st);
        if (!ops) return st;
        char msg[256];
        st = ops->probe(msg, sizeof msg);
        if (st != KOALA_OK) return plugin_fail(st, msg);
        return KOALA_OK;
    });
}

}  // extern "C"
