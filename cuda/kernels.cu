// The device path's kernels (kernels.h says what runs when). Per element
// they call the same __host__ __device__ functions as the CPU path
// (method_*.h, kalman_block.h, numeric.h); the scalar algebra is filter.h's,
// run by one block. Built with --fmad=false (cuda/meson.build), as the core
// is with -ffp-contract=off, so every element update rounds exactly as the
// host path's: device and host agree to the bit wherever their float64 sums
// agree (the sums differ in the order of addition only; the host adds
// float32 and 16-bit data in float32 blocks, the device in float64).
#include "kernels.h"

#include <string.h>

#include <type_traits>

#include "block_reduce.h"
#include "filter.h"
#include "group_io.h"
#include "launch.h"
#include "numeric.h"

namespace koala {
namespace cuda {

namespace {

template <class T>
using Compute = typename Elem<T>::compute;
template <class T>
using State = typename Elem<T>::state;
template <class T>
constexpr bool kIsHalf = sizeof(T) == 2;

template <class T>
__device__ __forceinline__ Compute<T> ld(T v) {
    return Elem<T>::load(v);
}

// A result stored as the host path stores it (cpu_kernels.cpp's st):
// 16-bit types round to nearest-even or stochastically with the bits of
// (key, element index within the tensor).
template <class T>
__device__ __forceinline__ T st(Compute<T> v, uint32_t key, uint64_t index, bool stochastic) {
    return Elem<T>::store(v, stochastic ? noise_bits(key, index) : 0u, stochastic);
}

__device__ __forceinline__ ScalarHeader &header_of(double *scalars) {
    return *reinterpret_cast<ScalarHeader *>(scalars);
}

// The stochastic rounding step of an update: 2 * steps, truncated to 32
// bits as cpu_path.cpp's update_noise_step; predict uses that + 1.
__device__ __forceinline__ uint32_t update_noise_step(double steps) {
    return static_cast<uint32_t>(2 * static_cast<uint64_t>(steps));
}

// ======================================================================
// Pass 1: sums
// ======================================================================

struct SumsArgs {
    const Chunk *chunks;
    const uint64_t *global_index;
    unsigned char *has_grad;
    double *chunk_sums;
    const double *scalars;    // KOALA++'s first-visit flags
    const double *tensor_wd;  // or NULL: weight_decay
    double weight_decay;
    uint64_t first_tensor, first_chunk;
};

// KOALA-V and KOALA-M: g.g, g.x, x.x (x only read with weight decay, as on
// the host; without it g.x and x.x are 0).
template <class T, bool kWithX>
struct KalmanSums {
    static constexpr int V = kGroupWidth<T>;
    struct Regs {
        T g[V];
        T x[V];
    };
    const T *g, *x;
    bool vg, vx;
    double s[kalman::kSums];

    __device__ KalmanSums(const T *g_, const T *x_)
        : g(g_), x(x_), vg(aligned16(g_)), vx(kWithX && aligned16(x_)), s{0.0, 0.0, 0.0} {}
    __device__ void load(Regs &r, uint32_t first, int count) {
        load_part<V>(g + first, vg, count, r.g);
        if constexpr (kWithX) load_part<V>(x + first, vx, count, r.x);
    }
    __device__ void run(Regs &r, uint32_t, int count) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
            if (j >= count) break;
            const double gj = static_cast<double>(ld(r.g[j]));
            if constexpr (kWithX)
                kalman::accumulate_gx(gj, static_cast<double>(ld(r.x[j])), s);
            else
                kalman::accumulate_g(gj, s);
        }
    }
};

// KOALA++: g.g, x.x, h.h, h.H', h.v', H'.H', H'.v' (plusplus::accumulate;
// a first visit reads no H' and v', no weight decay reads no x).
template <class T, bool kFirst, bool kWithX>
struct PlusPlusSums {
    static constexpr int V = kGroupWidth<T>;
    using C = Compute<T>;
    using S = State<T>;
    struct Regs {
        T g[V];
        T x[V];
        S H[V];
        S v[V];
    };
    const T *g, *x;
    const S *H, *v;
    bool vg, vx, vH, vv;
    C wd;
    double s[plusplus::kSums];

    __device__ PlusPlusSums(const T *g_, const T *x_, const S *H_, const S *v_, C wd_)
        : g(g_), x(x_), H(H_), v(v_), vg(aligned16(g_)), vx(kWithX && aligned16(x_)),
          vH(!kFirst && aligned16(H_)), vv(!kFirst && aligned16(v_)), wd(wd_),
          s{0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0} {}
    __device__ void load(Regs &r, uint32_t first, int count) {
        load_part<V>(g + first, vg, count, r.g);
        if constexpr (kWithX) load_part<V>(x + first, vx, count, r.x);
        if constexpr (!kFirst) {
            load_part<V>(H + first, vH, count, r.H);
            load_part<V>(v + first, vv, count, r.v);
        }
    }
    __device__ void run(Regs &r, uint32_t, int count) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
            if (j >= count) break;
            plusplus::accumulate(ld(r.g[j]), kWithX ? ld(r.x[j]) : C(0), kFirst ? C(0) : r.H[j],
                                 kFirst ? C(0) : r.v[j], wd, kFirst, s);
        }
    }
};

template <class Op, int K>
__device__ __forceinline__ void sum_chunk(Op &op, uint32_t n, double (&out)[K]) {
    walk_chunk<Op::V>(op, n);
#pragma unroll
    for (int k = 0; k < K; ++k) out[k] = op.s[k];
}

