// The ABI boundary of the step: creating and destroying optimizers, predict,
// update in one call or two phases. Each entry checks its arguments,
// dispatches to the host path or the CUDA plugin, and never lets an
// exception out (api_checks.h).
#include "api_checks.h"
#include "config.h"
#include "cpu_path.h"
#include "numeric.h"
#include "sums.h"
#include "thread_pool.h"

using namespace koala;

namespace {

void release(koala_optimizer *opt) {
    if (opt->device) {
        koala_status st;
        if (const koala_plugin_ops *ops = plugin(&st)) ops->destroy(opt->device);
    }
    host_release(opt);
    delete opt;
}

// koala_create (sharded = false, shard = nullptr) and koala_create_sharded.
// dtype and memory come as ints: a C caller may pass any int, and copying an
// out-of-range value as the C++ enum type is undefined (enum_value, config.h).
koala_status create(const koala_config *cfg, size_t n_tensors, const size_t *sizes,
                    bool sharded, const koala_shard *shard, int dtype_value,
                    int memory_value, koala_optimizer **out, const char *what) {
    koala_config config;
    koala_status st = read_config(cfg, what, &config);
    if (st != KOALA_OK) return st;
    if (dtype_bytes(dtype_value) == 0)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: dtype is %d; expected KOALA_FLOAT32 (1), KOALA_FLOAT64 (2), "
                    "KOALA_BFLOAT16 (3) or KOALA_FLOAT16 (4)",
                    what, dtype_value);
    if (memory_value != KOALA_HOST && memory_value != KOALA_DEVICE)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: memory is %d; expected KOALA_HOST (1) or KOALA_DEVICE (2)", what,
                    memory_value);
    if (sharded && !shard) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: shard is NULL", what);
    Layout layout;
    st = read_layout(n_tensors, sizes, shard, dtype_value, what, &layout);
    if (st != KOALA_OK) return st;
    if (!out) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: out is NULL", what);

    koala_optimizer *opt = new (std::nothrow) koala_optimizer{};
    if (!opt) return fail(KOALA_ERROR_OUT_OF_MEMORY, "%s: out of host memory", what);
    opt->cfg = config;
    const koala_dtype dtype = static_cast<koala_dtype>(dtype_value);
    const koala_memory memory = static_cast<koala_memory>(memory_value);
    opt->dtype = dtype;
    opt->memory = memory;
    opt->layout = std::move(layout);
    opt->threads = config.threads > 0 ? config.threads : default_threads();
    opt->bound = false;
    opt->device = nullptr;
    opt->device_phase = kUpdated;
    opt->plan.tensor_wd.assign(opt->layout.n_global, config.weight_decay);
    if (memory == KOALA_HOST) {
        st = host_init(opt);
    } else if (const koala_plugin_ops *ops = plugin(&st)) {
        koala_plugin_layout pl{};
        pl.cfg = opt->cfg;
        pl.dtype = dtype;
        pl.n_tensors = opt->layout.n_tensors();
        pl.sizes = opt->layout.sizes.data();
        pl.global_index = opt->layout.global_index.data();
        pl.n_global = opt->layout.n_global;
        pl.global_elements = opt->layout.global_elements;
        pl.sharded = opt->layout.sharded ? 1 : 0;
        std::vector<double> initial(scalar_count(opt), 0.0);
        *reinterpret_cast<ScalarHeader *>(initial.data()) = initial_header(opt->cfg);
        char msg[256];
        st = ops->create(&pl, initial.data(), initial.size(), &opt->device, msg, sizeof msg);
        if (st != KOALA_OK) plugin_fail(st, msg);
    }
    if (st != KOALA_OK) {
        release(opt);
        return st;
    }
    *out = opt;
    return KOALA_OK;
}

// Everything the update entries check before the loss: handle, stream,
// arrays, bound state, phase (`allowed`).
koala_status check_step(const koala_optimizer *opt, void *const *params,
                        const void *const *grads, void *stream, unsigned allowed,
                        const char *what) {
    koala_status st = check_handle(opt, what);
    if (st == KOALA_OK) st = check_stream(opt, stream, what);
    if (st == KOALA_OK) st = check_params(opt, params, what);
    if (st == KOALA_OK) st = check_grads(opt, grads, what);
    if (st == KOALA_OK) st = check_bound(opt, what);
    if (st == KOALA_OK) st = check_phase(opt, allowed, what);
    return st;
}

constexpr unsigned kAfterPredict = (1u << kPredicted) | (1u << kBegun);

// Reads a host loss pair of loss_dtype (koala_update_ptr on host memory).
void read_host_loss(const void *loss, const void *loss_var, int d, double *l,
                    double *v) {
    if (d == KOALA_FLOAT32) {
        *l = *static_cast<const float *>(loss);
        *v = *static_cast<const float *>(loss_var);
    } else {
        *l = *static_cast<const double *>(loss);
        *v = *static_cast<const double *>(loss_var);
    }
}

