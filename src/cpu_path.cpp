#include "cpu_path.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "element_math.h"
#include "error.h"

namespace koala {

namespace {

// 32 Ki elements: big enough to amortise scheduling, small enough to balance
// a ResNet layout over a few threads.
constexpr size_t kChunkElements = size_t(1) << 15;
// Below this many elements a step is too small to be worth waking threads.
constexpr size_t kParallelThreshold = size_t(1) << 16;
constexpr size_t kBufferAlign = 64;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Block sums are accumulated in kLanes independent lanes: lane j takes the
// elements i with i % kLanes == j, in order, and the lanes are added in lane
// order at the end. That order does not depend on the vector width the
// compiler picks, so SSE2 and AVX2 code give the same bits, and the lanes
// break the add-latency chain that otherwise limits a float64 reduction to
// a fraction of memory speed.
constexpr size_t kLanes = 8;

// The chunk kernels are compiled twice on x86-64 Linux with GCC (AVX2 and
// baseline) and picked at load time: with baseline SSE2 the float64 norm
// pass is compute-bound below memory bandwidth. No FMA is enabled, so both
// clones round identically.
// Not under GCC's ThreadSanitizer: its ifunc resolvers run instrumented code
// before the TSan runtime starts, and the library crashes at load.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_THREAD__)
#define KOALA_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define KOALA_CPU_CLONES
#endif
#define KOALA_ALWAYS_INLINE inline __attribute__((always_inline))

template <class T>
KOALA_ALWAYS_INLINE void chunk_norms_impl(const T *g, const T *x, size_t n, double wd,
                                          bool with_x, BlockSums &out) {
    double gg[kLanes] = {}, hh[kLanes] = {}, xx[kLanes] = {};
    const size_t body = n - n % kLanes;
    if (with_x) {
        for (size_t i = 0; i < body; i += kLanes) {
#pragma omp simd
            for (size_t j = 0; j < kLanes; ++j)
                accumulate_norms(g[i + j], x[i + j], wd, gg[j], hh[j], xx[j]);
        }
        for (size_t i = body; i < n; ++i)
            accumulate_norms(g[i], x[i], wd, gg[i - body], hh[i - body], xx[i - body]);
    } else {
        for (size_t i = 0; i < body; i += kLanes) {
#pragma omp simd
            for (size_t j = 0; j < kLanes; ++j) accumulate_gg(g[i + j], gg[j]);
        }
        for (size_t i = body; i < n; ++i) accumulate_gg(g[i], gg[i - body]);
    }
    BlockSums sums{0.0, 0.0, 0.0};
    for (size_t j = 0; j < kLanes; ++j) {
        sums.gg += gg[j];
        sums.hh += hh[j];
        sums.xx += xx[j];
    }
    if (!with_x) sums.hh = sums.gg;
    out = sums;
}

template <class T>
KOALA_ALWAYS_INLINE void chunk_vanilla_impl(T *x, const T *g, size_t n, T c) {
#pragma omp simd
    for (size_t i = 0; i < n; ++i) x[i] = vanilla_step(x[i], g[i], c);
}

template <class T>
KOALA_ALWAYS_INLINE double chunk_momentum_predict_impl(T *x, T *v, const T *xbar, size_t n, T a) {
    double d2[kLanes] = {};
    const size_t body = n - n % kLanes;
    for (size_t i = 0; i < body; i += kLanes) {
#pragma omp simd
        for (size_t j = 0; j < kLanes; ++j)
            momentum_predict(x[i + j], v[i + j], xbar[i + j], a, d2[j]);
    }
    for (size_t i = body; i < n; ++i) momentum_predict(x[i], v[i], xbar[i], a, d2[i - body]);
    double sum = 0.0;
    for (size_t j = 0; j < kLanes; ++j) sum += d2[j];
    return sum;
}

template <class T>
KOALA_ALWAYS_INLINE void chunk_momentum_impl(T *x, T *v, T *xbar, const T *g, size_t n, T wd, T k1,
                                             T k2) {
#pragma omp simd
    for (size_t i = 0; i < n; ++i) momentum_step(x[i], v[i], xbar[i], g[i], wd, k1, k2);
}

// One cloned entry point per kernel and type (target_clones does not apply
// to templates).
#define KOALA_CPU_KERNELS(T)                                                                   \
    KOALA_CPU_CLONES void chunk_norms(const T *g, const T *x, size_t n, double wd, bool with_x, \
                                      BlockSums &out) {                                        \
        chunk_norms_impl(g, x, n, wd, with_x, out);                                            \
    }                                                                                          \
    KOALA_CPU_CLONES void chunk_vanilla(T *x, const T *g, size_t n, T c) {                     \
        chunk_vanilla_impl(x, g, n, c);                                                        \
    }                                                                                          \
    KOALA_CPU_CLONES double chunk_momentum_predict(T *x, T *v, const T *xbar, size_t n, T a) { \
        return chunk_momentum_predict_impl(x, v, xbar, n, a);                                  \
    }                                                                                          \
    KOALA_CPU_CLONES void chunk_momentum(T *x, T *v, T *xbar, const T *g, size_t n, T wd, T k1, \
                                         T k2) {                                               \
        chunk_momentum_impl(x, v, xbar, g, n, wd, k1, k2);                                     \
    }
KOALA_CPU_KERNELS(float)
KOALA_CPU_KERNELS(double)
#undef KOALA_CPU_KERNELS

template <class T>
void predict_typed(koala_optimizer *opt, void *const *params) {
    HostPlan &plan = opt->plan;
    const Chunk *chunks = plan.chunks.data();
    const long n_chunks = static_cast<long>(plan.chunks.size());
    BlockSums *partial = plan.chunk_sums.data();
    const T a = static_cast<T>(opt->cfg.a);
    void *const *velocity = opt->buffers.velocity.data();
    void *const *xbar = opt->buffers.xbar.data();
#pragma omp parallel for schedule(static) if (opt->total_elements >= kParallelThreshold)
    for (long k = 0; k < n_chunks; ++k) {
        const Chunk ch = chunks[k];
        T *x = static_cast<T *>(params[ch.tensor]) + ch.begin;
        T *v = static_cast<T *>(velocity[ch.tensor]) + ch.begin;
        const T *xb = static_cast<const T *>(xbar[ch.tensor]) + ch.begin;
        partial[k].gg = chunk_momentum_predict(x, v, xb, ch.count, a);
    }
    double d2 = 0.0;
    for (long k = 0; k < n_chunks; ++k) d2 += partial[k].gg;
    momentum_predict_scalars(opt->filter, opt->cfg, d2, static_cast<double>(opt->total_elements));
}

template <class T>
koala_status update_typed(koala_optimizer *opt, double loss, double loss_var,
                          void *const *params, const void *const *grads, const char *what) {
    HostPlan &plan = opt->plan;
    const Chunk *chunks = plan.chunks.data();
    const long n_chunks = static_cast<long>(plan.chunks.size());
    const size_t n_tensors = opt->sizes.size();
    const double wd = opt->cfg.weight_decay;
    const bool with_x = wd != 0.0;
    const bool parallel = opt->total_elements >= kParallelThreshold;

    for (size_t i = 0; i < n_tensors; ++i) plan.has_grad[i] = grads[i] != nullptr;
    const unsigned char *has_grad = plan.has_grad.data();
    BlockSums *partial = plan.chunk_sums.data();

    // Pass 1: per-chunk norms of every tensor that has a gradient.
#pragma omp parallel for schedule(static) if (parallel)
    for (long k = 0; k < n_chunks; ++k) {
        const Chunk ch = chunks[k];
        if (!has_grad[ch.tensor]) continue;
        const T *g = static_cast<const T *>(grads[ch.tensor]) + ch.begin;
        const T *x = static_cast<const T *>(params[ch.tensor]) + ch.begin;
        chunk_norms(g, x, ch.count, wd, with_x, partial[k]);
    }
    // Chunk order is tensor order: reduce each tensor's chunks in sequence.
    for (size_t i = 0; i < n_tensors; ++i) plan.block_sums[i] = BlockSums{0.0, 0.0, 0.0};
    for (long k = 0; k < n_chunks; ++k) {
        const size_t t = chunks[k].tensor;
        if (!has_grad[t]) continue;
        plan.block_sums[t].gg += partial[k].gg;
        plan.block_sums[t].hh += partial[k].hh;
        plan.block_sums[t].xx += partial[k].xx;
    }

    FilterState next = opt->filter;
    if (update_scalars(next, opt->cfg, loss, loss_var, plan.block_sums.data(), has_grad,
                       n_tensors, plan.block_coef.data()) == kNotFinite) {
        return fail(KOALA_ERROR_NOT_FINITE,
                    "%s: loss (%g), loss_var (%g) or a gradient norm is not finite; "
                    "nothing was changed",
                    what, loss, loss_var);
    }

    // Pass 2: apply the step to active tensors. It walks the chunks from the
    // last to the first: pass 1 ended at the last chunks, whose g and x are
    // still in the last-level cache, so they are not read from memory again.
    // Each element's update is independent, so the order changes no result.
    const BlockCoef *coef = plan.block_coef.data();
    const bool momentum = opt->cfg.method == KOALA_MOMENTUM;
    void *const *velocity = opt->buffers.velocity.data();
    void *const *xbar = opt->buffers.xbar.data();
    const T wd_t = static_cast<T>(wd);
#pragma omp parallel for schedule(static) if (parallel)
    for (long k = 0; k < n_chunks; ++k) {
        const Chunk ch = chunks[n_chunks - 1 - k];
        const BlockCoef c = coef[ch.tensor];
        if (!c.active) continue;
        T *x = static_cast<T *>(params[ch.tensor]) + ch.begin;
        const T *g = static_cast<const T *>(grads[ch.tensor]) + ch.begin;
        if (momentum) {
            T *v = static_cast<T *>(velocity[ch.tensor]) + ch.begin;
            T *xb = static_cast<T *>(xbar[ch.tensor]) + ch.begin;
            chunk_momentum(x, v, xb, g, ch.count, wd_t, static_cast<T>(c.cx),
                           static_cast<T>(c.cv));
        } else {
            chunk_vanilla(x, g, ch.count, static_cast<T>(c.cx));
        }
    }
    opt->filter = next;
    return KOALA_OK;
}

}  // namespace

koala_status host_init(koala_optimizer *opt) {
    try {
        HostPlan &plan = opt->plan;
        const size_t n = opt->sizes.size();
        // Reserve first: a huge (valid) layout then fails here at once with
        // OUT_OF_MEMORY instead of growing the plan until memory runs out.
        size_t n_chunks = 0;
        for (size_t t = 0; t < n; ++t) n_chunks += (opt->sizes[t] + kChunkElements - 1) / kChunkElements;
        plan.chunks.reserve(n_chunks);
        for (size_t t = 0; t < n; ++t)
            for (size_t b = 0; b < opt->sizes[t]; b += kChunkElements)
                plan.chunks.push_back(Chunk{t, b, std::min(kChunkElements, opt->sizes[t] - b)});
        plan.chunk_sums.assign(plan.chunks.size(), BlockSums{0.0, 0.0, 0.0});
        plan.block_sums.assign(n, BlockSums{0.0, 0.0, 0.0});
        plan.block_coef.assign(n, BlockCoef{0.0, 0.0, 0});
        plan.has_grad.assign(n, 0);

        const size_t per_tensor = buffers_per_tensor(opt->cfg.method);
        if (per_tensor > 0) {
            const size_t elem = dtype_size(opt->dtype);
            size_t bytes = 0;
            for (size_t t = 0; t < n; ++t) bytes += round_up(opt->sizes[t] * elem, kBufferAlign);
            // calloc: zeroed pages come lazily from the kernel for big buffers.
            void *storage = std::calloc(per_tensor * bytes + kBufferAlign, 1);
            if (!storage) {
                return fail(KOALA_ERROR_OUT_OF_MEMORY,
                            "koala_create: cannot allocate %zu bytes of optimizer state",
                            per_tensor * bytes);
            }
            opt->buffers.storage = storage;
            char *base = reinterpret_cast<char *>(
                round_up(reinterpret_cast<uintptr_t>(storage), kBufferAlign));
            opt->buffers.velocity.resize(n);
            opt->buffers.xbar.resize(n);
            for (size_t t = 0; t < n; ++t) {
                opt->buffers.velocity[t] = base;
                base += round_up(opt->sizes[t] * elem, kBufferAlign);
            }
            for (size_t t = 0; t < n; ++t) {
                opt->buffers.xbar[t] = base;
                base += round_up(opt->sizes[t] * elem, kBufferAlign);
            }
        }
    } catch (const std::bad_alloc &) {
        return fail(KOALA_ERROR_OUT_OF_MEMORY, "koala_create: out of host memory for the plan");
    }
    return KOALA_OK;
}

void host_release(koala_optimizer *opt) {
    std::free(opt->buffers.storage);
    opt->buffers.storage = nullptr;
}

void host_predict(koala_optimizer *opt, void *const *params) {
    if (opt->cfg.method == KOALA_VANILLA) {
        vanilla_predict(opt->filter, opt->cfg);
    } else if (opt->dtype == KOALA_FLOAT32) {
        predict_typed<float>(opt, params);
    } else {
        predict_typed<double>(opt, params);
    }
}

koala_status host_update(koala_optimizer *opt, double loss, double loss_var,
                         void *const *params, const void *const *grads, const char *what) {
    if (opt->dtype == KOALA_FLOAT32)
        return update_typed<float>(opt, loss, loss_var, params, grads, what);
    return update_typed<double>(opt, loss, loss_var, params, grads, what);
}

}  // namespace koala