// One block per chunk: the chunk's K sums into chunk_sums[c * K ..], and
// (from each tensor's first chunk) whether the tensor has a gradient.
template <class T, int CAP, bool kPlusPlus>
__global__ void __launch_bounds__(kThreads)
    sums_kernel(const __grid_constant__ TensorTable<CAP> table, const __grid_constant__ SumsArgs a) {
    const uint64_t c = a.first_chunk + blockIdx.x;
    const Chunk ch = a.chunks[c];
    const TensorPtrs p = table.t[ch.tensor - a.first_tensor];
    if (threadIdx.x == 0 && ch.begin == 0) a.has_grad[ch.tensor] = p.g ? 1 : 0;
    if (!p.g) return;  // uniform over the block; the scalar kernel reads has_grad
    const uint64_t j = a.global_index[ch.tensor];
    const double wd = a.tensor_wd ? a.tensor_wd[j] : a.weight_decay;
    const T *g = static_cast<const T *>(p.g) + ch.begin;
    const T *x = static_cast<const T *>(p.x) + ch.begin;
    if constexpr (!kPlusPlus) {
        constexpr int K = kalman::kSums;
        double s[K];
        if (wd != 0.0) {
            KalmanSums<T, true> op(g, x);
            sum_chunk(op, ch.count, s);
        } else {
            KalmanSums<T, false> op(g, x);
            sum_chunk(op, ch.count, s);
        }
        block_sum(s);
        if (threadIdx.x == 0)
            for (int k = 0; k < K; ++k) a.chunk_sums[c * K + k] = s[k];
    } else {
        using S = State<T>;
        using C = Compute<T>;
        constexpr int K = plusplus::kSums;
        const bool first = a.scalars[kHeaderDoubles + j * 2 + 1] == 0.0;
        const S *v = static_cast<const S *>(p.s0) + ch.begin;
        const S *H = static_cast<const S *>(p.s1) + ch.begin;
        const C cwd = static_cast<C>(wd);
        double s[K];
        if (first) {
            if (wd != 0.0) {
                PlusPlusSums<T, true, true> op(g, x, H, v, cwd);
                sum_chunk(op, ch.count, s);
            } else {
                PlusPlusSums<T, true, false> op(g, x, H, v, cwd);
                sum_chunk(op, ch.count, s);
            }
        } else {
            if (wd != 0.0) {
                PlusPlusSums<T, false, true> op(g, x, H, v, cwd);
                sum_chunk(op, ch.count, s);
            } else {
                PlusPlusSums<T, false, false> op(g, x, H, v, cwd);
                sum_chunk(op, ch.count, s);
            }
        }
        block_sum(s);
        if (threadIdx.x == 0)
            for (int k = 0; k < K; ++k) a.chunk_sums[c * K + k] = s[k];
    }
}

// ======================================================================
// The scalar kernel
// ======================================================================

struct ScalarArgs {
    koala_config cfg;
    double loss, loss_var;
    const void *loss_ptr, *loss_var_ptr;  // NULL: the values
    int loss_f32;
    int reduce, filter, mark_begun, fold_predict;
    double fold_q;
    int sharded;
    uint64_t n_global;
    double local_elements, global_elements;
    double *sums_out;
    const double *sums_in;
    double *scalars;
    const double *chunk_sums;
    const uint64_t *tensor_chunks, *piece_first, *pieces;
    const unsigned char *has_grad;
    Coef *coef;
    StepControl *control;
    const double *tensor_lr, *tensor_wd;
};

// The chunk sums into the sums layout (sums.h): warp w takes global tensors
// w, w + warps, ...; per piece (local tensor, in increasing order) lane l
// adds chunks l, l + 32, ... and a shuffle tree adds the lanes; the pieces
// add up in order. Presence counts as cpu_path.cpp's.
template <int K>
__device__ void reduce_sums(const ScalarArgs &a) {
    constexpr int kWarps = kScalarThreads / 32;
    constexpr uint64_t stride = K + 1;
    const int lane = static_cast<int>(threadIdx.x) & 31;
    for (uint64_t j = threadIdx.x >> 5; j < a.n_global; j += kWarps) {
        double acc[K];
#pragma unroll
        for (int k = 0; k < K; ++k) acc[k] = 0.0;
        double presence = 0.0;
        for (uint64_t q = a.piece_first[j]; q < a.piece_first[j + 1]; ++q) {
            const uint64_t t = a.pieces[q];
            const bool has = a.has_grad[t] != 0;  // uniform over the warp
            presence += has ? 1.0 : kNoGrad;
            if (!has) continue;
            double part[K];
#pragma unroll
            for (int k = 0; k < K; ++k) part[k] = 0.0;
            const uint64_t end = a.tensor_chunks[t + 1];
            // Unrolled so that a lane has several chunks' loads in flight (a
            // 1B-parameter layout has ~1000 chunks per tensor); the adds stay
            // in chunk order.
#pragma unroll 4
            for (uint64_t c = a.tensor_chunks[t] + static_cast<uint64_t>(lane); c < end; c += 32)
#pragma unroll
                for (int k = 0; k < K; ++k) part[k] += a.chunk_sums[c * K + k];
#pragma unroll
            for (int k = 0; k < K; ++k) acc[k] += warp_sum(part[k]);
        }
        if (lane == 0) {
            double *slot = a.sums_out + j * stride;
            slot[0] = presence;
#pragma unroll
            for (int k = 0; k < K; ++k) slot[1 + k] = acc[k];
        }
    }
    if (threadIdx.x == 0) {
        double *trailer = a.sums_out + a.n_global * stride;
        trailer[0] = a.local_elements;
        trailer[1] = header_of(a.scalars).pending_d2;
        trailer[2] = 1.0;  // one process
        trailer[3] = layout_fingerprint(static_cast<uint64_t>(a.global_elements), a.n_global);
    }
}