// The loss of an update: by value, or through pointers (device memory for
// a device optimizer).
struct Loss {
    double loss, loss_var;
    const void *ptr, *var_ptr;
    int dtype;  // as an int: see create
    bool by_pointer;
};
Loss loss_values(double loss, double loss_var) {
    return Loss{loss, loss_var, nullptr, nullptr, KOALA_FLOAT64, false};
}
Loss loss_pointers(const void *loss, const void *loss_var, int dtype) {
    return Loss{0.0, 0.0, loss, loss_var, dtype, true};
}

// Checks the loss and, for host optimizers, resolves pointers to values.
koala_status resolve_loss(const koala_optimizer *opt, Loss &l, const char *what) {
    if (l.by_pointer) {
        if (!l.ptr) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: loss is NULL", what);
        if (!l.var_ptr) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: loss_var is NULL", what);
        koala_status st = check_loss_dtype(l.dtype, what, "loss_dtype");
        if (st != KOALA_OK || opt->memory == KOALA_DEVICE) return st;
        read_host_loss(l.ptr, l.var_ptr, l.dtype, &l.loss, &l.loss_var);
        l.by_pointer = false;
        l.ptr = l.var_ptr = nullptr;
        return check_loss_var(l.loss_var, what, "*loss_var");
    }
    return check_loss_var(l.loss_var, what, "loss_var");
}

koala_status device_finish(koala_optimizer *opt, const Loss &l, void *const *params,
                           const void *const *grads, const double *sums, void *stream) {
    koala_status st;
    const koala_plugin_ops *ops = plugin(&st);
    if (!ops) return st;
    const koala_plugin_loss pl{l.loss, l.loss_var, l.ptr, l.var_ptr,
                               l.dtype == KOALA_FLOAT32 ? 1 : 0};
    char msg[256];
    st = ops->finish(opt->device, &opt->cfg, &pl, params, grads, sums, stream, msg, sizeof msg);
    if (st != KOALA_OK) return plugin_fail(st, msg);
    set_phase(opt, kUpdated);
    return KOALA_OK;
}

koala_status device_partial_sums(koala_optimizer *opt, void *const *params,
                                 const void *const *grads, double *sums, void *stream) {
    koala_status st;
    const koala_plugin_ops *ops = plugin(&st);
    if (!ops) return st;
    char msg[256];
    st = ops->partial_sums(opt->device, &opt->cfg, params, grads, sums, stream, msg, sizeof msg);
    if (st != KOALA_OK) return plugin_fail(st, msg);
    return KOALA_OK;
}

koala_status call_allreduce(koala_optimizer *opt, double *sums, void *stream, const char *what) {
    const size_t count = sums_count(opt->cfg.method, opt->layout.n_global);
    const int rc = opt->layout.allreduce(sums, count, stream, opt->layout.allreduce_user);
    if (rc != 0)
        return fail(KOALA_ERROR_COMMUNICATION,
                    "%s: the all-reduce callback returned %d; nothing was changed", what, rc);
    return KOALA_OK;
}

// koala_update and koala_update_ptr: phase 1 into the library's own buffer,
// the all-reduce of a sharded optimizer, phase 2.
koala_status update(koala_optimizer *opt, Loss l, void *const *params, const void *const *grads,
                    void *stream, const char *what) {
    koala_status st = check_step(opt, params, grads, stream, kAfterPredict, what);
    if (st == KOALA_OK) st = resolve_loss(opt, l, what);
    if (st != KOALA_OK) return st;
    if (opt->layout.sharded && !opt->layout.allreduce)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: shard->allreduce is NULL; give koala_create_sharded an all-reduce "
                    "callback, or use koala_update_begin / koala_update_end",
                    what);
    if (opt->device) {
        const koala_plugin_ops *ops = plugin(&st);
        if (!ops) return st;
        if (opt->layout.sharded) {
            double *sums = ops->internal_sums(opt->device);
            st = device_partial_sums(opt, params, grads, sums, stream);
            if (st == KOALA_OK) st = call_allreduce(opt, sums, stream, what);
            if (st != KOALA_OK) return st;
            return device_finish(opt, l, params, grads, sums, stream);
        }
        return device_finish(opt, l, params, grads, nullptr, stream);
    }
    double *sums = opt->plan.sums.data();
    host_partial_sums(opt, params, grads, sums);
    if (opt->layout.sharded) {
        st = call_allreduce(opt, sums, stream, what);
        if (st != KOALA_OK) return st;
    }
    st = host_finish(opt, l.loss, l.loss_var, params, grads, sums, what);
    if (st == KOALA_OK) set_phase(opt, kUpdated);
    return st;
}

