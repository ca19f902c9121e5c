// libkoala_cuda.so: the ops table of src/device_plugin.h (plugin ABI 2) on
// top of the CUDA runtime (linked statically: the plugin needs nothing but
// the driver). Host code only; the kernels are in kernels.cu.
//
// Every entry first makes the optimizer's device current and clears the
// runtime's last error, and fails before enqueueing anything when that
// does not work or the context is broken (a sticky error). Then it checks
// what needs the runtime (pointers are device or managed memory of the
// optimizer's device, aligned to their elements), and only then enqueues.
//
// predict / partial_sums / finish only enqueue kernels on the caller's
// stream: no allocation, no copy, no synchronisation, no read of a device
// value, so a step can be captured in a CUDA graph (which keeps the lr and
// the other values it was captured with). The per-call host work besides
// filling the pointer tables is the pointer check, which asks the runtime
// only about pointers not seen (and checked) before in the same slot.
#include <cuda_runtime.h>

#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "device_plugin.h"
#include "kernels.h"
#include "numeric.h"
#include "scalars.h"
#include "sums.h"

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
    cudaGetLastError();  // a non-sticky error must not show up in a later call
    return e == cudaErrorMemoryAllocation ? KOALA_ERROR_OUT_OF_MEMORY : KOALA_ERROR_CUDA;
}

// The NVIDIA driver this plugin's CUDA runtime needs: CUDA 13 runtimes need
// R580; CUDA 12 runtimes run on R525+ (minor version compatibility), and
// the 30 KiB pointer tables need CUDA 12.1 drivers: R530 (koala.h).
int driver_floor() { return CUDART_VERSION >= 13000 ? 580 : 530; }

// Runs the calling thread's CUDA calls in relaxed capture mode for a scope:
// allocations and synchronisations of create/destroy/checkpoints are then
// legal while another thread captures a graph in global mode.
class RelaxedCapture {
public:
    RelaxedCapture() { exchanged_ = cudaThreadExchangeStreamCaptureMode(&mode_) == cudaSuccess; }
    ~RelaxedCapture() {
        if (exchanged_) cudaThreadExchangeStreamCaptureMode(&mode_);
    }
    RelaxedCapture(const RelaxedCapture &) = delete;
    RelaxedCapture &operator=(const RelaxedCapture &) = delete;

private:
    cudaStreamCaptureMode mode_ = cudaStreamCaptureModeRelaxed;
    bool exchanged_ = false;
};

// Device memory of one allocation: from the device's stream-ordered pool
// where the device has one (freed in stream order, no synchronisation), from
// cudaMalloc otherwise.
struct DeviceBlock {
    void *ptr = nullptr;
    bool pooled = false;
};

cudaError_t allocate(DeviceBlock &b, size_t bytes, bool pools, cudaStream_t stream) {
    b.pooled = pools;
    if (bytes == 0) return cudaSuccess;
    return pools ? cudaMallocAsync(&b.ptr, bytes, stream) : cudaMalloc(&b.ptr, bytes);
}

void release(DeviceBlock &b, cudaStream_t stream) {
    if (!b.ptr) return;
    if (b.pooled)
        cudaFreeAsync(b.ptr, stream);
    else
        cudaFree(b.ptr);  // the runtime waits for work that uses it
    b.ptr = nullptr;
}

// One device optimizer.
struct Optimizer {
    int device = 0;
    bool pools = false;
    koala_method method = KOALA_VANILLA;
    koala_dtype dtype = KOALA_FLOAT32;
    bool caller_state = false;
    DevicePlan plan;
    std::vector<size_t> sizes;
    size_t scalar_count = 0;
    size_t state_elem = 0;           // bytes of a state element
    uint64_t local_elements = 0;

    cudaStream_t private_stream = nullptr;  // create's initialisation, destroy's fallback
    cudaStream_t last_stream = nullptr;     // the last stream a call enqueued work on
    bool used = false;                      // last_stream is set

    DeviceBlock arena;   // tables and scratch (layout.h's DeviceTables), the hyper arrays,
                         // the library-owned scalar block
    DeviceBlock state;   // library-owned buffers: buffer-major, tensors contiguous
    double *own_scalars = nullptr;
    std::vector<void *> own_state;  // [2 * n_tensors] pointers into `state`

    std::vector<void *> bound_state;  // caller_state: the bound buffers
    double *bound_scalars = nullptr;

    bool have_lr = false, have_wd = false;  // tab.tensor_lr / tensor_wd hold values

    // KOALA-V, library-owned: a predict not yet applied (the next update's
    // scalar kernel adds fold_q to sigma first).
    bool fold_pending = false;
    double fold_q = 0.0;

    // Pointers verified before, per slot: the same pointer is not asked about again.
    std::vector<const void *> checked_params, checked_grads, checked_out, checked_state;
    const void *checked_misc[4] = {nullptr, nullptr, nullptr, nullptr};  // loss, loss_var, sums, scalars

    double *scalars() { return caller_state ? bound_scalars : own_scalars; }
    void *const *state_ptrs() {
        if (method == KOALA_VANILLA) return nullptr;
        return caller_state ? bound_state.data() : own_state.data();
    }
    size_t n_tensors() const { return sizes.size(); }
};

