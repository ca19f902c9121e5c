// Error state: the per-thread last error of each runtime instance, error names and strings,
// violations and the exit status they force.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <unordered_map>

#include "api.h"
#include "memory.h"

namespace koala_harness {

namespace {

std::atomic<int> g_violations{0};

// Per host thread and runtime instance (the shared object that called).
thread_local std::unordered_map<const void *, cudaError_t> t_last_error;

void at_exit() {
    std::lock_guard<std::recursive_mutex> lock(api_mutex());
    report_leaks();
    const int n = g_violations.load();
    if (n == 0) return;
    fprintf(stderr, "koala-harness: %d violation(s) reported above: exit status 1\n", n);
    fflush(nullptr);
    _exit(1);
}

struct ErrorText {
    cudaError_t code;
    const char *name;
    const char *text;
};

// CUDA's own wording.
constexpr ErrorText kErrors[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInitializationError, "cudaErrorInitializationError", "initialization error"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration",
     "invalid configuration argument"},
    {cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer", "invalid device pointer"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection",
     "invalid copy direction for memcpy"},
    {cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
     "CUDA driver version is insufficient for CUDA runtime version"},
    {cudaErrorInvalidDeviceFunction, "cudaErrorInvalidDeviceFunction", "invalid device function"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorNoKernelImageForDevice, "cudaErrorNoKernelImageForDevice",
     "no kernel image is available for execution on the device"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorNotReady, "cudaErrorNotReady", "device not ready"},
    {cudaErrorIllegalAddress, "cudaErrorIllegalAddress",
     "an illegal memory access was encountered"},
    {cudaErrorLaunchOutOfResources, "cudaErrorLaunchOutOfResources",
     "too many resources requested for launch"},
    {cudaErrorMisalignedAddress, "cudaErrorMisalignedAddress", "misaligned address"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
    {cudaErrorNotSupported, "cudaErrorNotSupported", "operation not supported"},
    {cudaErrorStreamCaptureUnsupported, "cudaErrorStreamCaptureUnsupported",
     "operation not permitted when stream is capturing"},
    {cudaErrorStreamCaptureInvalidated, "cudaErrorStreamCaptureInvalidated",
     "operation failed due to a previous error during capture"},
    {cudaErrorStreamCaptureUnmatched, "cudaErrorStreamCaptureUnmatched",
     "capture was not initiated in this stream"},
    {cudaErrorStreamCaptureImplicit, "cudaErrorStreamCaptureImplicit",
     "operation would make the legacy stream depend on a capturing blocking stream"},
    {cudaErrorCapturedEvent, "cudaErrorCapturedEvent",
     "operation not permitted on an event last recorded in a capturing stream"},
    {cudaErrorStreamCaptureWrongThread, "cudaErrorStreamCaptureWrongThread",
     "attempt to terminate a thread-local capture sequence from another thread"},
    {cudaErrorUnknown, "cudaErrorUnknown", "unknown error"},
};

const ErrorText *find_error(cudaError_t e) {
    for (const ErrorText &t : kErrors)
        if (t.code == e) return &t;
    return nullptr;
}

}  // namespace

std::recursive_mutex &api_mutex() {
    static std::recursive_mutex &m = *new std::recursive_mutex;
    return m;
}

ApiCall::ApiCall(const void *instance) : lock_(api_mutex()), instance_(instance) {
    static const bool registered = atexit(at_exit) == 0;
    (void)registered;
}

cudaError_t ApiCall::done(cudaError_t e) {
    if (e != cudaSuccess) t_last_error[instance_] = e;
    return e;
}

cudaError_t ApiCall::last_error(bool reset) {
    auto it = t_last_error.find(instance_);
    if (it == t_last_error.end()) return cudaSuccess;
    const cudaError_t e = it->second;
    if (reset) it->second = cudaSuccess;
    return e;
}

std::string format(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char small[512];
    va_list copy;
    va_copy(copy, ap);
    const int n = vsnprintf(small, sizeof small, fmt, copy);
    va_end(copy);
    std::string s;
    if (n >= 0 && static_cast<size_t>(n) < sizeof small) {
        s = small;
    } else if (n >= 0) {
        s.resize(static_cast<size_t>(n) + 1);
        vsnprintf(&s[0], s.size(), fmt, ap);
        s.resize(static_cast<size_t>(n));
    }
    va_end(ap);
    return s;
}

void violation(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("koala-harness: VIOLATION: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    ++g_violations;
}

int take_violations() { return g_violations.exchange(0); }

}  // namespace koala_harness

using koala_harness::ApiCall;

extern "C" {

const char *cudaGetErrorString(cudaError_t error) {
    const koala_harness::ErrorText *t = koala_harness::find_error(error);
    return t ? t->text : "unrecognized error code";
}

const char *cudaGetErrorName(cudaError_t error) {
    const koala_harness::ErrorText *t = koala_harness::find_error(error);
    return t ? t->name : "cudaErrorUnknown";
}

// A sticky error is returned and kept; any other last error is returned
// once (GetLastError) and cleared.
cudaError_t koala_harness_cudaGetLastError(const void *instance) {
    KOALA_HARNESS_CALL();
    if (koala_harness::init_error() == cudaSuccess) {
        const cudaError_t s = koala_harness::sticky_error(koala_harness::current_device());
        if (s != cudaSuccess) return s;
    }
    return call.last_error(true);
}

cudaError_t koala_harness_cudaPeekAtLastError(const void *instance) {
    KOALA_HARNESS_CALL();
    if (koala_harness::init_error() == cudaSuccess) {
        const cudaError_t s = koala_harness::sticky_error(koala_harness::current_device());
        if (s != cudaSuccess) return s;
    }
    return call.last_error(false);
}

}  // extern "C"
