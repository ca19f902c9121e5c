// Picks the chunk kernels of the best instruction set this CPU has
// (cpu_kernels.cpp is built once per set; meson.build says which).
#include "cpu_kernels.h"

namespace koala {

namespace base {
const CpuKernels &kernels(koala_method method, koala_dtype dtype);
}
#if defined(KOALA_HAVE_AVX2_KERNELS)
namespace avx2 {
const CpuKernels &kernels(koala_method method, koala_dtype dtype);
}
#endif

const CpuKernels &cpu_kernels(koala_method method, koala_dtype dtype) {
#if defined(KOALA_HAVE_AVX2_KERNELS)
    static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    if (has_avx2) return avx2::kernels(method, dtype);
#endif
    return base::kernels(method, dtype);
}

}  // namespace koala
