// Memory: the allocation registry and every copy and memset.
//
// An allocation of n bytes is its own mapping: [guard page][slack][n bytes
// rounded up to 256][guard page], the data 256-byte aligned (as cudaMalloc
// promises) and ending at the trailing guard page, so a kernel that runs
// off the end faults. In ASan builds the slack is poisoned, so even a
// one-byte overrun is reported. Freed allocations stay reserved and
// inaccessible (a later access is an illegal address, not someone else's
// data) and stay in the registry so that reports can say "freed".
//
// Copies are checked against the registry: a device-side range must lie
// inside one live allocation, and each end must be memory the copy kind
// allows (CUDA leaves a mismatch undefined). Pageable host memory cannot
// be bounds-checked here; ASan checks it.
#include "memory.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <map>
#include <vector>

#include "api.h"
#include "work.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace koala_harness {

namespace {

constexpr size_t kAlign = 256;

struct Allocation {
    char *base;
    size_t size;
    cudaMemoryType type;
    int device;
    char *map;
    size_t map_size;
    bool free_queued;  // a cudaFreeAsync waits in a stream for it
};

std::map<uintptr_t, Allocation> &live() {
    static std::map<uintptr_t, Allocation> &m = *new std::map<uintptr_t, Allocation>;
    return m;
}
std::map<uintptr_t, Allocation> &freed() {
    static std::map<uintptr_t, Allocation> &m = *new std::map<uintptr_t, Allocation>;
    return m;
}
std::vector<size_t> &used_bytes() {
    static std::vector<size_t> &v =
        *new std::vector<size_t>(static_cast<size_t>(device_count()), 0);
    return v;
}

size_t page_bytes() {
    static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return page;
}

const char *type_name(cudaMemoryType t) {
    switch (t) {
    case cudaMemoryTypeDevice: return "device";
    case cudaMemoryTypeManaged: return "managed";
    case cudaMemoryTypeHost: return "pinned host";
    default: return "unregistered";
    }
}

// The allocation of map whose mapping (guards included) contains p.
const Allocation *mapping_of(const std::map<uintptr_t, Allocation> &m, const void *p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = m.upper_bound(a + page_bytes() * 2);  // bases sit inside their mappings
    while (it != m.begin()) {
        --it;
        const Allocation &x = it->second;
        const uintptr_t lo = reinterpret_cast<uintptr_t>(x.map);
        if (a >= lo && a < lo + x.map_size) return &x;
        if (reinterpret_cast<uintptr_t>(x.base) + x.size + 2 * page_bytes() < a) break;
    }
    return nullptr;
}

std::string name_of(const Allocation &x) {
    return format("%s allocation %p (%zu bytes, device %d)", type_name(x.type),
                  static_cast<void *>(x.base), x.size, x.device);
}

cudaError_t allocate(void **out, size_t size, cudaMemoryType type) {
    *out = nullptr;
    if (size == 0) return cudaSuccess;  // the runtime hands out NULL for 0 bytes
    const int d = current_device();
    const bool on_device = type != cudaMemoryTypeHost;
    if (on_device && size > device_memory_bytes() - used_bytes()[static_cast<size_t>(d)])
        return cudaErrorMemoryAllocation;
    const size_t page = page_bytes();
    const size_t data = (size + kAlign - 1) / kAlign * kAlign;
    const size_t pages = (data + page - 1) / page * page;
    const size_t total = pages + 2 * page;
    void *m = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return cudaErrorMemoryAllocation;
    char *map = static_cast<char *>(m);
    if (mprotect(map + page, pages, PROT_READ | PROT_WRITE) != 0) {
        munmap(m, total);
        return cudaErrorMemoryAllocation;
    }
    char *base = map + page + pages - data;
#if defined(__SANITIZE_ADDRESS__)
    ASAN_POISON_MEMORY_REGION(map + page, static_cast<size_t>(base - (map + page)));
    ASAN_POISON_MEMORY_REGION(base + size, data - size);
#endif
    live().emplace(reinterpret_cast<uintptr_t>(base), Allocation{base, size, type, d, map, total, false});
    if (on_device) used_bytes()[static_cast<size_t>(d)] += size;
    *out = base;
    return cudaSuccess;
}

// Frees the allocation based at p; false if p is not one of `types`.
bool release(void *p, bool host) {
    auto it = live().find(reinterpret_cast<uintptr_t>(p));
    if (it == live().end() || (it->second.type == cudaMemoryTypeHost) != host) return false;
    Allocation x = it->second;
    live().erase(it);
    if (x.type != cudaMemoryTypeHost) used_bytes()[static_cast<size_t>(x.device)] -= x.size;
    // Keep the range reserved and inaccessible; give its memory back.
    mmap(x.map, x.map_size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1,
         0);
    freed()[reinterpret_cast<uintptr_t>(x.base)] = x;
    return true;
}

Side side_of(cudaMemoryType t) {
    switch (t) {
    case cudaMemoryTypeDevice: return Side::kDevice;
    case cudaMemoryTypeManaged: return Side::kManaged;
    default: return Side::kPinned;
    }
}

const char *kind_name(cudaMemcpyKind k) {
    switch (k) {
    case cudaMemcpyHostToHost: return "HostToHost";
    case cudaMemcpyHostToDevice: return "HostToDevice";
    case cudaMemcpyDeviceToHost: return "DeviceToHost";
    case cudaMemcpyDeviceToDevice: return "DeviceToDevice";
    default: return "Default";
    }
}

// Checks one copy; on a violation reports it (naming `call`) and returns
// the error. *src_side / *dst_side tell the caller what to stage.
cudaError_t check_copy(const char *call, void *dst, const void *src, size_t count,
                       cudaMemcpyKind kind, Side *dst_side, Side *src_side) {
    if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault)
        return cudaErrorInvalidMemcpyDirection;
    std::string why;
    *dst_side = classify(dst, count, &why);
    if (*dst_side == Side::kInvalid) {
        violation("%s of %zu bytes: dst %s", call, count, why.c_str());
        return cudaErrorInvalidValue;
    }
    *src_side = classify(src, count, &why);
    if (*src_side == Side::kInvalid) {
        violation("%s of %zu bytes: src %s", call, count, why.c_str());
        return cudaErrorInvalidValue;
    }
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind != cudaMemcpyDefault) {
        const bool dst_ok = dst_dev ? device_accessible(*dst_side) : host_accessible(*dst_side);
        const bool src_ok = src_dev ? device_accessible(*src_side) : host_accessible(*src_side);
        if (!dst_ok || !src_ok) {
            violation(
                "%s(%s) of %zu bytes: %s is %s, which the copy kind does not allow "
                "(undefined in CUDA)",
                call, kind_name(kind), count, dst_ok ? "src" : "dst",
                describe(dst_ok ? src : dst).c_str());
            return cudaErrorInvalidValue;
        }
    }
    return cudaSuccess;
}

