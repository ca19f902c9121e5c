// Host check of cuda/scalar_merge.h: koala::update_scalars run over
// contiguous ranges of blocks (as the CUDA scalar kernel's 256 threads do)
// and merged must give exactly the bits of one update_scalars call over all
// blocks: filter scalars and every block's coefficients. Random layouts of
// 0..700 blocks with NULL gradients, tiny (skipped) gradients, zero R,
// both methods, positive and negative P01, and non-finite inputs (where both
// must report kNotFinite). Runs on every machine (no GPU needed).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "scalar_merge.h"

namespace {

struct Rng {
    uint64_t s;
    double uniform() {  // [0, 1)
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return static_cast<double>((s * 2685821657736338717ull) >> 11) * 0x1.0p-53;
    }
};

int failures = 0;

bool same(const void *a, const void *b, size_t n) { return std::memcmp(a, b, n) == 0; }

void one_case(Rng &rng, int case_id) {
    koala_config cfg{};
    cfg.struct_size = sizeof cfg;
    cfg.method = rng.uniform() < 0.5 ? KOALA_VANILLA : KOALA_MOMENTUM;
    cfg.lr = rng.uniform() < 0.2 ? 1.0 : 2.0 * rng.uniform();
    cfg.weight_decay = rng.uniform() < 0.3 ? 0.0 : 1e-3 * rng.uniform();
    const double rsel = rng.uniform();
    cfg.r = rsel < 0.5 ? NAN : rsel < 0.6 ? 0.0 : rng.uniform();
    cfg.alpha_r = 0.9;
    cfg.q = 1.0;
    cfg.a = 0.9;
    cfg.qv = 0.01;
    koala::FilterState prior{};
    prior.sigma = 0.1 + rng.uniform();
    prior.p00 = 0.1 + rng.uniform();
    prior.p01 = (rng.uniform() - 0.5) * 0.2;
    prior.p11 = 0.1 + rng.uniform();
    prior.r = rng.uniform() * 2.0;
    prior.qw = 0.01;
    prior.skipped_steps = 3;

    const size_t n = static_cast<size_t>(rng.uniform() * 700.0);
    std::vector<koala::BlockSums> sums(n);
    std::vector<unsigned char> has_grad(n);
    const bool poison = rng.uniform() < 0.1;
    for (size_t i = 0; i < n; ++i) {
        has_grad[i] = rng.uniform() < 0.9;
        const double kind = rng.uniform();
        // Norms spread over many magnitudes, some below the 1e-9 skip
        // threshold, some equal (ties of the extremal block).
        const double gg = kind < 0.1 ? 1e-20 : kind < 0.15 ? 4.0 : std::pow(10.0, 8 * rng.uniform() - 4);
        const double xx = 100.0 * rng.uniform();
        sums[i] = koala::BlockSums{gg, gg + 2e-3 * rng.uniform() * std::sqrt(gg * xx), xx};
    }
    double loss = 0.1 + 3.0 * rng.uniform();
    const double loss_var = loss * loss * (1.0 + rng.uniform());
    if (poison) {
        if (n > 0 && rng.uniform() < 0.7)
            sums[static_cast<size_t>(rng.uniform() * n)].hh = rng.uniform() < 0.5 ? NAN : INFINITY;
        else
            loss = NAN;
    }

    koala::FilterState full = prior;
    std::vector<koala::BlockCoef> coef_full(n);
    const koala::UpdateOutcome want = koala::update_scalars(
        full, cfg, loss, loss_var, sums.data(), has_grad.data(), n, coef_full.data());

    for (size_t parts : {size_t(1), size_t(7), size_t(256)}) {
        std::vector<koala::BlockCoef> coef(n);
        bool not_finite = false;
        koala::FilterState merged{};
        for (size_t k = 0; k < parts; ++k) {
            const size_t b = koala::cuda::scalar_range_begin(n, parts, k);
            const size_t e = koala::cuda::scalar_range_begin(n, parts, k + 1);
            koala::FilterState part = prior;
            if (koala::update_scalars(part, cfg, loss, loss_var, sums.data() + b,
                                      has_grad.data() + b, e - b,
                                      coef.data() + b) == koala::kNotFinite) {
                not_finite = true;
                continue;
            }
            if (k == 0)
                merged = part;
            else
                koala::cuda::merge_scalar_ranges(merged, part, prior.p01);
        }
        if (want == koala::kNotFinite || not_finite) {
            if ((want == koala::kNotFinite) != not_finite) {
                ++failures;
                std::printf("case %d parts %zu: kNotFinite %d (single call) vs %d (ranges)\n",
                            case_id, parts, want == koala::kNotFinite, not_finite);
            }
            continue;
        }
        if (!same(&merged, &full, sizeof full)) {
            ++failures;
            std::printf("case %d parts %zu (n %zu, method %d): merged state differs: sigma %.17g "
                        "vs %.17g, p00 %.17g vs %.17g, p01 %.17g vs %.17g, p11 %.17g vs %.17g\n",
                        case_id, parts, n, static_cast<int>(cfg.method), merged.sigma, full.sigma,
                        merged.p00, full.p00, merged.p01, full.p01, merged.p11, full.p11);
        }
        for (size_t i = 0; i < n; ++i)
            if (coef[i].active != coef_full[i].active || !same(&coef[i].cx, &coef_full[i].cx, 8) ||
                !same(&coef[i].cv, &coef_full[i].cv, 8)) {
                ++failures;
                std::printf("case %d parts %zu: coefficient %zu differs\n", case_id, parts, i);
                break;
            }
    }
}

}  // namespace

int main() {
    Rng rng{0x9E3779B97F4A7C15ull};
    const int cases = 3000;
    for (int c = 0; c < cases; ++c) one_case(rng, c);
    if (failures) {
        std::printf("test_scalar_merge: %d mismatches in %d cases\n", failures, cases);
        return 1;
    }
    std::printf("test_scalar_merge: %d random cases, merged ranges equal the single call bit "
                "for bit\n",
                cases);
    return 0;
}
