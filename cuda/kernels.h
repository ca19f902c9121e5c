// Host-side launchers of the device path's kernels (kernels.cu). Each one
// only enqueues work on `stream`: no allocation, no copy, no
// synchronisation, so a predict/update sequence can be captured in a CUDA
// graph. They return the launch status (cudaGetLastError after the
// launches); errors of the kernels themselves surface at the caller's next
// synchronisation, as with any CUDA library.
#pragma once
#include <cuda_runtime.h>

#include <vector>

#include "kalman.h"
#include "koala.h"
#include "layout.h"

namespace koala {
namespace cuda {

// The device memory of one optimizer, allocated once at create.
struct DeviceState {
    FilterState *filter;            // the float64 filter scalars (1)
    Chunk *chunks;                  // n_chunks, in tensor order
    uint64_t *tensor_chunks;        // n_tensors + 1: chunks of tensor t are
                                    // [tensor_chunks[t], tensor_chunks[t+1])
    BlockSums *chunk_sums;          // n_chunks: stage 1 of the norm reduction
    double *chunk_d2;               // n_chunks: stage 1 of KOALA-M's |xbar - x|^2
    BlockSums *block_sums;          // n_tensors: stage 2 (per tensor)
    BlockCoef *coef;                // n_tensors: what the apply kernel does
    unsigned char *has_grad;        // n_tensors: grads[t] != NULL this step
    void *velocity;                 // KOALA-M: total_elements of dtype
    void *xbar;                     // KOALA-M: total_elements of dtype
    size_t n_tensors;
    size_t n_chunks;
    size_t total_elements;
    koala_dtype dtype;
    int cap;                        // kSmallCap or kLargeCap
    std::vector<Group> groups;      // launches per chunk kernel
};

// Where update reads loss and loss_var: by value, or from device memory.
struct LossSource {
    double loss, loss_var;
    const void *loss_ptr;      // NULL: use the values
    const void *loss_var_ptr;
    int is_float32;            // dtype of *loss_ptr and *loss_var_ptr
};

// KOALA-V: sigma += q (one one-thread kernel).
cudaError_t launch_vanilla_predict(const DeviceState &d, const koala_config &cfg,
                                   cudaStream_t stream);

// KOALA-M: x += v, v *= a and the |xbar - x|^2 partials (one launch per
// group), then the scalar time update (one one-block kernel).
cudaError_t launch_momentum_predict(const DeviceState &d, const koala_config &cfg,
                                    void *const *params, cudaStream_t stream);

// The measurement update: per-chunk norms (one launch per group), the
// scalar Kalman algebra (one one-block kernel), the fused apply (one launch
// per group). A non-finite loss or norm is counted in
// filter->skipped_steps and leaves every coefficient inactive.
cudaError_t launch_update(const DeviceState &d, const koala_config &cfg, const LossSource &loss,
                          void *const *params, const void *const *grads, cudaStream_t stream);

// A kernel symbol of this plugin, to ask the runtime whether the plugin has
// code for the current device (cudaFuncGetAttributes).
const void *probe_kernel();

}  // namespace cuda
}  // namespace koala
