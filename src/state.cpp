#include "state.h"

#include <cstring>

#include "device.h"
#include "numeric.h"

namespace koala {

namespace {

size_t state_elem(const koala_optimizer *opt) { return dtype_bytes(state_dtype(opt->dtype)); }

}  // namespace

koala_status read_scalars(const koala_optimizer *opt, void *stream, std::vector<double> &out) {
    out.assign(scalar_count(opt), 0.0);
    if (!opt->device) {
        std::memcpy(out.data(), opt->state.scalars, out.size() * sizeof(double));
        return KOALA_OK;
    }
    koala_status st;
    const koala_plugin_ops *ops = device_plugin(&st);
    if (!ops) return st;
    char msg[256];
    st = ops->read_scalars(opt->device, out.data(), stream, msg, sizeof msg);
    if (st != KOALA_OK) return plugin_fail(st, msg);
    // The device counts steps in the block itself (graph replays included);
    // the phase of library-owned state is the host's record.
    if (!opt->cfg.caller_state)
        reinterpret_cast<ScalarHeader *>(out.data())->phase = opt->device_phase;
    return KOALA_OK;
}

koala_status write_scalars(koala_optimizer *opt, const double *in, void *stream) {
    if (!opt->device) {
        std::memcpy(opt->state.scalars, in, scalar_count(opt) * sizeof(double));
        return KOALA_OK;
    }
    koala_status st;
    const koala_plugin_ops *ops = device_plugin(&st);
    if (!ops) return st;
    char msg[256];
    st = ops->write_scalars(opt->device, in, stream, msg, sizeof msg);
    if (st != KOALA_OK) return plugin_fail(st, msg);
    if (!opt->cfg.caller_state)
        opt->device_phase = static_cast<int>(reinterpret_cast<const ScalarHeader *>(in)->phase);
    return KOALA_OK;
}

size_t buffer_bytes(const koala_optimizer *opt) {
    return buffers_per_tensor(opt->cfg.method) * opt->layout.local_elements * state_elem(opt);
}

namespace {

// Every state buffer to (to_host) or from `host`, buffer-major then tensor order.
koala_status copy_buffers(const koala_optimizer *opt, unsigned char *host, bool to_host,
                          void *stream) {
    if (buffer_bytes(opt) == 0) return KOALA_OK;
    if (!opt->device) {
        const size_t n = opt->layout.n_tensors();
        for (size_t b = 0; b < buffers_per_tensor(opt->cfg.method); ++b)
            for (size_t t = 0; t < n; ++t) {
                const size_t bytes = opt->layout.sizes[t] * state_elem(opt);
                void *buffer = opt->state.buffers[b * n + t];
                if (to_host)
                    std::memcpy(host, buffer, bytes);
                else
                    std::memcpy(buffer, host, bytes);
                host += bytes;
            }
        return KOALA_OK;
    }
    koala_status st;
    const koala_plugin_ops *ops = device_plugin(&st);
    if (!ops) return st;
    char msg[256];
    st = ops->copy_buffers(opt->device, host, to_host ? 1 : 0, stream, msg, sizeof msg);
    if (st != KOALA_OK) return plugin_fail(st, msg);
    return KOALA_OK;
}

}  // namespace

koala_status read_buffers(const koala_optimizer *opt, unsigned char *dst, void *stream) {
    return copy_buffers(opt, dst, true, stream);
}

koala_status write_buffers(koala_optimizer *opt, const unsigned char *src, void *stream) {
    // The bytes are only read (the plugin's entry takes one pointer for both ways).
    return copy_buffers(opt, const_cast<unsigned char *>(src), false, stream);
}

koala_status push_tensor_hyper(koala_optimizer *opt, const std::vector<double> &lr,
                               const std::vector<double> &wd, void *stream) {
    if (!opt->device) return KOALA_OK;
    koala_status st;
    const koala_plugin_ops *ops = device_plugin(&st);
    if (!ops) return st;
    char msg[256];
    st = ops->set_tensor_hyper(opt->device, lr.empty() ? nullptr : lr.data(),
                               wd.empty() ? nullptr : wd.data(), stream, msg, sizeof msg);
    if (st != KOALA_OK) return plugin_fail(st, msg);
    return KOALA_OK;
}

}  // namespace koala
