// A pool of libkoala optimizers with caller-owned state
// (koala_config::caller_state = 1), keyed by OptimizerSpec, reused across
// XLA FFI calls.
//
// Such an optimizer holds no state of the run: the state is the JAX arrays,
// bound with koala_bind_state at every call. What it does hold is what
// koala_create set up once (the CPU path's chunk plan and scratch, a device
// optimizer's plan), which is why it is worth keeping. A call checks an
// optimizer out (no other thread can use it meanwhile, as koala.h requires:
// one optimizer, one thread at a time; XLA runs the devices of a CPU mesh on
// several threads) and gives it back.
#pragma once

#include <memory>
#include <string>

#include "koala.h"
#include "step_spec.h"

namespace koala_jax {

struct OptimizerDeleter {
    void operator()(koala_optimizer *opt) const { koala_destroy(opt); }
};
using OptimizerPtr = std::unique_ptr<koala_optimizer, OptimizerDeleter>;

// An idle optimizer of `spec`, or a new one (koala_create, or
// koala_create_sharded with no all-reduce callback: the handlers use the
// two-phase update). Device optimizers are created on the calling thread's
// current GPU, which XLA has made the device the computation runs on.
// On failure returns null and fills *error with libkoala's message.
OptimizerPtr checkout(const OptimizerSpec &spec, std::string *error);

// Puts an optimizer back. The pool keeps a bounded number of idle ones;
// beyond that the least recently returned is freed.
void give_back(const OptimizerSpec &spec, OptimizerPtr opt);

// Checks out on construction, gives back on destruction.
class PooledOptimizer {
   public:
    PooledOptimizer(const OptimizerSpec &spec, std::string *error)
        : spec_(spec), opt_(checkout(spec, error)) {}
    ~PooledOptimizer() {
        if (opt_) give_back(spec_, std::move(opt_));
    }
    PooledOptimizer(const PooledOptimizer &) = delete;
    PooledOptimizer &operator=(const PooledOptimizer &) = delete;
    koala_optimizer *get() const { return opt_.get(); }
    explicit operator bool() const { return opt_ != nullptr; }

   private:
    OptimizerSpec spec_;
    OptimizerPtr opt_;
};

}  // namespace koala_jax
