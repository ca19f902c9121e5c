// The scalar Kalman algebra of KOALA-V and KOALA-M (ALGORITHM.md §3, §4):
// everything between the per-block reductions and the per-element update.
// Shared by the CPU path and the CUDA path's one-thread scalar kernel, so
// both compute the same float64 filter with the same expressions.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "hd.h"
#include "koala.h"

namespace koala {

// Raw-gradient norms below this skip the block (the reference's 1e-9).
constexpr double kSkipNorm = 1e-9;
// Both EMA factors the reference hard-codes for KOALA-M.
constexpr double kQwDecay = 0.9;

// The float64 filter scalars. The same struct lives in host memory (CPU
// path) or device memory (CUDA path) and is what checkpoints store.
struct FilterState {
    double sigma;              // KOALA-V: P after update, P-hat after predict
    double p00, p01, p11;      // KOALA-M: 2x2 covariance
    double r;                  // current measurement noise
    double qw;                 // KOALA-M: adapted weight process noise
    uint64_t skipped_steps;    // device path: non-finite steps skipped
};

// Per-block reductions of one update (see element_math.h).
struct BlockSums {
    double gg, hh, xx;
};

// Per-block result of the scalar algebra: the element update uses
// x -= cx * direction (and, KOALA-M, v -= cv * h) on active blocks only.
struct BlockCoef {
    double cx, cv;
    int active;
};

KOALA_HD bool is_finite(double v) { return v - v == 0.0; }

KOALA_HD double fmin2(double a, double b) { return a < b ? a : b; }
KOALA_HD double fmax2(double a, double b) { return a > b ? a : b; }

KOALA_HD FilterState initial_state(const koala_config &cfg) {
    FilterState s{};
    s.sigma = cfg.sigma;
    s.p00 = cfg.sw;
    s.p01 = cfg.sc;
    s.p11 = cfg.sv;
    s.r = is_finite(cfg.r) ? cfg.r : 1.0;  // R0 = 1 for the online estimate
    s.qw = cfg.qw;
    s.skipped_steps = 0;
    return s;
}

// Keeps KOALA-M's 2x2 covariance positive semi-definite. In exact arithmetic
// predict and update preserve it (ALGORITHM.md §4.3); rounding on a nearly
// singular P (sc*sc == sw*sv, q_v = 0, tiny variances) can push p00 or p11
// below 0 or |p01| above sqrt(p00 p11), after which p11 runs negative and
// the filter is no longer a covariance (ALGORITHM.md §9.4). A no-op on any
// P that is PSD already.
KOALA_HD void clamp_psd(FilterState &s) {
    if (!(s.p00 >= 0.0)) s.p00 = 0.0;
    if (!(s.p11 >= 0.0)) s.p11 = 0.0;
    if (s.p01 * s.p01 > s.p00 * s.p11) {
        const double bound = sqrt(s.p00 * s.p11);
        s.p01 = s.p01 > 0.0 ? bound : -bound;
    }
}

// KOALA-V time update.
KOALA_HD void vanilla_predict(FilterState &s, const koala_config &cfg) { s.sigma += cfg.q; }

// KOALA-M time update of the scalars, given d2 = sum over all tensors of
// |xbar - x|^2 on the posterior weights and n = total parameter count.
// A non-finite d2 (non-finite weights) leaves q_w as it was rather than
// poisoning every later step.
KOALA_HD void momentum_predict_scalars(FilterState &s, const koala_config &cfg, double d2,
                                       double n) {
    const double dist = sqrt(d2);
    if (is_finite(dist)) s.qw = kQwDecay * s.qw + (1.0 - kQwDecay) * (dist / n);
    const double p00 = s.p00, p01 = s.p01, p11 = s.p11, a = cfg.a;
    s.p00 = p00 + 2.0 * p01 + p11 + s.qw;
    s.p01 = a * (p01 + p11);
    s.p11 = a * a * p11 + cfg.qv;
    clamp_psd(s);
}

enum UpdateOutcome { kUpdated = 0, kNotFinite = 1 };

// The measurement update of the scalars (ALGORITHM.md §3.3 / §4.3 in the
// stable covariance form). `has_grad[i]` is 0 where tensor i got a NULL
// gradient. Fills coef[i] for every block and, on kUpdated, writes the new
// scalars into s. On kNotFinite, s is untouched and nothing may be applied.
KOALA_HD UpdateOutcome update_scalars(FilterState &s, const koala_config &cfg, double loss,
                                      double loss_var, const BlockSums *sums,
                                      const unsigned char *has_grad, size_t n_blocks,
                                      BlockCoef *coef) {
    // A negative loss_var (a mean of squares) is as unusable as a NaN: the
    // host API rejects it before this point, the device path skips the step.
    if (!is_finite(loss) || !is_finite(loss_var) || loss_var < 0.0) return kNotFinite;
    const bool momentum = cfg.method == KOALA_MOMENTUM;
    const double r = is_finite(cfg.r) ? cfg.r : cfg.alpha_r * s.r + (1.0 - cfg.alpha_r) * loss_var;
    if (!is_finite(r)) return kNotFinite;
    // The prior variance of the weights: sigma-hat or P-hat00.
    const double prior = momentum ? s.p00 : s.sigma;
    const double wd = cfg.weight_decay;
    double min_r_over_s = 1.0;  // gamma = min_i R / S_i = 1 - prior * max_i rho_i
    double max_rho = 0.0;       // max_i a_i / S_i
    bool any_active = false;
    for (size_t i = 0; i < n_blocks; ++i) {
        BlockCoef c{0.0, 0.0, 0};
        if (has_grad[i]) {
            const BlockSums b = sums[i];
            if (!is_finite(b.gg)) return kNotFinite;
            if (sqrt(b.gg) >= kSkipNorm) {
                if (!is_finite(b.hh) || !is_finite(b.xx)) return kNotFinite;
                const double a = b.hh;              // |g + wd x|^2
                const double S = prior * a + r;     // innovation variance
                if (S > 0.0) {                      // S == 0 only if a == 0 and R == 0
                    const double block_loss = loss + 0.5 * wd * b.xx;
                    const double gain = cfg.lr * block_loss / S;
                    c.cx = gain * prior;
                    c.cv = momentum ? gain * s.p01 : 0.0;
                    c.active = 1;
                    min_r_over_s = fmin2(min_r_over_s, r / S);
                    max_rho = fmax2(max_rho, a / S);
                    any_active = true;
                }
            }
        }
        coef[i] = c;
    }
    s.r = r;
    if (any_active) {
        if (momentum) {
            const double p01 = s.p01;
            s.p00 = min_r_over_s * s.p00;
            s.p01 = min_r_over_s * p01;
            s.p11 = s.p11 - max_rho * p01 * p01;
            clamp_psd(s);
        } else {
            s.sigma = min_r_over_s * s.sigma;
        }
    }
    return kUpdated;
}

}  // namespace koala
