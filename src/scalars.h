// The optimizer's filter scalars: one block of doubles, the same bytes in
// host memory (CPU path), device memory (CUDA path), a caller's buffer
// (koala_config::caller_state) and a checkpoint. Shared with CUDA.
//
// The block is a fixed header (ScalarHeader, kHeaderDoubles) followed by
// `tensor_scalars` doubles per global tensor for the methods that keep
// per-tensor filter scalars (KOALA++: S_prev and a first-visit flag;
// KOALA-M: where the tensor's elements stand, method_momentum.h's TensorFlag).
// Counts are stored as doubles (exact up to 2^53) so that the whole block is
// one plain float64 array for JAX and torch.
#pragma once
#include <stddef.h>

#include "hd.h"
#include "koala.h"

namespace koala {

// Phases of the call sequence (koala_info.phase).
enum Phase { kUpdated = 0, kPredicted = 1, kBegun = 2 };

struct ScalarHeader {
    double sigma;          // 0  KOALA-V: P after update, P-hat after predict
    double p00, p01, p11;  // 1-3 KOALA-M: 2x2 covariance
    double r;              // 4  current measurement noise
    double qw;             // 5  KOALA-M: adapted weight process noise
    double skipped_steps;  // 6  device path: non-finite steps skipped
    double steps;          // 7  completed updates
    double phase;          // 8  Phase
    double pending_d2;     // 9  KOALA-M: this process's sum of |xbar - x|^2 that the next
                           //    predict (unsharded) or update (sharded) consumes
    double lr_scale;       // 10 KOALA_SCALAR_LR_SCALE: extra lr multiplier (caller state)
    double reserved[5];    // 11-15 zero
};
constexpr size_t kHeaderDoubles = 16;
static_assert(sizeof(ScalarHeader) == kHeaderDoubles * sizeof(double), "header layout");
static_assert(offsetof(ScalarHeader, lr_scale) == KOALA_SCALAR_LR_SCALE * sizeof(double),
              "KOALA_SCALAR_LR_SCALE names the header's lr_scale");

KOALA_HD bool is_finite(double v) { return v - v == 0.0; }
KOALA_HD double fmin2(double a, double b) { return a < b ? a : b; }
KOALA_HD double fmax2(double a, double b) { return a > b ? a : b; }

// Per-global-tensor filter scalars each method keeps after the header.
KOALA_HD size_t tensor_scalars_per_tensor(const koala_config &cfg) {
    if (cfg.method == KOALA_PLUSPLUS) return 2;  // S_prev, seen
    if (cfg.method == KOALA_MOMENTUM) return 1;  // where the tensor's elements stand
    return 0;
}

// The initial scalars of a fresh optimizer (per-tensor scalars start at 0).
KOALA_HD ScalarHeader initial_header(const koala_config &cfg) {
    ScalarHeader s{};
    s.sigma = cfg.sigma;
    s.p00 = cfg.sw;
    s.p01 = cfg.sc;
    s.p11 = cfg.sv;
    s.r = is_finite(cfg.r) ? cfg.r : 1.0;  // R0 = 1 for the online estimate
    s.qw = cfg.qw;
    s.lr_scale = 1.0;
    return s;
}

}  // namespace koala