// The scope of one entry on an existing optimizer: its device current
// (restored afterwards), the runtime's last error cleared, and a broken
// context or a failing cudaSetDevice reported before any work.
class Entry {
public:
    Entry(const Optimizer *o, const char *what, char *msg, size_t cap) {
        cudaGetLastError();  // a leftover error of an earlier call is not this call's
        cudaError_t e = cudaGetDevice(&previous_);
        if (e == cudaSuccess && previous_ != o->device) {
            e = cudaSetDevice(o->device);
            if (e == cudaSuccess) restore_ = true;
        }
        if (e == cudaSuccess) e = cudaGetLastError();  // sticky errors stay
        if (e != cudaSuccess) {
            say(msg, cap,
                "%s: CUDA device %d cannot be used: %s (CUDA error %d); nothing was done", what,
                o->device, cudaGetErrorString(e), static_cast<int>(e));
            cudaGetLastError();
            status_ = KOALA_ERROR_CUDA;
        }
    }
    ~Entry() {
        if (restore_) cudaSetDevice(previous_);
    }
    Entry(const Entry &) = delete;
    Entry &operator=(const Entry &) = delete;
    bool ok() const { return status_ == KOALA_OK; }
    koala_status status() const { return status_; }

private:
    int previous_ = 0;
    bool restore_ = false;
    koala_status status_ = KOALA_OK;
};

// INVALID_ARGUMENT unless p is aligned to `align` bytes and is device memory
// of `device` or managed memory. cudaPointerGetAttributes is not a stream
// operation; it runs in relaxed capture mode so that it is legal while any
// stream is being captured.
koala_status check_pointer(const void *p, size_t align, const char *name, long index, int device,
                           const char *what, char *msg, size_t cap) {
    char label[64];
    if (index >= 0)
        std::snprintf(label, sizeof label, "%s[%ld]", name, index);
    else
        std::snprintf(label, sizeof label, "%s", name);
    if (reinterpret_cast<uintptr_t>(p) % align != 0) {
        say(msg, cap,
            "%s: %s (%p) is not aligned to its %zu-byte elements; device memory must be "
            "element-aligned (a misaligned access would fault the CUDA context); nothing was "
            "done",
            what, label, p, align);
        return KOALA_ERROR_INVALID_ARGUMENT;
    }
    cudaPointerAttributes a{};
    cudaError_t e;
    {
        RelaxedCapture relaxed;
        e = cudaPointerGetAttributes(&a, p);
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        say(msg, cap,
            "%s: %s (%p) is not memory the CUDA runtime knows (%s); a KOALA_DEVICE optimizer "
            "needs CUDA device memory; nothing was done",
            what, label, p, cudaGetErrorString(e));
        return KOALA_ERROR_INVALID_ARGUMENT;
    }
    if (a.type == cudaMemoryTypeManaged) return KOALA_OK;
    if (a.type == cudaMemoryTypeDevice) {
        if (a.device == device) return KOALA_OK;
        say(msg, cap,
            "%s: %s (%p) is memory of CUDA device %d; this optimizer lives on device %d (the "
            "device current at koala_create); nothing was done",
            what, label, p, a.device, device);
        return KOALA_ERROR_INVALID_ARGUMENT;
    }
    say(msg, cap,
        "%s: %s (%p) is host memory (%s); a KOALA_DEVICE optimizer needs CUDA device or managed "
        "memory (create the optimizer with KOALA_HOST for host arrays); nothing was done",
        what, label, p, a.type == cudaMemoryTypeHost ? "pinned" : "not allocated by CUDA");
    return KOALA_ERROR_INVALID_ARGUMENT;
}

// check_pointer for one slot of a table, skipped when the slot holds the
// pointer verified last time.
koala_status check_slot(const void *p, const void *&checked, size_t align, const char *name,
                        long index, int device, const char *what, char *msg, size_t cap) {
    if (p == checked) return KOALA_OK;
    const koala_status st = check_pointer(p, align, name, index, device, what, msg, cap);
    if (st == KOALA_OK) checked = p;
    return st;
}

koala_status check_tensors(Optimizer *o, void *const *params, const void *const *grads,
                           const char *what, char *msg, size_t cap) {
    const size_t elem = dtype_bytes(o->dtype);
    for (size_t i = 0; i < o->n_tensors(); ++i) {
        const koala_status st = check_slot(params[i], o->checked_params[i], elem, "params",
                                           static_cast<long>(i), o->device, what, msg, cap);
        if (st != KOALA_OK) return st;
    }
    if (!grads) return KOALA_OK;
    for (size_t i = 0; i < o->n_tensors(); ++i) {
        if (!grads[i]) continue;
        const koala_status st = check_slot(grads[i], o->checked_grads[i], elem, "grads",
                                           static_cast<long>(i), o->device, what, msg, cap);
        if (st != KOALA_OK) return st;
    }
    return KOALA_OK;
}

