// How a chunk's elements are spread over a block's threads, and the loads
// and stores of one thread's group of elements.
//
// The elements of a chunk are cut into groups of V = 16 / sizeof(T)
// consecutive elements (4 float32, 2 float64, 8 bfloat16/float16: one
// 16-byte load of the parameters); thread t takes groups t, t + kThreads,
// t + 2 kThreads, ... in increasing order, and the partial group at a
// tensor's end (if any) goes last to the thread whose turn it is. Each array
// (parameters, gradients, each state buffer) is read with 16-byte vector
// loads where its pointer at the chunk is 16-byte aligned and with element
// loads otherwise; the assignment of elements to threads, and so the order
// of every sum, is the same either way: only the speed depends on the
// caller's alignment.
#pragma once
#include <string.h>

#include "layout.h"

namespace koala {
namespace cuda {

// The 16 bytes of one vector load. nvcc: uint4 (ld.global.v4). Host
// compilers (the CPU execution harness) need an aliasing-safe type with the
// same alignment, so that the alignment check still applies.
#if defined(__CUDACC__)
using Word16 = uint4;
#else
struct __attribute__((may_alias, aligned(16))) Word16 {
    unsigned int x, y, z, w;
};
#endif

template <class T>
constexpr int kGroupWidth = static_cast<int>(16 / sizeof(T));

__device__ __forceinline__ bool aligned16(const void *p) {
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Loads elements [0, V) of a group at p (V * sizeof(E) bytes, a multiple of
// 16), vectorised when `vec`.
template <int V, class E>
__device__ __forceinline__ void load_group(const E *p, bool vec, E (&out)[V]) {
    static_assert((V * sizeof(E)) % 16 == 0, "a group is whole 16-byte words");
    if (vec) {
        constexpr int kWords = static_cast<int>(V * sizeof(E) / 16);
        Word16 w[kWords];
#pragma unroll
        for (int k = 0; k < kWords; ++k) w[k] = reinterpret_cast<const Word16 *>(p)[k];
        memcpy(out, w, sizeof w);
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) out[j] = p[j];
    }
}

template <int V, class E>
__device__ __forceinline__ void store_group(E *p, bool vec, const E (&in)[V]) {
    if (vec) {
        constexpr int kWords = static_cast<int>(V * sizeof(E) / 16);
        Word16 w[kWords];
        memcpy(w, in, sizeof w);
#pragma unroll
        for (int k = 0; k < kWords; ++k) reinterpret_cast<Word16 *>(p)[k] = w[k];
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) p[j] = in[j];
    }
}

// Runs op over one chunk of n elements, this thread's share:
//   op.load(r, first, count)  reads elements [first, first + count) into r
//   op.run(r, first, count)   computes and stores them
// with count == V except for the partial group at the end. kIlp groups are
// loaded before any is run, so each thread keeps several loads in flight.
template <int V, class Op>
__device__ __forceinline__ void walk_chunk(Op &op, uint32_t n) {
    const uint32_t full = n / static_cast<uint32_t>(V);
    typename Op::Regs r[kIlp];
    for (uint32_t base = threadIdx.x; base < full; base += kThreads * kIlp) {
#pragma unroll
        for (int j = 0; j < kIlp; ++j) {
            const uint32_t g = base + static_cast<uint32_t>(j * kThreads);
            if (g < full) op.load(r[j], g * V, V);
        }
#pragma unroll
        for (int j = 0; j < kIlp; ++j) {
            const uint32_t g = base + static_cast<uint32_t>(j * kThreads);
            if (g < full) op.run(r[j], g * V, V);
        }
    }
    const uint32_t rest = n - full * static_cast<uint32_t>(V);
    if (rest != 0 && threadIdx.x == full % kThreads) {
        op.load(r[0], full * V, static_cast<int>(rest));
        op.run(r[0], full * V, static_cast<int>(rest));
    }
}

// A group of V elements of one array: vector access when `vec` and the
// group is whole, element access (only the first `count`) otherwise.
template <int V, class E>
__device__ __forceinline__ void load_part(const E *p, bool vec, int count, E (&out)[V]) {
    if (count == V) {
        load_group<V>(p, vec, out);
    } else {
        for (int j = 0; j < V; ++j) out[j] = j < count ? p[j] : E{};
    }
}
template <int V, class E>
__device__ __forceinline__ void store_part(E *p, bool vec, int count, const E (&in)[V]) {
    if (count == V) {
        store_group<V>(p, vec, in);
    } else {
        for (int j = 0; j < count; ++j) p[j] = in[j];
    }
}

}  // namespace cuda
}  // namespace koala
