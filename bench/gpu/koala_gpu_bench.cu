// GPU step benchmark (float32, weight decay 5e-4 as in the reference
// train.py) on two layouts:
//   resnet18  the CIFAR-10 ResNet-18 (62 tensors, 11.2M parameters,
//             bench/cpu/resnet18_layout.h)
//   1b        64 tensors of 2^24 elements (1.07B parameters)
// For each layout and method it reports, from one run on one GPU:
//   - the device-to-device copy bandwidth (cudaMemcpyAsync of one parameter
//     array, bytes read + written) measured here,
//   - the byte floor at that bandwidth (bytes the step must move per
//     float32 parameter with weight decay: KOALA-V 20 B, KOALA-M 52 B, fused
//     KOALA-M 36 B, KOALA++ 44 B) and the step time / floor ratio
//     (goal <= 1.2),
//   - the step time eager (koala_predict + koala_update_ptr with the loss in
//     device memory) and replayed from a CUDA graph,
//   - kernel launches per predict and per update, counted as kernel nodes of
//     captured graphs (a capture also proves there is no host
//     synchronisation inside: synchronising a capturing stream is an error),
//   - KOALA-V composed from cuBLAS the way a user would write it (per tensor
//     cublasSnrm2 / cublasSdot in device pointer mode, one scalar kernel
//     calling the same koala::filter_update, per tensor cublasSaxpy with a
//     device alpha), eager. cuBLAS is opened at run time (dlopen), so the
//     binary runs where it is not installed: that baseline is then skipped.
// Usage: koala_gpu_bench [--steps N] [--layout resnet18|1b|all]
// Exits 77 without a usable GPU, or 1 if KOALA_REQUIRE_GPU=1.
// KOALA_CUBLAS names the cuBLAS library to open (default libcublas.so.<CUDA
// major>, then the toolkit's lib64).
#include <cublas_v2.h>  // types and prototypes only: nothing is linked
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "filter.h"
#include "koala.h"
#include "resnet18_layout.h"

namespace {

#define CUDA_CHECK(call)                                                                    \
    do {                                                                                    \
        const cudaError_t e_ = (call);                                                      \
        if (e_ != cudaSuccess) {                                                            \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,              \
                         cudaGetErrorString(e_));                                           \
            std::exit(1);                                                                   \
        }                                                                                   \
    } while (0)
#define KOALA_CHECK(call)                                                                   \
    do {                                                                                    \
        if ((call) != KOALA_OK) {                                                           \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,              \
                         koala_last_error());                                               \
            std::exit(1);                                                                   \
        }                                                                                   \
    } while (0)
#define CUBLAS_CHECK(call)                                                                  \
    do {                                                                                    \
        if ((call) != CUBLAS_STATUS_SUCCESS) {                                              \
            std::fprintf(stderr, "%s:%d: %s failed\n", __FILE__, __LINE__, #call);          \
            std::exit(1);                                                                   \
        }                                                                                   \
    } while (0)

constexpr double kWeightDecay = 5e-4;

struct Layout {
    std::string name;
    std::vector<size_t> sizes;
    size_t total = 0;
};

Layout resnet18() {
    Layout l{"resnet18", {}, 0};
    for (int t = 0; t < RESNET18_TENSORS; ++t) l.sizes.push_back(layout_numel(&resnet18_cifar10[t]));
    for (size_t s : l.sizes) l.total += s;
    return l;
}

Layout billion() {
    Layout l{"1b", std::vector<size_t>(64, size_t(1) << 24), 0};
    for (size_t s : l.sizes) l.total += s;
    return l;
}

// Deterministic pseudo-random values in [-scale, scale).
__global__ void fill_kernel(float *p, size_t n, float scale, uint32_t seed) {
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
        h ^= h >> 16;
        h *= 0x7feb352du;
        h ^= h >> 15;
        p[i] = scale * (static_cast<float>(h) * (2.0f / 4294967296.0f) - 1.0f);
    }
}

// Parameters and gradients of a layout, one allocation each, tensors 256-byte aligned.
struct Buffers {
    float *x_base = nullptr, *g_base = nullptr;
    std::vector<void *> x;
    std::vector<const void *> g;
    float *loss = nullptr;  // loss, loss_var in device memory

