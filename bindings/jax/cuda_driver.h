// The three CUDA driver calls the GPU handlers need (copies of the small
// checkpoint blob between XLA's device buffers and host memory, and a stream
// wait), taken from libcuda.so.1 with dlopen on first GPU use.
//
// Why not link cudart: libkoala_jax.so must load on machines without CUDA
// (the CPU handlers live in it too), and any machine where JAX runs a GPU
// computation has the driver loaded already.
#pragma once

#include <cstddef>
#include <string>

namespace koala_jax::cuda {

// Each returns "" on success, else a message naming the call and the error.
std::string copy_to_host(void *host, const void *device, size_t bytes, void *stream);
std::string copy_to_device(void *device, const void *host, size_t bytes, void *stream);
std::string copy_on_device(void *dst, const void *src, size_t bytes, void *stream);
std::string synchronize(void *stream);

}  // namespace koala_jax::cuda
