// The ABI boundary: every exported function of koala.h except
// koala_config_init (config.cpp). Each checks its arguments, dispatches to
// the host path or the CUDA plugin, and never lets an exception out.
#include <cmath>
#include <cstring>
#include <limits>
#include <new>

#include "checkpoint.h"
#include "config.h"
#include "cpu_path.h"
#include "device.h"
#include "error.h"
#include "optimizer.h"

using koala::fail;

namespace {

constexpr const char *kStatusNames[] = {
    "KOALA_OK: success",
    "KOALA_ERROR_INVALID_ARGUMENT: an argument is NULL, out of range or inconsistent",
    "KOALA_ERROR_OUT_OF_MEMORY: an allocation failed",
    "KOALA_ERROR_NOT_FINITE: the loss or a gradient norm is not finite",
    "KOALA_ERROR_UNSUPPORTED: not supported by this build or machine",
    "KOALA_ERROR_CUDA: a CUDA runtime call failed",
    "KOALA_ERROR_BAD_STATE: bad checkpoint, or predict/update called out of order",
};

koala_status internal_error(const char *what) {
    return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: unexpected internal error", what);
}

// Runs `body`, turning any escaping C++ exception into a status.
template <class F>
koala_status guarded(const char *what, F &&body) {
    try {
        return body();
    } catch (const std::bad_alloc &) {
        return fail(KOALA_ERROR_OUT_OF_MEMORY, "%s: out of host memory", what);
    } catch (...) {
        return internal_error(what);
    }
}

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
    if (!params) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: params is NULL", what);
    for (size_t i = 0; i < opt->sizes.size(); ++i)
        if (!params[i]) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: params[%zu] is NULL", what, i);
    return KOALA_OK;
}

koala_status check_dtype(int dtype, const char *what, const char *name) {
    if (dtype != KOALA_FLOAT32 && dtype != KOALA_FLOAT64)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: %s is %d; expected KOALA_FLOAT32 (1) or KOALA_FLOAT64 (2)", what, name,
                    dtype);
    return KOALA_OK;
}

// Shared by koala_update and koala_update_ptr: everything but the loss.
koala_status check_update_args(const koala_optimizer *opt, void *const *params,
                               const void *const *grads, void *stream, const char *what) {
    koala_status st = check_handle(opt, what);
    if (st == KOALA_OK) st = check_stream(opt, stream, what);
    if (st == KOALA_OK) st = check_params(opt, params, what);
    if (st == KOALA_OK && !grads)
        st = fail(KOALA_ERROR_INVALID_ARGUMENT,
                  "%s: grads is NULL (pass an array whose entries may be NULL)", what);
    if (st == KOALA_OK && !opt->predicted)
        st = fail(KOALA_ERROR_BAD_STATE,
                  "%s: called without a koala_predict since the last update (predict before the "
                  "forward pass, update after backward)",
                  what);
    return st;
}

koala_status device_update(koala_optimizer *opt, double loss, double loss_var,
                           const void *loss_ptr, const void *loss_var_ptr, koala_dtype loss_dtype,
                           void *const *params, const void *const *grads, void *stream) {
    koala_status st;
    const koala_plugin_ops *ops = koala::device_plugin(&st);
    if (!ops) return st;
    char msg[256];
    st = ops->update(opt->device, &opt->cfg, loss, loss_var, loss_ptr, loss_var_ptr, loss_dtype,
                     params, grads, stream, msg, sizeof msg);
    if (st != KOALA_OK) return koala::plugin_fail(st, msg);
    opt->predicted = false;
    ++opt->steps;
    return KOALA_OK;
}

// loss_var is a mean of squares: a finite negative value is a caller bug
// that would drive the online R (a variance) negative, after which the
// optimizer's own checkpoint no longer loads. Non-finite values are left to
// the NOT_FINITE path.
koala_status check_loss_var(double loss_var, const char *what, const char *name) {
    if (std::isfinite(loss_var) && loss_var < 0)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: %s is %g; it is the mean of squared per-sample losses and must be >= 0",
                    what, name, loss_var);
    return KOALA_OK;
}

koala_status host_update(koala_optimizer *opt, double loss, double loss_var, void *const *params,
                         const void *const *grads, const char *what) {
    const koala_status st = koala::host_update(opt, loss, loss_var, params, grads, what);
    if (st != KOALA_OK) return st;
    opt->predicted = false;
    ++opt->steps;
    return KOALA_OK;
}

void release(koala_optimizer *opt) {
    if (opt->device) {
        koala_status st;
        if (const koala_plugin_ops *ops = koala::device_plugin(&st)) ops->destroy(opt->device);
    }
    koala::host_release(opt);
    delete opt;
}

}  // namespace