// A copy as stream work. A pageable source is staged when the copy is
// issued (the runtime copies it to a staging buffer before returning), so
// the caller may reuse it; every other end is read or written when the
// copy runs. Both ends are checked again then: a graph can replay a copy
// after its memory was freed.
class CopyWork final : public Work {
public:
    CopyWork(int device, void *dst, const void *src, size_t count, Side dst_side, Side src_side)
        : Work(device), dst_(dst), src_(src), count_(count), dst_side_(dst_side) {
        if (src_side == Side::kPageable) {
            staged_.assign(static_cast<const unsigned char *>(src),
                           static_cast<const unsigned char *>(src) + count);
            src_ = nullptr;
        }
    }
    cudaGraphNodeType node_type() const override { return cudaGraphNodeTypeMemcpy; }
    bool capturable(std::string *why) const override {
        if (src_ && dst_side_ != Side::kPageable) return true;
        *why = "a copy from or to pageable host memory cannot be captured into a graph";
        return false;
    }
    void execute() override {
        std::string why;
        if (classify(dst_, count_, &why) == Side::kInvalid ||
            (src_ && classify(src_, count_, &why) == Side::kInvalid)) {
            violation("a queued or replayed copy of %zu bytes touches memory that is gone: %s",
                      count_, why.c_str());
            set_sticky_error(device(), cudaErrorIllegalAddress);
            return;
        }
        if (count_) memcpy(dst_, src_ ? src_ : staged_.data(), count_);
    }

private:
    void *dst_;
    const void *src_;
    size_t count_;
    Side dst_side_;
    std::vector<unsigned char> staged_;
};

