// The layout an optimizer is created with: its local tensors, where they sit
// in the whole model (sharding), and the chunks the CPU path cuts them into.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "koala.h"

namespace koala {

struct Layout {
    std::vector<size_t> sizes;         // elements of each local tensor
    std::vector<size_t> global_index;  // local tensor -> global tensor
    size_t n_global = 0;
    uint64_t global_elements = 0;      // elements of the whole model
    uint64_t local_elements = 0;       // sum of sizes
    bool sharded = false;              // made by koala_create_sharded
    koala_allreduce_fn allreduce = nullptr;
    void *allreduce_user = nullptr;

    size_t n_tensors() const { return sizes.size(); }
};

// Checks and copies what koala_create / koala_create_sharded were given
// (shard == nullptr for koala_create). INVALID_ARGUMENT with a message
// naming the argument.
koala_status read_layout(size_t n_tensors, const size_t *sizes, const koala_shard *shard,
                         int dtype, const char *what, Layout *out);

// A contiguous run of one tensor's elements: the unit of parallel work on
// the CPU. Chunk boundaries depend only on the layout, never on the thread
// count, so per-chunk partial sums reduced in chunk order give the same bits
// with any number of threads.
struct Chunk {
    size_t tensor;
    size_t begin;
    size_t count;
};

constexpr size_t kChunkElements = size_t(1) << 15;

}  // namespace koala
