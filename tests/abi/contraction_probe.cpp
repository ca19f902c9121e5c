// The core's shared element math, compiled exactly as the core compiles it
// (koala_core_args of src/meson.build) plus an FMA-capable target (-mfma on
// x86-64; aarch64 always has FMA), and checked against the same arithmetic
// with every product rounded on its own. If -ffp-contract=off ever leaves
// koala_core_args (or a file of the core stops honouring it), the compiler
// fuses a*b+c here into one FMA, which rounds once instead of twice, and the
// results differ in the last bit for most random inputs.
//
// test_no_contraction.c (built without -mfma) calls these entry points only
// on a CPU that has FMA, and reports.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "kalman_block.h"
#include "method_momentum.h"
#include "method_plusplus.h"
#include "method_vanilla.h"
#include "numeric.h"

namespace {

// A product the compiler cannot fuse into a following add: it is rounded
// and stored before anything reads it. The operands go through memory too,
// so the compiler cannot share the product with the same product inside the
// library function under test (a product with two uses is never fused, and
// that would hide contraction there).
template <class T>
T mul(T a, T b) {
    volatile T va = a, vb = b;
    volatile T p = va * vb;
    return p;
}

// splitmix64: deterministic inputs.
struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    // Full-mantissa values of either sign in +-[0.5, 2) * 2^[-3, 3]: products
    // and sums of such numbers round in their last bits almost every time.
    double value() {
        const double m = 1.0 + static_cast<double>(next() >> 11) * 0x1.0p-53;
        const int e = static_cast<int>(next() % 7) - 3;
        return ((next() & 1) ? -1.0 : 1.0) * std::ldexp(m, e);
    }
    double positive() { return std::fabs(value()); }
    double unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

template <class T>
bool same(T a, T b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}

struct Report {
    char *text;
    size_t size;
    size_t used;
    int mismatches;
    void fail(const char *what, int trial, double lib, double ref) {
        ++mismatches;
        if (used < size) {
            const int n = std::snprintf(text + used, size - used,
                                        "%s: trial %d: library math %.17g, separately rounded "
                                        "%.17g\n",
                                        what, trial, lib, ref);
            if (n > 0) used += static_cast<size_t>(n);
        }
    }
};

constexpr int kTrials = 2000;

// ---- per-element functions ---------------------------------------------

template <class C>
void check_vanilla_step(Rng &r, Report &rep, const char *what, int *fusable) {
    for (int t = 0; t < kTrials; ++t) {
        const C x = C(r.value()), g = C(r.value()), c = C(r.value());
        const C lib = koala::vanilla::step(x, g, c);
        const C ref = x - mul(c, g);
        if (!same(lib, ref)) rep.fail(what, t, lib, ref);
        if (!same(C(std::fma(-c, g, x)), ref)) ++*fusable;
    }
}

template <class C, class A>
void check_momentum_step(Rng &r, Report &rep, const char *what, bool fused, int *fusable) {
    for (int t = 0; t < kTrials; ++t) {
        const C x0 = C(r.value()), v0 = C(r.value()), xbar0 = C(r.value()), g = C(r.value());
        const C wd = C(r.positive()), k1 = C(r.positive()), k2 = C(r.positive()),
                decay = C(r.unit());
        const A d2_0 = A(r.positive());
        C x = x0, v = v0, xbar = xbar0;
        A d2 = d2_0;
        koala::momentum::step(x, v, xbar, g, wd, k1, k2, decay, fused, d2);

        const C h = g + mul(wd, x0);
        C rx = x0 - mul(k1, h);
        const C rv = mul(decay, v0) - mul(k2, h);
        const C rxbar = mul(C(0.9), xbar0) + mul(C(0.1), rx);
        const A d = static_cast<A>(rxbar) - static_cast<A>(rx);
        const A rd2 = d2_0 + mul(d, d);
        if (fused) rx = rx + rv;
        if (!same(x, rx)) rep.fail(what, t, x, rx);
        if (!same(v, rv)) rep.fail(what, t, v, rv);
        if (!same(xbar, rxbar)) rep.fail(what, t, xbar, rxbar);
        if (!same(d2, rd2)) rep.fail(what, t, d2, rd2);
        if (!same(C(std::fma(-k1, h, x0)), C(x0 - mul(k1, h)))) ++*fusable;
    }
}

template <class C, class A>
void check_momentum_predict_element(Rng &r, Report &rep, const char *what, int *fusable) {
    for (int t = 0; t < kTrials; ++t) {
        const C x0 = C(r.value()), v0 = C(r.value()), xbar = C(r.value()), a = C(r.unit());
        const A d2_0 = A(r.positive());
        const int flag = static_cast<int>(r.next() % 4);  // every TensorFlag
        C x = x0, v = v0;
        A d2 = d2_0;
        koala::momentum::predict_element(flag, x, v, xbar, a, d2);

        C rx = x0, rv = v0;
        A rd2 = d2_0;
        if (flag != koala::momentum::kAhead) {
            if (flag == koala::momentum::kAheadStale) rv = mul(a, rv);
            if (flag != koala::momentum::kCounted) {
                const A d = static_cast<A>(xbar) - static_cast<A>(rx);
                rd2 = rd2 + mul(d, d);
            }
            rx = rx + rv;
            rv = mul(a, rv);
        }
        if (!same(x, rx)) rep.fail(what, t, x, rx);
        if (!same(v, rv)) rep.fail(what, t, v, rv);
        if (!same(d2, rd2)) rep.fail(what, t, d2, rd2);
        const A d = static_cast<A>(xbar) - static_cast<A>(x0);
        if (!same(A(std::fma(d, d, d2_0)), A(d2_0 + mul(d, d)))) ++*fusable;
    }
}

void check_kalman_accumulate(Rng &r, Report &rep, int *fusable) {
    for (int t = 0; t < kTrials; ++t) {
        const double g = r.value(), x = r.value();
        double s[koala::kalman::kSums] = {r.positive(), r.value(), r.positive()};
        const double s0[3] = {s[0], s[1], s[2]};
        koala::kalman::accumulate_gx(g, x, s);
        const double ref[3] = {s0[0] + mul(g, g), s0[1] + mul(g, x), s0[2] + mul(x, x)};
        for (int k = 0; k < 3; ++k)
            if (!same(s[k], ref[k])) rep.fail("kalman::accumulate_gx", t, s[k], ref[k]);
        double sg[koala::kalman::kSums] = {s0[0], 0.0, 0.0};
        koala::kalman::accumulate_g(g, sg);
        if (!same(sg[0], ref[0])) rep.fail("kalman::accumulate_g", t, sg[0], ref[0]);
        if (!same(std::fma(g, x, s0[1]), ref[1])) ++*fusable;
    }
}

template <class A, class C>
void check_plusplus_accumulate(Rng &r, Report &rep, const char *what, int *fusable) {
    constexpr int K = koala::plusplus::kSums;
    for (int t = 0; t < kTrials; ++t) {
        const C g = C(r.value()), x = C(r.value()), Hp = C(r.value()), vp = C(r.value()),
                wd = C(r.positive());
        const bool first = (r.next() & 3) == 0;
        A s[K], s0[K];
        for (int k = 0; k < K; ++k) s[k] = s0[k] = A(r.value());
        koala::plusplus::accumulate(g, x, Hp, vp, wd, first, s);

        const C h = g + mul(wd, x);
        const A ga = A(g), xa = A(x), ha = A(h), Ha = A(Hp), va = A(vp);
        A ref[K];
        for (int k = 0; k < K; ++k) ref[k] = s0[k];
        ref[0] = s0[0] + mul(ga, ga);
        ref[1] = s0[1] + mul(xa, xa);
        ref[2] = s0[2] + mul(ha, ha);
        if (!first) {
            ref[3] = s0[3] + mul(ha, Ha);
            ref[4] = s0[4] + mul(ha, va);
            ref[5] = s0[5] + mul(Ha, Ha);
            ref[6] = s0[6] + mul(Ha, va);
        }
        for (int k = 0; k < K; ++k)
            if (!same(s[k], ref[k])) rep.fail(what, t, s[k], ref[k]);
        if (!same(C(std::fma(wd, x, g)), h)) ++*fusable;
    }
}

template <class C>
void check_plusplus_step(Rng &r, Report &rep, const char *what, int *fusable) {
    for (int t = 0; t < kTrials; ++t) {
        const C x0 = C(r.value()), v0 = C(r.value()), H0 = C(r.value()), g = C(r.value());
        const C wd = C(r.positive()), a1 = C(r.value()), lambda = C(r.value()), w = C(r.value()),
                c = C(r.value()), q = C(r.positive()), sigma0 = C(r.positive());
        const bool first = (r.next() & 3) == 0;
        C x = x0, v = v0, H = H0;
        koala::plusplus::step(x, v, H, g, wd, a1, lambda, w, c, q, sigma0, first);

        const C h = g + mul(wd, x0);
        const C vp = first ? mul(sigma0, h) : v0;
        const C Hp = first ? h : H0;
        const C vn = (mul(a1, vp) + mul(q, C(h - mul(lambda, Hp)))) + mul(w, Hp);
        const C rx = x0 + mul(c, C(vn + mul(q, h)));
        if (!same(x, rx)) rep.fail(what, t, x, rx);
        if (!same(v, vn)) rep.fail(what, t, v, vn);
        if (!same(H, h)) rep.fail(what, t, H, h);
        if (!same(C(std::fma(c, C(vn + mul(q, h)), x0)), rx)) ++*fusable;
    }
}

// The 16-bit dtypes run the float element math between numeric.h's load and
// store (whose conversions hold no product that feeds an add); the stored
// value must be the separately rounded float's. Rounding to 16 bits hides
// most one-ulp float differences, so these checks are not counted as
// discriminating: vanilla::step<float> above is the sharp one.
template <class T>
void check_half_vanilla(Rng &r, Report &rep, const char *what) {
    using E = koala::Elem<T>;
    for (int t = 0; t < kTrials; ++t) {
        const T x = E::store(float(r.value()), 0u, false);
        const T g = E::store(float(r.value()), 0u, false);
        const float c = float(r.value());
        const T lib = E::store(koala::vanilla::step(E::load(x), E::load(g), c), 0u, false);
        const T ref = E::store(E::load(x) - mul(c, E::load(g)), 0u, false);
        if (!same(lib.bits, ref.bits)) rep.fail(what, t, E::load(lib), E::load(ref));
    }
}

// ---- shared scalar algebra ---------------------------------------------

void check_scalars(Rng &r, Report &rep, int *fusable) {
    for (int t = 0; t < kTrials; ++t) {
        const double s[3] = {r.positive(), r.value(), r.positive()};
        const double wd = r.positive();
        const double lib = koala::kalman::regularised_norm2(s, wd);
        double ref = s[0] + mul(2.0 * wd, s[1]) + mul(mul(wd, wd), s[2]);
        ref = ref > 0.0 ? ref : 0.0;
        if (!same(lib, ref)) rep.fail("kalman::regularised_norm2", t, lib, ref);
        if (!same(std::fma(2.0 * wd, s[1], s[0]), s[0] + mul(2.0 * wd, s[1]))) ++*fusable;

        koala_config cfg{};
        cfg.a = r.unit();
        cfg.qv = r.positive();
        koala::ScalarHeader h{};
        h.p00 = 4.0 + r.positive();
        h.p11 = 4.0 + r.positive();
        h.p01 = 4.0 * (r.unit() - 0.5);  // |p01| < 2 < sqrt(p00 p11): P well inside the PSD cone
        h.qw = r.positive();
        const double d2 = r.positive() * 100.0, n = 1000.0 + static_cast<double>(r.next() % 1000);
        koala::ScalarHeader p = h;
        koala::momentum::predict(p, cfg, d2, n);
        const double qw = mul(koala::momentum::kQwDecay, h.qw) +
                          mul(1.0 - koala::momentum::kQwDecay, std::sqrt(d2) / n);
        const double p00 = h.p00 + mul(2.0, h.p01) + h.p11 + qw;
        const double p01 = mul(cfg.a, h.p01 + h.p11);
        const double p11 = mul(mul(cfg.a, cfg.a), h.p11) + cfg.qv;
        if (!same(p.qw, qw)) rep.fail("momentum::predict q_w", t, p.qw, qw);
        if (!same(p.p00, p00)) rep.fail("momentum::predict p00", t, p.p00, p00);
        if (!same(p.p01, p01)) rep.fail("momentum::predict p01", t, p.p01, p01);
        if (!same(p.p11, p11)) rep.fail("momentum::predict p11", t, p.p11, p11);

        koala::TensorInputs in{};
        in.lr = r.positive();
        in.wd = wd;
        in.loss = r.positive();
        in.r = r.positive();
        const double prior = r.positive();
        double gain = 0.0;
        bool active = false;
        koala::Extremes e = koala::no_extremes();
        koala::kalman::block_gain(s, in, prior, &gain, &active, e);
        const double S = mul(prior, ref) + in.r;
        const double block_loss = in.loss + mul(0.5 * in.wd, s[2]);
        const double rgain = in.lr * block_loss / S;
        if (!same(gain, rgain)) rep.fail("kalman::block_gain", t, gain, rgain);
    }
}

}  // namespace

