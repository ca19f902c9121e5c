// Picks the chunk kernels of the best instruction set this CPU has
// (cpu_kernels.cpp is built once per set; meson.build says which).
#include "cpu_kernels.h"

#if defined(KOALA_HAVE_AVX2_KERNELS)
#include <cpuid.h>
#endif

namespace koala {

namespace base {
const CpuKernels &kernels(koala_method method, koala_dtype dtype);
}
#if defined(KOALA_HAVE_AVX2_KERNELS)
namespace avx2 {
const CpuKernels &kernels(koala_method method, koala_dtype dtype);
}

namespace {
// F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports
// does not know "f16c" (an error at compile time), GCC's does; <cpuid.h>
// works with both.
bool has_f16c() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}
}  // namespace
#endif

const CpuKernels &cpu_kernels(koala_method method, koala_dtype dtype) {
#if defined(KOALA_HAVE_AVX2_KERNELS)
    static const bool has_avx2 = __builtin_cpu_supports("avx2") && has_f16c();
    if (has_avx2) return avx2::kernels(method, dtype);
#endif
    return base::kernels(method, dtype);
}

}  // namespace koala
