// KOALA_HD marks functions compiled for both the CPU and CUDA paths, so the
// host tests exercise the very expressions the GPU runs.
#pragma once
#if defined(__CUDACC__)
#define KOALA_HD __host__ __device__ __forceinline__
#else
#define KOALA_HD inline
#endif
