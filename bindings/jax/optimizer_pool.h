// A pool of host koala_optimizer objects, keyed by layout, reused across
// XLA FFI calls.
//
// Why a pool: the optimizer's whole state travels through JAX as a libkoala
// checkpoint (a uint8 array), so any optimizer of the right layout (method,
// dtype, tensor sizes) can serve a call: koala_state_load replaces its
// config, filter scalars, phase and per-tensor buffers. Creating one per
// call would allocate KOALA-M's 2 buffers/param every step; the pool keeps
// them. A call checks an optimizer out (no other thread can touch it, as
// koala.h requires: one optimizer, one thread at a time) and gives it back.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "koala.h"

namespace koala_jax {

struct Layout {
    koala_method method;
    koala_dtype dtype;
    std::vector<size_t> sizes;
    koala_memory memory = KOALA_HOST;
    int device = 0;  // the GPU (XLA's device ordinal) of a KOALA_DEVICE optimizer
    bool operator==(const Layout &o) const {
        return method == o.method && dtype == o.dtype && sizes == o.sizes &&
               memory == o.memory && device == o.device;
    }
};

struct OptimizerDeleter {
    void operator()(koala_optimizer *opt) const { koala_destroy(opt); }
};
using OptimizerPtr = std::unique_ptr<koala_optimizer, OptimizerDeleter>;

// Removes an idle optimizer of `layout` from the pool, or creates one with
// the method's default config (the checkpoint loaded next overwrites it).
// Device optimizers are created on the calling thread's current GPU, which
// XLA has set to the device the computation runs on.
// On failure returns null and fills *error with libkoala's message.
OptimizerPtr checkout(const Layout &layout, std::string *error);

// Puts an optimizer back for later calls. The pool keeps a bounded number
// of idle optimizers; beyond that the least recently returned is freed.
void give_back(const Layout &layout, OptimizerPtr opt);

}  // namespace koala_jax