    explicit Buffers(const Layout &l) {
        size_t padded = 0;
        for (size_t s : l.sizes) padded += (s + 63) / 64 * 64;
        CUDA_CHECK(cudaMalloc(&x_base, padded * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&g_base, padded * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&loss, 2 * sizeof(float)));
        fill_kernel<<<1024, 256>>>(x_base, padded, 1.0f, 1u);
        fill_kernel<<<1024, 256>>>(g_base, padded, 1e-3f, 2u);
        const float lv[2] = {1.0f, 1.2f};
        CUDA_CHECK(cudaMemcpy(loss, lv, sizeof lv, cudaMemcpyHostToDevice));
        size_t off = 0;
        for (size_t s : l.sizes) {
            x.push_back(x_base + off);
            g.push_back(g_base + off);
            off += (s + 63) / 64 * 64;
        }
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    ~Buffers() {
        cudaFree(x_base);
        cudaFree(g_base);
        cudaFree(loss);
    }
};

struct Timer {
    cudaEvent_t a, b;
    Timer() {
        CUDA_CHECK(cudaEventCreate(&a));
        CUDA_CHECK(cudaEventCreate(&b));
    }
    ~Timer() {
        cudaEventDestroy(a);
        cudaEventDestroy(b);
    }
    void start(cudaStream_t s) { CUDA_CHECK(cudaEventRecord(a, s)); }
    float stop_ms(cudaStream_t s) {
        CUDA_CHECK(cudaEventRecord(b, s));
        CUDA_CHECK(cudaEventSynchronize(b));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
        return ms;
    }
};

// Copy bandwidth in GB/s (bytes read + written) of a `bytes` device-to-device copy.
double copy_bandwidth(size_t bytes, int reps, cudaStream_t s) {
    void *src = nullptr, *dst = nullptr;
    CUDA_CHECK(cudaMalloc(&src, bytes));
    CUDA_CHECK(cudaMalloc(&dst, bytes));
    CUDA_CHECK(cudaMemsetAsync(src, 1, bytes, s));
    for (int r = 0; r < 3; ++r)
        CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
    Timer t;
    t.start(s);
    for (int r = 0; r < reps; ++r)
        CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
    const double ms = t.stop_ms(s) / reps;
    CUDA_CHECK(cudaFree(src));
    CUDA_CHECK(cudaFree(dst));
    return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
}

size_t kernel_nodes(cudaGraph_t graph, size_t *other) {
    size_t n = 0;
    CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &n));
    std::vector<cudaGraphNode_t> nodes(n);
    CUDA_CHECK(cudaGraphGetNodes(graph, nodes.data(), &n));
    size_t kernels = 0;
    *other = 0;
    for (cudaGraphNode_t node : nodes) {
        cudaGraphNodeType type;
        CUDA_CHECK(cudaGraphNodeGetType(node, &type));
        if (type == cudaGraphNodeTypeKernel)
            ++kernels;
        else
            ++*other;
    }
    return kernels;
}

// The methods benchmarked, and the bytes a step must move per float32
// parameter with weight decay (sums pass: g and x; apply: read x, g and the
// state, write x and the state; KOALA-M's predict reads x, v and writes
// them, fused away).
struct MethodCase {
    const char *name;
    koala_method method;
    int fused;
    double bytes_per_param;
};
const MethodCase kMethodCases[] = {{"KOALA-V", KOALA_VANILLA, 0, 20.0},
                                   {"KOALA-M", KOALA_MOMENTUM, 0, 52.0},
                                   {"KOALA-Mf", KOALA_MOMENTUM, 1, 36.0},
                                   {"KOALA++", KOALA_PLUSPLUS, 0, 44.0}};