// One block: reduce (koala_update, koala_update_begin) and/or filter
// (koala_update, koala_update_end). See kernels.h.
__global__ void __launch_bounds__(kScalarThreads, 1) scalar_kernel(const __grid_constant__ ScalarArgs a) {
    const int tid = static_cast<int>(threadIdx.x);
    ScalarHeader &hdr = header_of(a.scalars);
    if (a.reduce) {
        if (a.cfg.method == KOALA_PLUSPLUS)
            reduce_sums<plusplus::kSums>(a);
        else
            reduce_sums<kalman::kSums>(a);
        __syncthreads();  // the block's global writes are visible to the whole block
    }
    if (!a.filter) {
        // koala_update_begin leaves the block saying so; a sharded
        // koala_update's first half does not (its all-reduce may still fail,
        // and then nothing may have changed).
        if (tid == 0 && a.mark_begun) hdr.phase = kBegun;
        return;
    }

    __shared__ ScalarHeader s_prior, s_next;
    __shared__ int s_outcome;
    __shared__ Extremes s_extremes[kScalarThreads];

    UpdateContext u;
    u.cfg = a.cfg;
    u.loss = a.loss;
    u.loss_var = a.loss_var;
    if (a.loss_ptr) {
        if (a.loss_f32) {
            u.loss = static_cast<double>(*static_cast<const float *>(a.loss_ptr));
            u.loss_var = static_cast<double>(*static_cast<const float *>(a.loss_var_ptr));
        } else {
            u.loss = *static_cast<const double *>(a.loss_ptr);
            u.loss_var = *static_cast<const double *>(a.loss_var_ptr);
        }
    }
    u.sums = a.sums_in;
    u.n_global = static_cast<size_t>(a.n_global);
    u.global_elements = a.global_elements;
    u.sharded = a.sharded;
    u.tensor_lr = a.tensor_lr;
    u.tensor_wd = a.tensor_wd;

    if (tid == 0) {
        ScalarHeader prior = hdr;
        if (a.fold_predict) prior.sigma += a.fold_q;  // vanilla::predict, deferred
        s_prior = prior;
        ScalarHeader next;
        s_outcome = prepare_update(prior, u, next);
        s_next = next;
    }
    __syncthreads();  // every thread has the prior; only thread 0 writes hdr, at the end
    const bool prepared = s_outcome == kOk;
    const ScalarHeader next = s_next;
    const size_t n_ts = tensor_scalars_per_tensor(a.cfg);
    double *ts = a.scalars + kHeaderDoubles;
    Extremes e = no_extremes();
    int bad = prepared ? 0 : 1;
    if (prepared) {
        for (uint64_t j = static_cast<uint64_t>(tid); j < a.n_global; j += kScalarThreads) {
            Coef c{};
            if (tensor_update(static_cast<size_t>(j), next, u, ts + j * n_ts, c, e) != kOk) bad = 1;
            a.coef[j] = c;
        }
    }
    const bool skip = __syncthreads_or(bad) != 0;
    const uint32_t noise_step = update_noise_step(s_prior.steps);
    if (!skip) {
        // min, max and or are exact and order-free: the same bits as the
        // host's sequential merge.
        s_extremes[tid] = e;
        __syncthreads();
        for (int half = kScalarThreads / 2; half > 0; half >>= 1) {
            if (tid < half) merge_extremes(s_extremes[tid], s_extremes[tid + half]);
            __syncthreads();
        }
        for (uint64_t j = static_cast<uint64_t>(tid); j < a.n_global; j += kScalarThreads)
            for (size_t k = 0; k < n_ts; ++k) ts[j * n_ts + k] = a.coef[j].tensor_scalars[k];
        if (tid == 0) {
            ScalarHeader h = next;
            finish_update(h, a.cfg, s_extremes[0]);
            h.steps = s_prior.steps + 1.0;
            h.phase = kUpdated;
            // KOALA-M: the apply kernel's last block writes this update's sum.
            if (a.cfg.method == KOALA_MOMENTUM) h.pending_d2 = 0.0;
            hdr = h;
            *a.control = StepControl{noise_step, 0};
        }
    } else {
        // Nothing is applied; the filter keeps its prior (with a folded
        // predict: the prediction); the step is counted.
        for (uint64_t j = static_cast<uint64_t>(tid); j < a.n_global; j += kScalarThreads)
            a.coef[j].flags = 0;
        if (tid == 0) {
            ScalarHeader h = s_prior;
            h.skipped_steps += 1.0;
            h.steps += 1.0;
            h.phase = kUpdated;
            hdr = h;
            *a.control = StepControl{noise_step, 1};
        }
    }
}

// ======================================================================
// Pass 2: apply
// ======================================================================

struct ApplyArgs {
    const Chunk *chunks;
    const uint64_t *global_index;
    const Coef *coef;
    const StepControl *control;
    const double *tensor_wd;  // or NULL: weight_decay
    double weight_decay;
    double q, sigma0;         // KOALA++
    int fused;                // KOALA-M fused_predict
    int stochastic;
    uint64_t seed;
    double *chunk_d2;         // KOALA-M
    unsigned int *finished;
    double *scalars;
    uint64_t first_tensor, first_chunk, n_chunks, total_chunks;
};

template <class T>
struct VanillaStep {
    static constexpr int V = kGroupWidth<T>;
    using C = Compute<T>;
    struct Regs {
        T x[V];
        T g[V];
    };
    T *x;
    const T *g;
    bool vx, vg;
    C c;
    uint32_t key;
    uint64_t begin;
    bool sr;

