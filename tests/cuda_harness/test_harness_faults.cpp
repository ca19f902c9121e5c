// The harness must catch what it claims to catch. Each case below breaks
// one rule on purpose and runs in its own child process (a kernel fault
// poisons the child's device for good; a sanitizer report ends it). The
// child checks the error codes CUDA would give and that the harness
// reported exactly one violation; the parent checks the child's exit
// status and that the report names the problem.
//
// Run with a case name to run just that case in this process.
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "launch.h"  // cuda/launch.h, as the kernels use it

namespace {

constexpr unsigned kFull = 0xffffffffu;

__global__ void divergent_barrier_kernel(int *out) {
    if (threadIdx.x < 32)
        __syncthreads();
    else
        __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void barrier_after_exit_kernel(int *out) {
    if (threadIdx.x >= 48) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void partial_mask_kernel(int *out) {
    const int v = __shfl_down_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 1);
    out[threadIdx.x] = v;
}

__global__ void shuffle_after_exit_kernel(int *out) {
    if (threadIdx.x == 5) return;
    out[threadIdx.x] = __shfl_xor_sync(kFull, static_cast<int>(threadIdx.x), 1);
}

__global__ void divergent_shuffle_kernel(int *out) {
    int v = static_cast<int>(threadIdx.x);
    if (threadIdx.x < 16)
        v = __shfl_xor_sync(kFull, v, 1);
    else
        v = __shfl_xor_sync(kFull, v, 2);
    out[threadIdx.x] = v;
}

// Warp 0's lanes split between a shuffle and the block barrier.
__global__ void deadlock_kernel(int *out) {
    int v = static_cast<int>(threadIdx.x);
    if (threadIdx.x < 8) v = __shfl_down_sync(kFull, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}

__global__ void store_kernel(float *p, int index) {
    if (threadIdx.x == 0) p[index] = 1.0f;
}

__global__ void misaligned_load_kernel(const float *p, float *out) {
    const float *q = reinterpret_cast<const float *>(reinterpret_cast<const char *>(p) + 2);
    out[threadIdx.x] = *q;
}

// Frames well below the stack's guard region, so the overflow lands in it.
__device__ int deep(int n) {
    volatile char pad[512];
    pad[0] = static_cast<char>(n);
    return n == 0 ? pad[0] : deep(n - 1) + pad[0];
}

__global__ void overflow_kernel(int *out) { out[threadIdx.x] = deep(1 << 20); }

int g_failures = 0;

#define EXPECT(cond)                                                                 \
    do {                                                                             \
        if (!(cond)) {                                                               \
            ++g_failures;                                                            \
            fprintf(stderr, "EXPECT failed %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

int *device_ints(int n) {
    int *p = nullptr;
    EXPECT(cudaMalloc(&p, static_cast<size_t>(n) * sizeof(int)) == cudaSuccess);
    return p;
}

// A kernel fault: the sync reports it, it stays (sticky), one violation.
void expect_kernel_fault(cudaError_t code) {
    EXPECT(cudaDeviceSynchronize() == code);
    EXPECT(cudaGetLastError() == code);
    EXPECT(cudaGetLastError() == code);  // sticky: not cleared
    int *p = nullptr;
    EXPECT(cudaMalloc(&p, 16) == code);  // the context is gone
    EXPECT(koala_harness::take_violations() == 1);
    EXPECT(cudaDeviceReset() == cudaSuccess);  // a fresh context works again
    cudaGetLastError();
    EXPECT(cudaMalloc(&p, 16) == cudaSuccess);
    EXPECT(cudaFree(p) == cudaSuccess);
}

void launch_64(void (*kernel)(int *)) {
    int *out = device_ints(64);
    KOALA_LAUNCH(1, 64, 0, 0, kernel)(out);
    EXPECT(cudaGetLastError() == cudaSuccess);  // the launch itself is fine
}

void divergent_syncthreads() {
    launch_64(divergent_barrier_kernel);
    expect_kernel_fault(cudaErrorLaunchFailure);
}

void syncthreads_after_exit() {
    launch_64(barrier_after_exit_kernel);
    expect_kernel_fault(cudaErrorLaunchFailure);
}

void partial_mask_shuffle() {
    launch_64(partial_mask_kernel);
    expect_kernel_fault(cudaErrorLaunchFailure);
}

void shuffle_after_exit() {
    launch_64(shuffle_after_exit_kernel);
    expect_kernel_fault(cudaErrorLaunchFailure);
}

void divergent_shuffle() {
    launch_64(divergent_shuffle_kernel);
    expect_kernel_fault(cudaErrorLaunchFailure);
}

void barrier_shuffle_deadlock() {
    launch_64(deadlock_kernel);
    expect_kernel_fault(cudaErrorLaunchFailure);
}

// 1024 floats fill their page exactly: element 1024 is the guard page.
void store_past_allocation() {
    float *p = nullptr;
    EXPECT(cudaMalloc(&p, 1024 * sizeof(float)) == cudaSuccess);
    KOALA_LAUNCH(1, 32, 0, 0, store_kernel)(p, 1024);
    expect_kernel_fault(cudaErrorIllegalAddress);
}

void store_after_free() {
    float *p = nullptr;
    EXPECT(cudaMalloc(&p, 256 * sizeof(float)) == cudaSuccess);
    EXPECT(cudaFree(p) == cudaSuccess);
    KOALA_LAUNCH(1, 32, 0, 0, store_kernel)(p, 0);
    expect_kernel_fault(cudaErrorIllegalAddress);
}

// Plain builds trap (cudaErrorMisalignedAddress); UBSan builds report
// the load themselves (the parent checks the message).
void misaligned_load() {
    float *p = nullptr, *out = nullptr;
    EXPECT(cudaMalloc(&p, 64 * sizeof(float)) == cudaSuccess);
    EXPECT(cudaMalloc(&out, 32 * sizeof(float)) == cudaSuccess);
    EXPECT(cudaMemset(p, 0, 64 * sizeof(float)) == cudaSuccess);
    KOALA_LAUNCH(1, 32, 0, 0, misaligned_load_kernel)(p, out);
#if KOALA_HARNESS_TRAPS_ALIGNMENT
    expect_kernel_fault(cudaErrorMisalignedAddress);
#else
    cudaDeviceSynchronize();
    cudaFree(p);
    cudaFree(out);
#endif
}

void kernel_stack_overflow() {
    launch_64(overflow_kernel);
    expect_kernel_fault(cudaErrorLaunchFailure);
}

// Copy errors are not sticky: reported once, the context lives on.
void memcpy_past_allocation() {
    char *d = nullptr;
    char host[101] = {};
    EXPECT(cudaMalloc(&d, 100) == cudaSuccess);
    EXPECT(cudaMemcpy(d, host, 101, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    EXPECT(cudaGetLastError() == cudaErrorInvalidValue);
    EXPECT(cudaGetLastError() == cudaSuccess);
    EXPECT(cudaMemcpy(d, host, 100, cudaMemcpyHostToDevice) == cudaSuccess);
    EXPECT(koala_harness::take_violations() == 1);
    EXPECT(cudaFree(d) == cudaSuccess);
}

void memcpy_wrong_direction() {
    char a[16] = {}, b[16] = {};
    EXPECT(cudaMemcpy(a, b, sizeof a, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    EXPECT(koala_harness::take_violations() == 1);
}

void memcpy_async_into_freed() {
    char *d = nullptr;
    char host[64] = {};
    EXPECT(cudaMalloc(&d, 64) == cudaSuccess);
    EXPECT(cudaFree(d) == cudaSuccess);
    EXPECT(cudaMemcpyAsync(d, host, 64, cudaMemcpyHostToDevice, 0) == cudaErrorInvalidValue);
    EXPECT(koala_harness::take_violations() == 1);
}

cudaStream_t capturing_stream(cudaStreamCaptureMode mode) {
    cudaStream_t s = nullptr;
    EXPECT(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    EXPECT(cudaStreamBeginCapture(s, mode) == cudaSuccess);
    return s;
}

void expect_invalidated(cudaStream_t s) {
    cudaGraph_t g = reinterpret_cast<cudaGraph_t>(&g);
    EXPECT(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated);
    EXPECT(g == nullptr);
    EXPECT(cudaStreamDestroy(s) == cudaSuccess);
}

void malloc_during_capture() {
    cudaStream_t s = capturing_stream(cudaStreamCaptureModeGlobal);
    void *p = nullptr;
    EXPECT(cudaMalloc(&p, 64) == cudaErrorStreamCaptureUnsupported);
    expect_invalidated(s);
    EXPECT(koala_harness::take_violations() == 1);
}

// issue 11: another thread's cudaDeviceSynchronize breaks a global capture.
void other_thread_sync_during_capture() {
    cudaStream_t s = capturing_stream(cudaStreamCaptureModeGlobal);
    cudaError_t other = cudaSuccess;
    std::thread([&] { other = cudaDeviceSynchronize(); }).join();
    EXPECT(other == cudaErrorStreamCaptureUnsupported);
    expect_invalidated(s);
    EXPECT(koala_harness::take_violations() == 1);
}

void sync_capturing_stream() {
    cudaStream_t s = capturing_stream(cudaStreamCaptureModeRelaxed);
    EXPECT(cudaStreamSynchronize(s) == cudaErrorStreamCaptureUnsupported);
    expect_invalidated(s);
    EXPECT(koala_harness::take_violations() == 1);
}

void pageable_copy_during_capture() {
    cudaStream_t s = capturing_stream(cudaStreamCaptureModeGlobal);
    char *d = nullptr;
    char host[64] = {};
    cudaStreamCaptureMode relaxed = cudaStreamCaptureModeRelaxed;
    EXPECT(cudaThreadExchangeStreamCaptureMode(&relaxed) == cudaSuccess);
    EXPECT(cudaMalloc(&d, 64) == cudaSuccess);  // allowed in relaxed mode
    EXPECT(cudaThreadExchangeStreamCaptureMode(&relaxed) == cudaSuccess);
    EXPECT(cudaMemcpyAsync(d, host, 64, cudaMemcpyHostToDevice, s) ==
           cudaErrorStreamCaptureUnsupported);
    expect_invalidated(s);
    EXPECT(cudaFree(d) == cudaSuccess);
    EXPECT(koala_harness::take_violations() == 1);
}

// Not taken: the process must fail at exit even though main returns 0.
void untaken_violation() {
    char *d = nullptr;
    char host[8] = {};
    EXPECT(cudaMalloc(&d, 4) == cudaSuccess);
    EXPECT(cudaMemcpy(d, host, 8, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    EXPECT(cudaFree(d) == cudaSuccess);
}

void device_leak() {
    void *p = nullptr;
    EXPECT(cudaMalloc(&p, 1000) == cudaSuccess);
}

struct Case {
    const char *name;
    void (*run)();
    int exit_status;      // of the child
    const char *message;  // its stderr must contain this
};

const Case kCases[] = {
    {"divergent_syncthreads", divergent_syncthreads, 0, "divergent barrier"},
    {"syncthreads_after_exit", syncthreads_after_exit, 0,
     "every thread of the block must reach each barrier"},
    {"partial_mask_shuffle", partial_mask_shuffle, 0, "with mask 0x0000ffff"},
    {"shuffle_after_exit", shuffle_after_exit, 0, "every lane the mask names must arrive"},
    {"divergent_shuffle", divergent_shuffle, 0, "divergent warp"},
    {"barrier_shuffle_deadlock", barrier_shuffle_deadlock, 0, "deadlock"},
    {"store_past_allocation", store_past_allocation, 0, "illegal memory access"},
    {"store_after_free", store_after_free, 0, "freed earlier"},
#if KOALA_HARNESS_TRAPS_ALIGNMENT
    {"misaligned_load", misaligned_load, 0, "misaligned load or store"},
#else
    {"misaligned_load", misaligned_load, -1, "misaligned address"},
#endif
    {"kernel_stack_overflow", kernel_stack_overflow, 0, "fiber stack"},
    {"memcpy_past_allocation", memcpy_past_allocation, 0, "runs 1 bytes past the end"},
    {"memcpy_wrong_direction", memcpy_wrong_direction, 0, "which the copy kind does not allow"},
    {"memcpy_async_into_freed", memcpy_async_into_freed, 0, "freed earlier"},
    {"malloc_during_capture", malloc_during_capture, 0, "cudaMalloc while stream"},
    {"other_thread_sync_during_capture", other_thread_sync_during_capture, 0,
     "cudaDeviceSynchronize while stream"},
    {"sync_capturing_stream", sync_capturing_stream, 0, "while it is capturing"},
    {"pageable_copy_during_capture", pageable_copy_during_capture, 0, "pageable host memory"},
    {"untaken_violation", untaken_violation, 1, "violation(s) reported above: exit status 1"},
    {"device_leak", device_leak, 1, "never freed"},
};

int run_case(const Case &c) {
    c.run();
    fflush(nullptr);
    return g_failures ? 2 : 0;
}

// Runs c in a child; its stderr goes to a pipe read here.
bool check_case(const Case &c, const char *self) {
    int fds[2];
    if (pipe(fds) != 0) return false;
    const pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        execl(self, self, c.name, static_cast<char *>(nullptr));
        _exit(127);
    }
    close(fds[1]);
    std::string err;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) err.append(buf, static_cast<size_t>(n));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    const bool exited = WIFEXITED(status);
    const bool status_ok = c.exit_status < 0 || (exited && WEXITSTATUS(status) == c.exit_status);
    const bool message_ok = err.find(c.message) != std::string::npos;
    printf("%-34s %s\n", c.name, status_ok && message_ok ? "detected" : "NOT DETECTED");
    if (!status_ok || !message_ok)
        fprintf(stderr, "--- %s: exit %s %d, expected %d and \"%s\" in:\n%s---\n", c.name,
                exited ? "status" : "signal", exited ? WEXITSTATUS(status) : WTERMSIG(status),
                c.exit_status, c.message, err.c_str());
    return status_ok && message_ok;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc > 1) {
        for (const Case &c : kCases)
            if (strcmp(argv[1], c.name) == 0) return run_case(c);
        fprintf(stderr, "no case %s\n", argv[1]);
        return 2;
    }
    int missed = 0;
    for (const Case &c : kCases) missed += !check_case(c, "/proc/self/exe");
    const size_t n = sizeof kCases / sizeof kCases[0];
    if (missed)
        printf("test_harness_faults: %d of %zu cases NOT detected\n", missed, n);
    else
        printf("test_harness_faults: all %zu cases detected\n", n);
    return missed ? 1 : 0;
}
