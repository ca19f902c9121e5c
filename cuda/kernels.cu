// The device path's kernels (ALGORITHM.md §3, §4, §10). Per element they
// call the same __host__ __device__ functions as the CPU path
// (element_math.h); the scalar Kalman algebra runs in one-block kernels that
// call kalman.h. Per update:
//   norms   one launch: per-chunk float64 sums of g^2, (g + wd x)^2, x^2
//   scalars one block:  per-tensor sums (chunk order, fixed tree) and
//                       koala::update_scalars over 256 ranges of tensors,
//                       merged exactly (scalar_merge.h) -> BlockCoef per tensor
//   apply   one launch: x -= c g (KOALA-V) or the x, v, x-bar step (KOALA-M)
// KOALA-M's predict is one launch (x += v, v *= a, |xbar - x|^2 partials) plus
// a one-block scalar kernel. ("One launch" per group of up to kSmallCap or
// kLargeCap tensors; see layout.h.)
#include "kernels.h"

#include <cstring>

#include "element_math.h"
#include "launch.h"
#include "scalar_merge.h"

namespace koala {
namespace cuda {

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarps = kThreads / 32;

// Sums each of v[0..N) over the block in a fixed order (warp trees, then a
// tree over the warps), so the result is the same bits on every run. The
// total is valid in thread 0. Every thread of the block must call it, once
// per kernel, with blockDim.x == kThreads.
template <int N>
__device__ void block_sum(double (&v)[N]) {
    __shared__ double warp_part[kWarps][N];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int k = 0; k < N; ++k)
        for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(kFullMask, v[k], off);
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < N; ++k) warp_part[warp][k] = v[k];
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
            v[k] = lane < kWarps ? warp_part[lane][k] : 0.0;
            for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(kFullMask, v[k], off);
        }
    }
}

// Stage 1 of the norms: one block per chunk. A tensor without gradient
// writes zero sums and has_grad = 0 (from its first chunk's block).
template <class T, int CAP>
__global__ void __launch_bounds__(kThreads)
    norms_kernel(const __grid_constant__ TensorTable<CAP> table, size_t first_tensor,
                 size_t first_chunk, const Chunk *__restrict__ chunks, double wd,
                 BlockSums *__restrict__ chunk_sums, unsigned char *__restrict__ has_grad) {
    const size_t c = first_chunk + blockIdx.x;
    const Chunk ch = chunks[c];
    const size_t local = ch.tensor - first_tensor;
    const T *g = static_cast<const T *>(table.g[local]);
    if (g == nullptr) {  // uniform over the block
        if (threadIdx.x == 0) {
            chunk_sums[c] = BlockSums{0.0, 0.0, 0.0};
            if (ch.begin == 0) has_grad[ch.tensor] = 0;
        }
        return;
    }
    g += ch.begin;
    const uint32_t n = ch.count;
    const bool with_x = wd != 0.0;  // as the CPU path: x is read only with weight decay
    double s[3] = {0.0, 0.0, 0.0};
    if (with_x) {
        const T *x = static_cast<const T *>(table.x[local]) + ch.begin;
        for (uint32_t base = 0; base < n; base += kThreads * kIlp) {
            T gv[kIlp], xv[kIlp];
#pragma unroll
            for (int j = 0; j < kIlp; ++j) {
                const uint32_t i = base + threadIdx.x + static_cast<uint32_t>(j) * kThreads;
                gv[j] = i < n ? g[i] : T(0);
                xv[j] = i < n ? x[i] : T(0);
            }
#pragma unroll
            for (int j = 0; j < kIlp; ++j) accumulate_norms(gv[j], xv[j], wd, s[0], s[1], s[2]);
        }
    } else {
        for (uint32_t base = 0; base < n; base += kThreads * kIlp) {
            T gv[kIlp];
#pragma unroll
            for (int j = 0; j < kIlp; ++j) {
                const uint32_t i = base + threadIdx.x + static_cast<uint32_t>(j) * kThreads;
                gv[j] = i < n ? g[i] : T(0);
            }
#pragma unroll
            for (int j = 0; j < kIlp; ++j) accumulate_gg(gv[j], s[0]);
        }
    }
    block_sum(s);
    if (threadIdx.x == 0) {
        chunk_sums[c] = BlockSums{s[0], with_x ? s[1] : s[0], s[2]};
        if (ch.begin == 0) has_grad[ch.tensor] = 1;
    }
}

