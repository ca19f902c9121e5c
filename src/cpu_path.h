// The host-memory path: OpenMP over fixed chunks of all tensors, two passes
// per update (norms, then apply), float64 norm accumulation.
#pragma once
#include "optimizer.h"

namespace koala {

// Builds the chunk plan and (KOALA-M) zeroed buffers. OUT_OF_MEMORY on failure.
koala_status host_init(koala_optimizer *opt);
void host_release(koala_optimizer *opt);

void host_predict(koala_optimizer *opt, void *const *params);

// Arguments are already validated. NOT_FINITE (message set, naming `what`,
// the calling entry) leaves everything unchanged.
koala_status host_update(koala_optimizer *opt, double loss, double loss_var,
                         void *const *params, const void *const *grads, const char *what);

}  // namespace koala