class SetWork final : public Work {
public:
    SetWork(int device, void *dst, int value, size_t count)
        : Work(device), dst_(dst), value_(value), count_(count) {}
    cudaGraphNodeType node_type() const override { return cudaGraphNodeTypeMemset; }
    bool capturable(std::string *) const override { return true; }
    void execute() override {
        std::string why;
        if (classify(dst_, count_, &why) == Side::kInvalid) {
            violation("a queued or replayed memset of %zu bytes touches memory that is gone: %s",
                      count_, why.c_str());
            set_sticky_error(device(), cudaErrorIllegalAddress);
            return;
        }
        if (count_) memset(dst_, value_, count_);
    }

private:
    void *dst_;
    int value_;
    size_t count_;
};

// cudaFreeAsync as stream work: the allocation goes when the stream gets
// there, after the work queued before it.
class FreeWork final : public Work {
public:
    FreeWork(int device, void *p) : Work(device), p_(p) {}
    cudaGraphNodeType node_type() const override { return cudaGraphNodeTypeMemFree; }
    bool capturable(std::string *why) const override {
        *why = "a stream-ordered free (a graph memory node) is not modelled in captures";
        return false;
    }
    void execute() override { release(p_, false); }

private:
    void *p_;
};

cudaError_t memset_on(const char *call, void *dst, int value, size_t count, cudaStream_t stream) {
    std::string why;
    const Side side = classify(dst, count, &why);
    if (side == Side::kInvalid) {
        violation("%s of %zu bytes: %s", call, count, why.c_str());
        return cudaErrorInvalidValue;
    }
    if (count > 0 && !device_accessible(side)) {
        violation("%s of %zu bytes at %s: device or managed memory expected", call, count,
                  describe(dst).c_str());
        return cudaErrorInvalidValue;
    }
    cudaError_t e = cudaSuccess;
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return e;
    return submit(s, std::make_shared<SetWork>(s->device, dst, value, count));
}

}  // namespace

Side classify(const void *p, size_t bytes, std::string *why) {
    if (bytes == 0) return Side::kPageable;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (const Allocation *x = mapping_of(live(), p)) {
        const uintptr_t lo = reinterpret_cast<uintptr_t>(x->base);
        if (a < lo) {
            *why = format("%p is %zu bytes before %s", p, static_cast<size_t>(lo - a),
                          name_of(*x).c_str());
            return Side::kInvalid;
        }
        if (a - lo >= x->size || bytes > x->size - (a - lo)) {
            *why = format("%p + %zu bytes runs %zu bytes past the end of %s", p, bytes,
                          static_cast<size_t>(a - lo) + bytes - x->size, name_of(*x).c_str());
            return Side::kInvalid;
        }
        return side_of(x->type);
    }
    if (const Allocation *x = mapping_of(freed(), p)) {
        *why = format("%p is in %s, freed earlier", p, name_of(*x).c_str());
        return Side::kInvalid;
    }
    return Side::kPageable;
}

std::string describe(const void *p) {
    if (const Allocation *x = mapping_of(live(), p)) {
        const intptr_t off = reinterpret_cast<intptr_t>(p) - reinterpret_cast<intptr_t>(x->base);
        return format("%s %+ld", name_of(*x).c_str(), static_cast<long>(off));
    }
    if (const Allocation *x = mapping_of(freed(), p))
        return format("in %s, freed earlier", name_of(*x).c_str());
    return "host memory not registered with CUDA";
}

void free_device_memory(int device) {
    std::vector<void *> mine;
    for (const auto &kv : live())
        if (kv.second.device == device) mine.push_back(kv.second.base);
    for (void *p : mine)
        release(p, live().at(reinterpret_cast<uintptr_t>(p)).type == cudaMemoryTypeHost);
}