// Stage 2 and the scalar algebra, in one block. Warp w adds up the chunk
// sums of tensors w, w + kWarps, ... (lane j takes chunks j, j + 32, ...,
// then a fixed shuffle tree). Then thread k runs koala::update_scalars on
// its own contiguous range of tensors (coefficients written in place) and
// the ranges' filter states are merged by min/max (scalar_merge.h: the same
// bits as one call over all tensors). A non-finite loss or norm: every
// coefficient is made inactive (so the apply kernel touches nothing, x-bar
// included), the filter scalars stay, and skipped_steps counts the step.
__global__ void __launch_bounds__(kThreads)
    update_scalars_kernel(koala_config cfg, LossSource loss, size_t n_tensors,
                          const uint64_t *__restrict__ tensor_chunks,
                          const BlockSums *__restrict__ chunk_sums,
                          const unsigned char *__restrict__ has_grad, BlockSums *block_sums,
                          BlockCoef *coef, FilterState *filter) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    for (size_t t = static_cast<size_t>(warp); t < n_tensors; t += kWarps) {
        double gg = 0.0, hh = 0.0, xx = 0.0;
        if (has_grad[t]) {  // uniform over the warp
            const uint64_t end = tensor_chunks[t + 1];
            for (uint64_t c = tensor_chunks[t] + static_cast<uint64_t>(lane); c < end; c += 32) {
                gg += chunk_sums[c].gg;
                hh += chunk_sums[c].hh;
                xx += chunk_sums[c].xx;
            }
        }
        for (int off = 16; off > 0; off >>= 1) {
            gg += __shfl_down_sync(kFullMask, gg, off);
            hh += __shfl_down_sync(kFullMask, hh, off);
            xx += __shfl_down_sync(kFullMask, xx, off);
        }
        if (lane == 0) block_sums[t] = BlockSums{gg, hh, xx};
    }
    __syncthreads();  // every tensor's block_sums visible to the whole block

    double l = loss.loss, lv = loss.loss_var;
    if (loss.loss_ptr) {
        if (loss.is_float32) {
            l = static_cast<double>(*static_cast<const float *>(loss.loss_ptr));
            lv = static_cast<double>(*static_cast<const float *>(loss.loss_var_ptr));
        } else {
            l = *static_cast<const double *>(loss.loss_ptr);
            lv = *static_cast<const double *>(loss.loss_var_ptr);
        }
    }
    const FilterState prior = *filter;
    const size_t begin = scalar_range_begin(n_tensors, kThreads, threadIdx.x);
    const size_t end = scalar_range_begin(n_tensors, kThreads, threadIdx.x + 1);
    FilterState part = prior;
    const int not_finite = update_scalars(part, cfg, l, lv, block_sums + begin, has_grad + begin,
                                          end - begin, coef + begin) == kNotFinite;
    // Every thread has read *filter above; only after this barrier is it written.
    if (__syncthreads_or(not_finite)) {
        for (size_t t = begin; t < end; ++t) coef[t].active = 0;
        if (threadIdx.x == 0) filter->skipped_steps = prior.skipped_steps + 1;
        return;
    }
    __shared__ FilterState merged[kThreads];
    merged[threadIdx.x] = part;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
        if (static_cast<int>(threadIdx.x) < stride)
            merge_scalar_ranges(merged[threadIdx.x], merged[threadIdx.x + stride], prior.p01);
        __syncthreads();
    }
    if (threadIdx.x == 0) *filter = merged[0];
}

