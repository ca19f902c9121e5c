// What a koala_optimizer handle holds. Only src/ sees this struct.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kalman.h"
#include "koala.h"

namespace koala {

// A contiguous run of one tensor's elements: the unit of parallel work on
// the CPU. Chunk boundaries depend only on the layout, never on the thread
// count, so per-chunk partial sums reduced in chunk order give the same bits
// with any number of threads.
struct Chunk {
    size_t tensor;
    size_t begin;
    size_t count;
};

// Scratch the CPU step needs, allocated once at create so a step never
// allocates.
struct HostPlan {
    std::vector<Chunk> chunks;
    std::vector<BlockSums> chunk_sums;   // one per chunk
    std::vector<BlockSums> block_sums;   // one per tensor
    std::vector<BlockCoef> block_coef;   // one per tensor
    std::vector<unsigned char> has_grad; // one per tensor
};

// KOALA-M's per-tensor buffers on the host: velocity and slow weight average,
// carved out of one zeroed allocation.
struct HostBuffers {
    void *storage = nullptr;
    std::vector<void *> velocity;
    std::vector<void *> xbar;
};

}  // namespace koala

struct koala_optimizer {
    koala_config cfg;
    koala_dtype dtype;
    koala_memory memory;
    std::vector<size_t> sizes;
    size_t total_elements;

    uint64_t steps;      // completed updates
    bool predicted;      // true between koala_predict and koala_update

    // Host optimizers: the filter scalars, buffers and scratch.
    koala::FilterState filter;
    koala::HostBuffers buffers;
    koala::HostPlan plan;

    // Device optimizers: the CUDA plugin's handle (filter state on the device).
    void *device;
};

namespace koala {

inline size_t dtype_size(koala_dtype dtype) { return dtype == KOALA_FLOAT64 ? 8 : 4; }

// Per-tensor state buffers the method keeps (0 for KOALA-V, 2 for KOALA-M).
inline size_t buffers_per_tensor(koala_method method) { return method == KOALA_MOMENTUM ? 2 : 0; }

}  // namespace koala
