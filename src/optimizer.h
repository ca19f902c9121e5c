// What a koala_optimizer handle holds. Only src/ sees this struct.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "layout.h"
#include "method.h"
#include "scalars.h"

namespace koala {

// Where the optimizer's state is: library-owned (host: `Storage` below;
// device: the plugin's memory) or the caller's (koala_bind_state).
struct StateRef {
    std::vector<void *> buffers;  // [b * n_tensors + i]: buffer b of tensor i
    double *scalars = nullptr;    // ScalarHeader, then the per-tensor filter scalars
};

// Library-owned host state: the buffers in one zeroed allocation, the
// scalar block in a vector.
struct Storage {
    void *buffers = nullptr;
    std::vector<double> scalars;
};

// Scratch the CPU step needs, allocated once at create so that a step
// never allocates.
struct HostPlan {
    std::vector<Chunk> chunks;
    std::vector<double> chunk_sums;  // chunks x sums_per_tensor
    std::vector<double> chunk_d2;    // KOALA-M: per-chunk |xbar - x|^2
    std::vector<double> sums;        // the sums buffer of koala_update (sums.h)
    std::vector<Coef> coef;          // per global tensor
    std::vector<double> tensor_wd;   // per global tensor: the weight decay in use
};

}  // namespace koala

struct koala_optimizer {
    koala_config cfg;
    koala_dtype dtype;
    koala_memory memory;
    koala::Layout layout;
    int threads;  // HOST: resolved koala_config::threads

    // Per global tensor hyper-parameters (empty = not set).
    std::vector<double> tensor_lr;
    std::vector<double> tensor_wd;

    koala::StateRef state;  // host: where the state is (own storage or the caller's)
    bool bound;             // caller_state: koala_bind_state was called
    koala::Storage own;     // host, library-owned
    koala::HostPlan plan;   // host

    // Device optimizers: the CUDA plugin's handle, and the host's record of
    // the call phase of library-owned device state (the device's scalar
    // block counts the steps itself, graph replays included).
    void *device;
    int device_phase;
};

namespace koala {

// Per-tensor state buffers the method keeps (0 for KOALA-V, 2 otherwise).
inline size_t buffers_per_tensor(koala_method method) {
    return method == KOALA_VANILLA ? 0 : 2;
}

// Doubles of the scalar block: the header and the per-tensor filter scalars.
inline size_t scalar_count(const koala_optimizer *opt) {
    return kHeaderDoubles + opt->layout.n_global * tensor_scalars_per_tensor(opt->cfg);
}

inline ScalarHeader &header(koala_optimizer *opt) {
    return *reinterpret_cast<ScalarHeader *>(opt->state.scalars);
}
inline const ScalarHeader &header(const koala_optimizer *opt) {
    return *reinterpret_cast<const ScalarHeader *>(opt->state.scalars);
}
inline double *tensor_scalars(koala_optimizer *opt) { return opt->state.scalars + kHeaderDoubles; }

}  // namespace koala