    __device__ void load(Regs &r, uint32_t first, int count) {
        load_part<V>(x + first, vx, count, r.x);
        load_part<V>(g + first, vg, count, r.g);
    }
    __device__ void run(Regs &r, uint32_t first, int count) {
#pragma unroll
        for (int j = 0; j < V; ++j)
            r.x[j] = st<T>(vanilla::step(ld(r.x[j]), ld(r.g[j]), c), key, begin + first + j, sr);
        store_part<V>(x + first, vx, count, r.x);
    }
};

template <class T, bool kFused>
struct MomentumStep {
    static constexpr int V = kGroupWidth<T>;
    using C = Compute<T>;
    using S = State<T>;
    struct Regs {
        T x[V];
        T g[V];
        S v[V];
        S xbar[V];
    };
    T *x;
    const T *g;
    S *v, *xbar;
    bool vx, vg, vv, vb;
    C wd, k1, k2, decay;
    uint32_t key, key_next;  // this update's rounding stream, the next predict's (fused)
    uint64_t begin;
    bool sr;
    double d2;

    __device__ void load(Regs &r, uint32_t first, int count) {
        load_part<V>(x + first, vx, count, r.x);
        load_part<V>(g + first, vg, count, r.g);
        load_part<V>(v + first, vv, count, r.v);
        load_part<V>(xbar + first, vb, count, r.xbar);
    }
    __device__ void run(Regs &r, uint32_t first, int count) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const uint64_t index = begin + first + j;
            double t = 0.0;
            if constexpr (kIsHalf<T>) {
                // As cpu_kernels.cpp: the posterior is rounded to T with this
                // update's stream, and (fused) the prediction x + v from that
                // with the next predict's, as the unfused predict would.
                C xi = ld(r.x[j]);
                momentum::step(xi, r.v[j], r.xbar[j], ld(r.g[j]), wd, k1, k2, decay, false, t);
                if constexpr (kFused) {
                    xi = ld(st<T>(xi, key, index, sr)) + r.v[j];
                    r.x[j] = st<T>(xi, key_next, index, sr);
                } else {
                    r.x[j] = st<T>(xi, key, index, sr);
                }
            } else {
                momentum::step(r.x[j], r.v[j], r.xbar[j], r.g[j], wd, k1, k2, decay, kFused, t);
            }
            if (j < count) d2 += t;
        }
        store_part<V>(x + first, vx, count, r.x);
        store_part<V>(v + first, vv, count, r.v);
        store_part<V>(xbar + first, vb, count, r.xbar);
    }
};

template <class T, bool kFirst>
struct PlusPlusStep {
    static constexpr int V = kGroupWidth<T>;
    using C = Compute<T>;
    using S = State<T>;
    struct Regs {
        T x[V];
        T g[V];
        S v[V];
        S H[V];
    };
    T *x;
    const T *g;
    S *v, *H;
    bool vx, vg, vv, vH;
    C wd, a1, lambda, w, c, q, sigma0;
    uint32_t key;
    uint64_t begin;
    bool sr;

    __device__ void load(Regs &r, uint32_t first, int count) {
        load_part<V>(x + first, vx, count, r.x);
        load_part<V>(g + first, vg, count, r.g);
        if constexpr (kFirst) {
            // A first visit reads no previous v and H (plusplus::step).
#pragma unroll
            for (int j = 0; j < V; ++j) r.v[j] = r.H[j] = S(0);
        } else {
            load_part<V>(v + first, vv, count, r.v);
            load_part<V>(H + first, vH, count, r.H);
        }
    }
    __device__ void run(Regs &r, uint32_t first, int count) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
            C xi = ld(r.x[j]);
            plusplus::step(xi, r.v[j], r.H[j], ld(r.g[j]), wd, a1, lambda, w, c, q, sigma0,
                           kFirst);
            r.x[j] = st<T>(xi, key, begin + first + j, sr);
        }
        store_part<V>(x + first, vx, count, r.x);
        store_part<V>(v + first, vv, count, r.v);
        store_part<V>(H + first, vH, count, r.H);
    }
};