koala_status check_state(Optimizer *o, void *const *buffers, const double *scalars,
                         const char *what, char *msg, size_t cap) {
    koala_status st = check_slot(scalars, o->checked_misc[3], sizeof(double), "scalars", -1,
                                 o->device, what, msg, cap);
    const size_t n = o->method == KOALA_VANILLA ? 0 : 2 * o->n_tensors();
    for (size_t k = 0; st == KOALA_OK && k < n; ++k)
        st = check_slot(buffers[k], o->checked_state[k], o->state_elem, "buffers",
                        static_cast<long>(k), o->device, what, msg, cap);
    return st;
}

koala_status probe(char *msg, size_t cap) {
    cudaGetLastError();
    int count = 0;  // left untouched when the call fails
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (e == cudaErrorInsufficientDriver) {
            int driver = 0;
            cudaDriverGetVersion(&driver);
            if (driver == 0)
                say(msg, cap,
                    "no usable NVIDIA driver (cudaGetDeviceCount: CUDA error %d, %s); the CUDA "
                    "plugin (CUDA %d.%d runtime) needs an NVIDIA driver R%d or newer",
                    static_cast<int>(e), cudaGetErrorString(e), CUDART_VERSION / 1000,
                    (CUDART_VERSION % 1000) / 10, driver_floor());
            else
                say(msg, cap,
                    "the NVIDIA driver is too old: it supports CUDA %d.%d, and the CUDA plugin "
                    "(CUDA %d.%d runtime) needs a driver for CUDA %d.%d, R%d or newer (CUDA "
                    "error %d, %s)",
                    driver / 1000, (driver % 1000) / 10, CUDART_VERSION / 1000,
                    (CUDART_VERSION % 1000) / 10, CUDART_VERSION / 1000,
                    (CUDART_VERSION % 1000) / 10, driver_floor(), static_cast<int>(e),
                    cudaGetErrorString(e));
        } else if (e == cudaErrorNoDevice) {
            say(msg, cap, "no CUDA device: cudaGetDeviceCount says \"%s\" (CUDA error %d)",
                cudaGetErrorString(e), static_cast<int>(e));
        } else {
            say(msg, cap,
                "the CUDA runtime cannot start: cudaGetDeviceCount says \"%s\" (CUDA error %d)",
                cudaGetErrorString(e), static_cast<int>(e));
        }
        return KOALA_ERROR_UNSUPPORTED;
    }
    if (count <= 0) {
        say(msg, cap, "no CUDA device: cudaGetDeviceCount found none");
        return KOALA_ERROR_UNSUPPORTED;
    }
    int device = 0, major = 0, minor = 0;
    e = cudaGetDevice(&device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    if (e != cudaSuccess) {
        cudaGetLastError();
        say(msg, cap, "CUDA device %d cannot be queried: %s (CUDA error %d)", device,
            cudaGetErrorString(e), static_cast<int>(e));
        return KOALA_ERROR_UNSUPPORTED;
    }
    for (const void *k : kernels_of(KOALA_MOMENTUM, KOALA_FLOAT32, kSmallCap)) {
        cudaFuncAttributes attr{};
        e = cudaFuncGetAttributes(&attr, k);
        if (e != cudaSuccess) {
            cudaGetLastError();
            say(msg, cap,
                "CUDA device %d (compute capability %d.%d) cannot run libkoala_cuda.so's "
                "kernels: %s (CUDA error %d); rebuild with -Dgpu_archs naming this architecture",
                device, major, minor, cudaGetErrorString(e), static_cast<int>(e));
            return KOALA_ERROR_UNSUPPORTED;
        }
    }
    return KOALA_OK;
}

// ---- create / destroy ----------------------------------------------------

size_t align_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Offsets (bytes) of the arena's parts.
struct ArenaLayout {
    size_t chunks, tensor_chunks, global_index, piece_first, pieces, has_grad, chunk_sums,
        chunk_d2, coef, control, finished, sums, hyper, scalars, total;
};

ArenaLayout arena_layout(const Optimizer *o) {
    const size_t n = o->n_tensors(), n_global = o->plan.n_global, n_chunks = o->plan.n_chunks;
    ArenaLayout L{};
    size_t at = 0;
    auto take = [&](size_t bytes) {
        const size_t here = at;
        at = align_up(at + bytes, 256);
        return here;
    };
    L.chunks = take(n_chunks * sizeof(Chunk));
    L.tensor_chunks = take((n + 1) * sizeof(uint64_t));
    L.global_index = take(n * sizeof(uint64_t));
    L.piece_first = take((n_global + 1) * sizeof(uint64_t));
    L.pieces = take(n * sizeof(uint64_t));
    L.has_grad = take(n);
    L.chunk_sums = take(n_chunks * sums_per_tensor(o->method) * sizeof(double));
    L.chunk_d2 = take(n_chunks * sizeof(double));
    L.coef = take(n_global * sizeof(Coef));
    L.control = take(sizeof(StepControl));
    L.finished = take(sizeof(unsigned int));
    L.sums = take(sums_count(o->method, n_global) * sizeof(double));
    L.hyper = take(2 * n_global * sizeof(double));  // lr multipliers, then weight decays
    L.scalars = take(o->caller_state ? 0 : o->scalar_count * sizeof(double));
    L.total = at;
    return L;
}

