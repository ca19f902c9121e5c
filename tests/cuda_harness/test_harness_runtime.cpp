// What the harness promises when nothing is wrong: kernel builtins,
// barriers, warp collectives and atomics compute what CUDA defines; the
// runtime's queue, copies, pointer attributes, devices, errors, events,
// capture and graph replay behave as README.md describes.
//
// Run by the suite with KOALA_HARNESS_DEVICES=2 KOALA_HARNESS_MEMORY_MB=64;
// with the argument "no-driver" or "no-device" it checks instead what every
// call returns under KOALA_HARNESS_DEVICES=no-driver or =0.
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

#include <thread>
#include <vector>

#include "instance_probe.h"
#include "launch.h"  // cuda/launch.h

namespace {

constexpr unsigned kFull = 0xffffffffu;

int g_failures = 0;

#define EXPECT(cond)                                                                 \
    do {                                                                             \
        if (!(cond)) {                                                               \
            ++g_failures;                                                            \
            fprintf(stderr, "EXPECT failed %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)
#define OK(call) EXPECT((call) == cudaSuccess)

template <class T>
T *device_array(size_t n) {
    T *p = nullptr;
    OK(cudaMalloc(&p, n * sizeof(T)));
    OK(cudaMemset(p, 0, n * sizeof(T)));
    return p;
}

template <class T>
std::vector<T> to_host(const T *d, size_t n) {
    std::vector<T> h(n);
    OK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

// out[t * 8 + k]: eight collectives per thread of a 64-thread block.
__global__ void collectives_kernel(int *out) {
    const int lane = static_cast<int>(threadIdx.x) & 31;
    int *o = out + threadIdx.x * 8;
    o[0] = __shfl_sync(kFull, lane * 10, 3);      // lane 3's value
    o[1] = __shfl_sync(kFull, lane * 10, 3, 8);   // lane 3 of my group of 8
    o[2] = __shfl_up_sync(kFull, lane, 2);        // lane - 2, or mine
    o[3] = __shfl_down_sync(kFull, lane, 5, 16);  // lane + 5 inside 16, or mine
    o[4] = __shfl_xor_sync(kFull, lane, 1);       // my neighbour
    o[5] = static_cast<int>(__ballot_sync(kFull, lane % 3 == 0));
    o[6] = __any_sync(kFull, lane == 7) + 2 * __all_sync(kFull, lane < 32);
    __syncwarp();
    o[7] = static_cast<int>(__shfl_down_sync(kFull, 1.5 * lane, 1) * 2.0);  // a double
}

int expected_collective(int t, int k) {
    const int lane = t & 31;
    switch (k) {
    case 0: return 30;
    case 1: return ((lane & ~7) + 3) * 10;
    case 2: return lane >= 2 ? lane - 2 : lane;
    case 3: return (lane & 15) + 5 < 16 ? lane + 5 : lane;
    case 4: return lane ^ 1;
    case 5: {
        unsigned v = 0;
        for (int l = 0; l < 32; l += 3) v |= 1u << l;
        return static_cast<int>(v);
    }
    case 6: return 3;
    default: return lane < 31 ? 3 * (lane + 1) : 3 * lane;
    }
}

// A 2-D block of 8 x 16 per block, a 3 x 2 grid: builtins, __shared__
// exchange through barriers, block reductions.
__global__ void block_kernel(int *out) {
    __shared__ int tile[16][8];
    const unsigned t = threadIdx.y * blockDim.x + threadIdx.x;
    const unsigned b = blockIdx.y * gridDim.x + blockIdx.x;
    tile[threadIdx.y][threadIdx.x] = static_cast<int>(b * 1000 + t);
    __syncthreads();
    int *o = out + (b * blockDim.x * blockDim.y + t) * 5;
    o[0] = tile[15 - threadIdx.y][7 - threadIdx.x];  // written by another thread
    o[1] = __syncthreads_or(t == 77);
    o[2] = __syncthreads_and(t != 77);
    o[3] = __syncthreads_count(t % 4 == 0);
    o[4] = static_cast<int>(gridDim.y * 100 + blockDim.y * 10 + blockIdx.y);
}

__global__ void atomics_kernel(float *sum, int *max, unsigned *cas, unsigned long long *count) {
    atomicAdd(sum, 0.5f);
    atomicMax(max, static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x));
    atomicCAS(cas, 0u, blockIdx.x + 1);  // the first thread wins
    atomicAdd(count, 1ull);
}

__global__ void float4_kernel(const float4 *in, float *out) {
    const float4 v = in[threadIdx.x];
    out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

__global__ void add_kernel(int *p, int value) { atomicAdd(p, value); }

void kernels() {
    int *out = device_array<int>(64 * 8);
    KOALA_LAUNCH(1, 64, 0, 0, collectives_kernel)(out);
    OK(cudaGetLastError());
    const std::vector<int> c = to_host(out, 64 * 8);
    int wrong = 0;
    for (int t = 0; t < 64; ++t)
        for (int k = 0; k < 8; ++k)
            wrong += c[static_cast<size_t>(t * 8 + k)] != expected_collective(t, k);
    EXPECT(wrong == 0);
    OK(cudaFree(out));

    const int blocks = 6, threads = 128;
    int *b = device_array<int>(blocks * threads * 5);
    KOALA_LAUNCH(dim3(3, 2), dim3(8, 16), 0, 0, block_kernel)(b);
    const std::vector<int> r = to_host(b, blocks * threads * 5);
    wrong = 0;
    for (int blk = 0; blk < blocks; ++blk)
        for (int t = 0; t < threads; ++t) {
            const int *o = &r[static_cast<size_t>((blk * threads + t) * 5)];
            const int x = t % 8, y = t / 8;
            wrong += o[0] != blk * 1000 + (15 - y) * 8 + (7 - x);
            wrong += o[1] != 1 || o[2] != 0 || o[3] != 32;
            wrong += o[4] != 2 * 100 + 16 * 10 + blk / 3;
        }
    EXPECT(wrong == 0);
    OK(cudaFree(b));

    float *sum = device_array<float>(1);
    int *max = device_array<int>(1);
    unsigned *cas = device_array<unsigned>(1);
    unsigned long long *count = device_array<unsigned long long>(1);
    KOALA_LAUNCH(4, 96, 0, 0, atomics_kernel)(sum, max, cas, count);
    EXPECT(to_host(sum, 1)[0] == 192.0f && to_host(max, 1)[0] == 383);
    EXPECT(to_host(cas, 1)[0] == 1u && to_host(count, 1)[0] == 384u);
    OK(cudaFree(sum));
    OK(cudaFree(max));
    OK(cudaFree(cas));
    OK(cudaFree(count));

    float4 *v = device_array<float4>(32);
    float *s = device_array<float>(32);
    EXPECT(alignof(float4) == 16 && alignof(double2) == 16 &&
           reinterpret_cast<uintptr_t>(v) % 256 == 0);
    std::vector<float4> hv(32);
    for (int i = 0; i < 32; ++i)
        hv[static_cast<size_t>(i)] = make_float4(1, 2, 3, static_cast<float>(i));
    OK(cudaMemcpy(v, hv.data(), 32 * sizeof(float4), cudaMemcpyHostToDevice));
    KOALA_LAUNCH(1, 32, 0, 0, float4_kernel)(v, s);
    EXPECT(to_host(s, 32)[31] == 37.0f);
    OK(cudaFree(v));
    OK(cudaFree(s));
}

// Work runs at the next synchronising call, in issue order; a pageable
// source is read when the copy is issued, a pageable destination written
// when it runs.
void queue() {
    int *d = device_array<int>(4);
    OK(cudaDeviceSynchronize());
    KOALA_LAUNCH(1, 32, 0, 0, add_kernel)(d, 5);
    EXPECT(d[0] == 0);  // device memory is host-addressable here: not run yet
    int staged = 7, back = -1;
    OK(cudaMemcpyAsync(d + 1, &staged, sizeof staged, cudaMemcpyHostToDevice, 0));
    staged = 8;  // too late for the copy: it took 7
    OK(cudaMemcpyAsync(&back, d, sizeof back, cudaMemcpyDeviceToHost, 0));
    EXPECT(back == -1);
    OK(cudaStreamSynchronize(0));
    EXPECT(back == 32 * 5 && d[1] == 7);
    OK(cudaFree(d));
}

void pointer_attributes() {
    float *dev = nullptr, *managed = nullptr, *pinned = nullptr;
    OK(cudaSetDevice(1));
    OK(cudaMalloc(&dev, 1000 * sizeof(float)));
    OK(cudaSetDevice(0));
    OK(cudaMallocManaged(&managed, 64));
    OK(cudaHostAlloc(&pinned, 64, cudaHostAllocDefault));
    cudaPointerAttributes a;
    OK(cudaPointerGetAttributes(&a, dev + 999));  // inside
    EXPECT(a.type == cudaMemoryTypeDevice && a.device == 1 && a.devicePointer == dev + 999 &&
           a.hostPointer == nullptr);
    OK(cudaPointerGetAttributes(&a, dev + 1000));  // one past the end
    EXPECT(a.type == cudaMemoryTypeUnregistered);
    OK(cudaPointerGetAttributes(&a, managed));
    EXPECT(a.type == cudaMemoryTypeManaged && a.device == 0 && a.hostPointer == managed);
    OK(cudaPointerGetAttributes(&a, pinned));
    EXPECT(a.type == cudaMemoryTypeHost && a.hostPointer == pinned);
    int local = 0;
    OK(cudaPointerGetAttributes(&a, &local));
    EXPECT(a.type == cudaMemoryTypeUnregistered && a.device == -2 && a.devicePointer == nullptr);
    OK(cudaFree(dev));
    OK(cudaPointerGetAttributes(&a, dev));
    EXPECT(a.type == cudaMemoryTypeUnregistered);
    OK(cudaFree(managed));
    OK(cudaFreeHost(pinned));
}

void devices_and_errors() {
    int n = 0, d = -1;
    OK(cudaGetDeviceCount(&n));
    EXPECT(n == 2);
    EXPECT(cudaSetDevice(2) == cudaErrorInvalidDevice);
    EXPECT(cudaPeekAtLastError() == cudaErrorInvalidDevice);  // peek keeps it
    EXPECT(cudaGetLastError() == cudaErrorInvalidDevice);     // get clears it
    EXPECT(cudaGetLastError() == cudaSuccess);
    OK(cudaGetDevice(&d));
    EXPECT(d == 0);
    int cc = 0;
    OK(cudaDeviceGetAttribute(&cc, cudaDevAttrComputeCapabilityMajor, 1));
    EXPECT(cc == 9);
    cudaDeviceProp prop;
    OK(cudaGetDeviceProperties(&prop, 1));
    EXPECT(strstr(prop.name, "harness") && prop.warpSize == 32 && prop.major == 9);
    cudaFuncAttributes fa;
    OK(cudaFuncGetAttributes(&fa, add_kernel));
    EXPECT(fa.maxThreadsPerBlock == 1024);

    int *p = device_array<int>(1);
    KOALA_LAUNCH(1, 2048, 0, 0, add_kernel)(p, 1);  // too many threads: not sticky
    EXPECT(cudaGetLastError() == cudaErrorInvalidConfiguration);
    EXPECT(cudaGetLastError() == cudaSuccess);
    cudaStream_t s0;
    OK(cudaStreamCreate(&s0));
    OK(cudaSetDevice(1));
    KOALA_LAUNCH(1, 1, 0, s0, add_kernel)(p, 1);  // a stream of device 0
    EXPECT(cudaGetLastError() == cudaErrorInvalidResourceHandle);
    OK(cudaSetDevice(0));
    OK(cudaStreamDestroy(s0));

    // Each shared object has its own last error, as each static cudart does.
    EXPECT(cudaMemcpy(nullptr, nullptr, 1, static_cast<cudaMemcpyKind>(9)) ==
           cudaErrorInvalidMemcpyDirection);
    EXPECT(probe_last_error() == cudaSuccess);
    EXPECT(cudaGetLastError() == cudaErrorInvalidMemcpyDirection);

    size_t free_b = 0, total_b = 0;
    OK(cudaMemGetInfo(&free_b, &total_b));
    EXPECT(total_b == (size_t(64) << 20) && total_b - free_b == sizeof(int));
    void *big = nullptr;
    EXPECT(cudaMalloc(&big, size_t(64) << 20) == cudaErrorMemoryAllocation);
    EXPECT(cudaGetLastError() == cudaErrorMemoryAllocation);
    OK(cudaFree(p));
}

void events() {
    cudaEvent_t a, b, untimed;
    OK(cudaEventCreate(&a));
    OK(cudaEventCreate(&b));
    OK(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming));
    float ms = -1;
    OK(cudaEventRecord(a, 0));
    OK(cudaEventRecord(b, 0));
    EXPECT(cudaEventElapsedTime(&ms, a, b) == cudaErrorNotReady);  // not run yet
    OK(cudaEventSynchronize(b));
    OK(cudaEventElapsedTime(&ms, a, b));
    EXPECT(ms >= 0.0f);
    OK(cudaEventRecord(untimed, 0));
    OK(cudaEventQuery(untimed));
    EXPECT(cudaEventElapsedTime(&ms, a, untimed) == cudaErrorInvalidResourceHandle);
    cudaGetLastError();
    OK(cudaEventDestroy(a));
    OK(cudaEventDestroy(b));
    OK(cudaEventDestroy(untimed));
}

// A captured launch keeps the argument it was captured with; replays run
// the nodes in order; capture-mode rules as CUDA documents them.
void capture_and_replay() {
    cudaStream_t s;
    OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    int *d = device_array<int>(2);
    int *pinned = nullptr;
    OK(cudaMallocHost(&pinned, 2 * sizeof(int)));
    OK(cudaDeviceSynchronize());
    int value = 3;
    OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    OK(cudaStreamIsCapturing(s, &st));
    EXPECT(st == cudaStreamCaptureStatusActive);
    KOALA_LAUNCH(1, 32, 0, s, add_kernel)(d, value);
    value = 100;  // not seen by the graph
    OK(cudaMemsetAsync(d + 1, 0, sizeof(int), s));
    OK(cudaMemcpyAsync(pinned, d, 2 * sizeof(int), cudaMemcpyDeviceToHost, s));
    unsigned long long id = 0;
    size_t deps = 0;
    const cudaGraphNode_t *dep = nullptr;
    OK(cudaStreamGetCaptureInfo(s, &st, &id, nullptr, &dep, nullptr, &deps));
    EXPECT(id > 0 && deps == 1 && dep && *dep);
    // Relaxed: this thread may allocate while capturing; a thread-local
    // capture elsewhere does not stop it either.
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    OK(cudaThreadExchangeStreamCaptureMode(&mode));
    EXPECT(mode == cudaStreamCaptureModeGlobal);
    int *scratch = nullptr;
    OK(cudaMalloc(&scratch, 16));
    OK(cudaThreadExchangeStreamCaptureMode(&mode));
    cudaGraph_t g = nullptr;
    cudaError_t wrong_thread = cudaSuccess;
    std::thread([&] { wrong_thread = cudaStreamEndCapture(s, &g); }).join();
    EXPECT(wrong_thread == cudaErrorStreamCaptureWrongThread);
    OK(cudaStreamEndCapture(s, &g));
    size_t n = 0;
    OK(cudaGraphGetNodes(g, nullptr, &n));
    std::vector<cudaGraphNode_t> nodes(n);
    OK(cudaGraphGetNodes(g, nodes.data(), &n));
    std::vector<cudaGraphNodeType> types(n);
    for (size_t i = 0; i < n; ++i) OK(cudaGraphNodeGetType(nodes[i], &types[i]));
    EXPECT(n == 3 && types[0] == cudaGraphNodeTypeKernel && types[1] == cudaGraphNodeTypeMemset &&
           types[2] == cudaGraphNodeTypeMemcpy);
    EXPECT(to_host(d, 1)[0] == 0);  // capturing ran nothing
    cudaGraphExec_t exec;
    OK(cudaGraphInstantiate(&exec, g, 0));
    for (int r = 0; r < 3; ++r) OK(cudaGraphLaunch(exec, s));
    OK(cudaStreamSynchronize(s));
    EXPECT(pinned[0] == 3 * 32 * 3 && pinned[1] == 0);
    OK(cudaGraphExecDestroy(exec));
    OK(cudaGraphDestroy(g));

    OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    cudaError_t other = cudaErrorUnknown;
    std::thread([&] {
        void *q = nullptr;
        other = cudaMalloc(&q, 16);
        cudaFree(q);
    }).join();
    EXPECT(other == cudaSuccess);
    OK(cudaStreamEndCapture(s, &g));
    OK(cudaGraphDestroy(g));
    OK(cudaStreamDestroy(s));
    OK(cudaFree(scratch));
    OK(cudaFree(d));
    OK(cudaFreeHost(pinned));
}

// Under KOALA_HARNESS_DEVICES=no-driver / 0: every call fails the same
// way, the device count stays untouched, and the error is not sticky.
void unusable(cudaError_t expected) {
    int n = 12345;
    EXPECT(cudaGetDeviceCount(&n) == expected && n == 12345);
    void *p = nullptr;
    EXPECT(cudaMalloc(&p, 16) == expected);
    cudaStream_t s;
    EXPECT(cudaStreamCreate(&s) == expected);
    EXPECT(cudaGetLastError() == expected);
    EXPECT(cudaGetLastError() == cudaSuccess);
}

}  // namespace

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "no-driver") == 0) {
        unusable(cudaErrorInsufficientDriver);
    } else if (argc > 1 && strcmp(argv[1], "no-device") == 0) {
        unusable(cudaErrorNoDevice);
    } else {
        kernels();
        queue();
        pointer_attributes();
        devices_and_errors();
        events();
        capture_and_replay();
    }
    EXPECT(koala_harness::take_violations() == 0);
    printf("test_harness_runtime: %s\n", g_failures ? "FAILED" : "all checks passed");
    return g_failures ? 1 : 0;
}