extern "C" {

KOALA_API koala_status koala_create(const koala_config *cfg, size_t n_tensors,
                                    const size_t *sizes, koala_dtype dtype, koala_memory memory,
                                    koala_optimizer **out) {
    const char *what = "koala_create";
    return guarded(what, [&]() -> koala_status {
        koala_config config;
        koala_status st = koala::read_config(cfg, what, &config);
        if (st != KOALA_OK) return st;
        if (n_tensors == 0) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: n_tensors is 0", what);
        if (!sizes) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: sizes is NULL", what);
        st = check_dtype(koala::enum_value(dtype), what, "dtype");
        if (st != KOALA_OK) return st;
        const int memory_value = koala::enum_value(memory);
        if (memory_value != KOALA_HOST && memory_value != KOALA_DEVICE)
            return fail(KOALA_ERROR_INVALID_ARGUMENT,
                        "%s: memory is %d; expected KOALA_HOST (1) or KOALA_DEVICE (2)", what,
                        memory_value);
        if (!out) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: out is NULL", what);
        const size_t elem = koala::dtype_size(dtype);
        // Every byte count (per tensor, all tensors, times the state buffers
        // and the checkpoint's) must fit in size_t and ptrdiff_t.
        const size_t limit = static_cast<size_t>(std::numeric_limits<std::ptrdiff_t>::max()) / 4 /
                             elem;
        if (n_tensors > limit / 8)
            return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: n_tensors (%zu) is too large", what,
                        n_tensors);
        size_t total = 0;
        for (size_t i = 0; i < n_tensors; ++i) {
            if (sizes[i] == 0)
                return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: sizes[%zu] is 0", what, i);
            if (sizes[i] > limit || total > limit - sizes[i])
                return fail(KOALA_ERROR_INVALID_ARGUMENT,
                            "%s: sizes[%zu] = %zu makes the byte size overflow", what, i,
                            sizes[i]);
            total += sizes[i];
        }

        koala_optimizer *opt = new (std::nothrow) koala_optimizer{};
        if (!opt) return fail(KOALA_ERROR_OUT_OF_MEMORY, "%s: out of host memory", what);
        opt->cfg = config;
        opt->dtype = dtype;
        opt->memory = memory;
        opt->total_elements = total;
        opt->steps = 0;
        opt->predicted = false;
        opt->filter = koala::initial_state(config);
        opt->device = nullptr;
        try {
            opt->sizes.assign(sizes, sizes + n_tensors);
        } catch (...) {
            delete opt;
            return fail(KOALA_ERROR_OUT_OF_MEMORY, "%s: out of host memory", what);
        }
        if (memory == KOALA_HOST) {
            st = koala::host_init(opt);
        } else {
            const koala_plugin_ops *ops = koala::device_plugin(&st);
            if (ops) {
                char msg[256];
                st = ops->create(&opt->cfg, n_tensors, sizes, dtype, &opt->filter, &opt->device,
                                 msg, sizeof msg);
                if (st != KOALA_OK) koala::plugin_fail(st, msg);
            }
        }
        if (st != KOALA_OK) {
            release(opt);
            return st;
        }
        *out = opt;
        return KOALA_OK;
    });
}

KOALA_API void koala_destroy(koala_optimizer *opt) {
    if (!opt) return;
    try {
        release(opt);
    } catch (...) {
    }
}

KOALA_API koala_status koala_predict(koala_optimizer *opt, void *const *params, void *stream) {
    const char *what = "koala_predict";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_handle(opt, what);
        if (st == KOALA_OK) st = check_stream(opt, stream, what);
        // KOALA-V does not touch the parameters: params may be NULL.
        if (st == KOALA_OK && opt->cfg.method == KOALA_MOMENTUM)
            st = check_params(opt, params, what);
        if (st == KOALA_OK && opt->predicted)
            st = fail(KOALA_ERROR_BAD_STATE,
                      "%s: called twice without koala_update in between", what);
        if (st != KOALA_OK) return st;
        if (opt->device) {
            const koala_plugin_ops *ops = koala::device_plugin(&st);
            if (!ops) return st;
            char msg[256];
            st = ops->predict(opt->device, &opt->cfg, params, stream, msg, sizeof msg);
            if (st != KOALA_OK) return koala::plugin_fail(st, msg);
        } else {
            koala::host_predict(opt, params);
        }
        opt->predicted = true;
        return KOALA_OK;
    });
}

