// Host-side launchers of the device path's kernels (kernels.cu). Each one
// only enqueues kernels on `stream`: no allocation, no copy, no
// synchronisation, no read of device memory, so a step can be captured in
// a CUDA graph. The caller clears the runtime's last error before (plugin.cu
// does, at the entry): the cudaError_t returned is then the first failed
// launch of this call. Errors inside the kernels surface at the caller's
// next synchronisation, as with any CUDA library.
//
// Per update (one launch per group of tensors, see layout.h):
//   sums    per chunk: the method's sums (sums.h) in float64, a fixed tree
//   scalar  one block: chunk sums -> the sums layout (presence, sums,
//           trailer) per global tensor in a fixed order; then the filter of
//           filter.h (prepare_update; tensor_update in parallel over global
//           tensors; the exact min/max merge of the covariance shrink;
//           finish_update), committed on success; on a non-finite or
//           inconsistent step every Coef is made inactive and the step is
//           counted in skipped_steps
//   apply   per chunk, in reverse chunk order (the last chunks summed are
//           still in L2): the method's element step; KOALA-M also sums the
//           next predict's |xbar - x|^2, which the last block to finish
//           reduces into the scalar block's pending_d2
// KOALA-M's predict is one pass per chunk whose last block runs the scalar
// time update. KOALA-V's predict (sigma += q) is folded into the next
// scalar kernel for library-owned state, a one-thread kernel otherwise.
#pragma once
#include <cuda_runtime.h>

#include <memory>
#include <vector>

#include "koala.h"
#include "layout.h"

namespace koala {
namespace cuda {

// What the kernels of one optimizer need to know about its layout; fixed at
// create.
struct DevicePlan {
    DeviceTables tab;
    std::vector<Group> groups;
    size_t n_tensors = 0, n_global = 0, n_chunks = 0;
    double local_elements = 0.0, global_elements = 0.0;
    koala_dtype dtype = KOALA_FLOAT32;
    koala_method method = KOALA_VANILLA;
    int cap = kSmallCap;
    int sharded = 0;
    // Host memory for the pointer table of the capacity in use, filled per
    // launch and copied into the launch's parameters.
    std::unique_ptr<TensorTable<kSmallCap>> small_table;
    std::unique_ptr<TensorTable<kLargeCap>> large_table;
};

// One call's pointers: host arrays of device pointers, indexed by local
// tensor. Any may be NULL where the kernel does not use it.
struct CallPointers {
    void *const *params = nullptr;
    const void *const *grads = nullptr;  // entries may be NULL (no gradient)
    void *const *state = nullptr;        // [2 * n_tensors], buffer-major (KOALA-M, KOALA++)
    void *const *out = nullptr;          // koala_posterior's outputs
};

// Where an update reads loss and loss_var.
struct LossSource {
    double loss = 0.0, loss_var = 0.0;
    const void *loss_ptr = nullptr;      // NULL: the values
    const void *loss_var_ptr = nullptr;
    int is_float32 = 0;
};

// The scalar kernel's job in one call.
struct ScalarJob {
    koala_config cfg{};
    LossSource loss;
    bool reduce = false;       // chunk sums -> sums_out (koala_update, koala_update_begin)
    bool filter = false;       // the update from sums_in (koala_update, koala_update_end)
    bool mark_begun = false;   // reduce only (koala_update_begin): phase = begun
    bool fold_predict = false; // KOALA-V library-owned: sigma += fold_q first
    double fold_q = 0.0;
    double *sums_out = nullptr;
    const double *sums_in = nullptr;
    const double *tensor_lr = nullptr;  // device, [n_global], or NULL (all 1)
    const double *tensor_wd = nullptr;  // device, [n_global], or NULL (cfg.weight_decay)
};

// Pass 1 (per chunk sums and gradient presence).
cudaError_t launch_sums(const DevicePlan &plan, const koala_config &cfg, const CallPointers &p,
                        double *scalars, const double *tensor_wd, cudaStream_t stream);

// The one-block scalar kernel.
cudaError_t launch_scalar(const DevicePlan &plan, const ScalarJob &job, double *scalars,
                          cudaStream_t stream);

// Pass 2 (the element step of every active tensor).
cudaError_t launch_apply(const DevicePlan &plan, const koala_config &cfg, const CallPointers &p,
                         double *scalars, const double *tensor_wd, cudaStream_t stream);

// KOALA-M's predict: the element pass and the scalar time update.
cudaError_t launch_momentum_predict(const DevicePlan &plan, const koala_config &cfg,
                                    const CallPointers &p, double *scalars, cudaStream_t stream);

// KOALA-V (sigma += q) and KOALA++ (nothing) predicts on caller-owned
// state: the time update and the phase, in the caller's scalar block.
cudaError_t launch_scalar_predict(const koala_config &cfg, double *scalars, cudaStream_t stream);

// koala_posterior: out = x - v for fused KOALA-M tensors whose parameters
// hold the prediction, a copy of x otherwise.
cudaError_t launch_posterior(const DevicePlan &plan, const koala_config &cfg,
                             const CallPointers &p, const double *scalars, cudaStream_t stream);

// Every kernel an optimizer of (method, dtype, table capacity) launches, to
// ask the runtime at create whether the plugin has code for this device.
std::vector<const void *> kernels_of(koala_method method, koala_dtype dtype, int cap);

}  // namespace cuda
}  // namespace koala
