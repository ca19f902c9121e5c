// The layer-wise Kalman measurement update that KOALA-V and KOALA-M share
// (ALGORITHM.md §3.3, §4.3): the per-tensor sums g.g, g.x, x.x, the skip
// rule, the innovation variance S_i = prior * |g + wd x|^2 + R and the gain.
// Shared with CUDA.
#pragma once
#include "method.h"

namespace koala {
namespace kalman {

constexpr int kSums = 3;  // g.g, g.x, x.x (sums.h)

// Pass 1, per element. |g + wd x|^2 and the L2 term are derived from these
// three sums, so the pass needs no weight decay (and without weight decay
// does not read x at all: accumulate_g).
template <class A>
KOALA_HD void accumulate_g(A g, A (&s)[kSums]) {
    s[0] += g * g;
}
template <class A>
KOALA_HD void accumulate_gx(A g, A x, A (&s)[kSums]) {
    s[0] += g * g;
    s[1] += g * x;
    s[2] += x * x;
}

// |g + wd x|^2 from the sums (>= 0 despite rounding; exactly s[0] for wd = 0).
KOALA_HD double regularised_norm2(const double *s, double wd) {
    if (wd == 0.0) return s[0];
    const double a = s[0] + 2.0 * wd * s[1] + wd * wd * s[2];
    return a > 0.0 ? a : 0.0;
}

// The gain lr * L_i / S_i of one tensor, its covariance contribution and
// whether it is active. `prior` is sigma-hat (KOALA-V) or P-hat00
// (KOALA-M). Returns false when a sum is not finite (the step then changes
// nothing).
KOALA_HD bool block_gain(const double *s, const TensorInputs &in, double prior, double *gain,
                         bool *active, Extremes &e) {
    *active = false;
    if (!is_finite(s[0])) return false;
    if (below_skip_norm(s[0])) return true;
    if (!is_finite(s[1]) || !is_finite(s[2])) return false;
    const double a = regularised_norm2(s, in.wd);
    const double S = prior * a + in.r;  // innovation variance
    if (!(S > 0.0)) return true;        // S == 0 only if a == 0 and R == 0
    const double block_loss = in.loss + 0.5 * in.wd * s[2];
    *gain = in.lr * block_loss / S;
    *active = true;
    e.min_r_over_s = fmin2(e.min_r_over_s, in.r / S);
    e.max_rho = fmax2(e.max_rho, a / S);
    e.any_active = 1;
    return true;
}

}  // namespace kalman
}  // namespace koala
