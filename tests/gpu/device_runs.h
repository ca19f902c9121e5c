// What the device tests share beyond gpu_test.h: element types as raw
// bytes (float32, float64, bfloat16, float16, with this file's own
// conversions, independent of the library's), tensors in host memory and
// their device copies, optimizer configurations and checkpoint pieces.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_test.h"

namespace runs {

inline size_t elem_size(koala_dtype d) {
    return d == KOALA_FLOAT64 ? 8 : d == KOALA_FLOAT32 ? 4 : 2;
}
inline size_t state_elem_size(koala_dtype d) { return d == KOALA_FLOAT64 ? 8 : 4; }
inline const char *dtype_name(koala_dtype d) {
    return d == KOALA_FLOAT64 ? "f64" : d == KOALA_FLOAT32 ? "f32" : d == KOALA_BFLOAT16 ? "bf16"
                                                                                        : "fp16";
}

inline uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float float_of(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// bfloat16: round to nearest even (finite inputs).
inline uint16_t bf16_from(double v) {
    const uint32_t u = bits_of(static_cast<float>(v));
    return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline double bf16_value(uint16_t h) { return float_of(static_cast<uint32_t>(h) << 16); }

// IEEE binary16 from a double of magnitude below 65504, round to nearest
// even (through the quantum of v's binade).
inline uint16_t fp16_from(double v) {
    const uint16_t sign = std::signbit(v) ? 0x8000u : 0u;
    double a = std::fabs(v);
    if (a == 0.0) return sign;
    int e = static_cast<int>(std::floor(std::log2(a)));
    if (e < -14) e = -14;  // subnormal binade: quantum 2^-24
    double q = std::nearbyint(std::ldexp(a, 10 - e));  // in units of 2^(e-10)
    if (q >= 2048.0) {  // rounded up into the next binade
        q /= 2.0;
        ++e;
    }
    if (q < 1024.0) return static_cast<uint16_t>(sign | static_cast<uint16_t>(q));  // subnormal
    return static_cast<uint16_t>(sign | ((e + 15) << 10) | (static_cast<uint16_t>(q) - 1024u));
}
inline double fp16_value(uint16_t h) {
    const double s = (h & 0x8000u) ? -1.0 : 1.0;
    const int e = (h >> 10) & 0x1f;
    const int m = h & 0x3ff;
    if (e == 0) return s * std::ldexp(static_cast<double>(m), -24);
    if (e == 31) return m ? NAN : s * INFINITY;
    return s * std::ldexp(static_cast<double>(m + 1024), e - 25);
}

// Element i of a tensor of dtype d held as bytes.
inline double value_at(koala_dtype d, const unsigned char *p, size_t i) {
    switch (d) {
        case KOALA_FLOAT64: {
            double v;
            std::memcpy(&v, p + 8 * i, 8);
            return v;
        }
        case KOALA_FLOAT32: {
            float v;
            std::memcpy(&v, p + 4 * i, 4);
            return v;
        }
        default: {
            uint16_t h;
            std::memcpy(&h, p + 2 * i, 2);
            return d == KOALA_BFLOAT16 ? bf16_value(h) : fp16_value(h);
        }
    }
}
inline void set_value(koala_dtype d, unsigned char *p, size_t i, double v) {
    switch (d) {
        case KOALA_FLOAT64: std::memcpy(p + 8 * i, &v, 8); break;
        case KOALA_FLOAT32: {
            const float f = static_cast<float>(v);
            std::memcpy(p + 4 * i, &f, 4);
            break;
        }
        default: {
            const uint16_t h = d == KOALA_BFLOAT16 ? bf16_from(v) : fp16_from(v);
            std::memcpy(p + 2 * i, &h, 2);
        }
    }
}

using Bytes = std::vector<unsigned char>;

// A tensor set in host memory.
struct HostTensors {
    koala_dtype dtype;
    std::vector<size_t> sizes;
    std::vector<Bytes> t;

    HostTensors(koala_dtype d, const std::vector<size_t> &s) : dtype(d), sizes(s), t(s.size()) {
        for (size_t i = 0; i < s.size(); ++i) t[i].assign(s[i] * elem_size(d), 0);
    }
    double at(size_t tensor, size_t i) const { return value_at(dtype, t[tensor].data(), i); }
    void set(size_t tensor, size_t i, double v) { set_value(dtype, t[tensor].data(), i, v); }
    std::vector<void *> ptrs() {
        std::vector<void *> p(t.size());
        for (size_t i = 0; i < t.size(); ++i) p[i] = t[i].data();
        return p;
    }
};

// Device copies of a tensor set, each its own allocation at `offset` bytes
// past a 256-byte aligned start (offset 0: the vectorised path; an element
// size not a multiple of 16: the element-access fallback).
struct DeviceTensors {
    koala_dtype dtype;
    std::vector<size_t> sizes;
    size_t offset;
    std::vector<unsigned char *> base, p;

    DeviceTensors(koala_dtype d, const std::vector<size_t> &s, size_t off = 0)
        : dtype(d), sizes(s), offset(off), base(s.size()), p(s.size()) {
        for (size_t i = 0; i < s.size(); ++i) {
            CUDA_CHECK(cudaMalloc(&base[i], s[i] * elem_size(d) + off));
            p[i] = base[i] + off;
        }
    }
    ~DeviceTensors() {
        for (unsigned char *b : base) cudaFree(b);
    }
    DeviceTensors(const DeviceTensors &) = delete;
    DeviceTensors &operator=(const DeviceTensors &) = delete;

    void upload(const HostTensors &h, cudaStream_t s) {
        for (size_t i = 0; i < sizes.size(); ++i)
            CUDA_CHECK(cudaMemcpyAsync(p[i], h.t[i].data(), h.t[i].size(), cudaMemcpyHostToDevice, s));
        CUDA_CHECK(cudaStreamSynchronize(s));  // h may change right after
    }
    HostTensors download(cudaStream_t s) const {
        HostTensors h(dtype, sizes);
        for (size_t i = 0; i < sizes.size(); ++i)
            CUDA_CHECK(cudaMemcpyAsync(h.t[i].data(), p[i], h.t[i].size(), cudaMemcpyDeviceToHost, s));
        CUDA_CHECK(cudaStreamSynchronize(s));
        return h;
    }
    std::vector<void *> ptrs() const { return std::vector<void *>(p.begin(), p.end()); }
};

// The norm-relative difference |a - b| / |b| of two tensors (absolute where
// b is 0), and how many elements differ in their bits.
struct Diff {
    double rel = 0.0;
    size_t bits_differ = 0;
};
inline Diff diff(koala_dtype d, const Bytes &a, const Bytes &b) {
    Diff r;
    const size_t n = a.size() / elem_size(d);
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; ++i) {
        const double x = value_at(d, a.data(), i), y = value_at(d, b.data(), i);
        num += (x - y) * (x - y);
        den += y * y;
        if (std::memcmp(a.data() + i * elem_size(d), b.data() + i * elem_size(d), elem_size(d)))
            ++r.bits_differ;
    }
    r.rel = den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
    if (!(r.rel == r.rel)) r.rel = INFINITY;  // NaN somewhere
    return r;
}

inline Bytes checkpoint(const koala_optimizer *opt, cudaStream_t s) {
    size_t size = 0;
    KOALA_CHECK(koala_state_size(opt, &size));
    Bytes buf(size);
    KOALA_CHECK(koala_state_save(opt, buf.data(), size, s));
    return buf;
}

// The per-tensor state buffers of a checkpoint (they come last, before the
// 8-byte checksum), split per buffer and tensor: [b * n + t].
inline std::vector<Bytes> checkpoint_buffers(const Bytes &ckpt, koala_method m, koala_dtype d,
                                             const std::vector<size_t> &sizes) {
    std::vector<Bytes> out;
    if (m == KOALA_VANILLA) return out;
    size_t total = 0;
    for (size_t s : sizes) total += s;
    const size_t es = state_elem_size(d);
    const unsigned char *p = ckpt.data() + ckpt.size() - 8 - 2 * total * es;
    for (int b = 0; b < 2; ++b)
        for (size_t s : sizes) {
            out.emplace_back(p, p + s * es);
            p += s * es;
        }
    return out;
}

// The filter scalars koala_get_info reports (skipped_steps aside).
inline std::vector<double> info_scalars(const koala_optimizer *opt, cudaStream_t s) {
    const koala_info i = info_of(opt, s);
    return {i.sigma, i.p00, i.p01, i.p11, i.r, i.qw, static_cast<double>(i.steps)};
}

inline double rel_diff(double a, double b) {
    if (a == b) return 0.0;
    const double d = std::fabs(a - b), m = std::fabs(b);
    return m > 0.0 ? d / m : d;
}

}  // namespace runs
