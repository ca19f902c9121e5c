// The CPU chunk kernels (cpu_kernels.h). This file is compiled once per
// instruction set, with KOALA_CPU_ISA naming it (meson: the baseline and
// AVX2; cpu_dispatch.cpp picks one at load). No FMA is ever enabled and the
// core builds with -ffp-contract=off, so every variant rounds exactly as the
// shared element math says, as the CUDA kernels do.
//
// Sums (pass 1, and KOALA-M's |xbar - x|^2) are accumulated in L logical
// lanes (16 for float32 accumulators, 8 for float64: two AVX2 registers per
// sum): lane j takes the elements i with i % L == j, in order,
// first into an accumulator of the element's compute type over a block of
// kBlockRows rows, then the block into a float64 lane total; the totals are
// added in lane order at the end. That order depends on neither the vector
// width nor the thread count, so every build and run gives the same bits.
// float32 (and 16-bit) data accumulate pass 1's sums in float32 over blocks of
// kBlockRows * L = 512 elements: a float32 pass runs at memory speed
// where float64 conversions would make it compute-bound, and the relative
// error of a 32-term float32 sum (~1e-6 at worst) is far inside what a
// float32 run agrees with the float64 reference to. A block whose float32
// sum overflows is redone in float64, so no finite input gives a non-finite
// sum. float64 data, KOALA++'s sums and KOALA-M's |xbar - x|^2 (whose passes
// update the elements, so a block cannot be redone) accumulate in float64.
#include <type_traits>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "cpu_kernels.h"
#include "filter.h"
#include "numeric.h"

#ifndef KOALA_CPU_ISA
#error "compile cpu_kernels.cpp with -DKOALA_CPU_ISA=<name>"
#endif