// One block per chunk, the chunks in reverse order: the update of every
// element of active tensors. KOALA-M: the chunk's next-predict
// |xbar - x|^2, and the last block's sum of them into pending_d2.
template <class T, int CAP, int kMethod>
__global__ void __launch_bounds__(kThreads)
    apply_kernel(const __grid_constant__ TensorTable<CAP> table, const __grid_constant__ ApplyArgs a) {
    using C = Compute<T>;
    using S = State<T>;
    const uint64_t c = a.first_chunk + (a.n_chunks - 1 - blockIdx.x);
    const Chunk ch = a.chunks[c];
    const TensorPtrs p = table.t[ch.tensor - a.first_tensor];
    const uint64_t j = a.global_index[ch.tensor];
    const Coef cf = a.coef[j];
    // Active implies a gradient (filter.h); the NULL test only guards a
    // caller whose NULL pattern differs between processes.
    const bool active = (cf.flags & kActive) && p.g;
    const bool sr = kIsHalf<T> && a.stochastic;
    const uint32_t key = sr ? noise_key(a.seed, a.control->noise_step, ch.tensor) : 0u;
    const C wd = static_cast<C>(a.tensor_wd ? a.tensor_wd[j] : a.weight_decay);
    T *x = static_cast<T *>(p.x) + ch.begin;
    const T *g = static_cast<const T *>(p.g) + ch.begin;
    if constexpr (kMethod == KOALA_VANILLA) {
        if (!active) return;
        VanillaStep<T> op{x, g, aligned16(x), aligned16(g), static_cast<C>(cf.c[0]), key,
                          ch.begin, sr};
        walk_chunk<VanillaStep<T>::V>(op, ch.count);
    } else if constexpr (kMethod == KOALA_MOMENTUM) {
        double d2[1] = {0.0};
        if (active) {
            S *v = static_cast<S *>(p.s0) + ch.begin;
            S *xbar = static_cast<S *>(p.s1) + ch.begin;
            const C k1 = static_cast<C>(cf.c[0]), k2 = static_cast<C>(cf.c[1]),
                    decay = static_cast<C>(cf.c[2]);
            if (a.fused) {
                // The next predict's stream: 2k + 3 for the update of step k.
                const uint32_t key_next =
                    sr ? noise_key(a.seed, a.control->noise_step + 3u, ch.tensor) : 0u;
                MomentumStep<T, true> op{x,  g,  v,     xbar, aligned16(x), aligned16(g),
                                         aligned16(v), aligned16(xbar), wd, k1, k2, decay,
                                         key, key_next, ch.begin, sr, 0.0};
                walk_chunk<MomentumStep<T, true>::V>(op, ch.count);
                d2[0] = op.d2;
            } else {
                MomentumStep<T, false> op{x,  g,  v,     xbar, aligned16(x), aligned16(g),
                                          aligned16(v), aligned16(xbar), wd, k1, k2, decay,
                                          key, 0u, ch.begin, sr, 0.0};
                walk_chunk<MomentumStep<T, false>::V>(op, ch.count);
                d2[0] = op.d2;
            }
            block_sum(d2);
        }
        if (threadIdx.x == 0) a.chunk_d2[c] = d2[0];
        if (finish_last_block(a.finished, a.total_chunks)) {
            const double total = block_sum_array(a.chunk_d2, a.total_chunks);
            if (threadIdx.x == 0 && !a.control->skipped) header_of(a.scalars).pending_d2 = total;
        }
    } else {
        if (!active) return;
        S *v = static_cast<S *>(p.s0) + ch.begin;
        S *H = static_cast<S *>(p.s1) + ch.begin;
        const C a1 = static_cast<C>(cf.c[0]), lambda = static_cast<C>(cf.c[1]),
                w = static_cast<C>(cf.c[2]), cc = static_cast<C>(cf.c[3]),
                q = static_cast<C>(a.q), sigma0 = static_cast<C>(a.sigma0);
        if (cf.flags & kFirstVisit) {
            PlusPlusStep<T, true> op{x, g, v, H, aligned16(x), aligned16(g), aligned16(v),
                                     aligned16(H), wd, a1, lambda, w, cc, q, sigma0, key,
                                     ch.begin, sr};
            walk_chunk<PlusPlusStep<T, true>::V>(op, ch.count);
        } else {
            PlusPlusStep<T, false> op{x, g, v, H, aligned16(x), aligned16(g), aligned16(v),
                                      aligned16(H), wd, a1, lambda, w, cc, q, sigma0, key,
                                      ch.begin, sr};
            walk_chunk<PlusPlusStep<T, false>::V>(op, ch.count);
        }
    }
}

// ======================================================================
// KOALA-M predict
// ======================================================================

struct PredictArgs {
    koala_config cfg;
    const Chunk *chunks;
    const uint64_t *global_index;
    double *scalars;
    double *chunk_d2;
    unsigned int *finished;
    uint64_t first_tensor, first_chunk, total_chunks, n_global;
    double global_elements;
    int sharded;
};

template <class T, int kFlag>
struct PredictStep {
    static constexpr int V = kGroupWidth<T>;
    using C = Compute<T>;
    using S = State<T>;
    struct Regs {
        T x[V];
        S v[V];
        S xbar[V];
    };
    T *x;
    S *v;
    const S *xbar;
    bool vx, vv, vb;
    C a;
    uint32_t key;
    uint64_t begin;
    bool sr;
    double d2;

    __device__ void load(Regs &r, uint32_t first, int count) {
        load_part<V>(x + first, vx, count, r.x);
        load_part<V>(v + first, vv, count, r.v);
        if constexpr (kFlag != momentum::kCounted) {
            load_part<V>(xbar + first, vb, count, r.xbar);
        } else {
#pragma unroll
            for (int j = 0; j < V; ++j) r.xbar[j] = S(0);  // not read (predict_element)
        }
    }
    __device__ void run(Regs &r, uint32_t first, int count) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
            C xi = ld(r.x[j]);
            double t = 0.0;
            momentum::predict_element(kFlag, xi, r.v[j], r.xbar[j], a, t);
            r.x[j] = st<T>(xi, key, begin + first + j, sr);
            if (j < count) d2 += t;
        }
        store_part<V>(x + first, vx, count, r.x);
        store_part<V>(v + first, vv, count, r.v);
    }
};

// The scalar time update (cpu_path.cpp's host_predict after the element
// pass), by one block: every flag after predict, then d2 = pending_d2 +
// the chunks' sum into the covariance (unsharded) or into pending_d2 for
// the next update's all-reduce (sharded).
__device__ void momentum_time_update(const PredictArgs &a, double chunks_d2) {
    double *flags = a.scalars + kHeaderDoubles;
    for (uint64_t j = threadIdx.x; j < a.n_global; j += blockDim.x)
        flags[j] = momentum::flag_after_predict(flags[j]);
    if (threadIdx.x == 0) {
        ScalarHeader h = header_of(a.scalars);
        const double d2 = h.pending_d2 + chunks_d2;
        if (a.sharded) {
            h.pending_d2 = d2;
        } else {
            momentum::predict(h, a.cfg, d2, a.global_elements);
            h.pending_d2 = 0.0;
        }
        h.phase = kPredicted;
        header_of(a.scalars) = h;
    }
}

