#include "cpu_path.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "cpu_kernels.h"
#include "error.h"
#include "filter.h"
#include "numeric.h"
#include "thread_pool.h"

namespace koala {

namespace {

// Below this many elements a step is too small to be worth waking threads.
constexpr size_t kParallelThreshold = size_t(1) << 16;
constexpr size_t kBufferAlign = 64;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

int threads_for(const koala_optimizer *opt) {
    const size_t n_chunks = opt->plan.chunks.size();
    if (opt->layout.local_elements < kParallelThreshold || n_chunks < 2) return 1;
    return n_chunks < static_cast<size_t>(opt->threads) ? static_cast<int>(n_chunks)
                                                        : opt->threads;
}

// Parts per thread: enough that a worker the OS wakes late only finds the
// remaining parts, few enough that each part is a long contiguous run.
constexpr int kPartsPerThread = 4;

// Runs chunk(k) for every chunk, cut into contiguous ranges (parts) that the
// threads claim in order: forward, or, when `reverse`, from the last chunk
// to the first (pass 1 ended at the last chunks, whose data the caches still
// hold; each element's update is independent, so the order changes no result).
template <class F>
void for_chunks(const koala_optimizer *opt, bool reverse, const F &chunk) {
    const long n = static_cast<long>(opt->plan.chunks.size());
    const int threads = threads_for(opt);
    const int parts = threads == 1 ? 1 : static_cast<int>(std::min<long>(n, threads * kPartsPerThread));
    run_parts(threads, parts, [&](int p, int n_parts) {
        if (reverse) {
            const int q = n_parts - 1 - p;
            const long begin = n * q / n_parts, end = n * (q + 1) / n_parts;
            for (long k = end - 1; k >= begin; --k) chunk(static_cast<size_t>(k));
        } else {
            const long begin = n * p / n_parts, end = n * (p + 1) / n_parts;
            for (long k = begin; k < end; ++k) chunk(static_cast<size_t>(k));
        }
    });
}

size_t elem_bytes(const koala_optimizer *opt) { return dtype_bytes(opt->dtype); }
size_t state_bytes(const koala_optimizer *opt) { return dtype_bytes(state_dtype(opt->dtype)); }

// The ChunkArgs of chunk k (gradient pointer from `grads`, may be null).
ChunkArgs chunk_args(const koala_optimizer *opt, size_t k, void *const *params,
                     const void *const *grads, uint32_t noise_step) {
    const Chunk &ch = opt->plan.chunks[k];
    const size_t t = ch.tensor, n = opt->layout.n_tensors();
    ChunkArgs c{};
    c.x = params ? static_cast<char *>(params[t]) + ch.begin * elem_bytes(opt) : nullptr;
    c.g = grads && grads[t] ? static_cast<const char *>(grads[t]) + ch.begin * elem_bytes(opt)
                            : nullptr;
    if (buffers_per_tensor(opt->cfg.method) == 2) {
        c.s0 = static_cast<char *>(opt->state.buffers[t]) + ch.begin * state_bytes(opt);
        c.s1 = static_cast<char *>(opt->state.buffers[n + t]) + ch.begin * state_bytes(opt);
    }
    c.n = ch.count;
    c.wd = opt->plan.tensor_wd[opt->layout.global_index[t]];
    c.first = ch.begin;
    if (opt->cfg.stochastic_rounding) {
        c.noise = noise_key(opt->cfg.seed, noise_step, t);
        // The update of step k draws from stream 2k, the next predict (of
        // step k + 1) from 2k + 3: fused KOALA-M does both roundings at once.
        c.noise_next = noise_key(opt->cfg.seed, noise_step + 3, t);
    }
    return c;
}

// The per-tensor filter scalar that the kernels read (KOALA-M's flag,
// KOALA++'s first-visit flag) of local tensor t.
int kernel_flag(const koala_optimizer *opt, size_t t) {
    const size_t per = tensor_scalars_per_tensor(opt->cfg);
    const double *ts = opt->state.scalars + kHeaderDoubles + opt->layout.global_index[t] * per;
    if (opt->cfg.method == KOALA_MOMENTUM) return static_cast<int>(ts[0]);
    if (opt->cfg.method == KOALA_PLUSPLUS) return ts[1] == 0.0 ? 1 : 0;
    return 0;
}

StepConstants step_constants(const koala_optimizer *opt) {
    return StepConstants{opt->cfg.q, opt->cfg.sigma, opt->cfg.a, opt->cfg.fused_predict,
                         opt->cfg.stochastic_rounding};
}

// Noise streams: updates and predicts of the same step draw different bits.
uint32_t update_noise_step(const koala_optimizer *opt) {
    return static_cast<uint32_t>(2 * static_cast<uint64_t>(header(opt).steps));
}

}  // namespace

koala_status host_init(koala_optimizer *opt) {
    const char *what = "koala_create";
    try {
        HostPlan &plan = opt->plan;
        const Layout &L = opt->layout;
        const size_t n = L.n_tensors();
        // Reserve first: a huge (valid) layout then fails here at once with
        // OUT_OF_MEMORY instead of growing the plan until memory runs out.
        size_t n_chunks = 0;
        for (size_t t = 0; t < n; ++t) n_chunks += (L.sizes[t] + kChunkElements - 1) / kChunkElements;
        plan.chunks.reserve(n_chunks);
        for (size_t t = 0; t < n; ++t)
            for (size_t b = 0; b < L.sizes[t]; b += kChunkElements)
                plan.chunks.push_back(Chunk{t, b, std::min(kChunkElements, L.sizes[t] - b)});
        plan.chunk_sums.assign(n_chunks * sums_per_tensor(opt->cfg.method), 0.0);
        plan.chunk_d2.assign(n_chunks, 0.0);
        plan.sums.assign(sums_count(opt->cfg.method, L.n_global), 0.0);
        plan.coef.assign(L.n_global, Coef{});

        if (opt->cfg.caller_state) return KOALA_OK;
        opt->own.scalars.assign(scalar_count(opt), 0.0);
        *reinterpret_cast<ScalarHeader *>(opt->own.scalars.data()) = initial_header(opt->cfg);
        opt->state.scalars = opt->own.scalars.data();
        const size_t per_tensor = buffers_per_tensor(opt->cfg.method);
        opt->state.buffers.assign(per_tensor * n, nullptr);
        if (per_tensor == 0 || n == 0) return KOALA_OK;
        size_t bytes = 0;
        for (size_t t = 0; t < n; ++t) bytes += round_up(L.sizes[t] * state_bytes(opt), kBufferAlign);
        // calloc: zeroed pages come lazily from the kernel for big buffers.
        void *storage = std::calloc(per_tensor * bytes + kBufferAlign, 1);
        if (!storage)
            return fail(KOALA_ERROR_OUT_OF_MEMORY,
                        "%s: cannot allocate %zu bytes of optimizer state", what,
                        per_tensor * bytes);
        opt->own.buffers = storage;
        char *base = reinterpret_cast<char *>(
            round_up(reinterpret_cast<uintptr_t>(storage), kBufferAlign));
        for (size_t b = 0; b < per_tensor; ++b)
            for (size_t t = 0; t < n; ++t) {
                opt->state.buffers[b * n + t] = base;
                base += round_up(L.sizes[t] * state_bytes(opt), kBufferAlign);
            }
    } catch (const std::bad_alloc &) {
        return fail(KOALA_ERROR_OUT_OF_MEMORY, "%s: out of host memory for the plan", what);
    }
    return KOALA_OK;
}

void host_release(koala_optimizer *opt) {
    std::free(opt->own.buffers);
    opt->own.buffers = nullptr;
}

void host_predict(koala_optimizer *opt, void *const *params) {
    ScalarHeader &h = header(opt);
    if (opt->cfg.method == KOALA_VANILLA) {
        vanilla::predict(h, opt->cfg);
        return;
    }
    if (opt->cfg.method != KOALA_MOMENTUM) return;  // KOALA++: nothing to predict
    const CpuKernels &kern = cpu_kernels(opt->cfg.method, opt->dtype);
    const StepConstants k = step_constants(opt);
    const uint32_t noise_step = update_noise_step(opt) + 1;
    double *chunk_d2 = opt->plan.chunk_d2.data();
    for_chunks(opt, false, [&](size_t c) {
        ChunkArgs a = chunk_args(opt, c, params, nullptr, noise_step);
        a.flag = kernel_flag(opt, opt->plan.chunks[c].tensor);
        chunk_d2[c] = kern.predict(a, k);
    });
    double d2 = h.pending_d2;
    for (size_t c = 0; c < opt->plan.chunks.size(); ++c) d2 += chunk_d2[c];
    double *flags = tensor_scalars(opt);
    for (size_t j = 0; j < opt->layout.n_global; ++j)
        flags[j] = momentum::flag_after_predict(flags[j]);
    if (opt->layout.sharded) {
        h.pending_d2 = d2;  // summed over processes with the next update's sums
    } else {
        momentum::predict(h, opt->cfg, d2, static_cast<double>(opt->layout.global_elements));
        h.pending_d2 = 0.0;
    }
}

void host_partial_sums(koala_optimizer *opt, void *const *params, const void *const *grads,
                       double *sums) {
    const Layout &L = opt->layout;
    const size_t K = sums_per_tensor(opt->cfg.method), stride = sums_stride(opt->cfg.method);
    const CpuKernels &kern = cpu_kernels(opt->cfg.method, opt->dtype);
    double *chunk_sums = opt->plan.chunk_sums.data();
    for_chunks(opt, false, [&](size_t c) {
        const size_t t = opt->plan.chunks[c].tensor;
        if (!grads[t]) return;
        ChunkArgs a = chunk_args(opt, c, params, grads, 0);
        a.flag = kernel_flag(opt, t);
        kern.sums(a, chunk_sums + c * K);
    });
    std::memset(sums, 0, sums_count(opt->cfg.method, L.n_global) * sizeof(double));
    // Chunk order is tensor order: each tensor's chunks add up in sequence.
    for (size_t t = 0; t < L.n_tensors(); ++t)
        sums[L.global_index[t] * stride] += grads[t] ? 1.0 : kNoGrad;
    for (size_t c = 0; c < opt->plan.chunks.size(); ++c) {
        const size_t t = opt->plan.chunks[c].tensor;
        if (!grads[t]) continue;
        double *slot = sums + L.global_index[t] * stride + 1;
        for (size_t k = 0; k < K; ++k) slot[k] += chunk_sums[c * K + k];
    }
    double *trailer = sums + L.n_global * stride;
    trailer[0] = static_cast<double>(L.local_elements);
    trailer[1] = header(opt).pending_d2;
    trailer[2] = 1.0;
    trailer[3] = layout_fingerprint(L.global_elements, L.n_global);
}

koala_status host_finish(koala_optimizer *opt, double loss, double loss_var,
                         void *const *params, const void *const *grads, const double *sums,
                         const char *what) {
    const Layout &L = opt->layout;
    UpdateContext u{};
    u.cfg = opt->cfg;
    u.loss = loss;
    u.loss_var = loss_var;
    u.sums = sums;
    u.n_global = L.n_global;
    u.global_elements = static_cast<double>(L.global_elements);
    u.sharded = L.sharded ? 1 : 0;
    u.tensor_lr = opt->tensor_lr.empty() ? nullptr : opt->tensor_lr.data();
    u.tensor_wd = opt->plan.tensor_wd.data();
    ScalarHeader next;
    size_t bad = 0;
    Coef *coef = opt->plan.coef.data();
    switch (filter_update(header(opt), u, tensor_scalars(opt), next, coef, &bad)) {
        case kOk: break;
        case kNotFinite:
            return fail(KOALA_ERROR_NOT_FINITE,
                        "%s: loss (%g), loss_var (%g) or a gradient norm is not finite; "
                        "nothing was changed",
                        what, loss, loss_var);
        case kBadElements:
            return fail(KOALA_ERROR_INVALID_ARGUMENT,
                        "%s: the processes' tensors hold %.0f elements in all, "
                        "shard->global_elements is %llu here, and the processes %s on "
                        "global_elements and n_global (every element of the model must sit "
                        "on exactly one process, and every process must describe the same "
                        "model); nothing was changed",
                        what, sums[L.n_global * sums_stride(opt->cfg.method)],
                        static_cast<unsigned long long>(L.global_elements),
                        sums[L.n_global * sums_stride(opt->cfg.method) + 3] ==
                                sums[L.n_global * sums_stride(opt->cfg.method) + 2] *
                                    layout_fingerprint(L.global_elements, L.n_global)
                            ? "agree"
                            : "disagree");
        case kBadLrScale:
            return fail(KOALA_ERROR_INVALID_ARGUMENT,
                        "%s: the bound scalar block's lr multiplier (scalars[%d]) is %g; it must "
                        "be finite and >= 0; nothing was changed",
                        what, KOALA_SCALAR_LR_SCALE, header(opt).lr_scale);
        case kBadPresence:
            return fail(KOALA_ERROR_INVALID_ARGUMENT,
                        "%s: global tensor %zu has a gradient on some of its pieces and NULL on "
                        "others, or no piece on any process (the gradients' NULL pattern must be "
                        "the same on every process); nothing was changed",
                        what, bad);
    }

    // koala_update_end must get the NULL pattern of gradients its
    // koala_update_begin had: pass 2 reads the gradient of every piece whose
    // global tensor the sums say has one (a NULL there would be read), and a
    // gradient the sums did not count would be ignored.
    const size_t stride = sums_stride(opt->cfg.method);
    for (size_t t = 0; t < L.n_tensors(); ++t) {
        const bool counted = decode_presence(sums[L.global_index[t] * stride]).with_grad > 0;
        if (counted != (grads[t] != nullptr))
            return fail(KOALA_ERROR_INVALID_ARGUMENT,
                        "%s: grads[%zu] is %s, but the sums (koala_update_begin) have %s for "
                        "its tensor; pass the grads koala_update_begin had; nothing was changed",
                        what, t, grads[t] ? "set" : "NULL", counted ? "a gradient" : "none");
    }

    const CpuKernels &kern = cpu_kernels(opt->cfg.method, opt->dtype);
    const StepConstants k = step_constants(opt);
    const uint32_t noise_step = update_noise_step(opt);
    double *chunk_d2 = opt->plan.chunk_d2.data();
    for_chunks(opt, true, [&](size_t c) {
        const size_t t = opt->plan.chunks[c].tensor;
        const Coef &cf = coef[L.global_index[t]];
        chunk_d2[c] = 0.0;
        if (!(cf.flags & kActive)) return;
        ChunkArgs a = chunk_args(opt, c, params, grads, noise_step);
        chunk_d2[c] = kern.step(a, cf, k);
    });

    // Commit.
    const size_t per = tensor_scalars_per_tensor(opt->cfg);
    double *ts = tensor_scalars(opt);
    for (size_t j = 0; j < L.n_global; ++j)
        for (size_t s = 0; s < per; ++s) ts[j * per + s] = coef[j].tensor_scalars[s];
    if (opt->cfg.method == KOALA_MOMENTUM) {
        // What the next predict adds to: the updated tensors' |xbar - x|^2.
        next.pending_d2 = 0.0;
        for (size_t c = 0; c < opt->plan.chunks.size(); ++c) next.pending_d2 += chunk_d2[c];
    }
    next.steps = header(opt).steps + 1.0;
    header(opt) = next;
    return KOALA_OK;
}

namespace {

template <class T>
void posterior_typed(const koala_optimizer *opt, void *const *params, void *const *out) {
    using C = typename Elem<T>::compute;
    const Layout &L = opt->layout;
    const size_t n = L.n_tensors();
    for (size_t t = 0; t < n; ++t) {
        const T *x = static_cast<const T *>(params[t]);
        T *y = static_cast<T *>(out[t]);
        const bool ahead = opt->cfg.method == KOALA_MOMENTUM && kernel_flag(opt, t) == momentum::kAhead;
        if (!ahead) {
            std::memcpy(y, x, L.sizes[t] * sizeof(T));
            continue;
        }
        const C *v = static_cast<const C *>(opt->state.buffers[t]);
        for (size_t i = 0; i < L.sizes[t]; ++i)
            y[i] = Elem<T>::store(Elem<T>::load(x[i]) - v[i], 0u, false);
    }
}

}  // namespace

void host_posterior(const koala_optimizer *opt, void *const *params, void *const *out) {
    switch (opt->dtype) {
        case KOALA_FLOAT32: posterior_typed<float>(opt, params, out); break;
        case KOALA_FLOAT64: posterior_typed<double>(opt, params, out); break;
        case KOALA_BFLOAT16: posterior_typed<bf16>(opt, params, out); break;
        default: posterior_typed<fp16>(opt, params, out); break;
    }
}

}  // namespace koala