namespace koala {
namespace KOALA_CPU_ISA {

namespace {

// Logical lanes of an accumulator type (see the top).
template <class A>
constexpr size_t kLanes = sizeof(A) == 4 ? 16 : 8;
constexpr size_t kBlockRows = 32;

template <class T>
using Compute = typename Elem<T>::compute;
template <class T>
constexpr bool is_half = sizeof(T) == 2;

template <class T>
inline Compute<T> ld(T v) {
    return Elem<T>::load(v);
}

// Stores a result, rounding 16-bit types as configured: stochastic rounding
// draws the bits of element `index` from the stream `key`.
template <class T>
inline T st_with(Compute<T> v, uint32_t key, uint64_t index, bool stochastic) {
    return Elem<T>::store(v, stochastic ? noise_bits(key, index) : 0u, stochastic);
}
// ... with the chunk's stream, for element i of the chunk.
template <class T>
inline T st(Compute<T> v, const ChunkArgs &c, size_t i, bool stochastic) {
    return st_with<T>(v, c.noise, c.first + i, stochastic);
}

// Lane-wise, so that it vectorises: a single running sum would be a chain
// of K * L dependent additions per block, which cost KOALA-V's norm pass
// about a sixth of its time.
template <size_t K, class A, size_t L>
inline bool all_finite(const A (&acc)[K][L]) {
    A z[L] = {};
    for (size_t k = 0; k < K; ++k)
#pragma omp simd
        for (size_t j = 0; j < L; ++j) z[j] += acc[k][j] * A(0);  // 0 * Inf, 0 * NaN: NaN
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (size_t j = 0; j < L; ++j) bad |= z[j] != A(0);
    return !bad;
}

// Sums K terms per element over [0, n): terms(i, t) adds element i's K
// terms to t, its lane's block accumulators (and may update the element:
// pass 2 of KOALA-M does); adding into the accumulators directly, rather
// than into zeroed terms, saves an addition per term and gives the same
// bits (the accumulators start at +0 and never become -0). A is
// the block accumulator type (see the file comment); the K results, in
// float64, go to out. `redo` (float32 blocks only) recomputes a block's
// terms in float64 when its float32 sum is not finite; it must be the same
// terms without side effects, and is never called for data that a pass
// writes (KOALA-M's d2 terms are bounded by its finite float32 operands).
//
// `open(i0, i1)` runs before a block's terms and `close(i0, i1)` after them
// (redo included), for the block's elements [i0, i1): the 16-bit kernels
// widen the block into float32 scratch there and narrow it back, so that
// their terms run the float32 loop (see Elements).
struct NoHook {
    void operator()(size_t, size_t) const {}
};

template <class A, size_t K, class Terms, class Redo, class Open = NoHook, class Close = NoHook>
inline __attribute__((always_inline)) void sum_blocked(size_t n, double *out, Terms terms,
                                                       Redo redo, Open open = {},
                                                       Close close = {}) {
    constexpr size_t L = kLanes<A>;
    double total[K][L] = {};
    const size_t rows = n / L;
    for (size_t r0 = 0; r0 <= rows; r0 += kBlockRows) {
        const size_t r1 = r0 + kBlockRows < rows ? r0 + kBlockRows : rows;
        const size_t block_end = r1 == rows ? n : r1 * L;
        open(r0 * L, block_end);
        A acc[K][L] = {};
        for (size_t r = r0; r < r1; ++r) {
#pragma omp simd
            for (size_t j = 0; j < L; ++j) {
                A t[K];
                for (size_t k = 0; k < K; ++k) t[k] = acc[k][j];
                terms(r * L + j, t);
                for (size_t k = 0; k < K; ++k) acc[k][j] = t[k];
            }
        }
        // The ragged end after the last full row, into the low lanes.
        if (r1 == rows)
            for (size_t i = rows * L; i < n; ++i) {
                A t[K];
                for (size_t k = 0; k < K; ++k) t[k] = acc[k][i - rows * L];
                terms(i, t);
                for (size_t k = 0; k < K; ++k) acc[k][i - rows * L] = t[k];
            }
        if (std::is_same<A, float>::value && !all_finite(acc)) {
            for (size_t i = r0 * L; i < block_end; ++i) {
                double t[K] = {};
                redo(i, t);
                for (size_t k = 0; k < K; ++k) total[k][i % L] += t[k];
            }
        } else {
            for (size_t k = 0; k < K; ++k)
                for (size_t j = 0; j < L; ++j) total[k][j] += static_cast<double>(acc[k][j]);
        }
        close(r0 * L, block_end);
        if (r1 == rows) break;
    }
    for (size_t k = 0; k < K; ++k) {
        double s = 0.0;
        for (size_t j = 0; j < L; ++j) s += total[k][j];
        out[k] = s;
    }
}

// For passes whose terms have side effects: no float64 redo is possible
// (nor needed, see sum_blocked).
struct NoRedo {
    template <size_t K>
    void operator()(size_t, double (&)[K]) const {}
};

// ---- the elements a loop reads and writes ----------------------------
// float32 and float64 loops work on the tensors themselves. The 16-bit
// loops work on float32 copies of one block of x and g at a time (stack
// scratch, cache-resident): open() widens the block, the float32 element
// loop runs on the copies, close() rounds x back into the tensor. Done
// inside the element loop, the conversions kept GCC from vectorising it
// (KOALA-M bf16's update took 42 instructions per element, float32's 4);
// as loops of their own they vectorise (F16C in the AVX2 build). The
// arithmetic, and with sum_blocked's hooks the order of every sum, is the
// same as converting element by element.
constexpr size_t kScratch = (kBlockRows + 1) * kLanes<float>;  // >= any sum_blocked block

template <class T>
inline void widen(const T *src, float *dst, size_t n) {
#if defined(__F16C__)
    if constexpr (std::is_same<T, fp16>::value) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                          reinterpret_cast<const __m128i *>(src + i))));
        for (; i < n; ++i) dst[i] = ld(src[i]);
        return;
    }
#endif
#pragma omp simd
    for (size_t i = 0; i < n; ++i) dst[i] = ld(src[i]);
}

// Element i of dst is element `first + i` of its tensor (the noise index).
template <class T, bool kStochastic>
inline void narrow(const float *src, T *dst, size_t n, uint32_t key, uint64_t first) {
#if defined(__F16C__)
    if constexpr (std::is_same<T, fp16>::value && !kStochastic) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128(reinterpret_cast<__m128i *>(dst + i),
                             _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        for (; i < n; ++i) dst[i] = st_with<T>(src[i], key, first + i, false);
        return;
    }
#endif
#pragma omp simd
    for (size_t i = 0; i < n; ++i) dst[i] = st_with<T>(src[i], key, first + i, kStochastic);
}

