// libkoala_cuda.so: the ops table of src/device_plugin.h on top of the CUDA
// runtime (linked statically, so the plugin needs nothing but the driver).
// Everything here is host code; the kernels are in kernels.cu.
//
// predict/update only enqueue kernels on the caller's stream: no
// allocation, no copy, no synchronisation, no read of a device value. The
// one per-call host work besides the launches is checking that params[i] /
// grads[i] are device memory, and that runs only for pointers not seen (and
// checked) before, so a training loop that reuses its buffers pays a
// pointer compare per tensor.
#include <cuda_runtime.h>

#include <climits>
#include <cstdarg>
#include <cstdio>
#include <new>
#include <vector>

#include "device_plugin.h"
#include "kernels.h"

namespace koala {
namespace cuda {

namespace {

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void say(char *msg, size_t cap, const char *fmt, ...) {
    if (!msg || cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
}

koala_status cuda_fail(cudaError_t e, const char *what, char *msg, size_t cap) {
    say(msg, cap, "%s failed: %s (CUDA error %d)", what, cudaGetErrorString(e),
        static_cast<int>(e));
    cudaGetLastError();  // a non-sticky error must not show up in the caller's next check
    return e == cudaErrorMemoryAllocation ? KOALA_ERROR_OUT_OF_MEMORY : KOALA_ERROR_CUDA;
}

// One device optimizer.
struct Optimizer {
    DeviceState d{};
    int device = 0;                   // the CUDA device current at create
    std::vector<size_t> sizes;        // elements per tensor
    std::vector<size_t> offsets;      // element offset of each tensor in velocity / xbar
    // Pointers already verified to be device memory: a pointer equal to the
    // one checked last time for the same slot is not asked about again.
    std::vector<const void *> checked_params;
    std::vector<const void *> checked_grads;
    const void *checked_loss[2] = {nullptr, nullptr};
};

// Makes the optimizer's device current for one entry and gives the
// caller's back afterwards (a no-op when they are the same).
class DeviceScope {
public:
    explicit DeviceScope(int device) {
        if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device &&
            cudaSetDevice(device) == cudaSuccess)
            restore_ = true;
    }
    ~DeviceScope() {
        if (restore_) cudaSetDevice(previous_);
    }
    DeviceScope(const DeviceScope &) = delete;
    DeviceScope &operator=(const DeviceScope &) = delete;

private:
    int previous_ = 0;
    bool restore_ = false;
};

// INVALID_ARGUMENT unless p is device memory of `device` or managed memory.
// cudaPointerGetAttributes does not synchronise; it is not a stream
// operation, but it is made legal under any stream-capture mode anyway
// (relaxed mode for this thread, restored afterwards).
koala_status check_device_pointer(const void *p, const char *name, long index, int device,
                                  char *msg, size_t cap) {
    char label[64];
    if (index >= 0)
        std::snprintf(label, sizeof label, "%s[%ld]", name, index);
    else
        std::snprintf(label, sizeof label, "%s", name);
    cudaPointerAttributes a{};
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    const bool exchanged = cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess;
    const cudaError_t e = cudaPointerGetAttributes(&a, p);
    if (exchanged) cudaThreadExchangeStreamCaptureMode(&mode);
    if (e != cudaSuccess) {
        cudaGetLastError();
        say(msg, cap,
            "%s (%p) is not memory the CUDA runtime knows (%s); a KOALA_DEVICE optimizer needs "
            "CUDA device memory",
            label, p, cudaGetErrorString(e));
        return KOALA_ERROR_INVALID_ARGUMENT;
    }
    if (a.type == cudaMemoryTypeManaged) return KOALA_OK;
    if (a.type == cudaMemoryTypeDevice) {
        if (a.device == device) return KOALA_OK;
        say(msg, cap,
            "%s (%p) is memory of CUDA device %d; this optimizer was created on device %d",
            label, p, a.device, device);
        return KOALA_ERROR_INVALID_ARGUMENT;
    }
    say(msg, cap,
        "%s (%p) is host memory (%s); a KOALA_DEVICE optimizer needs CUDA device or managed "
        "memory (create the optimizer with KOALA_HOST for host arrays)",
        label, p, a.type == cudaMemoryTypeHost ? "pinned" : "not allocated by CUDA");
    return KOALA_ERROR_INVALID_ARGUMENT;
}

// Checks params[i] (and grads[i] where non-NULL) not checked before.
koala_status check_tensors(Optimizer *o, void *const *params, const void *const *grads,
                           char *msg, size_t cap) {
    const size_t n = o->sizes.size();
    for (size_t i = 0; i < n; ++i) {
        if (params[i] == o->checked_params[i]) continue;
        const koala_status st =
            check_device_pointer(params[i], "params", static_cast<long>(i), o->device, msg, cap);
        if (st != KOALA_OK) return st;
        o->checked_params[i] = params[i];
    }
    if (!grads) return KOALA_OK;
    for (size_t i = 0; i < n; ++i) {
        if (!grads[i] || grads[i] == o->checked_grads[i]) continue;
        const koala_status st =
            check_device_pointer(grads[i], "grads", static_cast<long>(i), o->device, msg, cap);
        if (st != KOALA_OK) return st;
        o->checked_grads[i] = grads[i];
    }
    return KOALA_OK;
}

koala_status probe(char *msg, size_t cap) {
    int count = 0;  // left untouched when the call fails (ENVIRONMENT.md)
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (e == cudaErrorInsufficientDriver)
            say(msg, cap,
                "no usable NVIDIA driver (cudaGetDeviceCount: CUDA error %d, %s); install a "
                "driver for CUDA %d.%d or newer",
                static_cast<int>(e), cudaGetErrorString(e), CUDART_VERSION / 1000,
                (CUDART_VERSION % 1000) / 10);
        else if (e == cudaErrorNoDevice)
            say(msg, cap, "no CUDA device: cudaGetDeviceCount says \"%s\" (CUDA error %d)",
                cudaGetErrorString(e), static_cast<int>(e));
        else
            say(msg, cap, "the CUDA runtime cannot start: cudaGetDeviceCount says \"%s\" (CUDA "
                          "error %d)",
                cudaGetErrorString(e), static_cast<int>(e));
        return KOALA_ERROR_UNSUPPORTED;
    }
    if (count <= 0) {
        say(msg, cap, "no CUDA device: cudaGetDeviceCount found none");
        return KOALA_ERROR_UNSUPPORTED;
    }
    int device = 0, major = 0, minor = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    cudaFuncAttributes attr{};
    e = cudaFuncGetAttributes(&attr, probe_kernel());
    if (e != cudaSuccess) {
        cudaGetLastError();
        say(msg, cap,
            "CUDA device %d (compute capability %d.%d) cannot run libkoala_cuda.so's kernels: "
            "%s (CUDA error %d); rebuild with -Dgpu_archs naming this architecture",
            device, major, minor, cudaGetErrorString(e), static_cast<int>(e));
        return KOALA_ERROR_UNSUPPORTED;
    }
    return KOALA_OK;
}

void free_state(Optimizer *o) {
    DeviceState &d = o->d;
    void *all[] = {d.filter,     d.chunks,   d.tensor_chunks, d.chunk_sums, d.chunk_d2,
                   d.block_sums, d.coef,     d.has_grad,      d.velocity};
    for (void *p : all)
        if (p) cudaFree(p);  // xbar lives in velocity's allocation
    d = DeviceState{};
}

void destroy(void *handle) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    if (!o) return;
    {
        DeviceScope scope(o->device);
        cudaDeviceSynchronize();  // koala.h: queued work is waited for first
        free_state(o);
        cudaGetLastError();
    }
    delete o;
}

// Host-side plan: chunks, per-tensor chunk ranges, element offsets, groups.
struct HostPlan {
    std::vector<Chunk> chunks;
    std::vector<uint64_t> tensor_chunks;
};

koala_status build_plan(Optimizer *o, size_t n, const size_t *sizes, HostPlan &plan, char *msg,
                        size_t cap) {
    if (n > UINT32_MAX) {
        say(msg, cap, "n_tensors (%zu) is more than the device path supports (2^32 - 1)", n);
        return KOALA_ERROR_INVALID_ARGUMENT;
    }
    o->sizes.assign(sizes, sizes + n);
    o->offsets.resize(n);
    o->checked_params.assign(n, nullptr);
    o->checked_grads.assign(n, nullptr);
    plan.tensor_chunks.resize(n + 1);
    size_t offset = 0;
    for (size_t t = 0; t < n; ++t) {
        o->offsets[t] = offset;
        plan.tensor_chunks[t] = plan.chunks.size();
        for (size_t b = 0; b < sizes[t]; b += kChunkElements) {
            const size_t left = sizes[t] - b;
            const uint32_t count =
                left < kChunkElements ? static_cast<uint32_t>(left) : kChunkElements;
            plan.chunks.push_back(Chunk{b, offset + b, static_cast<uint32_t>(t), count});
        }
        offset += sizes[t];
    }
    plan.tensor_chunks[n] = plan.chunks.size();

    DeviceState &d = o->d;
    d.n_tensors = n;
    d.n_chunks = plan.chunks.size();
    d.total_elements = offset;
    d.cap = n <= static_cast<size_t>(kSmallCap) ? kSmallCap : kLargeCap;
    for (size_t first = 0; first < n; first += static_cast<size_t>(d.cap)) {
        Group g;
        g.first_tensor = first;
        g.n_tensors = n - first < static_cast<size_t>(d.cap) ? n - first : d.cap;
        g.first_chunk = plan.tensor_chunks[first];
        g.n_chunks = plan.tensor_chunks[first + g.n_tensors] - g.first_chunk;
        if (g.n_chunks > static_cast<size_t>(INT_MAX)) {
            say(msg, cap, "the layout has more than 2^31 chunks of %u elements in one launch",
                kChunkElements);
            return KOALA_ERROR_INVALID_ARGUMENT;
        }
        d.groups.push_back(g);
    }
    return KOALA_OK;
}

template <class P>
cudaError_t alloc(P **p, size_t count) {
    void *raw = nullptr;
    const cudaError_t e = cudaMalloc(&raw, count * sizeof(P));
    *p = static_cast<P *>(raw);
    return e;
}

koala_status allocate_and_fill(Optimizer *o, const HostPlan &plan, const FilterState &initial,
                               bool momentum, char *msg, size_t cap) {
    DeviceState &d = o->d;
    const size_t n = d.n_tensors;
    const size_t elem = d.dtype == KOALA_FLOAT64 ? 8 : 4;
    cudaError_t e = cudaSuccess;
    const char *what = "koala_create: cudaMalloc";
    if (e == cudaSuccess) e = alloc(&d.filter, 1);
    if (e == cudaSuccess) e = alloc(&d.chunks, d.n_chunks);
    if (e == cudaSuccess) e = alloc(&d.tensor_chunks, n + 1);
    if (e == cudaSuccess) e = alloc(&d.chunk_sums, d.n_chunks);
    if (e == cudaSuccess) e = alloc(&d.chunk_d2, d.n_chunks);
    if (e == cudaSuccess) e = alloc(&d.block_sums, n);
    if (e == cudaSuccess) e = alloc(&d.coef, n);
    if (e == cudaSuccess) e = alloc(&d.has_grad, n);
    if (e == cudaSuccess && momentum) {
        unsigned char *buffers = nullptr;
        e = alloc(&buffers, 2 * d.total_elements * elem);
        d.velocity = buffers;
        if (e == cudaSuccess) d.xbar = buffers + d.total_elements * elem;
    }
    if (e != cudaSuccess) return cuda_fail(e, what, msg, cap);

    what = "koala_create: initialising device state";
    e = cudaMemcpy(d.filter, &initial, sizeof initial, cudaMemcpyHostToDevice);
    if (e == cudaSuccess)
        e = cudaMemcpy(d.chunks, plan.chunks.data(), d.n_chunks * sizeof(Chunk),
                       cudaMemcpyHostToDevice);
    if (e == cudaSuccess)
        e = cudaMemcpy(d.tensor_chunks, plan.tensor_chunks.data(), (n + 1) * sizeof(uint64_t),
                       cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemset(d.chunk_sums, 0, d.n_chunks * sizeof(BlockSums));
    if (e == cudaSuccess) e = cudaMemset(d.chunk_d2, 0, d.n_chunks * sizeof(double));
    if (e == cudaSuccess) e = cudaMemset(d.block_sums, 0, n * sizeof(BlockSums));
    if (e == cudaSuccess) e = cudaMemset(d.coef, 0, n * sizeof(BlockCoef));
    if (e == cudaSuccess) e = cudaMemset(d.has_grad, 0, n);
    if (e == cudaSuccess && momentum) e = cudaMemset(d.velocity, 0, 2 * d.total_elements * elem);
    // cudaMemset may still run when it returns, on the legacy default
    // stream; the caller's (possibly non-blocking) stream must see the
    // zeroed state, so wait here, once, at create.
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e != cudaSuccess) return cuda_fail(e, what, msg, cap);
    return KOALA_OK;
}

koala_status create(const koala_config *cfg, size_t n_tensors, const size_t *sizes,
                    koala_dtype dtype, const FilterState *initial, void **handle, char *msg,
                    size_t cap) {
    *handle = nullptr;
    char why[200] = "";
    koala_status st = probe(why, sizeof why);
    if (st != KOALA_OK) {
        say(msg, cap, "koala_create: device memory unavailable: %s", why);
        return st;
    }
    Optimizer *o = new (std::nothrow) Optimizer;
    if (!o) {
        say(msg, cap, "koala_create: out of host memory");
        return KOALA_ERROR_OUT_OF_MEMORY;
    }
    cudaGetDevice(&o->device);
    o->d.dtype = dtype;
    HostPlan plan;
    try {
        st = build_plan(o, n_tensors, sizes, plan, msg, cap);
    } catch (const std::bad_alloc &) {
        say(msg, cap, "koala_create: out of host memory for the device plan");
        st = KOALA_ERROR_OUT_OF_MEMORY;
    }
    if (st == KOALA_OK)
        st = allocate_and_fill(o, plan, *initial, cfg->method == KOALA_MOMENTUM, msg, cap);
    if (st != KOALA_OK) {
        free_state(o);
        delete o;
        return st;
    }
    *handle = o;
    return KOALA_OK;
}

koala_status predict(void *handle, const koala_config *cfg, void *const *params, void *stream,
                     char *msg, size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    DeviceScope scope(o->device);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    cudaError_t e;
    if (cfg->method == KOALA_MOMENTUM) {
        const koala_status st = check_tensors(o, params, nullptr, msg, cap);
        if (st != KOALA_OK) return st;
        e = launch_momentum_predict(o->d, *cfg, params, s);
    } else {
        e = launch_vanilla_predict(o->d, *cfg, s);
    }
    if (e != cudaSuccess) return cuda_fail(e, "koala_predict: kernel launch", msg, cap);
    return KOALA_OK;
}

koala_status update(void *handle, const koala_config *cfg, double loss, double loss_var,
                    const void *loss_ptr, const void *loss_var_ptr, koala_dtype loss_dtype,
                    void *const *params, const void *const *grads, void *stream, char *msg,
                    size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    DeviceScope scope(o->device);
    koala_status st = check_tensors(o, params, grads, msg, cap);
    if (st != KOALA_OK) return st;
    if (loss_ptr) {
        const void *ptrs[2] = {loss_ptr, loss_var_ptr};
        const char *names[2] = {"loss", "loss_var"};
        for (int k = 0; k < 2; ++k) {
            if (ptrs[k] == o->checked_loss[k]) continue;
            st = check_device_pointer(ptrs[k], names[k], -1, o->device, msg, cap);
            if (st != KOALA_OK) return st;
            o->checked_loss[k] = ptrs[k];
        }
    }
    const LossSource source{loss, loss_var, loss_ptr, loss_var_ptr,
                            loss_dtype == KOALA_FLOAT32 ? 1 : 0};
    const cudaError_t e =
        launch_update(o->d, *cfg, source, params, grads, static_cast<cudaStream_t>(stream));
    if (e != cudaSuccess) return cuda_fail(e, "koala_update: kernel launch", msg, cap);
    return KOALA_OK;
}

koala_status get_filter(void *handle, void *stream, FilterState *out, char *msg, size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    DeviceScope scope(o->device);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    FilterState f{};
    cudaError_t e = cudaMemcpyAsync(&f, o->d.filter, sizeof f, cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) return cuda_fail(e, "reading the device filter state", msg, cap);
    *out = f;
    return KOALA_OK;
}

koala_status set_filter(void *handle, void *stream, const FilterState *in, char *msg,
                        size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    DeviceScope scope(o->device);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaMemcpyAsync(o->d.filter, in, sizeof *in, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) return cuda_fail(e, "writing the device filter state", msg, cap);
    return KOALA_OK;
}

koala_status copy_buffer(void *handle, int which, size_t tensor, void *host, int to_host,
                         void *stream, char *msg, size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    void *base = which == 0 ? o->d.velocity : which == 1 ? o->d.xbar : nullptr;
    if (!base || tensor >= o->sizes.size()) {
        say(msg, cap, "copy_buffer: this optimizer has no buffer %d for tensor %zu", which,
            tensor);
        return KOALA_ERROR_INVALID_ARGUMENT;
    }
    DeviceScope scope(o->device);
    const size_t elem = o->d.dtype == KOALA_FLOAT64 ? 8 : 4;
    unsigned char *dev = static_cast<unsigned char *>(base) + o->offsets[tensor] * elem;
    const size_t bytes = o->sizes[tensor] * elem;
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    cudaError_t e = to_host ? cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, s)
                            : cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess)
        return cuda_fail(e, to_host ? "copying optimizer state to the host"
                                    : "copying optimizer state to the device",
                         msg, cap);
    return KOALA_OK;
}

const koala_plugin_ops kOps = {
    KOALA_PLUGIN_ABI_VERSION, probe,      create,      destroy,    predict,
    update,                   get_filter, set_filter, copy_buffer,
};

}  // namespace

}  // namespace cuda
}  // namespace koala

// The plugin's one exported symbol (everything else is hidden:
// -fvisibility=hidden in cuda/meson.build).
extern "C" __attribute__((visibility("default"))) const koala_plugin_ops *koala_cuda_plugin_ops(
    void) {
    return &koala::cuda::kOps;
}
