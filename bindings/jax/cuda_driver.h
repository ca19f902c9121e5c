// The one CUDA driver call the GPU handlers need, a stream-ordered
// device-to-device copy (the scratch copy of the scalar block a mirror
// optimizer runs on, and the copy of an input into its output should XLA
// ever not alias them), taken from libcuda.so.1 with dlopen on first use.
//
// Why not link cudart: libkoala_jax.so must load on machines without CUDA
// (the CPU handlers live in it too), and any machine where JAX runs a GPU
// computation has the driver loaded already. The CUDA harness of the tests
// (tests/jax/gpu_copy_count) substitutes this file's functions to count the
// calls.
#pragma once

#include <cstddef>
#include <string>

namespace koala_jax::cuda {

// "" on success, else a message naming the call and the error.
std::string copy_on_device(void *dst, const void *src, size_t bytes, void *stream);

}  // namespace koala_jax::cuda
