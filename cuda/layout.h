// How the device path cuts an optimizer's tensors into fixed chunks, the
// per-call pointer tables its multi-tensor kernels take by value, and the
// device tables and scratch every kernel reads. Shared by the kernels
// (kernels.cu) and the plugin entries (plugin.cu).
//
// One CUDA block handles one chunk. Chunk boundaries depend only on the
// layout fixed at koala_create, and every partial sum is reduced in an
// order fixed by the layout, so every step and every graph replay gives
// the same bits.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "method.h"

namespace koala {
namespace cuda {

// Elements per chunk (one CUDA block): 64 per thread. Small enough that a
// ResNet-18 layout (11.7M parameters) gives ~700 blocks, a wave on an
// H100; large enough that a 1B-parameter layout's per-chunk sums (61K
// chunks) stay a few MB for the one-block scalar kernel to reduce. A
// multiple of every group width below, so each chunk starts a group.
constexpr uint32_t kChunkElements = 1u << 14;
// Threads per block of the chunk kernels.
constexpr int kThreads = 256;
// Threads of the one-block scalar kernel (a warp per global tensor for the
// reduction, a thread per global tensor for the filter algebra).
constexpr int kScalarThreads = 512;
// Groups each thread has in flight per loop trip.
constexpr int kIlp = 2;

// One chunk: `count` elements of local tensor `tensor` from its element
// `begin` (64-bit: tensors over 2^32 elements are real).
struct Chunk {
    uint64_t begin;
    uint32_t tensor;
    uint32_t count;
};

// One tensor's pointers for one call: parameters, gradients (may be NULL)
// and its two state buffers (KOALA-M: v, xbar; KOALA++: v, H'; NULL for
// KOALA-V). koala_posterior puts its output in s1.
struct TensorPtrs {
    void *x;
    const void *g;
    void *s0;
    void *s1;
};

// The pointers of up to CAP consecutive local tensors, passed BY VALUE as a
// kernel parameter: no device allocation and no host-to-device copy per
// call (under JAX the caller-owned state moves on every call), and a step
// captured in a CUDA graph replays with the pointers it was captured with.
// Kernel parameters may hold 32764 bytes since CUDA 12.1 (R530 drivers;
// the project's floor is R535). Layouts of up to kSmallCap tensors (most
// models) launch the small table; larger ones the large table, several
// launches per kernel beyond kLargeCap tensors.
template <int CAP>
struct TensorTable {
    TensorPtrs t[CAP];
};
constexpr int kSmallCap = 128;  // 4 KiB
constexpr int kLargeCap = 960;  // 30 KiB, leaving room for the other parameters

// A run of consecutive local tensors that one launch covers, and their
// chunks (chunks are in tensor order, so a group's chunks are contiguous).
struct Group {
    size_t first_tensor;
    size_t n_tensors;
    size_t first_chunk;
    size_t n_chunks;
};

// What the scalar kernel tells the apply kernel of the same update.
struct StepControl {
    uint32_t noise_step;  // stochastic rounding step of this update: 2 * steps (mod 2^32)
    int skipped;          // the step was skipped on the device (nothing is applied)
};

// The device memory one optimizer's kernels share, allocated at create.
struct DeviceTables {
    const Chunk *chunks;            // [n_chunks], in tensor order
    const uint64_t *tensor_chunks;  // [n_tensors + 1]: tensor t's chunks are
                                    // [tensor_chunks[t], tensor_chunks[t + 1])
    const uint64_t *global_index;   // [n_tensors]: local tensor -> global tensor
    const uint64_t *piece_first;    // [n_global + 1]: global tensor j's pieces are
    const uint64_t *pieces;         //   pieces[piece_first[j] .. piece_first[j + 1]),
                                    //   local tensors in increasing order
    unsigned char *has_grad;        // [n_tensors]: grads[t] != NULL in this update
    double *chunk_sums;             // [n_chunks * K]: each chunk's sums (sums.h order)
    double *chunk_d2;               // [n_chunks]: KOALA-M's per-chunk |xbar - x|^2
    Coef *coef;                     // [n_global]: what the apply kernel does
    StepControl *control;           // [1]
    unsigned int *finished;         // [1]: blocks done, for the last-block reductions
    double *sums;                   // [sums_count]: the plugin's own sums buffer
    double *tensor_lr;              // [n_global]: per-tensor lr multipliers (if set)
    double *tensor_wd;              // [n_global]: per-tensor weight decays (if set)
};

}  // namespace cuda
}  // namespace koala