KOALA_API koala_status koala_update(koala_optimizer *opt, double loss, double loss_var,
                                    void *const *params, const void *const *grads, void *stream) {
    const char *what = "koala_update";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_update_args(opt, params, grads, stream, what);
        if (st == KOALA_OK) st = check_loss_var(loss_var, what, "loss_var");
        if (st != KOALA_OK) return st;
        if (opt->device)
            return device_update(opt, loss, loss_var, nullptr, nullptr, KOALA_FLOAT64, params,
                                 grads, stream);
        return host_update(opt, loss, loss_var, params, grads, what);
    });
}

KOALA_API koala_status koala_update_ptr(koala_optimizer *opt, const void *loss,
                                        const void *loss_var, koala_dtype loss_dtype,
                                        void *const *params, const void *const *grads,
                                        void *stream) {
    const char *what = "koala_update_ptr";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_update_args(opt, params, grads, stream, what);
        if (st != KOALA_OK) return st;
        if (!loss) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: loss is NULL", what);
        if (!loss_var) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: loss_var is NULL", what);
        st = check_dtype(koala::enum_value(loss_dtype), what, "loss_dtype");
        if (st != KOALA_OK) return st;
        if (opt->device)
            return device_update(opt, 0.0, 0.0, loss, loss_var, loss_dtype, params, grads, stream);
        double l, v;
        if (loss_dtype == KOALA_FLOAT32) {
            l = *static_cast<const float *>(loss);
            v = *static_cast<const float *>(loss_var);
        } else {
            l = *static_cast<const double *>(loss);
            v = *static_cast<const double *>(loss_var);
        }
        st = check_loss_var(v, what, "*loss_var");
        if (st != KOALA_OK) return st;
        return host_update(opt, l, v, params, grads, what);
    });
}

KOALA_API koala_status koala_get_info(const koala_optimizer *opt, void *stream, koala_info *out) {
    const char *what = "koala_get_info";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_handle(opt, what);
        if (st == KOALA_OK) st = check_stream(opt, stream, what);
        if (st != KOALA_OK) return st;
        if (!out) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: out is NULL", what);
        if (out->struct_size < sizeof(koala_info))
            return fail(KOALA_ERROR_INVALID_ARGUMENT,
                        "%s: out->struct_size is %zu; set it to sizeof(koala_info) = %zu", what,
                        out->struct_size, sizeof(koala_info));
        koala::FilterState f = opt->filter;
        if (opt->device) {
            const koala_plugin_ops *ops = koala::device_plugin(&st);
            if (!ops) return st;
            char msg[256];
            st = ops->get_filter(opt->device, stream, &f, msg, sizeof msg);
            if (st != KOALA_OK) return koala::plugin_fail(st, msg);
        }
        koala_info info{};
        info.struct_size = sizeof info;
        info.steps = opt->steps;
        info.skipped_steps = f.skipped_steps;
        info.sigma = f.sigma;
        info.p00 = f.p00;
        info.p01 = f.p01;
        info.p11 = f.p11;
        info.r = f.r;
        info.qw = f.qw;
        std::memcpy(out, &info, sizeof info);  // a larger caller struct keeps its tail
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

KOALA_API koala_status koala_state_size(const koala_optimizer *opt, size_t *bytes) {
    const char *what = "koala_state_size";
    koala_status st = check_handle(opt, what);
    if (st != KOALA_OK) return st;
    if (!bytes) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: bytes is NULL", what);
    *bytes = koala::checkpoint_size(opt);
    return KOALA_OK;
}

KOALA_API koala_status koala_state_save(const koala_optimizer *opt, void *buf, size_t size,
                                        void *stream) {
    const char *what = "koala_state_save";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_handle(opt, what);
        if (st == KOALA_OK) st = check_stream(opt, stream, what);
        if (st != KOALA_OK) return st;
        if (!buf) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: buf is NULL", what);
        return koala::checkpoint_save(opt, buf, size, stream);
    });
}

KOALA_API koala_status koala_state_load(koala_optimizer *opt, const void *buf, size_t size,
                                        void *stream) {
    const char *what = "koala_state_load";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_handle(opt, what);
        if (st == KOALA_OK) st = check_stream(opt, stream, what);
        if (st != KOALA_OK) return st;
        if (!buf) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: buf is NULL", what);
        return koala::checkpoint_load(opt, buf, size, stream);
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
        const koala_plugin_ops *ops = koala::device_plugin(&st);
        if (!ops) return st;
        char msg[256];
        st = ops->probe(msg, sizeof msg);
        if (st != KOALA_OK) return koala::plugin_fail(st, msg);
        return KOALA_OK;
    });
}

}  // extern "C"
