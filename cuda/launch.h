// Kernel launches written so that a host C++ compiler can read them too.
//
//   KOALA_LAUNCH(grid, block, shmem, stream, kernel)(args...);
//
// is exactly `kernel<<<grid, block, shmem, stream>>>(args...)` under nvcc.
// Other compilers cannot parse <<< >>>; there the macro calls the CPU
// execution harness of tests/cuda_harness (its cuda_runtime.h declares
// koala_harness::launch, given the kernel's name for its reports), which
// is the only non-nvcc build of the kernels.
// The kernel comes last so that a template-id with commas
// (norms_kernel<T, CAP>) passes through __VA_ARGS__ whole; a grid or block
// expression with a top-level comma must be parenthesised.
#pragma once

#if defined(__CUDACC__)
#define KOALA_LAUNCH(grid, block, shmem, stream, ...) __VA_ARGS__<<<grid, block, shmem, stream>>>
#else
#define KOALA_LAUNCH(grid, block, shmem, stream, ...) \
    ::koala_harness::launch(#__VA_ARGS__, grid, block, shmem, stream, __VA_ARGS__)
#endif