// What an element loop reads and writes, in the compute type: xv(i) and
// gv(i) read, set_x(i, v) writes (rounded as configured), xr(i) is x in
// place for the loops that update it by reference (float32/float64, or the
// copies). open/close/round are the block hooks (no-ops without copies).
template <class T, bool kCopies = is_half<T>>
struct Elements {  // the tensors themselves (16-bit: converted in the loop)
    static constexpr size_t kBlock = SIZE_MAX;  // for_blocks: one run
    T *x;
    const T *g;
    const ChunkArgs &c;
    Elements(const ChunkArgs &args)
        : x(static_cast<T *>(args.x)), g(static_cast<const T *>(args.g)), c(args) {}
    T &xr(size_t i) { return x[i]; }
    Compute<T> xv(size_t i) const { return ld(x[i]); }
    Compute<T> gv(size_t i) const { return ld(g[i]); }
    template <bool kStochastic>
    void set_x(size_t i, Compute<T> v) { x[i] = st<T>(v, c, i, kStochastic); }
    void open(size_t, size_t, bool, bool) {}
    template <bool kStochastic>
    void close(size_t, size_t, uint32_t, uint64_t) {}
    template <bool kStochastic>
    void round(size_t, size_t, uint32_t, uint64_t) {}
};

template <class T>
struct Elements<T, true> {  // bfloat16, float16: float32 copies of a block
    static constexpr size_t kBlock = kScratch;
    T *x;
    const T *g;
    size_t base = 0;  // the block's first element
    float xs[kScratch], gs[kScratch];
    Elements(const ChunkArgs &c) : x(static_cast<T *>(c.x)), g(static_cast<const T *>(c.g)) {}
    float &xr(size_t i) { return xs[i - base]; }
    float xv(size_t i) const { return xs[i - base]; }
    float gv(size_t i) const { return gs[i - base]; }
    template <bool kStochastic>
    void set_x(size_t i, float v) { xs[i - base] = v; }  // rounded by close()
    void open(size_t i0, size_t i1, bool read_x, bool read_g) {
        base = i0;
        if (read_x) widen(x + i0, xs, i1 - i0);
        if (read_g) widen(g + i0, gs, i1 - i0);
    }
    // Rounds the block's x into the tensor with stream `key`; `first` is
    // the chunk's first element within its tensor.
    template <bool kStochastic>
    void close(size_t i0, size_t i1, uint32_t key, uint64_t first) {
        narrow<T, kStochastic>(xs, x + i0, i1 - i0, key, first + i0);
    }
    // Rounds the block's copies to T and back, as storing and reloading would.
    template <bool kStochastic>
    void round(size_t i0, size_t i1, uint32_t key, uint64_t first) {
        T rounded[kScratch];
        narrow<T, kStochastic>(xs, rounded, i1 - i0, key, first + i0);
        widen(rounded, xs, i1 - i0);
    }
};

// Where a 16-bit loop goes through the copies. float16 always (F16C's
// conversion loops); bfloat16, whose widening is a shift that vectorises
// inside a loop, only where the loop did not vectorise that way (KOALA-M's
// passes, KOALA++'s seven sums). Measured with callgrind, instructions per
// element, inline / copies: KOALA-V's norm pass 2.1 / 4.4, KOALA-V's update
// 3.1 / 5.5, KOALA++'s update 4.9 / 7.4, KOALA++'s sums 9 / 5.
template <class T>
constexpr bool kCopiesInline = std::is_same<T, fp16>::value;

// Runs f(i0, i1) over [0, n) in blocks that fit E's copies (one run
// where E has none).
template <class E, class F>
inline void for_blocks(size_t n, F f) {
    for (size_t i0 = 0; i0 < n; i0 += E::kBlock) f(i0, n - i0 > E::kBlock ? i0 + E::kBlock : n);
}

// ---- KOALA-V and KOALA-M: g.g, g.x, x.x --------------------------------

template <class T>
void kalman_sums(const ChunkArgs &c, double *out) {
    using A = Compute<T>;
    constexpr size_t K = kalman::kSums;
    const T *g = static_cast<const T *>(c.g);
    const T *x = static_cast<const T *>(c.x);
    Elements<T, kCopiesInline<T>> e(c);
    if (c.wd != 0.0) {
        sum_blocked<A, K>(
            c.n, out,
            [&](size_t i, A (&t)[K]) { kalman::accumulate_gx(e.gv(i), e.xv(i), t); },
            [&](size_t i, double (&t)[K]) {
                t[0] = t[1] = t[2] = 0.0;
                kalman::accumulate_gx(static_cast<double>(ld(g[i])),
                                      static_cast<double>(ld(x[i])), t);
            },
            [&](size_t i0, size_t i1) { e.open(i0, i1, true, true); });
    } else {
        // Without weight decay x is not read; g.x and x.x stay 0.
        sum_blocked<A, 1>(
            c.n, out,
            [&](size_t i, A (&t)[1]) {
                A s3[K] = {t[0], A(0), A(0)};
                kalman::accumulate_g(e.gv(i), s3);
                t[0] = s3[0];
            },
            [&](size_t i, double (&t)[1]) {
                double s3[K] = {0.0, 0.0, 0.0};
                kalman::accumulate_g(static_cast<double>(ld(g[i])), s3);
                t[0] = s3[0];
            },
            [&](size_t i0, size_t i1) { e.open(i0, i1, false, true); });
        out[1] = out[2] = 0.0;
    }
}