void report_leaks() {
    size_t n = 0, bytes = 0;
    for (const auto &kv : live()) {
        // Freed in stream order and never synchronised since: freed when
        // the stream gets there, as on a GPU.
        if (kv.second.free_queued) continue;
        ++n;
        bytes += kv.second.size;
    }
    if (n == 0) return;
    for (const auto &kv : live())
        if (!kv.second.free_queued) {
            violation("%zu allocation(s) (%zu bytes) never freed, the first: %s", n, bytes,
                      name_of(kv.second).c_str());
            break;
        }
}

}  // namespace koala_harness

using namespace koala_harness;

extern "C" {

cudaError_t koala_harness_cudaMalloc(const void *instance, void **devPtr, size_t size) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!devPtr) return call.done(cudaErrorInvalidValue);
    e = check_unsafe_call("cudaMalloc");
    if (e != cudaSuccess) return call.done(e);
    return call.done(allocate(devPtr, size, cudaMemoryTypeDevice));
}

cudaError_t koala_harness_cudaMallocManaged(const void *instance, void **devPtr, size_t size,
                                            unsigned int flags) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!devPtr || (flags != cudaMemAttachGlobal && flags != cudaMemAttachHost))
        return call.done(cudaErrorInvalidValue);
    e = check_unsafe_call("cudaMallocManaged");
    if (e != cudaSuccess) return call.done(e);
    return call.done(allocate(devPtr, size, cudaMemoryTypeManaged));
}

cudaError_t koala_harness_cudaHostAlloc(const void *instance, void **pHost, size_t size,
                                        unsigned int flags) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!pHost || (flags & ~0x7u)) return call.done(cudaErrorInvalidValue);
    e = check_unsafe_call("cudaHostAlloc");
    if (e != cudaSuccess) return call.done(e);
    return call.done(allocate(pHost, size, cudaMemoryTypeHost));
}

cudaError_t koala_harness_cudaMallocHost(const void *instance, void **ptr, size_t size) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!ptr) return call.done(cudaErrorInvalidValue);
    e = check_unsafe_call("cudaMallocHost");
    if (e != cudaSuccess) return call.done(e);
    return call.done(allocate(ptr, size, cudaMemoryTypeHost));
}

// Freeing synchronises: queued work runs first.
cudaError_t koala_harness_cudaFree(const void *instance, void *devPtr) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!devPtr) return cudaSuccess;
    e = check_unsafe_call("cudaFree");
    if (e != cudaSuccess) return call.done(e);
    drain();
    if (!release(devPtr, false)) {  // (a queued cudaFreeAsync of it ran in the drain)
        violation("cudaFree(%p): not the start of a live device or managed allocation (%s)", devPtr,
                  describe(devPtr).c_str());
        return call.done(cudaErrorInvalidValue);
    }
    return call.done(sticky_error(current_device()));
}

// Stream-ordered allocation: the memory is handed out at once (a legal
// schedule: it is usable from this point of the stream on); not modelled
// in captures (graph memory nodes). Not a potentially unsafe call.
cudaError_t koala_harness_cudaMallocAsync(const void *instance, void **devPtr, size_t size,
                                          cudaStream_t stream) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!devPtr) return call.done(cudaErrorInvalidValue);
    if (!memory_pools()) return call.done(cudaErrorNotSupported);
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return call.done(e);
    if (s->capture) {
        violation("cudaMallocAsync on capturing stream %p: graph memory nodes are not modelled",
                  static_cast<void *>(s));
        invalidate(*s->capture, "cudaMallocAsync (graph memory nodes are not modelled)");
        return call.done(cudaErrorStreamCaptureUnsupported);
    }
    return call.done(allocate(devPtr, size, cudaMemoryTypeDevice));
}

cudaError_t koala_harness_cudaFreeAsync(const void *instance, void *devPtr, cudaStream_t stream) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!devPtr) return cudaSuccess;
    if (!memory_pools()) return call.done(cudaErrorNotSupported);
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return call.done(e);
    auto it = live().find(reinterpret_cast<uintptr_t>(devPtr));
    if (it == live().end() || it->second.type == cudaMemoryTypeHost || it->second.free_queued) {
        violation("cudaFreeAsync(%p): not the start of a live device allocation (%s)", devPtr,
                  it != live().end() && it->second.free_queued ? "its free is queued already"
                                                              : describe(devPtr).c_str());
        return call.done(cudaErrorInvalidValue);
    }
    e = submit(s, std::make_shared<FreeWork>(s->device, devPtr));
    if (e == cudaSuccess) it->second.free_queued = true;
    return call.done(e);
}

