// The CPU path's chunk kernels: the per-element loops of every method and
// dtype over one contiguous run of a tensor, built once per instruction set
// (cpu_kernels.cpp is compiled for AVX2 and for the baseline) and picked at
// load time. cpu_path.cpp schedules them over chunks and threads.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "method.h"

namespace koala {

// One chunk of one tensor: element pointers at the chunk's first element.
struct ChunkArgs {
    void *x;          // parameters
    const void *g;    // gradients (non-null in pass 1 and 2)
    void *s0, *s1;    // state buffers (KOALA-M: v, xbar; KOALA++: v, H'), else null
    size_t n;         // elements
    double wd;        // the tensor's weight decay
    uint64_t first;   // index of the chunk's first element within its tensor
    uint32_t noise;   // stochastic rounding key of (seed, step, tensor), see numeric.h
    uint32_t noise_next;  // fused KOALA-M: the key of the next predict's rounding
    int flag;         // KOALA-M: the tensor's TensorFlag; KOALA++: 1 on a first visit
};

// Per-call constants of pass 2 and of KOALA-M's predict.
struct StepConstants {
    double q, sigma0, a;  // KOALA++'s Q and sigma0; KOALA-M's velocity decay
    int fused;            // KOALA-M fused_predict
    int stochastic;       // 16-bit dtypes: stochastic rounding of the stored parameters
};

struct CpuKernels {
    // Pass 1: the method's sums (sums.h, without the presence slot) into out.
    void (*sums)(const ChunkArgs &c, double *out);
    // Pass 2: the update of every element; KOALA-M returns the next
    // predict's sum of (xbar - x)^2 over the chunk, the others 0.
    double (*step)(const ChunkArgs &c, const Coef &coef, const StepConstants &k);
    // KOALA-M predict (x <- x + v, v <- a v, per c.flag); returns the chunk's
    // sum of (xbar - x)^2 where the update did not count it.
    double (*predict)(const ChunkArgs &c, const StepConstants &k);
};

// The kernels of (method, dtype), for the best instruction set of this CPU.
const CpuKernels &cpu_kernels(koala_method method, koala_dtype dtype);

}  // namespace koala