// The per-tensor branches of the element functions (KOALA-M's flag and
// fused mode, KOALA++'s first visit, stochastic rounding) are uniform over
// a chunk: each is made a compile-time constant here, so the element loops
// have no control flow left and vectorise.
template <class F>
inline double with_flag(int flag, F f) {
    switch (flag) {
        case momentum::kAhead: return f(std::integral_constant<int, momentum::kAhead>{});
        case momentum::kAheadStale: return f(std::integral_constant<int, momentum::kAheadStale>{});
        case momentum::kCounted: return f(std::integral_constant<int, momentum::kCounted>{});
        default: return f(std::integral_constant<int, momentum::kPlain>{});
    }
}
template <class F>
inline double with_bool(bool b, F f) {
    return b ? f(std::true_type{}) : f(std::false_type{});
}

template <class T>
double vanilla_step(const ChunkArgs &c, const Coef &coef, const StepConstants &k) {
    const Compute<T> cx = static_cast<Compute<T>>(coef.c[0]);
    Elements<T, kCopiesInline<T>> e(c);
    return with_bool(k.stochastic != 0, [&](auto sr) {
        for_blocks<decltype(e)>(c.n, [&](size_t i0, size_t i1) {
            e.open(i0, i1, true, true);
#pragma omp simd
            for (size_t i = i0; i < i1; ++i)
                e.template set_x<decltype(sr)::value>(i, vanilla::step(e.xv(i), e.gv(i), cx));
            e.template close<decltype(sr)::value>(i0, i1, c.noise, c.first);
        });
        return 0.0;
    });
}

template <class T>
double momentum_predict(const ChunkArgs &c, const StepConstants &k) {
    using C = Compute<T>;
    C *v = static_cast<C *>(c.s0);
    const C *xbar = static_cast<const C *>(c.s1);
    const C a = static_cast<C>(k.a);
    Elements<T> e(c);
    return with_flag(c.flag, [&](auto flag) { return with_bool(k.stochastic != 0, [&](auto sr) {
        double d2;
        sum_blocked<double, 1>(
            c.n, &d2,
            [&](size_t i, double (&t)[1]) {
                momentum::predict_element(flag.value, e.xr(i), v[i], xbar[i], a, t[0]);
            },
            NoRedo{}, [&](size_t i0, size_t i1) { e.open(i0, i1, true, false); },
            [&](size_t i0, size_t i1) { e.template close<decltype(sr)::value>(i0, i1, c.noise, c.first); });
        return d2;
    }); });
}

template <class T>
double momentum_step(const ChunkArgs &c, const Coef &coef, const StepConstants &k) {
    using C = Compute<T>;
    C *v = static_cast<C *>(c.s0);
    C *xbar = static_cast<C *>(c.s1);
    const C wd = static_cast<C>(c.wd), k1 = static_cast<C>(coef.c[0]),
            k2 = static_cast<C>(coef.c[1]), decay = static_cast<C>(coef.c[2]);
    Elements<T> e(c);
    return with_bool(k.fused != 0, [&](auto fused) { return with_bool(k.stochastic != 0, [&](auto sr) {
        double d2;
        sum_blocked<double, 1>(
            c.n, &d2,
            [&](size_t i, double (&t)[1]) {
                // 16-bit fused: x + v is added at close (below), after rounding.
                momentum::step(e.xr(i), v[i], xbar[i], e.gv(i), wd, k1, k2, decay,
                               fused.value && !is_half<T>, t[0]);
            },
            NoRedo{}, [&](size_t i0, size_t i1) { e.open(i0, i1, true, true); },
            [&](size_t i0, size_t i1) {
                if constexpr (is_half<T> && decltype(fused)::value) {
                    // The default mode stores the posterior in T (rounded with
                    // this update's noise) and its predict adds v to that
                    // (rounded with the predict's noise): do the same.
                    e.template round<decltype(sr)::value>(i0, i1, c.noise, c.first);
#pragma omp simd
                    for (size_t i = i0; i < i1; ++i) e.xr(i) += v[i];
                    e.template close<decltype(sr)::value>(i0, i1, c.noise_next, c.first);
                } else {
                    e.template close<decltype(sr)::value>(i0, i1, c.noise, c.first);
                }
            });
        return d2;
    }); });
}

// ---- KOALA++ ------------------------------------------------------------