template <class T, int CAP>
__global__ void __launch_bounds__(kThreads)
    predict_kernel(const __grid_constant__ TensorTable<CAP> table,
                   const __grid_constant__ PredictArgs a) {
    using C = Compute<T>;
    using S = State<T>;
    const uint64_t c = a.first_chunk + blockIdx.x;
    const Chunk ch = a.chunks[c];
    const TensorPtrs p = table.t[ch.tensor - a.first_tensor];
    const uint64_t j = a.global_index[ch.tensor];
    const int flag = static_cast<int>(a.scalars[kHeaderDoubles + j]);
    double d2[1] = {0.0};
    // kAhead: the parameters hold the prediction already (fused update).
    if (flag != momentum::kAhead) {
        const bool sr = kIsHalf<T> && a.cfg.stochastic_rounding;
        const uint32_t noise_step = update_noise_step(header_of(a.scalars).steps) + 1u;
        const uint32_t key = sr ? noise_key(a.cfg.seed, noise_step, ch.tensor) : 0u;
        T *x = static_cast<T *>(p.x) + ch.begin;
        S *v = static_cast<S *>(p.s0) + ch.begin;
        const S *xbar = static_cast<const S *>(p.s1) + ch.begin;
        const C decay = static_cast<C>(a.cfg.a);
        const bool vx = aligned16(x), vv = aligned16(v), vb = aligned16(xbar);
        if (flag == momentum::kAheadStale) {
            PredictStep<T, momentum::kAheadStale> op{x, v, xbar, vx, vv, vb, decay,
                                                     key, ch.begin, sr, 0.0};
            walk_chunk<PredictStep<T, momentum::kAheadStale>::V>(op, ch.count);
            d2[0] = op.d2;
        } else if (flag == momentum::kCounted) {
            PredictStep<T, momentum::kCounted> op{x, v, xbar, vx, vv, vb, decay,
                                                  key, ch.begin, sr, 0.0};
            walk_chunk<PredictStep<T, momentum::kCounted>::V>(op, ch.count);
            d2[0] = op.d2;
        } else {
            PredictStep<T, momentum::kPlain> op{x, v, xbar, vx, vv, vb, decay,
                                                key, ch.begin, sr, 0.0};
            walk_chunk<PredictStep<T, momentum::kPlain>::V>(op, ch.count);
            d2[0] = op.d2;
        }
        block_sum(d2);
    }
    if (threadIdx.x == 0) a.chunk_d2[c] = d2[0];
    if (finish_last_block(a.finished, a.total_chunks))
        momentum_time_update(a, block_sum_array(a.chunk_d2, a.total_chunks));
}

// A KOALA-M predict of a process that holds no elements: the scalar part.
__global__ void __launch_bounds__(kThreads) predict_scalars_kernel(const __grid_constant__ PredictArgs a) {
    momentum_time_update(a, 0.0);
}

// KOALA-V (sigma += q) and KOALA++ (nothing) on caller-owned state, and
// the phase.
__global__ void scalar_predict_kernel(const __grid_constant__ koala_config cfg, double *scalars) {
    if (threadIdx.x != 0) return;
    ScalarHeader h = header_of(scalars);
    if (cfg.method == KOALA_VANILLA) vanilla::predict(h, cfg);
    h.phase = kPredicted;
    header_of(scalars) = h;
}

// ======================================================================
// koala_posterior
// ======================================================================

struct PosteriorArgs {
    const Chunk *chunks;
    const uint64_t *global_index;
    const double *scalars;
    uint64_t first_tensor, first_chunk;
    int momentum;
};

template <class T>
struct PosteriorStep {
    static constexpr int V = kGroupWidth<T>;
    using S = State<T>;
    struct Regs {
        T x[V];
        S v[V];
    };
    const T *x;
    const S *v;
    T *out;
    bool vx, vv, vo, ahead;

    __device__ void load(Regs &r, uint32_t first, int count) {
        load_part<V>(x + first, vx, count, r.x);
        if (ahead) load_part<V>(v + first, vv, count, r.v);
    }
    __device__ void run(Regs &r, uint32_t first, int count) {
        if (ahead) {
#pragma unroll
            for (int j = 0; j < V; ++j) r.x[j] = Elem<T>::store(ld(r.x[j]) - r.v[j], 0u, false);
        }
        store_part<V>(out + first, vo, count, r.x);
    }
};

template <class T, int CAP>
__global__ void __launch_bounds__(kThreads)
    posterior_kernel(const __grid_constant__ TensorTable<CAP> table,
                     const __grid_constant__ PosteriorArgs a) {
    using S = State<T>;
    const uint64_t c = a.first_chunk + blockIdx.x;
    const Chunk ch = a.chunks[c];
    const TensorPtrs p = table.t[ch.tensor - a.first_tensor];
    const uint64_t j = a.global_index[ch.tensor];
    const bool ahead = a.momentum && static_cast<int>(a.scalars[kHeaderDoubles + j]) ==
                                         momentum::kAhead;
    const T *x = static_cast<const T *>(p.x) + ch.begin;
    const S *v = ahead ? static_cast<const S *>(p.s0) + ch.begin : nullptr;
    T *out = static_cast<T *>(p.s1) + ch.begin;
    PosteriorStep<T> op{x, v, out, aligned16(x), ahead && aligned16(v), aligned16(out), ahead};
    walk_chunk<PosteriorStep<T>::V>(op, ch.count);
}

// ======================================================================
// Launchers
// ======================================================================

template <class T, int CAP>
struct Instance {
    using type = T;
    static constexpr int cap = CAP;
};

// Calls f(Instance<T, CAP>{}) for the optimizer's dtype and table size.
template <class F>
cudaError_t dispatch(koala_dtype dtype, int cap, F &&f) {
    const bool small = cap == kSmallCap;
    switch (dtype) {
        case KOALA_FLOAT64:
            return small ? f(Instance<double, kSmallCap>{}) : f(Instance<double, kLargeCap>{});
        case KOALA_BFLOAT16:
            return small ? f(Instance<bf16, kSmallCap>{}) : f(Instance<bf16, kLargeCap>{});
        case KOALA_FLOAT16:
            return small ? f(Instance<fp16, kSmallCap>{}) : f(Instance<fp16, kLargeCap>{});
        default:
            return small ? f(Instance<float, kSmallCap>{}) : f(Instance<float, kLargeCap>{});
    }
}