void bench_koala(const Layout &l, const MethodCase &mc, int steps, double copy_gbps,
                 cudaStream_t s) {
    Buffers b(l);
    koala_config cfg;
    koala_config_init(&cfg, mc.method);
    cfg.weight_decay = kWeightDecay;
    cfg.fused_predict = mc.fused;
    koala_optimizer *opt = nullptr;
    KOALA_CHECK(koala_create(&cfg, l.sizes.size(), l.sizes.data(), KOALA_FLOAT32, KOALA_DEVICE,
                             &opt));
    auto step = [&]() {
        KOALA_CHECK(koala_predict(opt, b.x.data(), s));
        KOALA_CHECK(koala_update_ptr(opt, b.loss, b.loss + 1, KOALA_FLOAT32, b.x.data(),
                                     b.g.data(), s));
    };
    for (int w = 0; w < 5; ++w) step();
    Timer t;
    t.start(s);
    for (int r = 0; r < steps; ++r) step();
    const double eager_ms = t.stop_ms(s) / steps;

    // Launch counts: predict and update captured separately.
    cudaGraph_t gp, gu, gstep;
    size_t other_p = 0, other_u = 0;
    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    KOALA_CHECK(koala_predict(opt, b.x.data(), s));
    CUDA_CHECK(cudaStreamEndCapture(s, &gp));
    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    KOALA_CHECK(koala_update_ptr(opt, b.loss, b.loss + 1, KOALA_FLOAT32, b.x.data(), b.g.data(),
                                 s));
    CUDA_CHECK(cudaStreamEndCapture(s, &gu));
    const size_t k_predict = kernel_nodes(gp, &other_p);
    const size_t k_update = kernel_nodes(gu, &other_u);

    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    step();
    CUDA_CHECK(cudaStreamEndCapture(s, &gstep));
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaGraphInstantiate(&exec, gstep, 0));
    for (int w = 0; w < 5; ++w) CUDA_CHECK(cudaGraphLaunch(exec, s));
    t.start(s);
    for (int r = 0; r < steps; ++r) CUDA_CHECK(cudaGraphLaunch(exec, s));
    const double graph_ms = t.stop_ms(s) / steps;

    const double bytes_per_param = mc.bytes_per_param;
    const double floor_ms = bytes_per_param * static_cast<double>(l.total) / (copy_gbps * 1e9) * 1e3;
    koala_info info{};
    info.struct_size = sizeof info;
    KOALA_CHECK(koala_get_info(opt, s, &info));
    std::printf(
        "%-9s %-8s params %11zu tensors %4zu | eager %8.3f ms  graph %8.3f ms | floor %8.3f ms "
        "(%2.0f B/param) graph/floor %5.2f | kernels: predict %zu update %zu (other nodes %zu) | "
        "skipped %llu\n",
        l.name.c_str(), mc.name, l.total, l.sizes.size(),
        eager_ms, graph_ms, floor_ms, bytes_per_param, graph_ms / floor_ms, k_predict, k_update,
        other_p + other_u, static_cast<unsigned long long>(info.skipped_steps));
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(gp));
    CUDA_CHECK(cudaGraphDestroy(gu));
    CUDA_CHECK(cudaGraphDestroy(gstep));
    koala_destroy(opt);
}

// --- the cuBLAS-composed KOALA-V step -------------------------------------

// The cuBLAS entries the baseline calls, looked up in a dlopen'd library
// (the _v2 symbols are what cublas_v2.h's names stand for).
struct Cublas {
    decltype(&cublasCreate_v2) create = nullptr;
    decltype(&cublasDestroy_v2) destroy = nullptr;
    decltype(&cublasSetStream_v2) set_stream = nullptr;
    decltype(&cublasSetPointerMode_v2) set_pointer_mode = nullptr;
    decltype(&cublasSnrm2_v2) snrm2 = nullptr;
    decltype(&cublasSdot_v2) sdot = nullptr;
    decltype(&cublasSaxpy_v2) saxpy = nullptr;
};

template <class F>
bool find_symbol(void *lib, const char *name, F *out) {
    *out = reinterpret_cast<F>(dlsym(lib, name));
    return *out != nullptr;
}

