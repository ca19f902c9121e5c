// How the device path cuts all tensors of one optimizer into fixed-size
// chunks, and the tables its multi-tensor kernels read. Shared by the
// kernels (kernels.cu) and the plugin entries (plugin.cu).
//
// One CUDA block handles one chunk. Chunk boundaries depend only on the
// layout fixed at koala_create, so every per-chunk partial sum, and the
// order in which they are added up, is the same on every step and every
// replay: the reductions are deterministic.
#pragma once
#include <stddef.h>
#include <stdint.h>

namespace koala {
namespace cuda {

// Elements per chunk (one CUDA block). 32 Ki float32 = 128 KiB of one
// array: big enough that block start-up is amortised, small enough that a
// ResNet-18 layout (11.2M parameters) still gives a few hundred blocks.
constexpr uint32_t kChunkElements = 1u << 15;
// Threads per block of the chunk kernels and of the one-block scalar kernels.
constexpr int kThreads = 256;
// Independent loads each thread keeps in flight per loop trip.
constexpr int kIlp = 4;

// One chunk: `count` elements of tensor `tensor` starting at element `begin`
// of that tensor, which is element `offset` of the concatenated state buffers
// (KOALA-M's velocity and x-bar). 64-bit begin/offset: tensors over 2^31
// elements are real.
struct Chunk {
    uint64_t begin;
    uint64_t offset;
    uint32_t tensor;
    uint32_t count;
};

// The per-call parameter and gradient pointers of up to CAP consecutive
// tensors, passed BY VALUE as a kernel parameter. This needs no device
// allocation and no host-to-device copy per call, so a step captured in a
// CUDA graph replays with the pointers it was captured with (the usual
// contract of graph capture: the same buffers on every replay).
//
// Kernel parameters may hold 4 KiB on any driver; CUDA 12.1+ drivers allow
// 32764 bytes. The small table covers every common model in one launch;
// layouts with more tensors use the large one (and, beyond it, several
// launches per kernel).
template <int CAP>
struct TensorTable {
    void *x[CAP];
    const void *g[CAP];
};
constexpr int kSmallCap = 224;   // 3584 bytes: fits the classic 4 KiB limit
constexpr int kLargeCap = 1920;  // 30720 bytes: needs the 32 KiB limit

// A run of consecutive tensors that one launch covers, and their chunks.
struct Group {
    size_t first_tensor;
    size_t n_tensors;
    size_t first_chunk;
    size_t n_chunks;
};

}  // namespace cuda
}  // namespace koala