// The host side of the plan: chunks, per-tensor chunk ranges, pieces per
// global tensor, launch groups.
struct HostTables {
    std::vector<Chunk> chunks;
    std::vector<uint64_t> tensor_chunks, global_index, piece_first, pieces;
};

koala_status build_plan(Optimizer *o, const koala_plugin_layout *layout, HostTables &h,
                        char *msg, size_t cap) {
    const size_t n = layout->n_tensors;
    if (n > UINT32_MAX) {
        say(msg, cap, "koala_create: n_tensors (%zu) is more than the device path supports (2^32 - 1)",
            n);
        return KOALA_ERROR_INVALID_ARGUMENT;
    }
    DevicePlan &p = o->plan;
    o->sizes.assign(layout->sizes, layout->sizes + n);
    h.tensor_chunks.resize(n + 1);
    uint64_t elements = 0;
    for (size_t t = 0; t < n; ++t) {
        h.tensor_chunks[t] = h.chunks.size();
        for (size_t b = 0; b < o->sizes[t]; b += kChunkElements) {
            const size_t left = o->sizes[t] - b;
            h.chunks.push_back(Chunk{b, static_cast<uint32_t>(t),
                                     left < kChunkElements ? static_cast<uint32_t>(left)
                                                           : kChunkElements});
        }
        elements += o->sizes[t];
    }
    h.tensor_chunks[n] = h.chunks.size();
    if (h.chunks.size() >= (size_t(1) << 31)) {
        say(msg, cap, "koala_create: the layout has 2^31 or more chunks of %u elements",
            kChunkElements);
        return KOALA_ERROR_INVALID_ARGUMENT;
    }
    h.global_index.assign(layout->global_index, layout->global_index + n);
    h.piece_first.assign(layout->n_global + 1, 0);
    for (size_t t = 0; t < n; ++t) ++h.piece_first[h.global_index[t] + 1];
    for (size_t j = 0; j < layout->n_global; ++j) h.piece_first[j + 1] += h.piece_first[j];
    h.pieces.resize(n);
    std::vector<uint64_t> fill(h.piece_first.begin(), h.piece_first.end() - 1);
    for (size_t t = 0; t < n; ++t) h.pieces[fill[h.global_index[t]]++] = t;

    p.n_tensors = n;
    p.n_global = layout->n_global;
    p.n_chunks = h.chunks.size();
    p.local_elements = static_cast<double>(elements);
    p.global_elements = static_cast<double>(layout->global_elements);
    p.dtype = layout->dtype;
    p.method = layout->cfg.method;
    p.sharded = layout->sharded;
    p.cap = n <= static_cast<size_t>(kSmallCap) ? kSmallCap : kLargeCap;
    if (p.cap == kSmallCap)
        p.small_table.reset(new TensorTable<kSmallCap>());
    else
        p.large_table.reset(new TensorTable<kLargeCap>());
    for (size_t first = 0; first < n; first += static_cast<size_t>(p.cap)) {
        Group g;
        g.first_tensor = first;
        g.n_tensors = n - first < static_cast<size_t>(p.cap) ? n - first : static_cast<size_t>(p.cap);
        g.first_chunk = h.tensor_chunks[first];
        g.n_chunks = h.tensor_chunks[first + g.n_tensors] - g.first_chunk;
        p.groups.push_back(g);
    }
    o->local_elements = elements;
    return KOALA_OK;
}

void free_device(Optimizer *o, cudaStream_t stream) {
    release(o->arena, stream);
    release(o->state, stream);
}

void destroy(void *handle) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    if (!o) return;
    {
        char ignored[8];
        Entry entry(o, "koala_destroy", ignored, sizeof ignored);
        RelaxedCapture relaxed;
        // Stream-ordered frees on the last stream the optimizer used: work
        // queued there completes first, and the host does not wait. A stream
        // being captured cannot take them (a free node needs a graph
        // allocation): then the private stream does.
        cudaStream_t s = o->used ? o->last_stream : o->private_stream;
        cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(s, &capture) != cudaSuccess ||
            capture != cudaStreamCaptureStatusNone)
            s = o->private_stream;
        if (entry.ok()) free_device(o, s);
        // Legal with work pending: its resources go once the work is done.
        if (o->private_stream) cudaStreamDestroy(o->private_stream);
        cudaGetLastError();
    }
    delete o;
}

