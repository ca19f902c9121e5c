// What one handler call is about, read from the custom call's attributes
// (koala/jax.py writes them at trace time; they are static for a compiled
// program): the method, element type and configuration, the local tensors,
// and for sharded states how this device's pieces sit in the whole model.
//
// Attributes:
//   method   i64     koala_method
//   dtype    i64     koala_dtype of the parameters
//   config   f64[12] lr, weight_decay, r, alpha_r, sigma, q, sw, sc, sv, a, qw, qv
//   options  i64[3]  threads, asymmetric, fused_predict
//   sizes    i64[n]  elements of each local tensor (this device's piece)
//   n_global i64     0: unsharded; else the model's tensors (= n: local tensor i
//                    is a piece of global tensor i)
//   global_elements  i64      elements of the whole model (sharded)
//   device_rows      i64[]    XLA device ordinal -> this device's row of the mesh
//                             (-1: not in the mesh) (sharded)
//   contributes      i64[rows*n] 1 where the device at that row is the one of
//                             its replica group whose piece of tensor i enters
//                             the partial sums (sharded)
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ffi_status.h"
#include "koala.h"

namespace koala_jax {

struct StepSpec {
    koala_config cfg;  // caller_state = 1
    koala_dtype dtype;
    std::vector<size_t> sizes;
    size_t n_global = 0;  // 0 = unsharded
    uint64_t global_elements = 0;
    std::vector<int64_t> device_rows;
    std::vector<int64_t> contributes;

    bool sharded() const { return n_global != 0; }
    size_t n() const { return sizes.size(); }
};

ffi::Error parse_spec(const ffi::Dictionary &attrs, StepSpec *out);

// One libkoala optimizer's identity: everything koala_create /
// koala_create_sharded are given. Optimizers with caller-owned state hold no
// state, so any optimizer of an equal OptimizerSpec can serve a call.
struct OptimizerSpec {
    koala_config cfg;
    koala_dtype dtype;
    koala_memory memory = KOALA_HOST;
    int device = 0;                     // GPU ordinal of a KOALA_DEVICE optimizer
    std::vector<size_t> sizes;
    bool sharded = false;
    std::vector<size_t> global_index;   // sharded: local tensor -> global tensor
    size_t n_global = 0;
    uint64_t global_elements = 0;

    bool operator==(const OptimizerSpec &o) const;
};

// How a call splits this device's tensors between two optimizers, both
// bound to the same state arrays:
//   own:    the pieces whose sums this device contributes (every tensor when
//           unsharded), bound to the real scalar block;
//   mirror: pieces this device holds as a replica of another device's (e.g.
//           a bias replicated over a mesh axis). They are updated exactly as
//           on the contributing device (the filter is global) but must not be
//           counted twice in the sums, nor in KOALA-M's |xbar - x|^2 that the
//           scalar block carries; so the mirror runs on a scratch copy of the
//           scalar block that is thrown away.
struct DeviceSplit {
    OptimizerSpec own, mirror;
    std::vector<size_t> own_tensors, mirror_tensors;  // local tensor indices
};

// `device` is XLA's device ordinal. Fails when the device has no row.
ffi::Error split_for_device(const StepSpec &spec, koala_memory memory, int device,
                            DeviceSplit *out);

}  // namespace koala_jax