// The pointer table of one group, in the plan's host table. Only the
// group's entries are written: its chunks never index the others.
template <int CAP>
TensorTable<CAP> &host_table(const DevicePlan &plan);
template <>
TensorTable<kSmallCap> &host_table<kSmallCap>(const DevicePlan &plan) {
    return *plan.small_table;
}
template <>
TensorTable<kLargeCap> &host_table<kLargeCap>(const DevicePlan &plan) {
    return *plan.large_table;
}

template <int CAP>
const TensorTable<CAP> &table_of(const DevicePlan &plan, const Group &g, const CallPointers &p) {
    TensorTable<CAP> &table = host_table<CAP>(plan);
    const size_t n = plan.n_tensors;
    for (size_t k = 0; k < g.n_tensors; ++k) {
        const size_t i = g.first_tensor + k;
        TensorPtrs &t = table.t[k];
        t.x = p.params ? p.params[i] : nullptr;
        t.g = p.grads ? p.grads[i] : nullptr;
        t.s0 = p.state ? p.state[i] : nullptr;
        t.s1 = p.out ? p.out[i] : p.state ? p.state[n + i] : nullptr;
    }
    return table;
}

unsigned grid_of(const Group &g) { return static_cast<unsigned>(g.n_chunks); }

}  // namespace

cudaError_t launch_sums(const DevicePlan &plan, const koala_config &cfg, const CallPointers &p,
                        double *scalars, const double *tensor_wd, cudaStream_t stream) {
    return dispatch(plan.dtype, plan.cap, [&](auto instance) -> cudaError_t {
        using T = typename decltype(instance)::type;
        constexpr int CAP = decltype(instance)::cap;
        SumsArgs a{};
        a.chunks = plan.tab.chunks;
        a.global_index = plan.tab.global_index;
        a.has_grad = plan.tab.has_grad;
        a.chunk_sums = plan.tab.chunk_sums;
        a.scalars = scalars;
        a.tensor_wd = tensor_wd;
        a.weight_decay = cfg.weight_decay;
        for (const Group &g : plan.groups) {
            if (g.n_chunks == 0) continue;
            a.first_tensor = g.first_tensor;
            a.first_chunk = g.first_chunk;
            const TensorTable<CAP> &table = table_of<CAP>(plan, g, p);
            if (plan.method == KOALA_PLUSPLUS)
                KOALA_LAUNCH(grid_of(g), kThreads, 0, stream, sums_kernel<T, CAP, true>)(table, a);
            else
                KOALA_LAUNCH(grid_of(g), kThreads, 0, stream, sums_kernel<T, CAP, false>)(table, a);
            const cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) return e;
        }
        return cudaSuccess;
    });
}

cudaError_t launch_scalar(const DevicePlan &plan, const ScalarJob &job, double *scalars,
                          cudaStream_t stream) {
    ScalarArgs a{};
    a.cfg = job.cfg;
    a.loss = job.loss.loss;
    a.loss_var = job.loss.loss_var;
    a.loss_ptr = job.loss.loss_ptr;
    a.loss_var_ptr = job.loss.loss_var_ptr;
    a.loss_f32 = job.loss.is_float32;
    a.reduce = job.reduce ? 1 : 0;
    a.filter = job.filter ? 1 : 0;
    a.mark_begun = job.mark_begun ? 1 : 0;
    a.fold_predict = job.fold_predict ? 1 : 0;
    a.fold_q = job.fold_q;
    a.sharded = plan.sharded;
    a.n_global = plan.n_global;
    a.local_elements = plan.local_elements;
    a.global_elements = plan.global_elements;
    a.sums_out = job.sums_out;
    a.sums_in = job.sums_in;
    a.scalars = scalars;
    a.chunk_sums = plan.tab.chunk_sums;
    a.tensor_chunks = plan.tab.tensor_chunks;
    a.piece_first = plan.tab.piece_first;
    a.pieces = plan.tab.pieces;
    a.has_grad = plan.tab.has_grad;
    a.coef = plan.tab.coef;
    a.control = plan.tab.control;
    a.tensor_lr = job.tensor_lr;
    a.tensor_wd = job.tensor_wd;
    KOALA_LAUNCH(1, kScalarThreads, 0, stream, scalar_kernel)(a);
    return cudaGetLastError();
}