template <class T, bool kFirst, bool kWithX>
void plusplus_sums_impl(const ChunkArgs &c, double *out) {
    using C = Compute<T>;
    constexpr size_t K = plusplus::kSums;
    const C *vp = static_cast<const C *>(c.s0);
    const C *Hp = static_cast<const C *>(c.s1);
    const C wd = static_cast<C>(c.wd);
    Elements<T> e(c);  // the copies for both 16-bit types (kCopiesInline)
    auto terms = [&](size_t i, double (&t)[K]) {
        plusplus::accumulate(e.gv(i), kWithX ? e.xv(i) : C(0), kFirst ? C(0) : Hp[i],
                             kFirst ? C(0) : vp[i], wd, kFirst, t);
    };
    // float64 throughout, even for float32 data: KOALA++'s w is a difference
    // of nearly equal products of these sums (exactly 0 for a one-element
    // tensor), and float32 block sums would leave a residue that the v
    // recursion carries from step to step. (So there is no float64 redo.)
    sum_blocked<double, K>(c.n, out, terms, NoRedo{},
                           [&](size_t i0, size_t i1) { e.open(i0, i1, kWithX, true); });
}

template <class T>
void plusplus_sums(const ChunkArgs &c, double *out) {
    const bool first = c.flag != 0, with_x = c.wd != 0.0;
    if (first)
        with_x ? plusplus_sums_impl<T, true, true>(c, out)
               : plusplus_sums_impl<T, true, false>(c, out);
    else
        with_x ? plusplus_sums_impl<T, false, true>(c, out)
               : plusplus_sums_impl<T, false, false>(c, out);
}

template <class T>
double plusplus_step(const ChunkArgs &c, const Coef &coef, const StepConstants &k) {
    using C = Compute<T>;
    C *v = static_cast<C *>(c.s0);
    C *H = static_cast<C *>(c.s1);
    const C wd = static_cast<C>(c.wd), a1 = static_cast<C>(coef.c[0]),
            lambda = static_cast<C>(coef.c[1]), w = static_cast<C>(coef.c[2]),
            cc = static_cast<C>(coef.c[3]), q = static_cast<C>(k.q),
            sigma0 = static_cast<C>(k.sigma0);
    Elements<T, kCopiesInline<T>> e(c);
    return with_bool((coef.flags & kFirstVisit) != 0, [&](auto first) { return with_bool(k.stochastic != 0, [&](auto sr) {
        for_blocks<decltype(e)>(c.n, [&](size_t i0, size_t i1) {
            e.open(i0, i1, true, true);
#pragma omp simd
            for (size_t i = i0; i < i1; ++i) {
                C xi = e.xv(i);
                plusplus::step(xi, v[i], H[i], e.gv(i), wd, a1, lambda, w, cc, q, sigma0,
                               first.value);
                e.template set_x<decltype(sr)::value>(i, xi);
            }
            e.template close<decltype(sr)::value>(i0, i1, c.noise, c.first);
        });
        return 0.0;
    }); });
}

double no_predict(const ChunkArgs &, const StepConstants &) { return 0.0; }

template <class T>
constexpr CpuKernels kernels_of(koala_method m) {
    return m == KOALA_VANILLA ? CpuKernels{kalman_sums<T>, vanilla_step<T>, no_predict}
         : m == KOALA_MOMENTUM ? CpuKernels{kalman_sums<T>, momentum_step<T>, momentum_predict<T>}
                               : CpuKernels{plusplus_sums<T>, plusplus_step<T>, no_predict};
}

// [method - 1][dtype - 1]
const CpuKernels kTable[3][4] = {
    {kernels_of<float>(KOALA_VANILLA), kernels_of<double>(KOALA_VANILLA),
     kernels_of<bf16>(KOALA_VANILLA), kernels_of<fp16>(KOALA_VANILLA)},
    {kernels_of<float>(KOALA_MOMENTUM), kernels_of<double>(KOALA_MOMENTUM),
     kernels_of<bf16>(KOALA_MOMENTUM), kernels_of<fp16>(KOALA_MOMENTUM)},
    {kernels_of<float>(KOALA_PLUSPLUS), kernels_of<double>(KOALA_PLUSPLUS),
     kernels_of<bf16>(KOALA_PLUSPLUS), kernels_of<fp16>(KOALA_PLUSPLUS)},
};

}  // namespace

const CpuKernels &kernels(koala_method method, koala_dtype dtype) {
    return kTable[method - 1][dtype - 1];
}

}  // namespace KOALA_CPU_ISA
}  // namespace koala
