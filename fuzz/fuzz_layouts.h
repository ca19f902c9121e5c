// The fixed optimizer layouts the harnesses and the seed generator share:
// both methods, both dtypes, one to three tensors of uneven sizes. Seeds in
// corpus/state_load/ are checkpoints of exactly these layouts.
#pragma once
#include <cmath>
#include <cstddef>
#include <vector>

#include "fuzz_util.h"

namespace fuzz {

struct Layout {
    koala_method method;
    koala_dtype dtype;
    std::vector<size_t> sizes;
};

const Layout kLayouts[] = {
    {KOALA_VANILLA, KOALA_FLOAT32, {3, 5}},
    {KOALA_VANILLA, KOALA_FLOAT64, {1}},
    {KOALA_MOMENTUM, KOALA_FLOAT32, {3, 5}},
    {KOALA_MOMENTUM, KOALA_FLOAT64, {2, 1, 4}},
};

// Deterministic parameters and gradients for a layout, in its dtype.
struct Tensors {
    std::vector<std::vector<double>> store64;
    std::vector<std::vector<float>> store32;
    std::vector<void *> params;
    std::vector<const void *> grads;

    explicit Tensors(const Layout &layout, double shift = 0.0) {
        const size_t n = layout.sizes.size();
        store64.resize(2 * n);
        store32.resize(2 * n);
        for (size_t t = 0; t < n; ++t)
            for (int which = 0; which < 2; ++which) {
                const size_t k = 2 * t + which;
                for (size_t i = 0; i < layout.sizes[t]; ++i) {
                    const double v = which == 0 ? std::sin(1.0 + i + 3.0 * t + shift)
                                                : 0.25 * std::cos(0.5 * i + t + shift);
                    store64[k].push_back(v);
                    store32[k].push_back(static_cast<float>(v));
                }
            }
        for (size_t t = 0; t < n; ++t) {
            const bool f64 = layout.dtype == KOALA_FLOAT64;
            params.push_back(f64 ? static_cast<void *>(store64[2 * t].data())
                                 : static_cast<void *>(store32[2 * t].data()));
            grads.push_back(f64 ? static_cast<const void *>(store64[2 * t + 1].data())
                                : static_cast<const void *>(store32[2 * t + 1].data()));
        }
    }
    const std::vector<const void *> &grad_ptrs() const { return grads; }
};

inline koala_config layout_config(const Layout &layout) {
    koala_config cfg;
    koala_config_init(&cfg, layout.method);
    cfg.weight_decay = 5e-4;
    cfg.sigma = 0.1;
    return cfg;
}

// An optimizer of `layout` after `steps` whole steps (and a predict if
// `predicted`), so its state is not the initial one.
inline koala_optimizer *make_stepped(const Layout &layout, bool predicted, int steps = 1,
                                     double shift = 0.0) {
    const koala_config cfg = layout_config(layout);
    koala_optimizer *opt = nullptr;
    FUZZ_REQUIRE(koala_create(&cfg, layout.sizes.size(), layout.sizes.data(), layout.dtype,
                              KOALA_HOST, &opt) == KOALA_OK,
                 "create a fixed layout");
    Tensors tensors(layout, shift);
    for (int s = 0; s < steps; ++s) {
        FUZZ_REQUIRE(koala_predict(opt, tensors.params.data(), nullptr) == KOALA_OK, "predict");
        FUZZ_REQUIRE(koala_update(opt, 0.5 + 0.1 * s, 0.3, tensors.params.data(),
                                  tensors.grads.data(), nullptr) == KOALA_OK,
                     "update");
    }
    if (predicted)
        FUZZ_REQUIRE(koala_predict(opt, tensors.params.data(), nullptr) == KOALA_OK, "predict");
    return opt;
}

}  // namespace fuzz