koala_status update_end(koala_optimizer *opt, Loss l, void *const *params,
                        const void *const *grads, const double *sums, void *stream,
                        const char *what) {
    koala_status st = check_step(opt, params, grads, stream, 1u << kBegun, what);
    if (st != KOALA_OK) return st;
    // The phase is kBegun from here on. koala.h: on an error nothing changes
    // and the optimizer is predicted again (the caller calls
    // koala_update_begin anew), so a failure goes back to kPredicted.
    if (!sums) st = fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: sums is NULL", what);
    if (st == KOALA_OK) st = resolve_loss(opt, l, what);
    if (st == KOALA_OK)
        st = opt->device ? device_finish(opt, l, params, grads, sums, stream)
                         : host_finish(opt, l.loss, l.loss_var, params, grads, sums, what);
    set_phase(opt, st == KOALA_OK ? kUpdated : kPredicted);
    return st;
}

}  // namespace

extern "C" {

KOALA_API koala_status koala_create(const koala_config *cfg, size_t n_tensors,
                                    const size_t *sizes, koala_dtype dtype, koala_memory memory,
                                    koala_optimizer **out) {
    const char *what = "koala_create";
    return guarded(what, [&] { return create(cfg, n_tensors, sizes, false, nullptr, enum_value(dtype),
                                         enum_value(memory), out, what); });
}

KOALA_API koala_status koala_create_sharded(const koala_config *cfg, size_t n_tensors,
                                            const size_t *sizes, const koala_shard *shard,
                                            koala_dtype dtype, koala_memory memory,
                                            koala_optimizer **out) {
    const char *what = "koala_create_sharded";
    return guarded(what, [&] { return create(cfg, n_tensors, sizes, true, shard, enum_value(dtype),
                                         enum_value(memory), out, what); });
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
        // Only KOALA-M touches the parameters: for the others params may be NULL.
        if (st == KOALA_OK && opt->cfg.method == KOALA_MOMENTUM)
            st = check_params(opt, params, what);
        if (st == KOALA_OK) st = check_bound(opt, what);
        if (st == KOALA_OK) st = check_phase(opt, 1u << kUpdated, what);
        if (st != KOALA_OK) return st;
        if (opt->device) {
            const koala_plugin_ops *ops = plugin(&st);
            if (!ops) return st;
            char msg[256];
            st = ops->predict(opt->device, &opt->cfg, params, stream, msg, sizeof msg);
            if (st != KOALA_OK) return plugin_fail(st, msg);
        } else {
            host_predict(opt, params);
        }
        set_phase(opt, kPredicted);
        return KOALA_OK;
    });
}

KOALA_API koala_status koala_update(koala_optimizer *opt, double loss, double loss_var,
                                    void *const *params, const void *const *grads, void *stream) {
    const char *what = "koala_update";
    return guarded(what, [&] {
        return update(opt, loss_values(loss, loss_var), params, grads, stream, what);
    });
}

KOALA_API koala_status koala_update_ptr(koala_optimizer *opt, const void *loss,
                                        const void *loss_var, koala_dtype loss_dtype,
                                        void *const *params, const void *const *grads,
                                        void *stream) {
    const char *what = "koala_update_ptr";
    return guarded(what, [&] {
        return update(opt, loss_pointers(loss, loss_var, enum_value(loss_dtype)), params, grads,
                      stream, what);
    });
}

KOALA_API koala_status koala_sums_size(const koala_optimizer *opt, size_t *count) {
    const char *what = "koala_sums_size";
    koala_status st = check_handle(opt, what);
    if (st != KOALA_OK) return st;
    if (!count) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: count is NULL", what);
    *count = sums_count(opt->cfg.method, opt->layout.n_global);
    return KOALA_OK;
}

KOALA_API koala_status koala_update_begin(koala_optimizer *opt, void *const *params,
                                          const void *const *grads, double *sums,
                                          void *stream) {
    const char *what = "koala_update_begin";
    return guarded(what, [&]() -> koala_status {
        koala_status st = check_step(opt, params, grads, stream, kAfterPredict, what);
        if (st == KOALA_OK && !sums)
            st = fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: sums is NULL", what);
        if (st != KOALA_OK) return st;
        if (opt->device)
            st = device_partial_sums(opt, params, grads, sums, stream);
        else
            host_partial_sums(opt, params, grads, sums);
        if (st == KOALA_OK) set_phase(opt, kBegun);
        return st;
    });
}

KOALA_API koala_status koala_update_end(koala_optimizer *opt, double loss, double loss_var,
                                        void *const *params, const void *const *grads,
                                        const double *sums, void *stream) {
    const char *what = "koala_update_end";
    return guarded(what, [&] {
        return update_end(opt, loss_values(loss, loss_var), params, grads, sums, stream, what);
    });
}

KOALA_API koala_status koala_update_end_ptr(koala_optimizer *opt, const void *loss,
                                            const void *loss_var, koala_dtype loss_dtype,
                                            void *const *params, const void *const *grads,
                                            const double *sums, void *stream) {
    const char *what = "koala_update_end_ptr";
    return guarded(what, [&] {
        return update_end(opt, loss_pointers(loss, loss_var, enum_value(loss_dtype)), params, grads, sums,
                          stream, what);
    });
}

}  // extern "C"