koala_status create(const koala_plugin_layout *layout, const double *initial,
                    size_t scalar_count, void **handle, char *msg, size_t cap) {
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
    RelaxedCapture relaxed;
    cudaError_t e = cudaGetDevice(&o->device);
    int pools = 0;
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, o->device);
    if (e != cudaSuccess) {
        delete o;
        return cuda_fail(e, "koala_create: querying the current CUDA device", msg, cap);
    }
    o->pools = pools != 0;
    o->method = layout->cfg.method;
    o->dtype = layout->dtype;
    o->caller_state = layout->cfg.caller_state != 0;
    o->scalar_count = scalar_count;
    o->state_elem = dtype_bytes(state_dtype(layout->dtype));
    HostTables h;
    try {
        st = build_plan(o, layout, h, msg, cap);
        const size_t n = o->n_tensors();
        o->checked_params.assign(n, nullptr);
        o->checked_grads.assign(n, nullptr);
        o->checked_out.assign(n, nullptr);
        o->checked_state.assign(2 * n, nullptr);
    } catch (const std::bad_alloc &) {
        say(msg, cap, "koala_create: out of host memory for the device plan");
        st = KOALA_ERROR_OUT_OF_MEMORY;
    }
    if (st != KOALA_OK) {
        delete o;
        return st;
    }
    // Every kernel this optimizer launches has code for the device: checked
    // now, so that no later launch fails halfway through a step.
    for (const void *k : kernels_of(o->method, o->dtype, o->plan.cap)) {
        cudaFuncAttributes attr{};
        e = cudaFuncGetAttributes(&attr, k);
        if (e != cudaSuccess) {
            delete o;
            return cuda_fail(e, "koala_create: loading the plugin's kernels for this device", msg,
                             cap);
        }
    }
    // Initialisation runs on a private non-blocking stream that only this
    // thread waits for: no device-wide synchronisation.
    e = cudaStreamCreateWithFlags(&o->private_stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        o->private_stream = nullptr;
        delete o;
        return cuda_fail(e, "koala_create: cudaStreamCreateWithFlags", msg, cap);
    }
    const cudaStream_t s = o->private_stream;
    const ArenaLayout L = arena_layout(o);
    const size_t state_bytes =
        o->caller_state || o->method == KOALA_VANILLA ? 0 : 2 * o->local_elements * o->state_elem;
    const char *what = "koala_create: allocating device memory";
    e = allocate(o->arena, L.total, o->pools, s);
    if (e == cudaSuccess) e = allocate(o->state, state_bytes, o->pools, s);
    if (e == cudaSuccess) {
        what = "koala_create: initialising device memory";
        unsigned char *base = static_cast<unsigned char *>(o->arena.ptr);
        DeviceTables &t = o->plan.tab;
        t.chunks = reinterpret_cast<const Chunk *>(base + L.chunks);
        t.tensor_chunks = reinterpret_cast<const uint64_t *>(base + L.tensor_chunks);
        t.global_index = reinterpret_cast<const uint64_t *>(base + L.global_index);
        t.piece_first = reinterpret_cast<const uint64_t *>(base + L.piece_first);
        t.pieces = reinterpret_cast<const uint64_t *>(base + L.pieces);
        t.has_grad = base + L.has_grad;
        t.chunk_sums = reinterpret_cast<double *>(base + L.chunk_sums);
        t.chunk_d2 = reinterpret_cast<double *>(base + L.chunk_d2);
        t.coef = reinterpret_cast<Coef *>(base + L.coef);
        t.control = reinterpret_cast<StepControl *>(base + L.control);
        t.finished = reinterpret_cast<unsigned int *>(base + L.finished);
        t.sums = reinterpret_cast<double *>(base + L.sums);
        t.tensor_lr = reinterpret_cast<double *>(base + L.hyper);
        t.tensor_wd = t.tensor_lr + o->plan.n_global;
        if (!o->caller_state) o->own_scalars = reinterpret_cast<double *>(base + L.scalars);

        e = cudaMemsetAsync(o->arena.ptr, 0, L.total, s);
        auto upload = [&](size_t offset, const void *src, size_t bytes) {
            if (e == cudaSuccess && bytes > 0)
                e = cudaMemcpyAsync(base + offset, src, bytes, cudaMemcpyHostToDevice, s);
        };
        upload(L.chunks, h.chunks.data(), h.chunks.size() * sizeof(Chunk));
        upload(L.tensor_chunks, h.tensor_chunks.data(), h.tensor_chunks.size() * sizeof(uint64_t));
        upload(L.global_index, h.global_index.data(), h.global_index.size() * sizeof(uint64_t));
        upload(L.piece_first, h.piece_first.data(), h.piece_first.size() * sizeof(uint64_t));
        upload(L.pieces, h.pieces.data(), h.pieces.size() * sizeof(uint64_t));
        if (!o->caller_state) upload(L.scalars, initial, scalar_count * sizeof(double));
        if (e == cudaSuccess && state_bytes > 0) e = cudaMemsetAsync(o->state.ptr, 0, state_bytes, s);
        if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    }
    if (e != cudaSuccess) {
        const koala_status fail_status = cuda_fail(e, what, msg, cap);
        free_device(o, s);
        cudaStreamDestroy(s);
        delete o;
        return fail_status;
    }
    if (state_bytes > 0) {
        const size_t n = o->n_tensors();
        o->own_state.resize(2 * n);
        unsigned char *base = static_cast<unsigned char *>(o->state.ptr);
        size_t offset = 0;
        for (size_t t = 0; t < n; ++t) {
            o->own_state[t] = base + offset * o->state_elem;
            o->own_state[n + t] = base + (o->local_elements + offset) * o->state_elem;
            offset += o->sizes[t];
        }
    }
    *handle = o;
    return KOALA_OK;
}

// ---- the step ------------------------------------------------------------

void used_stream(Optimizer *o, cudaStream_t s) {
    o->last_stream = s;
    o->used = true;
}