// Opens cuBLAS; false (with *why) if it is not there.
bool open_cublas(Cublas *c, std::string *why) {
    const std::string major = std::to_string(CUDART_VERSION / 1000);
    std::vector<std::string> names;
    if (const char *env = std::getenv("KOALA_CUBLAS")) names.push_back(env);
    names.push_back("libcublas.so." + major);
    names.push_back("/usr/local/cuda/lib64/libcublas.so." + major);
    void *lib = nullptr;
    for (const std::string &n : names) {
        lib = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (lib) break;
        const char *e = dlerror();
        *why += (why->empty() ? "" : "; ") + std::string(e ? e : n.c_str());
    }
    if (!lib) return false;
    if (find_symbol(lib, "cublasCreate_v2", &c->create) &&
        find_symbol(lib, "cublasDestroy_v2", &c->destroy) &&
        find_symbol(lib, "cublasSetStream_v2", &c->set_stream) &&
        find_symbol(lib, "cublasSetPointerMode_v2", &c->set_pointer_mode) &&
        find_symbol(lib, "cublasSnrm2_v2", &c->snrm2) &&
        find_symbol(lib, "cublasSdot_v2", &c->sdot) &&
        find_symbol(lib, "cublasSaxpy_v2", &c->saxpy))
        return true;
    *why = "a cuBLAS entry is missing from the library";
    return false;
}

__global__ void cublas_predict_kernel(koala_config cfg, koala::ScalarHeader *h) {
    koala::vanilla::predict(*h, cfg);
}

// From cuBLAS's float norms / dots to the sums layout (sums.h) and
// koala::filter_update, then the per-tensor saxpy alphas (-c_i, 0 for
// inactive tensors).
__global__ void cublas_scalars_kernel(koala_config cfg, const float *loss, size_t n, double total,
                                      const float *gnorm, const float *gx, const float *xnorm,
                                      double *sums, koala::Coef *coef, koala::ScalarHeader *h,
                                      float *neg_c) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    const size_t stride = koala::sums_stride(KOALA_VANILLA);
    for (size_t i = 0; i < n; ++i) {
        double *slot = sums + i * stride;
        slot[0] = 1.0;  // one piece, with a gradient
        slot[1] = static_cast<double>(gnorm[i]) * gnorm[i];
        slot[2] = gx[i];
        slot[3] = static_cast<double>(xnorm[i]) * xnorm[i];
    }
    sums[n * stride] = total;
    sums[n * stride + 1] = 0.0;
    sums[n * stride + 2] = 1.0;  // one process
    sums[n * stride + 3] = koala::layout_fingerprint(static_cast<uint64_t>(total), n);
    koala::UpdateContext u{};
    u.cfg = cfg;
    u.loss = loss[0];
    u.loss_var = loss[1];
    u.sums = sums;
    u.n_global = n;
    u.global_elements = total;
    koala::ScalarHeader next;
    size_t bad = 0;
    if (koala::filter_update(*h, u, nullptr, next, coef, &bad) == koala::kOk) {
        next.steps += 1.0;
        *h = next;
    }
    for (size_t i = 0; i < n; ++i)
        neg_c[i] = (coef[i].flags & koala::kActive) ? -static_cast<float>(coef[i].c[0]) : 0.0f;
}

