// KOALA++ (ALGORITHM.md §7): the row vector v = H P per tensor instead of a
// shared covariance, the symmetric variant of the official koalap.py by
// default. Two buffers per parameter (v and the previous H) and two filter
// scalars per tensor (the previous S and a first-visit flag). Shared with
// CUDA.
//
// Per tensor, with H = g + wd x and H', v', S' of the tensor's last update:
//   alpha  = H.H' / H'.H'
//   lambda = (H.v' + Q H.H') / S'
//   w      = H.v' / H'.H' - (H.H')(H'.v') / (H'.H')^2     (0 if asymmetric)
//   v      = (alpha - lambda) v' + Q (H - lambda H') + w H'
//   S      = H.v + Q H.H + R      with H.v from the sums (§7.3's fused
//            identity: no third pass over the elements)
//   x     <- x - lr L_i (v + Q H) / S,   L_i = loss + wd/2 |x|^2
// The first visit of a tensor takes v' = sigma H, H' = H and S' from them.
#pragma once
#include "method.h"

namespace koala {
namespace plusplus {

constexpr int kSums = 7;  // g.g, x.x, h.h, h.H', h.v', H'.H', H'.v' (sums.h)

// Pass 1, per element; C is the compute type (h is formed as pass 2 forms
// the H it stores), A the accumulator. A first visit has no H', v' to read.
template <class A, class C>
KOALA_HD void accumulate(C g, C x, C Hp, C vp, C wd, bool first, A (&s)[kSums]) {
    const C h = g + wd * x;
    const A ga = static_cast<A>(g), xa = static_cast<A>(x), ha = static_cast<A>(h);
    s[0] += ga * ga;
    s[1] += xa * xa;
    s[2] += ha * ha;
    if (!first) {
        const A Ha = static_cast<A>(Hp), va = static_cast<A>(vp);
        s[3] += ha * Ha;
        s[4] += ha * va;
        s[5] += Ha * Ha;
        s[6] += Ha * va;
    }
}

// Pass 2, per element: the new v (stored), the step, and H (stored).
// c = {alpha - lambda, lambda, w, -lr L_i / S}; sigma0 and q from the config.
template <class C>
KOALA_HD void step(C &x, C &v, C &H, C g, C wd, C a1, C lambda, C w, C c, C q, C sigma0,
                   bool first) {
    const C h = g + wd * x;
    const C vp = first ? sigma0 * h : v;
    const C Hp = first ? h : H;
    const C vn = a1 * vp + q * (h - lambda * Hp) + w * Hp;
    x = x + c * (vn + q * h);
    v = vn;
    H = h;
}

// The tensor's scalars: tensor_scalars = {S', seen}.
// A tensor whose recursion breaks down (|H'|^2 = 0, or S <= 0 or not finite:
// v is not guaranteed to come from a PSD P, ALGORITHM.md §9.5) restarts as a
// first visit; a first visit with S <= 0 is skipped. Neither happens on the
// reference's well-posed runs. Returns false when a sum is not finite.
KOALA_HD bool tensor_coef(const double *s, const TensorInputs &in, const koala_config &cfg,
                          const double *scalars, Coef &coef) {
    coef.tensor_scalars[0] = scalars[0];
    coef.tensor_scalars[1] = scalars[1];
    if (!is_finite(s[0])) return false;
    if (below_skip_norm(s[0])) return true;
    for (int k = 1; k < kSums; ++k)
        if (!is_finite(s[k])) return false;
    const double Q = cfg.q, sigma0 = cfg.sigma, hh = s[2];
    for (bool first = scalars[1] == 0.0;; first = true) {
        double alpha = 1.0, w = 0.0, lambda, hH, hv;
        if (first) {
            // v' = sigma0 H, H' = H: H.H' = H'.H' = |H|^2, H.v' = H'.v' = sigma0 |H|^2.
            hH = hh;
            hv = sigma0 * hh;
            const double s_prev = hv + Q * hh + in.r;
            lambda = (hv + Q * hH) / s_prev;
        } else {
            const double HH = s[5], Hv = s[6];
            hH = s[3];
            hv = s[4];
            if (!(HH > 0.0)) continue;  // restart as a first visit
            lambda = (hv + Q * hH) / scalars[0];
            alpha = hH / HH;
            if (!cfg.asymmetric) w = hv / HH - hH * Hv / (HH * HH);
        }
        const double a1 = alpha - lambda;
        const double hv_new = a1 * hv + Q * (hh - lambda * hH) + w * hH;
        const double S = hv_new + Q * hh + in.r;
        const double block_loss = in.loss + 0.5 * in.wd * s[1];
        const double c = -in.lr * block_loss / S;
        if (S > 0.0 && is_finite(S) && is_finite(c) && is_finite(lambda) && is_finite(w)) {
            coef.c[0] = a1;
            coef.c[1] = lambda;
            coef.c[2] = w;
            coef.c[3] = c;
            coef.flags = kActive | (first ? kFirstVisit : 0);
            coef.tensor_scalars[0] = S;
            coef.tensor_scalars[1] = 1.0;
            return true;
        }
        if (first) return true;  // skipped, state kept
    }
}

}  // namespace plusplus
}  // namespace koala