koala_status launched(cudaError_t e, const char *what, char *msg, size_t cap) {
    if (e == cudaSuccess) return KOALA_OK;
    return cuda_fail(e, what, msg, cap);
}

CallPointers call_pointers(Optimizer *o, void *const *params, const void *const *grads) {
    CallPointers p;
    p.params = params;
    p.grads = grads;
    p.state = o->state_ptrs();
    return p;
}

koala_status predict(void *handle, const koala_config *cfg, void *const *params, void *stream,
                     char *msg, size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    const char *what = "koala_predict";
    Entry entry(o, what, msg, cap);
    if (!entry.ok()) return entry.status();
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaSuccess;
    if (o->method == KOALA_MOMENTUM) {
        const koala_status st = check_tensors(o, params, nullptr, what, msg, cap);
        if (st != KOALA_OK) return st;
        e = launch_momentum_predict(o->plan, *cfg, call_pointers(o, params, nullptr), o->scalars(),
                                    s);
    } else if (o->caller_state) {
        // Another optimizer object may run the update on this state: the
        // time update and the phase go into the caller's scalar block now.
        e = launch_scalar_predict(*cfg, o->scalars(), s);
    } else if (o->method == KOALA_VANILLA) {
        // Folded into the next update's scalar kernel (read_scalars shows
        // sigma-hat meanwhile).
        o->fold_pending = true;
        o->fold_q = cfg->q;
        return KOALA_OK;
    } else {
        return KOALA_OK;  // KOALA++, library-owned: nothing to predict
    }
    if (e == cudaSuccess) used_stream(o, s);
    return launched(e, "koala_predict: kernel launch", msg, cap);
}

koala_status check_sums(Optimizer *o, const double *sums, const char *what, char *msg,
                        size_t cap) {
    if (!sums || sums == o->plan.tab.sums) return KOALA_OK;
    return check_slot(sums, o->checked_misc[2], sizeof(double), "sums", -1, o->device, what, msg,
                      cap);
}

koala_status partial_sums(void *handle, const koala_config *cfg, void *const *params,
                          const void *const *grads, double *sums, void *stream, char *msg,
                          size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    const char *what = sums == o->plan.tab.sums ? "koala_update" : "koala_update_begin";
    Entry entry(o, what, msg, cap);
    if (!entry.ok()) return entry.status();
    koala_status st = check_tensors(o, params, grads, what, msg, cap);
    if (st == KOALA_OK) st = check_sums(o, sums, what, msg, cap);
    if (st != KOALA_OK) return st;
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    const double *wd = o->have_wd ? o->plan.tab.tensor_wd : nullptr;
    cudaError_t e = launch_sums(o->plan, *cfg, call_pointers(o, params, grads), o->scalars(), wd, s);
    if (e == cudaSuccess) {
        ScalarJob job;
        job.cfg = *cfg;
        job.reduce = true;
        job.mark_begun = sums != o->plan.tab.sums;
        job.sums_out = sums ? sums : o->plan.tab.sums;
        e = launch_scalar(o->plan, job, o->scalars(), s);
    }
    if (e == cudaSuccess) used_stream(o, s);
    return launched(e, "koala_update_begin: kernel launch", msg, cap);
}

koala_status finish(void *handle, const koala_config *cfg, const koala_plugin_loss *loss,
                    void *const *params, const void *const *grads, const double *sums,
                    void *stream, char *msg, size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    const bool own_sums = !sums || sums == o->plan.tab.sums;
    const char *what = own_sums ? "koala_update" : "koala_update_end";
    Entry entry(o, what, msg, cap);
    if (!entry.ok()) return entry.status();
    koala_status st = check_tensors(o, params, grads, what, msg, cap);
    if (st == KOALA_OK) st = check_sums(o, sums, what, msg, cap);
    if (st == KOALA_OK && loss->loss_ptr) {
        const size_t align = loss->is_float32 ? sizeof(float) : sizeof(double);
        st = check_slot(loss->loss_ptr, o->checked_misc[0], align, "loss", -1, o->device, what,
                        msg, cap);
        if (st == KOALA_OK)
            st = check_slot(loss->loss_var_ptr, o->checked_misc[1], align, "loss_var", -1,
                            o->device, what, msg, cap);
    }
    if (st != KOALA_OK) return st;
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    const CallPointers p = call_pointers(o, params, grads);
    const double *wd = o->have_wd ? o->plan.tab.tensor_wd : nullptr;
    ScalarJob job;
    job.cfg = *cfg;
    job.loss.loss = loss->loss;
    job.loss.loss_var = loss->loss_var;
    job.loss.loss_ptr = loss->loss_ptr;
    job.loss.loss_var_ptr = loss->loss_var_ptr;
    job.loss.is_float32 = loss->is_float32;
    job.filter = true;
    job.fold_predict = o->fold_pending;
    job.fold_q = o->fold_q;
    job.tensor_lr = o->have_lr ? o->plan.tab.tensor_lr : nullptr;
    job.tensor_wd = wd;
    cudaError_t e = cudaSuccess;
    if (!sums) {
        // koala_update of an unsharded optimizer: the sums straight into the
        // plugin's own buffer, in the same scalar kernel.
        e = launch_sums(o->plan, *cfg, p, o->scalars(), wd, s);
        job.reduce = true;
        job.sums_out = o->plan.tab.sums;
        job.sums_in = o->plan.tab.sums;
    } else {
        job.sums_in = sums;
    }
    if (e == cudaSuccess) e = launch_scalar(o->plan, job, o->scalars(), s);
    if (e == cudaSuccess) {
        o->fold_pending = false;  // the scalar kernel applies it
        used_stream(o, s);
        e = launch_apply(o->plan, *cfg, p, o->scalars(), wd, s);
    }
    return launched(e, own_sums ? "koala_update: kernel launch" : "koala_update_end: kernel launch",
                    msg, cap);
}

