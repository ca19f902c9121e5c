// The CPU chunk kernels (cpu_kernels.h). This file is compiled once per
// instruction set, with KOALA_CPU_ISA naming it (meson: the baseline and
// AVX2; cpu_dispatch.cpp picks one at load). No FMA is ever enabled and the
// core builds with -ffp-contract=off, so every variant rounds exactly as the
// shared element math says, as the CUDA kernels do.
//
// Sums are accumulated in kLanes independent float64 lanes: lane j takes the
// elements i with i % kLanes == j, in order, and the lanes are added in lane
// order at the end. That order does not depend on the vector width, so all
// variants give the same bits, and the lanes break the add-latency chain
// that otherwise limits a float64 reduction to a fraction of memory speed.
#include <type_traits>

#include "cpu_kernels.h"
#include "filter.h"
#include "numeric.h"

#ifndef KOALA_CPU_ISA
#error "compile cpu_kernels.cpp with -DKOALA_CPU_ISA=<name>"
#endif

namespace koala {
namespace KOALA_CPU_ISA {

namespace {

constexpr size_t kLanes = 8;

template <class T>
using Compute = typename Elem<T>::compute;
template <class T>
using State = typename Elem<T>::state;
template <class T>
constexpr bool is_half = sizeof(T) == 2;

template <class T>
inline Compute<T> ld(T v) {
    return Elem<T>::load(v);
}

// Stores a result, rounding 16-bit types as configured.
template <class T>
inline T st(Compute<T> v, const ChunkArgs &c, size_t i, bool stochastic) {
    return Elem<T>::store(v, stochastic ? noise_bits(c.noise, c.first + i) : 0u, stochastic);
}

// Runs body(i, lane) over [0, n) with lane = i % kLanes, the lanes of one
// row vectorisable.
template <class Body>
inline __attribute__((always_inline)) void over_lanes(size_t n, Body body) {
    const size_t rows = n - n % kLanes;
    for (size_t i = 0; i < rows; i += kLanes) {
#pragma omp simd
        for (size_t j = 0; j < kLanes; ++j) body(i + j, j);
    }
    for (size_t i = rows; i < n; ++i) body(i, i - rows);
}

template <size_t K>
inline void add_lanes(const double (&acc)[K][kLanes], double *out) {
    for (size_t k = 0; k < K; ++k) {
        double s = 0.0;
        for (size_t j = 0; j < kLanes; ++j) s += acc[k][j];
        out[k] = s;
    }
}

// ---- KOALA-V and KOALA-M: g.g, g.x, x.x --------------------------------

template <class T>
void kalman_sums(const ChunkArgs &c, double *out) {
    const T *g = static_cast<const T *>(c.g);
    const T *x = static_cast<const T *>(c.x);
    double acc[kalman::kSums][kLanes] = {};
    if (c.wd != 0.0) {
        over_lanes(c.n, [&](size_t i, size_t j) {
            double s[kalman::kSums] = {acc[0][j], acc[1][j], acc[2][j]};
            kalman::accumulate_gx(static_cast<double>(ld(g[i])), static_cast<double>(ld(x[i])),
                                  s);
            acc[0][j] = s[0];
            acc[1][j] = s[1];
            acc[2][j] = s[2];
        });
    } else {
        over_lanes(c.n, [&](size_t i, size_t j) {
            double s[kalman::kSums] = {acc[0][j], 0.0, 0.0};
            kalman::accumulate_g(static_cast<double>(ld(g[i])), s);
            acc[0][j] = s[0];
        });
    }
    add_lanes(acc, out);
}

template <class T>
double vanilla_step(const ChunkArgs &c, const Coef &coef, const StepConstants &k) {
    T *x = static_cast<T *>(c.x);
    const T *g = static_cast<const T *>(c.g);
    const Compute<T> cx = static_cast<Compute<T>>(coef.c[0]);
    if constexpr (is_half<T>) {
        const bool sr = k.stochastic != 0;
        for (size_t i = 0; i < c.n; ++i)
            x[i] = st<T>(vanilla::step(ld(x[i]), ld(g[i]), cx), c, i, sr);
    } else {
#pragma omp simd
        for (size_t i = 0; i < c.n; ++i) x[i] = vanilla::step(x[i], g[i], cx);
    }
    return 0.0;
}

template <class T>
double momentum_predict(const ChunkArgs &c, const StepConstants &k) {
    using C = Compute<T>;
    T *x = static_cast<T *>(c.x);
    C *v = static_cast<C *>(c.s0);
    const C *xbar = static_cast<const C *>(c.s1);
    const C a = static_cast<C>(k.a);
    const int flag = c.flag;
    double acc[1][kLanes] = {};
    if constexpr (is_half<T>) {
        const bool sr = k.stochastic != 0;
        for (size_t i = 0; i < c.n; ++i) {
            C xi = ld(x[i]);
            momentum::predict_element(flag, xi, v[i], xbar[i], a, acc[0][i % kLanes]);
            x[i] = st<T>(xi, c, i, sr);
        }
    } else {
        over_lanes(c.n, [&](size_t i, size_t j) {
            momentum::predict_element(flag, x[i], v[i], xbar[i], a, acc[0][j]);
        });
    }
    double d2;
    add_lanes(acc, &d2);
    return d2;
}

template <class T>
double momentum_step(const ChunkArgs &c, const Coef &coef, const StepConstants &k) {
    using C = Compute<T>;
    T *x = static_cast<T *>(c.x);
    const T *g = static_cast<const T *>(c.g);
    C *v = static_cast<C *>(c.s0);
    C *xbar = static_cast<C *>(c.s1);
    const C wd = static_cast<C>(c.wd), k1 = static_cast<C>(coef.c[0]),
            k2 = static_cast<C>(coef.c[1]), decay = static_cast<C>(coef.c[2]);
    const bool fused = k.fused != 0;
    double acc[1][kLanes] = {};
    if constexpr (is_half<T>) {
        const bool sr = k.stochastic != 0;
        for (size_t i = 0; i < c.n; ++i) {
            C xi = ld(x[i]);
            momentum::step(xi, v[i], xbar[i], ld(g[i]), wd, k1, k2, decay, false,
                           acc[0][i % kLanes]);
            // Fused: the default mode stores the posterior in T and its
            // predict adds v to that, so round the posterior first (one
            // rounding of x + v would be a different trajectory).
            if (fused) xi = ld(st<T>(xi, c, i, sr)) + v[i];
            x[i] = st<T>(xi, c, i, sr);
        }
    } else {
        over_lanes(c.n, [&](size_t i, size_t j) {
            momentum::step(x[i], v[i], xbar[i], g[i], wd, k1, k2, decay, fused, acc[0][j]);
        });
    }
    double d2;
    add_lanes(acc, &d2);
    return d2;
}

// ---- KOALA++ ------------------------------------------------------------

template <class T, bool kFirst, bool kWithX>
void plusplus_sums_impl(const ChunkArgs &c, double *out) {
    using C = Compute<T>;
    const T *g = static_cast<const T *>(c.g);
    const T *x = static_cast<const T *>(c.x);
    const C *vp = static_cast<const C *>(c.s0);
    const C *Hp = static_cast<const C *>(c.s1);
    const C wd = static_cast<C>(c.wd);
    double acc[plusplus::kSums][kLanes] = {};
    over_lanes(c.n, [&](size_t i, size_t j) {
        double s[plusplus::kSums];
        for (int k = 0; k < plusplus::kSums; ++k) s[k] = acc[k][j];
        plusplus::accumulate(ld(g[i]), kWithX ? ld(x[i]) : C(0), kFirst ? C(0) : Hp[i],
                             kFirst ? C(0) : vp[i], wd, kFirst, s);
        for (int k = 0; k < plusplus::kSums; ++k) acc[k][j] = s[k];
    });
    add_lanes(acc, out);
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
    T *x = static_cast<T *>(c.x);
    const T *g = static_cast<const T *>(c.g);
    C *v = static_cast<C *>(c.s0);
    C *H = static_cast<C *>(c.s1);
    const C wd = static_cast<C>(c.wd), a1 = static_cast<C>(coef.c[0]),
            lambda = static_cast<C>(coef.c[1]), w = static_cast<C>(coef.c[2]),
            cc = static_cast<C>(coef.c[3]), q = static_cast<C>(k.q),
            sigma0 = static_cast<C>(k.sigma0);
    const bool first = (coef.flags & kFirstVisit) != 0;
    if constexpr (is_half<T>) {
        const bool sr = k.stochastic != 0;
        for (size_t i = 0; i < c.n; ++i) {
            C xi = ld(x[i]);
            plusplus::step(xi, v[i], H[i], ld(g[i]), wd, a1, lambda, w, cc, q, sigma0, first);
            x[i] = st<T>(xi, c, i, sr);
        }
    } else {
#pragma omp simd
        for (size_t i = 0; i < c.n; ++i)
            plusplus::step(x[i], v[i], H[i], g[i], wd, a1, lambda, w, cc, q, sigma0, first);
    }
    return 0.0;
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
