#include "cuda_driver.h"

#include <dlfcn.h>

#include <cstdint>
#include <mutex>

namespace koala_jax::cuda {
namespace {

// Driver API types as cuda.h declares them (ABI-stable since CUDA 3.2).
using CUresult = int;
using CUdeviceptr = unsigned long long;
using CUstream = void *;

struct Driver {
    CUresult (*memcpy_dtoh)(void *, CUdeviceptr, size_t, CUstream) = nullptr;
    CUresult (*memcpy_htod)(CUdeviceptr, const void *, size_t, CUstream) = nullptr;
    CUresult (*memcpy_dtod)(CUdeviceptr, CUdeviceptr, size_t, CUstream) = nullptr;
    CUresult (*stream_synchronize)(CUstream) = nullptr;
    CUresult (*get_error_string)(CUresult, const char **) = nullptr;
    std::string load_error;
};

template <typename F>
bool bind(void *lib, const char *name, F *fn) {
    *fn = reinterpret_cast<F>(dlsym(lib, name));
    return *fn != nullptr;
}

const Driver &driver() {
    static Driver d;
    static std::once_flag once;
    std::call_once(once, [] {
        void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            const char *why = dlerror();
            d.load_error = std::string("cannot load libcuda.so.1: ") + (why ? why : "?");
            return;
        }
        if (!bind(lib, "cuMemcpyDtoHAsync_v2", &d.memcpy_dtoh) ||
            !bind(lib, "cuMemcpyHtoDAsync_v2", &d.memcpy_htod) ||
            !bind(lib, "cuMemcpyDtoDAsync_v2", &d.memcpy_dtod) ||
            !bind(lib, "cuStreamSynchronize", &d.stream_synchronize) ||
            !bind(lib, "cuGetErrorString", &d.get_error_string))
            d.load_error = "libcuda.so.1 lacks a driver function koala.jax needs";
    });
    return d;
}

std::string check(CUresult r, const char *call) {
    if (r == 0) return "";
    const char *text = nullptr;
    driver().get_error_string(r, &text);
    return std::string(call) + " failed: CUDA driver error " + std::to_string(r) + " (" +
           (text ? text : "?") + ")";
}

CUdeviceptr dptr(const void *p) { return static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(p)); }

}  // namespace

std::string copy_to_host(void *host, const void *device, size_t bytes, void *stream) {
    const Driver &d = driver();
    if (!d.load_error.empty()) return d.load_error;
    return check(d.memcpy_dtoh(host, dptr(device), bytes, stream), "cuMemcpyDtoHAsync");
}

std::string copy_to_device(void *device, const void *host, size_t bytes, void *stream) {
    const Driver &d = driver();
    if (!d.load_error.empty()) return d.load_error;
    return check(d.memcpy_htod(dptr(device), host, bytes, stream), "cuMemcpyHtoDAsync");
}

std::string copy_on_device(void *dst, const void *src, size_t bytes, void *stream) {
    const Driver &d = driver();
    if (!d.load_error.empty()) return d.load_error;
    return check(d.memcpy_dtod(dptr(dst), dptr(src), bytes, stream), "cuMemcpyDtoDAsync");
}

std::string synchronize(void *stream) {
    const Driver &d = driver();
    if (!d.load_error.empty()) return d.load_error;
    return check(d.stream_synchronize(stream), "cuStreamSynchronize");
}

}  // namespace koala_jax::cuda
