// Fixed-order reductions inside one CUDA block: the same tree on every
// launch, so a sum has the same bits on every step and every replay.
#pragma once
#include "layout.h"

namespace koala {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Sums v over the 32 lanes of a warp (a shuffle-down tree); lane 0 holds
// the total. Every lane of the warp must call it.
__device__ __forceinline__ double warp_sum(double v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(kFullMask, v, off);
    return v;
}

// Sums each of v[0..N) over a block of kThreads threads (warp trees, then a
// tree over the warps) and hands every thread the totals. Every thread of
// the block must call it; a kernel may call it more than once.
template <int N>
__device__ __forceinline__ void block_sum(double (&v)[N]) {
    constexpr int kWarps = kThreads / 32;
    __shared__ double warp_part[kWarps][N];
    __shared__ double total[N];
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int warp = static_cast<int>(threadIdx.x) >> 5;
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = warp_sum(v[k]);
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < N; ++k) warp_part[warp][k] = v[k];
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const double s = warp_sum(lane < kWarps ? warp_part[lane][k] : 0.0);
            if (lane == 0) total[k] = s;
        }
    }
    __syncthreads();
    // The next call writes warp_part and total only after its first barrier,
    // which every thread reaches after reading these.
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = total[k];
}

// Sums values[0..n) over the block (thread t takes t, t + kThreads, ... in
// order, then block_sum); every thread gets the total. `values` is read
// through a volatile pointer: it holds other blocks' results, published with
// __threadfence() before the last-block handshake (finish_last_block).
__device__ __forceinline__ double block_sum_array(const double *values, size_t n) {
    const volatile double *p = values;
    double s[1] = {0.0};
    for (size_t i = threadIdx.x; i < n; i += kThreads) s[0] += p[i];
    block_sum(s);
    return s[0];
}

// The last-block handshake: every block of a (multi-launch) pass calls it
// once after writing its result; it returns true in exactly one block, the
// last to finish, which can then read every block's result. `*finished`
// counts the blocks and is reset by the last one for the next pass (graph
// replays included). Every thread of the block must call it.
__device__ __forceinline__ bool finish_last_block(unsigned int *finished, size_t total_blocks) {
    __shared__ int is_last;
    __threadfence();  // this block's results are visible device-wide before it is counted
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned int done = atomicAdd(finished, 1u);
        is_last = done + 1 == static_cast<unsigned int>(total_blocks);
        if (is_last) *finished = 0;
    }
    __syncthreads();
    const bool last = is_last != 0;
    if (last) __threadfence();  // order the reads of the other blocks' results after the count
    return last;
}

}  // namespace cuda
}  // namespace koala