// The fused update of every active tensor: one block per chunk.
template <class T, int CAP>
__global__ void __launch_bounds__(kThreads)
    apply_kernel(const __grid_constant__ TensorTable<CAP> table, size_t first_tensor,
                 size_t first_chunk, const Chunk *__restrict__ chunks,
                 const BlockCoef *__restrict__ coef, T wd, int momentum, T *velocity, T *xbar) {
    const Chunk ch = chunks[first_chunk + blockIdx.x];
    const BlockCoef c = coef[ch.tensor];
    if (!c.active) return;  // skipped tensor, or the whole step skipped
    const size_t local = ch.tensor - first_tensor;
    T *x = static_cast<T *>(table.x[local]) + ch.begin;
    const T *g = static_cast<const T *>(table.g[local]) + ch.begin;  // non-NULL when active
    const uint32_t n = ch.count;
    if (momentum) {
        T *v = velocity + ch.offset;
        T *xb = xbar + ch.offset;
        const T k1 = static_cast<T>(c.cx), k2 = static_cast<T>(c.cv);
        for (uint32_t base = 0; base < n; base += kThreads * kIlp) {
            T xv[kIlp], vv[kIlp], bv[kIlp], gv[kIlp];
#pragma unroll
            for (int j = 0; j < kIlp; ++j) {
                const uint32_t i = base + threadIdx.x + static_cast<uint32_t>(j) * kThreads;
                if (i < n) {
                    xv[j] = x[i];
                    vv[j] = v[i];
                    bv[j] = xb[i];
                    gv[j] = g[i];
                }
            }
#pragma unroll
            for (int j = 0; j < kIlp; ++j) {
                const uint32_t i = base + threadIdx.x + static_cast<uint32_t>(j) * kThreads;
                if (i < n) {
                    momentum_step(xv[j], vv[j], bv[j], gv[j], wd, k1, k2);
                    x[i] = xv[j];
                    v[i] = vv[j];
                    xb[i] = bv[j];
                }
            }
        }
    } else {
        const T cx = static_cast<T>(c.cx);
        for (uint32_t base = 0; base < n; base += kThreads * kIlp) {
            T xv[kIlp], gv[kIlp];
#pragma unroll
            for (int j = 0; j < kIlp; ++j) {
                const uint32_t i = base + threadIdx.x + static_cast<uint32_t>(j) * kThreads;
                if (i < n) {
                    xv[j] = x[i];
                    gv[j] = g[i];
                }
            }
#pragma unroll
            for (int j = 0; j < kIlp; ++j) {
                const uint32_t i = base + threadIdx.x + static_cast<uint32_t>(j) * kThreads;
                if (i < n) x[i] = vanilla_step(xv[j], gv[j], cx);
            }
        }
    }
}

// KOALA-M predict, per chunk: |xbar - x|^2 on the posterior x, then
// x += v, v *= a.
template <class T, int CAP>
__global__ void __launch_bounds__(kThreads)
    momentum_predict_kernel(const __grid_constant__ TensorTable<CAP> table, size_t first_tensor,
                            size_t first_chunk, const Chunk *__restrict__ chunks, T a,
                            T *velocity, const T *xbar, double *__restrict__ chunk_d2) {
    const size_t c = first_chunk + blockIdx.x;
    const Chunk ch = chunks[c];
    const size_t local = ch.tensor - first_tensor;
    T *x = static_cast<T *>(table.x[local]) + ch.begin;
    T *v = velocity + ch.offset;
    const T *xb = xbar + ch.offset;
    const uint32_t n = ch.count;
    double d2[1] = {0.0};
    for (uint32_t base = 0; base < n; base += kThreads * kIlp) {
        T xv[kIlp], vv[kIlp], bv[kIlp];
#pragma unroll
        for (int j = 0; j < kIlp; ++j) {
            const uint32_t i = base + threadIdx.x + static_cast<uint32_t>(j) * kThreads;
            if (i < n) {
                xv[j] = x[i];
                vv[j] = v[i];
                bv[j] = xb[i];
            }
        }
#pragma unroll
        for (int j = 0; j < kIlp; ++j) {
            const uint32_t i = base + threadIdx.x + static_cast<uint32_t>(j) * kThreads;
            if (i < n) {
                momentum_predict(xv[j], vv[j], bv[j], a, d2[0]);
                x[i] = xv[j];
                v[i] = vv[j];
            }
        }
    }
    block_sum(d2);
    if (threadIdx.x == 0) chunk_d2[c] = d2[0];
}

// KOALA-M's scalar time update: d2 over all chunks (fixed per-thread
// ranges, then block_sum), then koala::momentum_predict_scalars.
__global__ void __launch_bounds__(kThreads)
    momentum_predict_scalars_kernel(koala_config cfg, const double *__restrict__ chunk_d2,
                                    size_t n_chunks, double n_total, FilterState *filter) {
    double d2[1] = {0.0};
    for (size_t c = threadIdx.x; c < n_chunks; c += kThreads) d2[0] += chunk_d2[c];
    block_sum(d2);
    if (threadIdx.x == 0) {
        FilterState s = *filter;
        momentum_predict_scalars(s, cfg, d2[0], n_total);
        *filter = s;
    }
}

// KOALA-V's time update, sigma += q, where sigma lives: in device memory.
__global__ void vanilla_predict_kernel(koala_config cfg, FilterState *filter) {
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        FilterState s = *filter;
        vanilla_predict(s, cfg);
        *filter = s;
    }
}

