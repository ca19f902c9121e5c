// What kernel code sees under the harness: the CUDA qualifiers, the vector
// types, the thread-index builtins, block barriers, warp collectives and
// atomics.
//
// Every CUDA thread of a block is a fiber on one OS thread and blocks run
// one at a time, so __shared__ is a function-local static and an atomic is
// a plain read-modify-write (no fiber is preempted). Barriers and warp
// collectives are checked rendezvous points: all threads of the block (all
// 32 lanes of the warp, full mask only) must arrive at the same call site;
// anything else is reported as a kernel fault instead of hanging. Each
// entry takes its call site as default arguments (__builtin_FILE/LINE), so
// a report names the line in the kernel.
#pragma once
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __constant__
#define __shared__ static
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __grid_constant__
// __restrict__ is a GNU C++ keyword already.

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// The vector types with CUDA's alignment (16-byte loads need it).
#define KOALA_HARNESS_VECTOR2(name, T, align)     \
    struct __attribute__((aligned(align))) name { \
        T x, y;                                   \
    };                                            \
    inline name make_##name(T x, T y) { return name{x, y}; }
#define KOALA_HARNESS_VECTOR4(name, T, align)     \
    struct __attribute__((aligned(align))) name { \
        T x, y, z, w;                             \
    };                                            \
    inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }
KOALA_HARNESS_VECTOR2(int2, int, 8)
KOALA_HARNESS_VECTOR2(uint2, unsigned int, 8)
KOALA_HARNESS_VECTOR2(float2, float, 8)
KOALA_HARNESS_VECTOR2(double2, double, 16)
KOALA_HARNESS_VECTOR4(int4, int, 16)
KOALA_HARNESS_VECTOR4(uint4, unsigned int, 16)
KOALA_HARNESS_VECTOR4(float4, float, 16)
#undef KOALA_HARNESS_VECTOR2
#undef KOALA_HARNESS_VECTOR4

constexpr int warpSize = 32;

namespace koala_harness {

// The builtins of the thread that is running now; the block scheduler
// rewrites them at every fiber switch.
struct Builtins {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};
extern KOALA_HARNESS_API Builtins builtins;

enum class Barrier { kSync, kOr, kAnd, kCount };
enum class Collective { kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncWarp };

// Block barrier: returns the reduction of pred over the block (kSync: 0).
KOALA_HARNESS_API int block_barrier(Barrier kind, int pred, const char *file, int line);
// Warp collective: lane l contributes `value` and `arg` (source lane,
// delta or lane mask; the predicate of votes) and gets the 64 bits of its
// source lane (shuffles) or the vote over the warp.
KOALA_HARNESS_API uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int arg,
                                           int width, const char *file, int line);

template <class T>
uint64_t to_bits(T v) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                  "warp shuffles move at most 8 bytes of a trivially copyable type");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    return b;
}
template <class T>
T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}

}  // namespace koala_harness

#define threadIdx (static_cast<const uint3 &>(::koala_harness::builtins.thread_idx))
#define blockIdx (static_cast<const uint3 &>(::koala_harness::builtins.block_idx))
#define blockDim (static_cast<const dim3 &>(::koala_harness::builtins.block_dim))
#define gridDim (static_cast<const dim3 &>(::koala_harness::builtins.grid_dim))

inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::koala_harness::block_barrier(::koala_harness::Barrier::kSync, 0, file, line);
}
inline int __syncthreads_or(int pred, const char *file = __builtin_FILE(),
                            int line = __builtin_LINE()) {
    return ::koala_harness::block_barrier(::koala_harness::Barrier::kOr, pred, file, line);
}
inline int __syncthreads_and(int pred, const char *file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
    return ::koala_harness::block_barrier(::koala_harness::Barrier::kAnd, pred, file, line);
}
inline int __syncthreads_count(int pred, const char *file = __builtin_FILE(),
                               int line = __builtin_LINE()) {
    return ::koala_harness::block_barrier(::koala_harness::Barrier::kCount, pred, file, line);
}

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
              const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::koala_harness::from_bits<T>(::koala_harness::warp_collective(
        ::koala_harness::Collective::kShflIdx, mask, ::koala_harness::to_bits(var), src_lane, width,
        file, line));
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::koala_harness::from_bits<T>(::koala_harness::warp_collective(
        ::koala_harness::Collective::kShflUp, mask, ::koala_harness::to_bits(var),
        static_cast<int>(delta), width, file, line));
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::koala_harness::from_bits<T>(::koala_harness::warp_collective(
        ::koala_harness::Collective::kShflDown, mask, ::koala_harness::to_bits(var),
        static_cast<int>(delta), width, file, line));
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                  const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::koala_harness::from_bits<T>(::koala_harness::warp_collective(
        ::koala_harness::Collective::kShflXor, mask, ::koala_harness::to_bits(var), lane_mask,
        width, file, line));
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    return static_cast<unsigned>(::koala_harness::warp_collective(
        ::koala_harness::Collective::kBallot, mask, 0, pred != 0, warpSize, file, line));
}
inline int __any_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return static_cast<int>(::koala_harness::warp_collective(
        ::koala_harness::Collective::kAny, mask, 0, pred != 0, warpSize, file, line));
}
inline int __all_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return static_cast<int>(::koala_harness::warp_collective(
        ::koala_harness::Collective::kAll, mask, 0, pred != 0, warpSize, file, line));
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
    ::koala_harness::warp_collective(::koala_harness::Collective::kSyncWarp, mask, 0, 0, warpSize,
                                     file, line);
}

// Fences order nothing between fibers of one OS thread; they stay compiler
// barriers so that the code around them is compiled as written.
inline void __threadfence() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

template <class T>
T __ldg(const T *p) {
    return *p;
}

// Atomics: only one fiber runs at a time and none is preempted, so a plain
// read-modify-write is atomic. The overload set is CUDA's.
#define KOALA_HARNESS_ATOMIC(name, T, expr) \
    inline T name(T *address, T val) {      \
        const T old = *address;             \
        *address = (expr);                  \
        return old;                         \
    }
KOALA_HARNESS_ATOMIC(atomicAdd, int, old + val)
KOALA_HARNESS_ATOMIC(atomicAdd, unsigned int, old + val)
KOALA_HARNESS_ATOMIC(atomicAdd, unsigned long long, old + val)
KOALA_HARNESS_ATOMIC(atomicAdd, float, old + val)
KOALA_HARNESS_ATOMIC(atomicAdd, double, old + val)
KOALA_HARNESS_ATOMIC(atomicMax, int, old > val ? old : val)
KOALA_HARNESS_ATOMIC(atomicMax, unsigned int, old > val ? old : val)
KOALA_HARNESS_ATOMIC(atomicMin, int, old < val ? old : val)
KOALA_HARNESS_ATOMIC(atomicMin, unsigned int, old < val ? old : val)
KOALA_HARNESS_ATOMIC(atomicExch, int, val)
KOALA_HARNESS_ATOMIC(atomicExch, unsigned int, val)
KOALA_HARNESS_ATOMIC(atomicExch, unsigned long long, val)
KOALA_HARNESS_ATOMIC(atomicExch, float, val)
#undef KOALA_HARNESS_ATOMIC

#define KOALA_HARNESS_ATOMIC_CAS(T)                    \
    inline T atomicCAS(T *address, T compare, T val) { \
        const T old = *address;                        \
        if (old == compare) *address = val;            \
        return old;                                    \
    }
KOALA_HARNESS_ATOMIC_CAS(int)
KOALA_HARNESS_ATOMIC_CAS(unsigned int)
KOALA_HARNESS_ATOMIC_CAS(unsigned long long)
#undef KOALA_HARNESS_ATOMIC_CAS
