// KOALA-V (ALGORITHM.md §3): scalar covariance sigma, no per-parameter
// state. Shared with CUDA.
#pragma once
#include "kalman_block.h"

namespace koala {
namespace vanilla {

// Pass 2, per element: KOALA-V applies the RAW gradient, x <- x - c g.
template <class C>
KOALA_HD C step(C x, C g, C c) {
    return x - c * g;
}

// The time update: sigma-hat = sigma + q.
KOALA_HD void predict(ScalarHeader &h, const koala_config &cfg) { h.sigma += cfg.q; }

// Coef: c[0] = the step coefficient c of `step`.
KOALA_HD bool tensor_coef(const double *sums, const TensorInputs &in, const ScalarHeader &h,
                          Coef &coef, Extremes &e) {
    double gain = 0.0;
    bool active = false;
    if (!kalman::block_gain(sums, in, h.sigma, &gain, &active, e)) return false;
    if (active) {
        coef.c[0] = gain * h.sigma;
        coef.flags = kActive;
    }
    return true;
}

// sigma <- sigma-hat * min_i R/S_i (the stable form of sigma-hat - sigma-hat^2
// max_i rho_i); an all-skipped step keeps the prediction.
KOALA_HD void finish(ScalarHeader &h, const Extremes &e) {
    if (e.any_active) h.sigma = e.min_r_over_s * h.sigma;
}

}  // namespace vanilla
}  // namespace koala