// The parameter table of one group: unused slots stay NULL.
template <int CAP>
void fill_table(TensorTable<CAP> &table, const Group &g, void *const *params,
                const void *const *grads) {
    std::memset(&table, 0, sizeof table);
    for (size_t k = 0; k < g.n_tensors; ++k) {
        table.x[k] = params ? params[g.first_tensor + k] : nullptr;
        table.g[k] = grads ? grads[g.first_tensor + k] : nullptr;
    }
}

template <class T, int C>
struct Instance {
    using type = T;
    static constexpr int cap = C;
};

// Calls f(Instance<T, CAP>{}) for the optimizer's dtype and table size.
template <class F>
cudaError_t dispatch(const DeviceState &d, F &&f) {
    if (d.dtype == KOALA_FLOAT32) {
        if (d.cap == kSmallCap) return f(Instance<float, kSmallCap>{});
        return f(Instance<float, kLargeCap>{});
    }
    if (d.cap == kSmallCap) return f(Instance<double, kSmallCap>{});
    return f(Instance<double, kLargeCap>{});
}

}  // namespace

cudaError_t launch_vanilla_predict(const DeviceState &d, const koala_config &cfg,
                                   cudaStream_t stream) {
    KOALA_LAUNCH(1, 32, 0, stream, vanilla_predict_kernel)(cfg, d.filter);
    return cudaGetLastError();
}

cudaError_t launch_momentum_predict(const DeviceState &d, const koala_config &cfg,
                                    void *const *params, cudaStream_t stream) {
    return dispatch(d, [&](auto instance) -> cudaError_t {
        using T = typename decltype(instance)::type;
        constexpr int CAP = decltype(instance)::cap;
        TensorTable<CAP> table;
        for (const Group &g : d.groups) {
            fill_table(table, g, params, nullptr);
            KOALA_LAUNCH(static_cast<unsigned>(g.n_chunks), kThreads, 0, stream,
                         momentum_predict_kernel<T, CAP>)(
                table, g.first_tensor, g.first_chunk, d.chunks, static_cast<T>(cfg.a),
                static_cast<T *>(d.velocity), static_cast<const T *>(d.xbar), d.chunk_d2);
            const cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) return e;
        }
        KOALA_LAUNCH(1, kThreads, 0, stream, momentum_predict_scalars_kernel)(
            cfg, d.chunk_d2, d.n_chunks, static_cast<double>(d.total_elements), d.filter);
        return cudaGetLastError();
    });
}

cudaError_t launch_update(const DeviceState &d, const koala_config &cfg, const LossSource &loss,
                          void *const *params, const void *const *grads, cudaStream_t stream) {
    return dispatch(d, [&](auto instance) -> cudaError_t {
        using T = typename decltype(instance)::type;
        constexpr int CAP = decltype(instance)::cap;
        TensorTable<CAP> table;
        for (const Group &g : d.groups) {
            fill_table(table, g, params, grads);
            KOALA_LAUNCH(static_cast<unsigned>(g.n_chunks), kThreads, 0, stream,
                         norms_kernel<T, CAP>)(
                table, g.first_tensor, g.first_chunk, d.chunks, cfg.weight_decay, d.chunk_sums,
                d.has_grad);
            const cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) return e;
        }
        KOALA_LAUNCH(1, kThreads, 0, stream, update_scalars_kernel)(
            cfg, loss, d.n_tensors, d.tensor_chunks, d.chunk_sums, d.has_grad, d.block_sums,
            d.coef, d.filter);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
        const int momentum = cfg.method == KOALA_MOMENTUM ? 1 : 0;
        for (const Group &g : d.groups) {
            // The table again: on a single group it is unchanged, but the
            // loop above left it holding the last group's pointers.
            if (d.groups.size() > 1) fill_table(table, g, params, grads);
            KOALA_LAUNCH(static_cast<unsigned>(g.n_chunks), kThreads, 0, stream,
                         apply_kernel<T, CAP>)(
                table, g.first_tensor, g.first_chunk, d.chunks, d.coef,
                static_cast<T>(cfg.weight_decay), momentum, static_cast<T *>(d.velocity),
                static_cast<T *>(d.xbar));
            e = cudaGetLastError();
            if (e != cudaSuccess) return e;
        }
        return cudaSuccess;
    });
}

const void *probe_kernel() { return reinterpret_cast<const void *>(&vanilla_predict_kernel); }

}  // namespace cuda
}  // namespace koala
