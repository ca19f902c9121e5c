// KOALA-M (ALGORITHM.md §4): weights and velocities, a 2x2 covariance P,
// two buffers per parameter (velocity v, slow weight average xbar) and one
// filter scalar per tensor, the tensor's TensorFlag. Shared with CUDA.
//
// The next predict's sum |xbar - x|^2 is accumulated by the update's pass 2
// (it has the new x and xbar in hand), so predict reads xbar only for
// tensors that update skipped (52 bytes per float32 parameter per step
// instead of the reference order's 56). With koala_config::fused_predict,
// pass 2 also applies the next prediction x + v (36 bytes per parameter):
// the parameters then hold the prediction after koala_update, and the
// velocity buffer holds the velocity before its decay, which the next
// update applies when it reads it. The arithmetic of every element is the
// reference's in both modes.
#pragma once
#include "kalman_block.h"

namespace koala {
namespace momentum {

constexpr double kQwDecay = 0.9;    // the reference's q_w EMA factor

// Where a tensor's elements stand between calls (its per-tensor scalar).
enum TensorFlag {
    kPlain = 0,      // x posterior (or predicted), v decayed; |xbar - x|^2 not yet counted
    kAhead = 1,      // fused: x = the next prediction x + v, v not yet decayed; counted
    kAheadStale = 2, // fused, skipped by the last update: x posterior, v not decayed; not counted
    kCounted = 3,    // x posterior, v not yet decayed; |xbar - x|^2 counted by the update
};

// ---- elements ----------------------------------------------------------

// Predict, per element, given the tensor's flag. d2 accumulates
// (xbar - x)^2 on the posterior x where the update did not count it.
template <class C, class A>
KOALA_HD void predict_element(int flag, C &x, C &v, C xbar, C a, A &d2) {
    if (flag == kAhead) return;
    if (flag == kAheadStale) v = a * v;
    if (flag != kCounted) {
        const A d = static_cast<A>(xbar) - static_cast<A>(x);
        d2 += d * d;
    }
    x = x + v;
    v = a * v;
}

// Update, per element, along the regularised gradient h = g + wd x:
// x <- x - k1 h, v <- decay * v - k2 h, xbar <- 0.9 xbar + 0.1 x, then the
// next predict's (xbar - x)^2 and, fused, x <- x + v.
template <class C, class A>
KOALA_HD void step(C &x, C &v, C &xbar, C g, C wd, C k1, C k2, C decay, bool fused, A &d2) {
    const C h = g + wd * x;
    x = x - k1 * h;
    v = decay * v - k2 * h;
    xbar = C(0.9) * xbar + C(0.1) * x;  // the reference's literals
    const A d = static_cast<A>(xbar) - static_cast<A>(x);
    d2 += d * d;
    if (fused) x = x + v;
}

// ---- scalars -----------------------------------------------------------

// Keeps the 2x2 covariance positive semi-definite. In exact arithmetic
// predict and update preserve it (ALGORITHM.md §4.3); rounding on a nearly
// singular P (sc*sc == sw*sv, q_v = 0, tiny variances) can push p00 or p11
// below 0 or |p01| above sqrt(p00 p11), after which p11 runs negative and
// the filter is no longer a covariance (ALGORITHM.md §9.4). A no-op on any
// P that is PSD already.
KOALA_HD void clamp_psd(ScalarHeader &s) {
    if (!(s.p00 >= 0.0)) s.p00 = 0.0;
    if (!(s.p11 >= 0.0)) s.p11 = 0.0;
    if (s.p01 * s.p01 > s.p00 * s.p11) {
        const double bound = sqrt(s.p00 * s.p11);
        s.p01 = s.p01 > 0.0 ? bound : -bound;
    }
}

// The time update of the scalars, given d2 = sum over all tensors of
// |xbar - x|^2 on the posterior weights and n = the model's parameter count.
// A non-finite d2 (non-finite weights) leaves q_w as it was rather than
// poisoning every later step.
KOALA_HD void predict(ScalarHeader &s, const koala_config &cfg, double d2, double n) {
    const double dist = sqrt(d2);
    if (is_finite(dist)) s.qw = kQwDecay * s.qw + (1.0 - kQwDecay) * (dist / n);
    const double p00 = s.p00, p01 = s.p01, p11 = s.p11, a = cfg.a;
    s.p00 = p00 + 2.0 * p01 + p11 + s.qw;
    s.p01 = a * (p01 + p11);
    s.p11 = a * a * p11 + cfg.qv;
    clamp_psd(s);
}

// The flag after predict.
KOALA_HD double flag_after_predict(double flag) { return flag == kAhead ? double(kAhead) : double(kPlain); }

// Coef: c[0] = k1, c[1] = k2, c[2] = the velocity decay still to apply;
// tensor_scalars[0] = the tensor's flag after this update.
KOALA_HD bool tensor_coef(const double *sums, const TensorInputs &in, const ScalarHeader &h,
                          const koala_config &cfg, double flag, Coef &coef, Extremes &e) {
    double gain = 0.0;
    bool active = false;
    if (!kalman::block_gain(sums, in, h.p00, &gain, &active, e)) return false;
    if (active) {
        coef.c[0] = gain * h.p00;
        coef.c[1] = gain * h.p01;
        coef.c[2] = flag == kAhead ? cfg.a : 1.0;
        coef.flags = kActive;
        coef.tensor_scalars[0] = cfg.fused_predict ? double(kAhead) : double(kCounted);
    } else {
        coef.tensor_scalars[0] = flag == kAhead ? double(kAheadStale) : flag;
    }
    return true;
}

// P <- P-hat - h c c^T with c = (P00, P01), h = max rho, in the stable form
// P00 = gamma P00, P01 = gamma P01 (gamma = min R/S); all-skipped keeps P-hat.
KOALA_HD void finish(ScalarHeader &s, const Extremes &e) {
    if (!e.any_active) return;
    const double p01 = s.p01;
    s.p00 = e.min_r_over_s * s.p00;
    s.p01 = e.min_r_over_s * p01;
    s.p11 = s.p11 - e.max_rho * p01 * p01;
    clamp_psd(s);
}

}  // namespace momentum
}  // namespace koala
