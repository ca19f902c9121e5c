// Per-element arithmetic of KOALA-V and KOALA-M (ALGORITHM.md §3.3, §4.2,
// §4.3), shared by the CPU path (src/cpu_path.cpp) and the CUDA kernels.
// Norms accumulate in double; updates are applied in the parameter's own
// type, as the reference applies them in float32.
#pragma once
#include "hd.h"

namespace koala {

// Sums for one block: gg = sum g^2 (the skip test and KOALA-V's raw norm),
// hh = sum (g + wd x)^2, xx = sum x^2 (the block's own L2 term).
// With wd == 0, hh equals gg and x need not be read: use accumulate_gg.
template <class T>
KOALA_HD void accumulate_gg(T g, double &gg) {
    const double gd = static_cast<double>(g);
    gg += gd * gd;
}

template <class T>
KOALA_HD void accumulate_norms(T g, T x, double wd, double &gg, double &hh, double &xx) {
    const double gd = static_cast<double>(g);
    const double xd = static_cast<double>(x);
    const double h = gd + wd * xd;
    gg += gd * gd;
    hh += h * h;
    xx += xd * xd;
}

// KOALA-V applies the RAW gradient: x <- x - c g.
template <class T>
KOALA_HD T vanilla_step(T x, T g, T c) {
    return x - c * g;
}

// KOALA-M predict for one element: accumulates (xbar - x)^2 on the posterior
// x, then x <- x + v, v <- a v.
template <class T>
KOALA_HD void momentum_predict(T &x, T &v, T xbar, T a, double &d2) {
    const double d = static_cast<double>(xbar) - static_cast<double>(x);
    d2 += d * d;
    x = x + v;
    v = a * v;
}

// KOALA-M update for one element: along the regularised gradient
// h = g + wd x, x <- x - k1 h, v <- v - k2 h, xbar <- 0.9 xbar + 0.1 x_new.
template <class T>
KOALA_HD void momentum_step(T &x, T &v, T &xbar, T g, T wd, T k1, T k2) {
    const T h = g + wd * x;
    x = x - k1 * h;
    v = v - k2 * h;
    xbar = T(0.9) * xbar + T(0.1) * x;
}

}  // namespace koala