// Returns the number of results that differ from the separately rounded
// arithmetic (0 = no contraction), with the first ones described in
// `report`. *discriminating receives the smallest, over the checks, number
// of trials whose inputs give a different result under one FMA: the
// evidence that the inputs can tell contraction apart at all.
extern "C" int koala_contraction_mismatches(char *report, size_t report_size,
                                            int *discriminating, int *trials) {
    Rng r{12345};
    Report rep{report, report_size, 0, 0};
    if (report_size > 0) report[0] = '\0';
    int fusable[12] = {};
    check_vanilla_step<float>(r, rep, "vanilla::step<float>", &fusable[0]);
    check_vanilla_step<double>(r, rep, "vanilla::step<double>", &fusable[1]);
    check_momentum_step<float, double>(r, rep, "momentum::step<float>", false, &fusable[2]);
    check_momentum_step<double, double>(r, rep, "momentum::step<double> (fused)", true,
                                        &fusable[3]);
    check_momentum_predict_element<float, double>(r, rep, "momentum::predict_element<float>",
                                                  &fusable[4]);
    check_momentum_predict_element<double, double>(r, rep, "momentum::predict_element<double>",
                                                   &fusable[5]);
    check_kalman_accumulate(r, rep, &fusable[6]);
    check_plusplus_accumulate<double, float>(r, rep, "plusplus::accumulate<float>", &fusable[7]);
    check_plusplus_accumulate<double, double>(r, rep, "plusplus::accumulate<double>",
                                              &fusable[8]);
    check_plusplus_step<float>(r, rep, "plusplus::step<float>", &fusable[9]);
    check_plusplus_step<double>(r, rep, "plusplus::step<double>", &fusable[10]);
    check_scalars(r, rep, &fusable[11]);
    check_half_vanilla<koala::bf16>(r, rep, "vanilla::step via bf16 load/store");
    check_half_vanilla<koala::fp16>(r, rep, "vanilla::step via fp16 load/store");
    int least = kTrials;
    for (int f : fusable) least = f < least ? f : least;
    *discriminating = least;
    *trials = kTrials;
    return rep.mismatches;
}

// The control: the same kind of expression with contraction explicitly
// allowed. Nonzero when this translation unit's target really fuses (so a
// pass above means the core's flags prevented it, not a target without FMA).
#if defined(__clang__)
extern "C" __attribute__((noinline)) double koala_contraction_control_expr(double x, double c,
                                                                           double g) {
#pragma clang fp contract(fast)
    return x - c * g;
}
#elif defined(__GNUC__)
extern "C" __attribute__((noinline, optimize("fp-contract=fast"))) double
koala_contraction_control_expr(double x, double c, double g) {
    return x - c * g;
}
#else
extern "C" double koala_contraction_control_expr(double x, double c, double g) {
    return x - c * g;
}
#endif

extern "C" int koala_contraction_control(void) {
    Rng r{777};
    int fused = 0;
    for (int t = 0; t < kTrials; ++t) {
        const double x = r.value(), c = r.value(), g = r.value();
        const double got = koala_contraction_control_expr(x, c, g);
        if (same(got, std::fma(-c, g, x)) && !same(got, x - mul(c, g))) ++fused;
    }
    return fused;
}
