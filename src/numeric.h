// Element types: how a parameter or gradient element is read into the type
// the element math runs in, and how a result is stored back (round to
// nearest-even, or stochastically). Shared with CUDA, so both paths round the
// same bits.
//
//   storage   compute   state buffers (KOALA-M, KOALA++)
//   float     float     float
//   double    double    double
//   bf16      float     float
//   fp16      float     float
#pragma once
#include <stdint.h>
#include <string.h>

#include "hd.h"
#include "koala.h"

namespace koala {

struct bf16 {
    uint16_t bits;
};
struct fp16 {
    uint16_t bits;
};

KOALA_HD uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
KOALA_HD float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// The conversions are written with selects rather than branches, so that
// the CPU path's element loops vectorise with them (and a GPU warp does not
// diverge on them).

// ---- bfloat16: the top half of a float32 --------------------------------

KOALA_HD float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// `noise` in [0, 2^16): 0x7fff + lsb gives round-to-nearest-even; uniform
// random bits give stochastic rounding (probability proportional to the
// distance to the next representable value). Rounding up past the largest
// finite value gives Inf, as IEEE rounding does; NaN stays a quiet NaN.
KOALA_HD uint16_t float_to_bf16(float f, uint32_t noise, bool stochastic) {
    const uint32_t u = float_bits(f);
    const uint32_t add = stochastic ? (noise & 0xffffu) : 0x7fffu + ((u >> 16) & 1u);
    const uint32_t rounded = (u + add) >> 16;
    const uint32_t quiet_nan = (u >> 16) | 0x40u;
    return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// ---- IEEE binary16 ------------------------------------------------------

KOALA_HD float fp16_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu;
    const uint32_t m = h & 0x3ffu;
    // zero or subnormal: m * 2^-24, exact in float
    const uint32_t subnormal = float_bits(static_cast<float>(m) * 5.9604644775390625e-8f) | sign;
    // NaNs come out quiet with their payload, as x86's F16C conversion gives them.
    const uint32_t inf_nan = sign | 0x7f800000u | (m << 13) | (m != 0 ? 0x400000u : 0u);
    const uint32_t normal = sign | ((e + 112u) << 23) | (m << 13);
    return bits_float(e == 0 ? subnormal : e == 31 ? inf_nan : normal);
}

// Drops the low `shift` bits (1..31) of `m`, rounding to nearest-even or
// adding `noise` (stochastic) first.
KOALA_HD uint32_t round_shift(uint32_t m, uint32_t shift, uint32_t noise, bool stochastic) {
    const uint32_t mask = (1u << shift) - 1u;
    const uint32_t r = m >> shift, rem = m & mask, half = 1u << (shift - 1u);
    const uint32_t nearest = r + ((rem > half || (rem == half && (r & 1u))) ? 1u : 0u);
    return stochastic ? (m + (noise & mask)) >> shift : nearest;
}

KOALA_HD uint16_t float_to_fp16(float f, uint32_t noise, bool stochastic) {
    const uint32_t x = float_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    // NaN: quiet, with the top of its payload, as x86's F16C conversion gives it.
    const uint32_t inf_nan = ax > 0x7f800000u ? 0x7e00u | ((ax >> 13) & 0x3ffu) : 0x7c00u;
    // Normal halves: rebias the exponent (127 -> 15); a carry out of the
    // mantissa correctly bumps the exponent. Stochastic rounding just below
    // 65520 may reach Inf's encoding; keep it at the largest finite value.
    const uint32_t normal_in = ax >= 0x38800000u ? ax - 0x38000000u : 0u;
    uint32_t normal = round_shift(normal_in, 13u, noise, stochastic);
    normal = normal >= 0x7c00u ? 0x7bffu : normal;
    // Below 2^-14: a subnormal half in units of 2^-24 (e in [101, 112]).
    // Below 2^-26, a quarter of the smallest subnormal, both modes give 0
    // (stochastic rounding would round up with probability < 1/4).
    const uint32_t e = ax >> 23;
    const uint32_t e_clamped = e < 101u ? 101u : e > 112u ? 112u : e;
    const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t subnormal = e < 101u ? 0u : round_shift(mant, 126u - e_clamped, noise, stochastic);
    const uint32_t magnitude = ax >= 0x7f800000u   ? inf_nan
                             : ax >= 0x477ff000u   ? 0x7c00u  // >= 65520: Inf
                             : ax >= 0x38800000u   ? normal
                                                   : subnormal;
    return static_cast<uint16_t>(sign | magnitude);
}

// ---- per-type load / store ---------------------------------------------

template <class T>
struct Elem;

template <>
struct Elem<float> {
    using compute = float;
    using state = float;
    static constexpr koala_dtype dtype = KOALA_FLOAT32;
    KOALA_HD static float load(float v) { return v; }
    KOALA_HD static float store(float v, uint32_t, bool) { return v; }
};
template <>
struct Elem<double> {
    using compute = double;
    using state = double;
    static constexpr koala_dtype dtype = KOALA_FLOAT64;
    KOALA_HD static double load(double v) { return v; }
    KOALA_HD static double store(double v, uint32_t, bool) { return v; }
};
template <>
struct Elem<bf16> {
    using compute = float;
    using state = float;
    static constexpr koala_dtype dtype = KOALA_BFLOAT16;
    KOALA_HD static float load(bf16 v) { return bf16_to_float(v.bits); }
    KOALA_HD static bf16 store(float v, uint32_t noise, bool stochastic) {
        return bf16{float_to_bf16(v, noise, stochastic)};
    }
};
// Where the CPU has F16C (the CPU path's AVX2 build), float16 loads and
// nearest-even stores use the hardware conversion, which vectorises; it
// gives the same bits as the functions above (IEEE rounding; NaNs alike).
#if defined(__F16C__) && !defined(__CUDA_ARCH__) && defined(__FLT16_MAX__)
#define KOALA_HARDWARE_FP16 1
#endif

template <>
struct Elem<fp16> {
    using compute = float;
    using state = float;
    static constexpr koala_dtype dtype = KOALA_FLOAT16;
    KOALA_HD static float load(fp16 v) {
#if defined(KOALA_HARDWARE_FP16)
        _Float16 h;
        memcpy(&h, &v.bits, 2);
        return static_cast<float>(h);
#else
        return fp16_to_float(v.bits);
#endif
    }
    KOALA_HD static fp16 store(float v, uint32_t noise, bool stochastic) {
#if defined(KOALA_HARDWARE_FP16)
        if (!stochastic) {
            const _Float16 h = static_cast<_Float16>(v);
            fp16 r;
            memcpy(&r.bits, &h, 2);
            return r;
        }
#endif
        return fp16{float_to_fp16(v, noise, stochastic)};
    }
};

// Bytes of one element of `dtype` (0 for an unknown value).
KOALA_HD size_t dtype_bytes(int dtype) {
    return dtype == KOALA_FLOAT64 ? 8 : dtype == KOALA_FLOAT32 ? 4
         : (dtype == KOALA_BFLOAT16 || dtype == KOALA_FLOAT16) ? 2 : 0;
}
// The dtype of the state buffers for parameters of `dtype`.
KOALA_HD koala_dtype state_dtype(koala_dtype dtype) {
    return dtype == KOALA_FLOAT64 ? KOALA_FLOAT64 : KOALA_FLOAT32;
}

// ---- stochastic rounding noise -----------------------------------------
// Counter-based, so the bits of element i of tensor t at step k depend on
// nothing else (not the thread count, chunking or device): runs reproduce.

KOALA_HD uint32_t mix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

// One key per (seed, step, tensor): a splitmix64 finaliser of their mix.
KOALA_HD uint32_t noise_key(uint64_t seed, uint64_t step, uint64_t tensor) {
    uint64_t z = seed ^ (step * 0x9e3779b97f4a7c15ull) ^ (tensor * 0xbf58476d1ce4e5b9ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return static_cast<uint32_t>(z ^ (z >> 31));
}

KOALA_HD uint32_t noise_bits(uint32_t key, uint64_t index) {
    return mix32(key ^ mix32(static_cast<uint32_t>(index) ^
                             (static_cast<uint32_t>(index >> 32) * 0x9e3779b9u)));
}

}  // namespace koala
