// The fixed optimizer layouts the harnesses and the seed generator share:
// every method, every dtype, a sharded layout, fused KOALA-M, caller-owned
// state and per-tensor hyper-parameters, one to three tensors of uneven
// sizes. Seeds in corpus/state_load/ are checkpoints of these layouts (the
// ones without a v2_ prefix were written by libkoala 1.0, format version 1,
// for the first four).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstring>
#include <memory>
#include <vector>

#include "fuzz_util.h"
#include "numeric.h"

namespace fuzz {

struct Layout {
    const char *name;  // seed file prefix
    koala_method method;
    koala_dtype dtype;
    std::vector<size_t> sizes;
    bool sharded = false;       // tensors 0 and 1 are two pieces of global tensor 0
    bool fused = false;         // KOALA-M fused_predict
    bool caller_state = false;  // state in caller memory, bound
    bool tensor_hyper = false;  // per-tensor lr and weight decay set
};

const Layout kLayouts[] = {
    {"v32", KOALA_VANILLA, KOALA_FLOAT32, {3, 5}},
    {"v64", KOALA_VANILLA, KOALA_FLOAT64, {1}},
    {"m32", KOALA_MOMENTUM, KOALA_FLOAT32, {3, 5}},
    {"m64", KOALA_MOMENTUM, KOALA_FLOAT64, {2, 1, 4}},
    {"p32", KOALA_PLUSPLUS, KOALA_FLOAT32, {3, 5}, false, false, false, true},
    {"p64", KOALA_PLUSPLUS, KOALA_FLOAT64, {2, 1, 4}},
    {"vb16", KOALA_VANILLA, KOALA_BFLOAT16, {3, 5}},
    {"mf16", KOALA_MOMENTUM, KOALA_FLOAT16, {2, 1, 4}, false, false, false, true},
    {"m64s", KOALA_MOMENTUM, KOALA_FLOAT64, {2, 1, 4}, true},
    {"m32f", KOALA_MOMENTUM, KOALA_FLOAT32, {3, 5}, false, true},
    {"m32c", KOALA_MOMENTUM, KOALA_FLOAT32, {3, 5}, false, false, true},
};

inline size_t elem_bytes(koala_dtype d) {
    return d == KOALA_FLOAT64 ? 8 : d == KOALA_FLOAT32 ? 4 : 2;
}

// Stores v as element i of a buffer of dtype d (16-bit types rounded to
// nearest-even by the library's own conversions).
inline void put(std::vector<unsigned char> &buf, koala_dtype d, size_t i, double v) {
    switch (d) {
    case KOALA_FLOAT64: std::memcpy(buf.data() + 8 * i, &v, 8); break;
    case KOALA_FLOAT32: {
        const float f = static_cast<float>(v);
        std::memcpy(buf.data() + 4 * i, &f, 4);
        break;
    }
    default: {
        const float f = static_cast<float>(v);
        const uint16_t h = d == KOALA_BFLOAT16 ? koala::float_to_bf16(f, 0, false)
                                               : koala::float_to_fp16(f, 0, false);
        std::memcpy(buf.data() + 2 * i, &h, 2);
    }
    }
}

// The all-reduce of a process alone in its group.
inline int identity_allreduce(double *, size_t, void *, void *) { return 0; }

// The shard of a sharded layout: local tensors 0 and 1 are pieces of global
// tensor 0, tensor t >= 2 is global tensor t - 1.
struct ShardSpec {
    std::vector<size_t> global_index;
    koala_shard shard;
    explicit ShardSpec(const std::vector<size_t> &sizes) {
        uint64_t total = 0;
        for (size_t t = 0; t < sizes.size(); ++t) {
            global_index.push_back(t == 0 ? 0 : t - 1);
            total += sizes[t];
        }
        std::memset(&shard, 0, sizeof shard);
        shard.struct_size = sizeof shard;
        shard.n_global = sizes.size() > 1 ? sizes.size() - 1 : 1;
        shard.global_index = global_index.data();
        shard.global_elements = total;
        shard.allreduce = identity_allreduce;
    }
};

// Deterministic parameters and gradients for a layout, in its dtype.
struct Tensors {
    std::vector<std::vector<unsigned char>> store;  // params, then grads, per tensor
    std::vector<void *> params;
    std::vector<const void *> grads;

