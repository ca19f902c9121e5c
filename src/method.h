// What every method's file of math provides, and the small types they share.
// Shared with CUDA.
//
// A method (method_vanilla.h, method_momentum.h, method_plusplus.h) is:
//   - per-element functions: the pass-1 sums (sums.h says which) and the
//     pass-2 update of one element (and KOALA-M's predict of one element);
//   - per-tensor scalar algebra: tensor_coef() turns one global tensor's
//     summed sums into a Coef (what pass 2 does to that tensor's elements)
//     and its contribution to the covariance update (Extremes);
//   - finish(): the covariance update from the merged Extremes.
// filter.h drives these for all tensors; cpu_path.cpp and cuda/kernels.cu
// run the element functions over chunks. Nothing else is per method.
#pragma once
#include <math.h>

#include "hd.h"
#include "scalars.h"

namespace koala {

// Raw-gradient norms below this skip the tensor (the reference's 1e-9).
constexpr double kSkipNorm = 1e-9;

enum CoefFlags {
    kActive = 1,      // pass 2 updates this tensor
    kFirstVisit = 2,  // KOALA++: no previous H and v yet (pass 1 and 2 do not read them)
};

// Per global tensor: what pass 2 does (coefficients whose meaning is the
// method's) and the tensor's filter scalars after this update, committed
// only when the whole update succeeds.
struct Coef {
    double c[4];
    double tensor_scalars[2];
    int flags;
    int pad;
};

// The layer-wise maximum of KOALA-V/M's covariance shrink, as the minimum of
// R/S_i (= 1 - prior * max rho_i) and the maximum of rho_i = a_i/S_i over
// active tensors. min and max are exact and order-free, so any split of the
// tensors (threads, CUDA threads, processes) merges to the same bits.
struct Extremes {
    double min_r_over_s;
    double max_rho;
    int any_active;
    int pad;
};

KOALA_HD Extremes no_extremes() { return Extremes{1.0, 0.0, 0, 0}; }
KOALA_HD void merge_extremes(Extremes &acc, const Extremes &e) {
    acc.min_r_over_s = fmin2(acc.min_r_over_s, e.min_r_over_s);
    acc.max_rho = fmax2(acc.max_rho, e.max_rho);
    acc.any_active |= e.any_active;
}

// One tensor's inputs to tensor_coef besides its sums.
struct TensorInputs {
    double lr;      // effective target multiplier (cfg.lr * scales)
    double wd;      // weight decay of this tensor
    double loss;    // the minibatch mean loss
    double r;       // R of this update (already updated from loss_var)
};

// The skip test of the reference: no gradient, or |g| < 1e-9.
KOALA_HD bool below_skip_norm(double gg) { return sqrt(gg) < kSkipNorm; }

}  // namespace koala
