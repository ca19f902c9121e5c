// Where a call's buffers live, and how to move bytes there: host memory for
// the CPU handlers (plain memcpy), device memory on XLA's CUDA stream for
// the GPU handlers (through cuda_driver.h).
#pragma once

#include <cstring>
#include <string>

#include "cuda_driver.h"
#include "koala.h"

namespace koala_jax {

struct Memory {
    koala_memory kind;
    void *stream;  // cudaStream_t for KOALA_DEVICE, nullptr for KOALA_HOST

    bool host() const { return kind == KOALA_HOST; }

    // Each returns "" on success, else the reason.
    std::string to_host(void *dst, const void *src, size_t n) const {
        if (host()) return std::memcpy(dst, src, n), "";
        std::string e = cuda::copy_to_host(dst, src, n, stream);
        return e.empty() ? cuda::synchronize(stream) : e;
    }
    std::string from_host(void *dst, const void *src, size_t n) const {
        if (host()) return std::memcpy(dst, src, n), "";
        // Synchronous, so that `src` may be reused as soon as this returns.
        std::string e = cuda::copy_to_device(dst, src, n, stream);
        return e.empty() ? cuda::synchronize(stream) : e;
    }
    std::string copy(void *dst, const void *src, size_t n) const {
        if (host()) return std::memcpy(dst, src, n), "";
        return cuda::copy_on_device(dst, src, n, stream);  // stream-ordered
    }
};

}  // namespace koala_jax