    explicit Tensors(const Layout &layout, double shift = 0.0) {
        const size_t n = layout.sizes.size();
        store.resize(2 * n);
        for (size_t t = 0; t < n; ++t)
            for (int which = 0; which < 2; ++which) {
                std::vector<unsigned char> &buf = store[2 * t + which];
                buf.assign(layout.sizes[t] * elem_bytes(layout.dtype), 0);
                for (size_t i = 0; i < layout.sizes[t]; ++i)
                    put(buf, layout.dtype, i,
                        which == 0 ? std::sin(1.0 + i + 3.0 * t + shift)
                                   : 0.25 * std::cos(0.5 * i + t + shift));
            }
        for (size_t t = 0; t < n; ++t) {
            params.push_back(store[2 * t].data());
            grads.push_back(store[2 * t + 1].data());
        }
    }
    const std::vector<const void *> &grad_ptrs() const { return grads; }
};

inline koala_config layout_config(const Layout &layout) {
    koala_config cfg;
    koala_config_init(&cfg, layout.method);
    cfg.weight_decay = 5e-4;
    cfg.sigma = 0.1;
    cfg.fused_predict = layout.fused ? 1 : 0;
    cfg.caller_state = layout.caller_state ? 1 : 0;
    return cfg;
}

// An optimizer of a layout, with the caller-owned state it may need (which
// must outlive it).
struct Target {
    koala_optimizer *opt = nullptr;
    std::vector<std::vector<unsigned char>> buffers;
    std::vector<void *> buffer_ptrs;
    std::vector<double> scalars;

    Target() = default;
    Target(const Target &) = delete;
    Target &operator=(const Target &) = delete;
    ~Target() { koala_destroy(opt); }
};

inline std::unique_ptr<Target> make_target(const Layout &layout) {
    std::unique_ptr<Target> t(new Target);
    const koala_config cfg = layout_config(layout);
    koala_status st;
    if (layout.sharded) {
        const ShardSpec spec(layout.sizes);
        st = koala_create_sharded(&cfg, layout.sizes.size(), layout.sizes.data(), &spec.shard,
                                  layout.dtype, KOALA_HOST, &t->opt);
    } else {
        st = koala_create(&cfg, layout.sizes.size(), layout.sizes.data(), layout.dtype,
                          KOALA_HOST, &t->opt);
    }
    FUZZ_REQUIRE(st == KOALA_OK, "create a fixed layout (%s)", layout.name);
    if (layout.caller_state) {
        size_t per_tensor = 0, n_scalars = 0;
        koala_dtype state_dtype;
        FUZZ_REQUIRE(koala_state_layout(t->opt, &per_tensor, &state_dtype, &n_scalars) == KOALA_OK,
                     "state_layout");
        const size_t n = layout.sizes.size();
        t->buffers.resize(per_tensor * n);
        for (size_t k = 0; k < per_tensor * n; ++k) {
            t->buffers[k].assign(layout.sizes[k % n] * elem_bytes(state_dtype), 0);
            t->buffer_ptrs.push_back(t->buffers[k].data());
        }
        t->scalars.assign(n_scalars, 0.0);
        FUZZ_REQUIRE(koala_state_init(t->opt, t->buffer_ptrs.data(), t->scalars.data(), nullptr) ==
                         KOALA_OK,
                     "state_init");
        FUZZ_REQUIRE(koala_bind_state(t->opt, t->buffer_ptrs.data(), t->scalars.data()) == KOALA_OK,
                     "bind_state");
    }
    if (layout.tensor_hyper) {
        const size_t n_global = layout.sharded ? layout.sizes.size() - 1 : layout.sizes.size();
        std::vector<double> lr(n_global), wd(n_global);
        for (size_t j = 0; j < n_global; ++j) {
            lr[j] = 0.5 + 0.25 * static_cast<double>(j);
            wd[j] = j % 2 ? 0.0 : 1e-3;
        }
        FUZZ_REQUIRE(koala_set_tensor_lr(t->opt, lr.data(), nullptr) == KOALA_OK, "tensor lr");
        FUZZ_REQUIRE(koala_set_tensor_weight_decay(t->opt, wd.data(), nullptr) == KOALA_OK,
                     "tensor wd");
    }
    return t;
}

// Where make_stepped leaves the optimizer.
enum StepPhase { kAfterUpdate = 0, kAfterPredict = 1, kAfterBegin = 2 };

// An optimizer of `layout` after `steps` whole steps (then a predict, or a
// predict and phase 1 of a two-phase update), so its state is not the
// initial one.
inline std::unique_ptr<Target> make_stepped(const Layout &layout, StepPhase phase, int steps = 1,
                                            double shift = 0.0) {
    std::unique_ptr<Target> t = make_target(layout);
    Tensors tensors(layout, shift);
    for (int s = 0; s < steps; ++s) {
        FUZZ_REQUIRE(koala_predict(t->opt, tensors.params.data(), nullptr) == KOALA_OK, "predict");
        FUZZ_REQUIRE(koala_update(t->opt, 0.5 + 0.1 * s, 0.3, tensors.params.data(),
                                  tensors.grads.data(), nullptr) == KOALA_OK,
                     "update");
    }
    if (phase != kAfterUpdate)
        FUZZ_REQUIRE(koala_predict(t->opt, tensors.params.data(), nullptr) == KOALA_OK, "predict");
    if (phase == kAfterBegin) {
        size_t count = 0;
        FUZZ_REQUIRE(koala_sums_size(t->opt, &count) == KOALA_OK, "sums_size");
        std::vector<double> sums(count);
        FUZZ_REQUIRE(koala_update_begin(t->opt, tensors.params.data(), tensors.grads.data(),
                                        sums.data(), nullptr) == KOALA_OK,
                     "update_begin");
    }
    return t;
}

}  // namespace fuzz