double *internal_sums(void *handle) { return static_cast<Optimizer *>(handle)->plan.tab.sums; }

// ---- state ---------------------------------------------------------------

koala_status read_scalars(void *handle, double *host, void *stream, char *msg, size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    Entry entry(o, "reading the optimizer's scalars", msg, cap);
    if (!entry.ok()) return entry.status();
    RelaxedCapture relaxed;
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaMemcpyAsync(host, o->scalars(), o->scalar_count * sizeof(double),
                                    cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) return cuda_fail(e, "reading the device scalar block", msg, cap);
    used_stream(o, s);
    if (o->fold_pending) {
        // The predict the next update applies, as vanilla::predict would.
        ScalarHeader &h = *reinterpret_cast<ScalarHeader *>(host);
        h.sigma += o->fold_q;
        h.phase = kPredicted;
    }
    return KOALA_OK;
}

koala_status write_scalars(void *handle, const double *host, void *stream, char *msg,
                           size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    Entry entry(o, "writing the optimizer's scalars", msg, cap);
    if (!entry.ok()) return entry.status();
    RelaxedCapture relaxed;
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    // One copy: it either is enqueued whole or fails leaving the block as it was.
    cudaError_t e = cudaMemcpyAsync(o->scalars(), host, o->scalar_count * sizeof(double),
                                    cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) return cuda_fail(e, "writing the device scalar block", msg, cap);
    used_stream(o, s);
    o->fold_pending = false;  // the block written is the whole state
    return KOALA_OK;
}

koala_status copy_buffers(void *handle, void *host, int to_host, void *stream, char *msg,
                          size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    Entry entry(o, to_host ? "reading the optimizer's buffers" : "writing the optimizer's buffers",
                msg, cap);
    if (!entry.ok()) return entry.status();
    if (o->method == KOALA_VANILLA) return KOALA_OK;
    RelaxedCapture relaxed;
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    const size_t n = o->n_tensors();
    const size_t total = 2 * o->local_elements * o->state_elem;
    unsigned char *bytes = static_cast<unsigned char *>(host);
    cudaError_t e = cudaSuccess;
    if (!o->caller_state) {
        // The library's buffers are one allocation in the checkpoint's
        // order: one copy, which is enqueued whole or not at all.
        e = to_host ? cudaMemcpyAsync(bytes, o->state.ptr, total, cudaMemcpyDeviceToHost, s)
                    : cudaMemcpyAsync(o->state.ptr, bytes, total, cudaMemcpyHostToDevice, s);
        if (e == cudaSuccess) e = cudaStreamSynchronize(s);
        if (e != cudaSuccess)
            return cuda_fail(e, to_host ? "copying the optimizer's buffers to the host"
                                        : "copying the optimizer's buffers to the device",
                             msg, cap);
        used_stream(o, s);
        return KOALA_OK;
    }
    void *const *buffers = o->bound_state.data();
    if (to_host) {
        size_t at = 0;
        for (size_t k = 0; e == cudaSuccess && k < 2 * n; ++k) {
            const size_t b = o->sizes[k % n] * o->state_elem;
            e = cudaMemcpyAsync(bytes + at, buffers[k], b, cudaMemcpyDeviceToHost, s);
            at += b;
        }
        if (e == cudaSuccess) e = cudaStreamSynchronize(s);
        if (e != cudaSuccess)
            return cuda_fail(e, "copying the caller's state buffers to the host", msg, cap);
        used_stream(o, s);
        return KOALA_OK;
    }
    // Into the caller's 2 n buffers: staged whole in device memory first, so
    // that whatever fails (the staging allocation, the upload) leaves the
    // state as it was; the copies out of the stage go only to pointers
    // already verified at koala_bind_state.
    DeviceBlock stage;
    e = allocate(stage, total, o->pools, s);
    if (e != cudaSuccess) {
        const koala_status st = cuda_fail(e, "staging the checkpoint's buffers in device memory",
                                          msg, cap);
        release(stage, s);
        return st;
    }
    e = cudaMemcpyAsync(stage.ptr, bytes, total, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e == cudaSuccess) {
        size_t at = 0;
        for (size_t k = 0; e == cudaSuccess && k < 2 * n; ++k) {
            const size_t b = o->sizes[k % n] * o->state_elem;
            e = cudaMemcpyAsync(buffers[k], static_cast<unsigned char *>(stage.ptr) + at, b,
                                cudaMemcpyDeviceToDevice, s);
            at += b;
        }
    }
    release(stage, s);
    const cudaError_t done = cudaStreamSynchronize(s);
    if (e == cudaSuccess) e = done;
    if (e != cudaSuccess)
        return cuda_fail(e, "copying the checkpoint's buffers into the caller's state", msg, cap);
    used_stream(o, s);
    return KOALA_OK;
}