cudaError_t launch_apply(const DevicePlan &plan, const koala_config &cfg, const CallPointers &p,
                         double *scalars, const double *tensor_wd, cudaStream_t stream) {
    if (plan.n_chunks == 0) return cudaSuccess;  // KOALA-M: the scalar kernel zeroed pending_d2
    return dispatch(plan.dtype, plan.cap, [&](auto instance) -> cudaError_t {
        using T = typename decltype(instance)::type;
        constexpr int CAP = decltype(instance)::cap;
        ApplyArgs a{};
        a.chunks = plan.tab.chunks;
        a.global_index = plan.tab.global_index;
        a.coef = plan.tab.coef;
        a.control = plan.tab.control;
        a.tensor_wd = tensor_wd;
        a.weight_decay = cfg.weight_decay;
        a.q = cfg.q;
        a.sigma0 = cfg.sigma;
        a.fused = cfg.fused_predict;
        a.stochastic = cfg.stochastic_rounding;
        a.seed = cfg.seed;
        a.chunk_d2 = plan.tab.chunk_d2;
        a.finished = plan.tab.finished;
        a.scalars = scalars;
        a.total_chunks = plan.n_chunks;
        // Groups last to first, each in reverse: the chunks pass 1 read last
        // are applied first.
        for (size_t k = plan.groups.size(); k-- > 0;) {
            const Group &g = plan.groups[k];
            if (g.n_chunks == 0) continue;
            a.first_tensor = g.first_tensor;
            a.first_chunk = g.first_chunk;
            a.n_chunks = g.n_chunks;
            const TensorTable<CAP> &table = table_of<CAP>(plan, g, p);
            switch (plan.method) {
                case KOALA_VANILLA:
                    KOALA_LAUNCH(grid_of(g), kThreads, 0, stream,
                                 apply_kernel<T, CAP, KOALA_VANILLA>)(table, a);
                    break;
                case KOALA_MOMENTUM:
                    KOALA_LAUNCH(grid_of(g), kThreads, 0, stream,
                                 apply_kernel<T, CAP, KOALA_MOMENTUM>)(table, a);
                    break;
                default:
                    KOALA_LAUNCH(grid_of(g), kThreads, 0, stream,
                                 apply_kernel<T, CAP, KOALA_PLUSPLUS>)(table, a);
                    break;
            }
            const cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) return e;
        }
        return cudaSuccess;
    });
}

cudaError_t launch_momentum_predict(const DevicePlan &plan, const koala_config &cfg,
                                    const CallPointers &p, double *scalars, cudaStream_t stream) {
    PredictArgs a{};
    a.cfg = cfg;
    a.chunks = plan.tab.chunks;
    a.global_index = plan.tab.global_index;
    a.scalars = scalars;
    a.chunk_d2 = plan.tab.chunk_d2;
    a.finished = plan.tab.finished;
    a.total_chunks = plan.n_chunks;
    a.n_global = plan.n_global;
    a.global_elements = plan.global_elements;
    a.sharded = plan.sharded;
    if (plan.n_chunks == 0) {
        KOALA_LAUNCH(1, kThreads, 0, stream, predict_scalars_kernel)(a);
        return cudaGetLastError();
    }
    return dispatch(plan.dtype, plan.cap, [&](auto instance) -> cudaError_t {
        using T = typename decltype(instance)::type;
        constexpr int CAP = decltype(instance)::cap;
        for (const Group &g : plan.groups) {
            if (g.n_chunks == 0) continue;
            a.first_tensor = g.first_tensor;
            a.first_chunk = g.first_chunk;
            const TensorTable<CAP> &table = table_of<CAP>(plan, g, p);
            KOALA_LAUNCH(grid_of(g), kThreads, 0, stream, predict_kernel<T, CAP>)(table, a);
            const cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) return e;
        }
        return cudaSuccess;
    });
}

cudaError_t launch_scalar_predict(const koala_config &cfg, double *scalars, cudaStream_t stream) {
    KOALA_LAUNCH(1, 32, 0, stream, scalar_predict_kernel)(cfg, scalars);
    return cudaGetLastError();
}

cudaError_t launch_posterior(const DevicePlan &plan, const koala_config &cfg,
                             const CallPointers &p, const double *scalars, cudaStream_t stream) {
    return dispatch(plan.dtype, plan.cap, [&](auto instance) -> cudaError_t {
        using T = typename decltype(instance)::type;
        constexpr int CAP = decltype(instance)::cap;
        PosteriorArgs a{};
        a.chunks = plan.tab.chunks;
        a.global_index = plan.tab.global_index;
        a.scalars = scalars;
        a.momentum = cfg.method == KOALA_MOMENTUM ? 1 : 0;
        for (const Group &g : plan.groups) {
            if (g.n_chunks == 0) continue;
            a.first_tensor = g.first_tensor;
            a.first_chunk = g.first_chunk;
            const TensorTable<CAP> &table = table_of<CAP>(plan, g, p);
            KOALA_LAUNCH(grid_of(g), kThreads, 0, stream, posterior_kernel<T, CAP>)(table, a);
            const cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) return e;
        }
        return cudaSuccess;
    });
}

std::vector<const void *> kernels_of(koala_method method, koala_dtype dtype, int cap) {
    std::vector<const void *> k;
    k.push_back(reinterpret_cast<const void *>(&scalar_kernel));
    if (method == KOALA_MOMENTUM)
        k.push_back(reinterpret_cast<const void *>(&predict_scalars_kernel));
    else
        k.push_back(reinterpret_cast<const void *>(&scalar_predict_kernel));
    dispatch(dtype, cap, [&](auto instance) -> cudaError_t {
        using T = typename decltype(instance)::type;
        constexpr int CAP = decltype(instance)::cap;
        if (method == KOALA_PLUSPLUS) {
            k.push_back(reinterpret_cast<const void *>(&sums_kernel<T, CAP, true>));
            k.push_back(reinterpret_cast<const void *>(&apply_kernel<T, CAP, KOALA_PLUSPLUS>));
        } else if (method == KOALA_MOMENTUM) {
            k.push_back(reinterpret_cast<const void *>(&sums_kernel<T, CAP, false>));
            k.push_back(reinterpret_cast<const void *>(&apply_kernel<T, CAP, KOALA_MOMENTUM>));
            k.push_back(reinterpret_cast<const void *>(&predict_kernel<T, CAP>));
        } else {
            k.push_back(reinterpret_cast<const void *>(&sums_kernel<T, CAP, false>));
            k.push_back(reinterpret_cast<const void *>(&apply_kernel<T, CAP, KOALA_VANILLA>));
        }
        k.push_back(reinterpret_cast<const void *>(&posterior_kernel<T, CAP>));
        return cudaSuccess;
    });
    return k;
}

}  // namespace cuda
}  // namespace koala
