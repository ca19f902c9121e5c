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
    CUresult (*memcpy_dtod)(CUdeviceptr, CUdeviceptr, size_t, CUstream) = nullptr;
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
        if (!bind(lib, "cuMemcpyDtoDAsync_v2", &d.memcpy_dtod) ||
            !bind(lib, "cuGetErrorString", &d.get_error_string))
            d.load_error = "libcuda.so.1 lacks a driver function koala.jax needs";
    });
    return d;
}

CUdeviceptr dptr(const void *p) { return static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(p)); }

}  // namespace

std::string copy_on_device(void *dst, const void *src, size_t bytes, void *stream) {
    const Driver &d = driver();
    if (!d.load_error.empty()) return d.load_error;
    const CUresult r = d.memcpy_dtod(dptr(dst), dptr(src), bytes, stream);
    if (r == 0) return "";
    const char *text = nullptr;
    d.get_error_string(r, &text);
    return "cuMemcpyDtoDAsync failed: CUDA driver error " + std::to_string(r) + " (" +
           (text ? text : "?") + ")";
}

}  // namespace koala_jax::cuda
