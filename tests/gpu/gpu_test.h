// Small helpers shared by the GPU test programs: skip without a GPU, check
// macros, a deterministic RNG and a tensor set mirrored in host and device
// memory. Every program exits 77 (Meson: skipped) when no GPU is usable,
// 1 on any failed check, 0 otherwise. With KOALA_REQUIRE_GPU=1 (the GPU
// check, the CPU harness) no usable GPU is a failure (exit 1): a run where
// every GPU test skipped must not pass for one that tested something.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "koala.h"

static int g_failures = 0;

#define CUDA_CHECK(call)                                                                    \
    do {                                                                                    \
        const cudaError_t e_ = (call);                                                      \
        if (e_ != cudaSuccess) {                                                            \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,              \
                         cudaGetErrorString(e_));                                           \
            std::exit(1);                                                                   \
        }                                                                                   \
    } while (0)

// A koala call that must succeed; otherwise the test cannot go on.
#define KOALA_CHECK(call)                                                                   \
    do {                                                                                    \
        const koala_status s_ = (call);                                                     \
        if (s_ != KOALA_OK) {                                                               \
            std::fprintf(stderr, "%s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #call,  \
                         static_cast<int>(s_), koala_last_error());                         \
            std::exit(1);                                                                   \
        }                                                                                   \
    } while (0)

#define CHECK(cond, ...)                                                                    \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            ++g_failures;                                                                   \
            std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);            \
            std::fprintf(stderr, __VA_ARGS__);                                              \
            std::fputc('\n', stderr);                                                       \
        }                                                                                   \
    } while (0)

inline void skip_without_gpu() {
    if (koala_device_probe() == KOALA_OK) return;
    const char *require = std::getenv("KOALA_REQUIRE_GPU");
    if (require && std::strcmp(require, "1") == 0) {
        std::printf("FAIL: no usable GPU, and KOALA_REQUIRE_GPU=1: %s\n", koala_last_error());
        std::exit(1);
    }
    std::printf("SKIP: no usable GPU: %s\n", koala_last_error());
    std::exit(77);
}

inline int finish(const char *name) {
    if (g_failures) {
        std::printf("%s: %d check(s) FAILED\n", name, g_failures);
        return 1;
    }
    std::printf("%s: all checks passed\n", name);
    return 0;
}

// xorshift64*: the same numbers on every machine.
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 2654435761u + 0x9E3779B97F4A7C15ull) {}
    double uniform() {  // in [-1, 1)
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return static_cast<double>((s * 2685821657736338717ull) >> 11) * 0x1.0p-52 - 1.0;
    }
};

inline koala_dtype dtype_of(float) { return KOALA_FLOAT32; }
inline koala_dtype dtype_of(double) { return KOALA_FLOAT64; }

// One layout's tensors (params or grads) in host memory and device memory.
template <class T>
struct Mirrored {
    std::vector<size_t> sizes;
    std::vector<std::vector<T>> host;
    std::vector<T *> dev;

    explicit Mirrored(const std::vector<size_t> &s) : sizes(s), host(s.size()), dev(s.size()) {
        for (size_t t = 0; t < s.size(); ++t) {
            host[t].assign(s[t], T(0));
            CUDA_CHECK(cudaMalloc(&dev[t], s[t] * sizeof(T)));
        }
    }
    ~Mirrored() {
        for (T *p : dev) cudaFree(p);
    }
    Mirrored(const Mirrored &) = delete;
    Mirrored &operator=(const Mirrored &) = delete;

    void to_device(cudaStream_t s) {
        for (size_t t = 0; t < sizes.size(); ++t)
            CUDA_CHECK(cudaMemcpyAsync(dev[t], host[t].data(), sizes[t] * sizeof(T),
                                       cudaMemcpyHostToDevice, s));
    }
    // Device contents into `out` (same shape as host).
    void from_device(std::vector<std::vector<T>> &out, cudaStream_t s) const {
        out.resize(sizes.size());
        for (size_t t = 0; t < sizes.size(); ++t) {
            out[t].resize(sizes[t]);
            CUDA_CHECK(cudaMemcpyAsync(out[t].data(), dev[t], sizes[t] * sizeof(T),
                                       cudaMemcpyDeviceToHost, s));
        }
        CUDA_CHECK(cudaStreamSynchronize(s));
    }
    std::vector<void *> host_ptrs() {
        std::vector<void *> p(sizes.size());
        for (size_t t = 0; t < sizes.size(); ++t) p[t] = host[t].data();
        return p;
    }
    std::vector<void *> dev_ptrs() const {
        std::vector<void *> p(sizes.size());
        for (size_t t = 0; t < sizes.size(); ++t) p[t] = dev[t];
        return p;
    }
};

// |a - b| / |b| over one tensor, in float64 (0 when both are zero).
template <class T>
double norm_relative(const std::vector<T> &a, const std::vector<T> &b) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < a.size(); ++i) {
        const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
        num += d * d;
        den += static_cast<double>(b[i]) * static_cast<double>(b[i]);
    }
    if (den == 0.0) return std::sqrt(num);
    return std::sqrt(num / den);
}

inline double rel(double a, double b) {
    const double d = std::fabs(a - b);
    return b == 0.0 ? d : d / std::fabs(b);
}

inline koala_info info_of(const koala_optimizer *opt, cudaStream_t s) {
    koala_info info{};
    info.struct_size = sizeof info;
    KOALA_CHECK(koala_get_info(opt, s, &info));
    return info;
}
