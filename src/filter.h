// The scalar algebra of one update, for every method: from the summed
// partial-sums buffer (sums.h) to one Coef per global tensor and the new
// filter scalars. Shared with CUDA: the CPU path calls filter_update; the
// device's scalar kernel calls prepare_update, tensor_update (in parallel
// over tensors) and finish_update, the same functions, so both produce the
// same bits.
#pragma once
#include "method_momentum.h"
#include "method_plusplus.h"
#include "method_vanilla.h"
#include "sums.h"

namespace koala {

enum Outcome {
    kOk = 0,
    kNotFinite = 1,    // loss, loss_var, R or a sum is not finite (or loss_var < 0)
    kBadElements = 2,  // the processes' sizes do not add up to global_elements, or the
                       // processes' global_elements / n_global disagree
    kBadPresence = 3,  // a global tensor has gradients on some pieces only, or no piece
    kBadLrScale = 4,   // the scalar block's lr multiplier (caller state) is < 0 or not finite
};

// Everything an update reads besides the scalars.
struct UpdateContext {
    koala_config cfg;
    double loss, loss_var;
    const double *sums;        // sums_count(method, n_global) doubles, summed over processes
    size_t n_global;
    double global_elements;
    int sharded;               // KOALA-M's scalar predict happens here, with the summed d2
    const double *tensor_lr;   // n_global lr multipliers, or null (all 1)
    const double *tensor_wd;   // n_global weight decays, or null (all cfg.weight_decay)
};

// Checks the inputs, runs a sharded KOALA-M's deferred time update and the
// R update into `next` (a copy of `prior`).
KOALA_HD Outcome prepare_update(const ScalarHeader &prior, const UpdateContext &u,
                                ScalarHeader &next) {
    next = prior;
    if (!is_finite(u.loss) || !is_finite(u.loss_var) || u.loss_var < 0.0) return kNotFinite;
    if (!is_finite(prior.lr_scale) || prior.lr_scale < 0.0) return kBadLrScale;
    const double *trailer = u.sums + u.n_global * sums_stride(u.cfg.method);
    const double own = layout_fingerprint(static_cast<uint64_t>(u.global_elements), u.n_global);
    if (trailer[0] != u.global_elements || trailer[3] != trailer[2] * own) return kBadElements;
    if (u.sharded && u.cfg.method == KOALA_MOMENTUM)
        momentum::predict(next, u.cfg, trailer[1], u.global_elements);
    const double r = is_finite(u.cfg.r) ? u.cfg.r
                                        : u.cfg.alpha_r * prior.r + (1.0 - u.cfg.alpha_r) * u.loss_var;
    if (!is_finite(r)) return kNotFinite;
    next.r = r;
    return kOk;
}

// Global tensor j's Coef and covariance contribution. `tensor_scalars` are
// j's current per-tensor filter scalars (tensor_scalars_per_tensor of them).
KOALA_HD Outcome tensor_update(size_t j, const ScalarHeader &next, const UpdateContext &u,
                               const double *tensor_scalars, Coef &coef, Extremes &e) {
    const double zeros[kMaxSums] = {};
    const double *slot = u.sums + j * sums_stride(u.cfg.method);
    const Presence p = decode_presence(slot[0]);
    if ((p.with_grad > 0) == (p.without_grad > 0)) return kBadPresence;
    // A tensor without gradient takes the skip path of a zero gradient.
    const double *s = p.with_grad > 0 ? slot + 1 : zeros;
    coef = Coef{};
    const size_t n_ts = tensor_scalars_per_tensor(u.cfg);
    for (size_t k = 0; k < n_ts; ++k) coef.tensor_scalars[k] = tensor_scalars[k];
    TensorInputs in;
    in.lr = u.cfg.lr * next.lr_scale * (u.tensor_lr ? u.tensor_lr[j] : 1.0);
    in.wd = u.tensor_wd ? u.tensor_wd[j] : u.cfg.weight_decay;
    in.loss = u.loss;
    in.r = next.r;
    bool ok;
    switch (u.cfg.method) {
        case KOALA_VANILLA: ok = vanilla::tensor_coef(s, in, next, coef, e); break;
        case KOALA_MOMENTUM:
            ok = momentum::tensor_coef(s, in, next, u.cfg, tensor_scalars[0], coef, e);
            break;
        default: ok = plusplus::tensor_coef(s, in, u.cfg, tensor_scalars, coef); break;
    }
    return ok ? kOk : kNotFinite;
}

KOALA_HD void finish_update(ScalarHeader &next, const koala_config &cfg, const Extremes &e) {
    if (cfg.method == KOALA_VANILLA) vanilla::finish(next, e);
    if (cfg.method == KOALA_MOMENTUM) momentum::finish(next, e);
}

// The whole scalar step, sequentially. On kOk, `next` and coef[0..n_global)
// hold the result (the caller commits coef[j].tensor_scalars); otherwise
// nothing may be applied, and *bad_tensor names the tensor at fault.
KOALA_HD Outcome filter_update(const ScalarHeader &prior, const UpdateContext &u,
                               const double *tensor_scalars, ScalarHeader &next, Coef *coef,
                               size_t *bad_tensor) {
    *bad_tensor = 0;
    Outcome o = prepare_update(prior, u, next);
    if (o != kOk) return o;
    const size_t n_ts = tensor_scalars_per_tensor(u.cfg);
    Extremes e = no_extremes();
    for (size_t j = 0; j < u.n_global; ++j) {
        o = tensor_update(j, next, u, tensor_scalars + j * n_ts, coef[j], e);
        if (o != kOk) {
            *bad_tensor = j;
            return o;
        }
    }
    finish_update(next, u.cfg, e);
    return kOk;
}

}  // namespace koala