cudaError_t koala_harness_cudaFreeHost(const void *instance, void *ptr) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!ptr) return cudaSuccess;
    e = check_unsafe_call("cudaFreeHost");
    if (e != cudaSuccess) return call.done(e);
    drain();
    if (!release(ptr, true)) {
        violation("cudaFreeHost(%p): not the start of a live pinned allocation (%s)", ptr,
                  describe(ptr).c_str());
        return call.done(cudaErrorInvalidValue);
    }
    return call.done(sticky_error(current_device()));
}

cudaError_t koala_harness_cudaMemGetInfo(const void *instance, size_t *free, size_t *total) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!free || !total) return call.done(cudaErrorInvalidValue);
    *total = device_memory_bytes();
    *free = *total - used_bytes()[static_cast<size_t>(current_device())];
    return cudaSuccess;
}

// Host pointers the runtime does not know are cudaMemoryTypeUnregistered
// (device -2, the runtime's "no device"), as since CUDA 11.
cudaError_t koala_harness_cudaPointerGetAttributes(const void *instance,
                                                   struct cudaPointerAttributes *attributes,
                                                   const void *ptr) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!attributes) return call.done(cudaErrorInvalidValue);
    *attributes = cudaPointerAttributes{};
    void *p = const_cast<void *>(ptr);
    const Allocation *x = mapping_of(live(), ptr);
    const uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
    if (!x || a < reinterpret_cast<uintptr_t>(x->base) ||
        a >= reinterpret_cast<uintptr_t>(x->base) + x->size) {
        attributes->type = cudaMemoryTypeUnregistered;
        attributes->device = -2;
        attributes->hostPointer = p;
        return cudaSuccess;
    }
    attributes->type = x->type;
    attributes->device = x->device;
    attributes->devicePointer = p;
    attributes->hostPointer = x->type == cudaMemoryTypeDevice ? nullptr : p;
    return cudaSuccess;
}

// Synchronous: earlier work runs first, then the copy.
cudaError_t koala_harness_cudaMemcpy(const void *instance, void *dst, const void *src, size_t count,
                                     enum cudaMemcpyKind kind) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    e = check_unsafe_call("cudaMemcpy");
    if (e == cudaSuccess) e = check_legacy_stream(current_device(), "cudaMemcpy");
    if (e != cudaSuccess) return call.done(e);
    Side ds, ss;
    e = check_copy("cudaMemcpy", dst, src, count, kind, &ds, &ss);
    if (e != cudaSuccess) return call.done(e);
    drain();
    e = sticky_error(current_device());
    if (e != cudaSuccess) return call.done(e);
    if (count) memcpy(dst, src, count);
    return cudaSuccess;
}

cudaError_t koala_harness_cudaMemcpyAsync(const void *instance, void *dst, const void *src,
                                          size_t count, enum cudaMemcpyKind kind,
                                          cudaStream_t stream) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    Side ds, ss;
    e = check_copy("cudaMemcpyAsync", dst, src, count, kind, &ds, &ss);
    if (e != cudaSuccess) return call.done(e);
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return call.done(e);
    return call.done(submit(s, std::make_shared<CopyWork>(s->device, dst, src, count, ds, ss)));
}

// cudaMemset is asynchronous for device memory: legacy-stream work.
cudaError_t koala_harness_cudaMemset(const void *instance, void *devPtr, int value, size_t count) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    return call.done(memset_on("cudaMemset", devPtr, value, count, nullptr));
}

cudaError_t koala_harness_cudaMemsetAsync(const void *instance, void *devPtr, int value,
                                          size_t count, cudaStream_t stream) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    return call.done(memset_on("cudaMemsetAsync", devPtr, value, count, stream));
}

}  // extern "C"
