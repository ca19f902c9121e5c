// The host-memory path: the chunk kernels (cpu_kernels.h) over fixed chunks
// of all tensors on the optimizer's threads, two passes per update (sums,
// then the step), float64 sums.
#pragma once
#include "optimizer.h"

namespace koala {

// Builds the chunk plan and, for library-owned state, the zeroed buffers
// and the initial scalar block. OUT_OF_MEMORY on failure.
koala_status host_init(koala_optimizer *opt);
void host_release(koala_optimizer *opt);

// Arguments are validated and the state is bound before any of these.
void host_predict(koala_optimizer *opt, void *const *params);

// Phase 1: this process's partial sums (sums.h) into sums[0..sums_count).
void host_partial_sums(koala_optimizer *opt, void *const *params, const void *const *grads,
                       double *sums);

// Phase 2: the filter and the step from the summed buffer; commits the new
// state (steps included) on success. NOT_FINITE or INVALID_ARGUMENT (the
// processes' layouts disagree) change nothing; the message names `what`.
koala_status host_finish(koala_optimizer *opt, double loss, double loss_var,
                         void *const *params, const void *const *grads, const double *sums,
                         const char *what);

// koala_posterior on the host (fused KOALA-M subtracts the prediction).
void host_posterior(const koala_optimizer *opt, void *const *params, void *const *out);

}  // namespace koala