koala_status bind_state(void *handle, void *const *buffers, double *scalars, char *msg,
                        size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    const char *what = "koala_bind_state";
    Entry entry(o, what, msg, cap);
    if (!entry.ok()) return entry.status();
    if (!o->caller_state) {
        say(msg, cap, "%s: this optimizer owns its state", what);
        return KOALA_ERROR_INVALID_ARGUMENT;
    }
    const koala_status st = check_state(o, buffers, scalars, what, msg, cap);
    if (st != KOALA_OK) return st;
    const size_t n = o->method == KOALA_VANILLA ? 0 : 2 * o->n_tensors();
    o->bound_state.assign(buffers, buffers + n);
    o->bound_scalars = scalars;
    return KOALA_OK;
}

koala_status init_state(void *handle, void *const *buffers, double *scalars,
                        const double *initial, void *stream, char *msg, size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    const char *what = "koala_state_init";
    Entry entry(o, what, msg, cap);
    if (!entry.ok()) return entry.status();
    koala_status st = check_state(o, buffers, scalars, what, msg, cap);
    if (st != KOALA_OK) return st;
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    // A pageable source is staged by the runtime before the call returns.
    cudaError_t e = cudaMemcpyAsync(scalars, initial, o->scalar_count * sizeof(double),
                                    cudaMemcpyHostToDevice, s);
    const size_t n = o->method == KOALA_VANILLA ? 0 : 2 * o->n_tensors();
    for (size_t k = 0; e == cudaSuccess && k < n; ++k)
        e = cudaMemsetAsync(buffers[k], 0, o->sizes[k % o->n_tensors()] * o->state_elem, s);
    if (e != cudaSuccess) return cuda_fail(e, "koala_state_init: writing device memory", msg, cap);
    used_stream(o, s);
    return KOALA_OK;
}

koala_status set_tensor_hyper(void *handle, const double *lr, const double *wd, void *stream,
                              char *msg, size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    const char *what = "koala_set_tensor_lr / koala_set_tensor_weight_decay";
    Entry entry(o, what, msg, cap);
    if (!entry.ok()) return entry.status();
    const size_t n = o->plan.n_global;
    std::vector<double> both;
    try {
        both.assign(2 * n, 0.0);
    } catch (const std::bad_alloc &) {
        say(msg, cap, "%s: out of host memory", what);
        return KOALA_ERROR_OUT_OF_MEMORY;
    }
    for (size_t j = 0; j < n; ++j) {
        both[j] = lr ? lr[j] : 1.0;
        both[n + j] = wd ? wd[j] : 0.0;
    }
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    // Both arrays in one copy (they are adjacent): enqueued whole or not at
    // all. A pageable source is staged before the call returns.
    const cudaError_t e = cudaMemcpyAsync(o->plan.tab.tensor_lr, both.data(),
                                          2 * n * sizeof(double), cudaMemcpyHostToDevice, s);
    if (e != cudaSuccess) return cuda_fail(e, "copying per-tensor hyper-parameters", msg, cap);
    used_stream(o, s);
    o->have_lr = lr != nullptr;
    o->have_wd = wd != nullptr;
    return KOALA_OK;
}

koala_status posterior(void *handle, const koala_config *cfg, void *const *params,
                       void *const *out, void *stream, char *msg, size_t cap) {
    Optimizer *o = static_cast<Optimizer *>(handle);
    const char *what = "koala_posterior";
    Entry entry(o, what, msg, cap);
    if (!entry.ok()) return entry.status();
    koala_status st = check_tensors(o, params, nullptr, what, msg, cap);
    const size_t elem = dtype_bytes(o->dtype);
    for (size_t i = 0; st == KOALA_OK && i < o->n_tensors(); ++i)
        st = check_slot(out[i], o->checked_out[i], elem, "out", static_cast<long>(i), o->device,
                        what, msg, cap);
    if (st != KOALA_OK) return st;
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    CallPointers p = call_pointers(o, params, nullptr);
    p.out = out;
    const cudaError_t e = launch_posterior(o->plan, *cfg, p, o->scalars(), s);
    if (e == cudaSuccess) used_stream(o, s);
    return launched(e, "koala_posterior: kernel launch", msg, cap);
}

const koala_plugin_ops kOps = {
    KOALA_PLUGIN_ABI_VERSION,
    probe,
    create,
    destroy,
    predict,
    partial_sums,
    finish,
    internal_sums,
    read_scalars,
    write_scalars,
    copy_buffers,
    bind_state,
    init_state,
    set_tensor_hyper,
    posterior,
};

}  // namespace

}  // namespace cuda
}  // namespace koala

// The plugin's one exported symbol (everything else is hidden:
// -fvisibility=hidden in cuda/meson.build, and plugin.map).
extern "C" __attribute__((visibility("default"))) const koala_plugin_ops *koala_cuda_plugin_ops(
    void) {
    return &koala::cuda::kOps;
}