void bench_cublas(const Cublas &blas, const Layout &l, int steps, double copy_gbps,
                  cudaStream_t s) {
    Buffers b(l);
    const size_t n = l.sizes.size();
    koala_config cfg;
    koala_config_init(&cfg, KOALA_VANILLA);
    cfg.weight_decay = kWeightDecay;
    const koala::ScalarHeader init = koala::initial_header(cfg);
    float *scal = nullptr;  // gnorm, gx, xnorm, neg_c
    double *sums = nullptr;
    koala::Coef *coef = nullptr;
    koala::ScalarHeader *f = nullptr;
    CUDA_CHECK(cudaMalloc(&scal, 4 * n * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&sums, koala::sums_count(KOALA_VANILLA, n) * sizeof(double)));
    CUDA_CHECK(cudaMalloc(&coef, n * sizeof *coef));
    CUDA_CHECK(cudaMalloc(&f, sizeof *f));
    CUDA_CHECK(cudaMemcpy(f, &init, sizeof init, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaDeviceSynchronize());  // s is non-blocking: it does not wait for these
    cublasHandle_t h;
    CUBLAS_CHECK(blas.create(&h));
    CUBLAS_CHECK(blas.set_stream(h, s));
    CUBLAS_CHECK(blas.set_pointer_mode(h, CUBLAS_POINTER_MODE_DEVICE));
    float *gnorm = scal, *gx = scal + n, *xnorm = scal + 2 * n, *neg_c = scal + 3 * n;
    auto step = [&]() {
        cublas_predict_kernel<<<1, 1, 0, s>>>(cfg, f);
        for (size_t i = 0; i < n; ++i) {
            const int len = static_cast<int>(l.sizes[i]);
            const float *g = static_cast<const float *>(b.g[i]);
            const float *x = static_cast<const float *>(b.x[i]);
            CUBLAS_CHECK(blas.snrm2(h, len, g, 1, gnorm + i));
            CUBLAS_CHECK(blas.sdot(h, len, g, 1, x, 1, gx + i));
            CUBLAS_CHECK(blas.snrm2(h, len, x, 1, xnorm + i));
        }
        cublas_scalars_kernel<<<1, 1, 0, s>>>(cfg, b.loss, n, static_cast<double>(l.total), gnorm,
                                              gx, xnorm, sums, coef, f, neg_c);
        for (size_t i = 0; i < n; ++i)
            CUBLAS_CHECK(blas.saxpy(h, static_cast<int>(l.sizes[i]), neg_c + i,
                                     static_cast<const float *>(b.g[i]), 1,
                                     static_cast<float *>(b.x[i]), 1));
    };
    for (int w = 0; w < 3; ++w) step();
    Timer t;
    t.start(s);
    for (int r = 0; r < steps; ++r) step();
    const double ms = t.stop_ms(s) / steps;
    const double floor_ms = 20.0 * static_cast<double>(l.total) / (copy_gbps * 1e9) * 1e3;
    std::printf("%-9s cuBLAS-composed KOALA-V eager %8.3f ms | floor %8.3f ms, ratio %5.2f | "
                "launches per step: %zu (3 reductions + 1 axpy per tensor + 2 scalar kernels)\n",
                l.name.c_str(), ms, floor_ms, ms / floor_ms, 4 * n + 2);
    blas.destroy(h);
    cudaFree(scal);
    cudaFree(sums);
    cudaFree(coef);
    cudaFree(f);
}

}  // namespace

int main(int argc, char **argv) {
    int steps = 50;
    std::string which = "all";
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--layout") && i + 1 < argc)
            which = argv[++i];
        else {
            std::fprintf(stderr, "usage: %s [--steps N] [--layout resnet18|1b|all]\n", argv[0]);
            return 2;
        }
    }
    if (koala_device_probe() != KOALA_OK) {
        const char *require = std::getenv("KOALA_REQUIRE_GPU");
        const bool required = require && std::strcmp(require, "1") == 0;
        std::printf("%s: no usable GPU: %s\n", required ? "FAIL" : "SKIP", koala_last_error());
        return required ? 1 : 77;
    }
    Cublas blas;
    std::string no_cublas;
    const bool have_cublas = open_cublas(&blas, &no_cublas);
    if (!have_cublas)
        std::printf("cuBLAS baseline: skipped, cuBLAS could not be opened (%s)\n",
                    no_cublas.c_str());
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs, %.0f MB L2\n", prop.name, prop.multiProcessorCount,
                prop.l2CacheSize / 1e6);
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    std::vector<Layout> layouts;
    if (which == "all" || which == "resnet18") layouts.push_back(resnet18());
    if (which == "all" || which == "1b") layouts.push_back(billion());
    for (const Layout &l : layouts) {
        const double bw = copy_bandwidth(l.total * sizeof(float), 20, s);
        std::printf("%-9s device-to-device copy of %zu bytes: %.0f GB/s (read + write)\n",
                    l.name.c_str(), l.total * sizeof(float), bw);
        for (const MethodCase &mc : kMethodCases) bench_koala(l, mc, steps, bw, s);
        if (have_cublas) bench_cublas(blas, l, steps, bw, s);
    }
    CUDA_CHECK(cudaStreamDestroy(s));
    return 0;
}
