// Where a call's buffers live and how to copy within that memory: host
// memory for the CPU handlers (memcpy), device memory on XLA's CUDA stream
// for the GPU handlers (cuMemcpyDtoDAsync, stream-ordered, no host
// synchronisation). There is deliberately no host<->device copy here: the
// GPU handlers never move state through the host.
#pragma once

#include <cstring>
#include <string>

#include "cuda_driver.h"
#include "koala.h"

namespace koala_jax {

struct Memory {
    koala_memory kind;
    void *stream;  // cudaStream_t for KOALA_DEVICE, nullptr for KOALA_HOST
    int device;    // XLA's device ordinal

    bool host() const { return kind == KOALA_HOST; }

    // "" on success, else the reason.
    std::string copy(void *dst, const void *src, size_t n) const {
        if (host()) return std::memcpy(dst, src, n), "";
        return cuda::copy_on_device(dst, src, n, stream);
    }
};

}  // namespace koala_jax
