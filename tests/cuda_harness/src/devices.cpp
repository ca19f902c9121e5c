// The fake devices and what the environment configures:
//   KOALA_HARNESS_DEVICES     number of devices (default 1); 0: every call
//                             fails with cudaErrorNoDevice; "no-driver":
//                             with cudaErrorInsufficientDriver (35), as on a
//                             machine without an NVIDIA driver
//   KOALA_HARNESS_MEMORY_MB   device memory per device (default 4096);
//                             cudaMalloc beyond it is out of memory
//   KOALA_HARNESS_STACK_KB    fiber stack per CUDA thread (default 256)
//   KOALA_HARNESS_DRIVER_VERSION  the CUDA version the driver supports
//                             (cudaDriverGetVersion; default 13000); below
//                             the runtime's CUDART_VERSION every device
//                             call fails with cudaErrorInsufficientDriver
//   KOALA_HARNESS_MEMORY_POOLS  0: the devices have no stream-ordered
//                             memory pool (cudaMallocAsync/cudaFreeAsync
//                             return cudaErrorNotSupported); default 1
// Each device claims compute capability 9.0 and accepts every kernel.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "api.h"
#include "memory.h"
#include "work.h"

namespace koala_harness {

namespace {

struct Config {
    bool driver;
    int driver_version;
    bool memory_pools;
    int devices;
    size_t memory_bytes;
    size_t stack_bytes;
};

long env_number(const char *name, long fallback, long lo, long hi) {
    const char *v = getenv(name);
    if (!v || !*v) return fallback;
    char *end = nullptr;
    const long n = strtol(v, &end, 10);
    if (*end || n < lo || n > hi) {
        fprintf(stderr, "koala-harness: %s=%s is not a number in [%ld, %ld]\n", name, v, lo, hi);
        abort();
    }
    return n;
}

const Config &config() {
    static const Config c = [] {
        Config k{};
        const char *d = getenv("KOALA_HARNESS_DEVICES");
        k.driver = !(d && strcmp(d, "no-driver") == 0);
        k.driver_version = k.driver ? static_cast<int>(env_number("KOALA_HARNESS_DRIVER_VERSION",
                                                                  CUDART_VERSION, 1000, 99000))
                                    : 0;
        k.memory_pools = env_number("KOALA_HARNESS_MEMORY_POOLS", 1, 0, 1) != 0;
        k.devices = k.driver ? static_cast<int>(env_number("KOALA_HARNESS_DEVICES", 1, 0, 16)) : 0;
        k.memory_bytes =
            static_cast<size_t>(env_number("KOALA_HARNESS_MEMORY_MB", 4096, 1, 1 << 24)) << 20;
        k.stack_bytes = static_cast<size_t>(env_number("KOALA_HARNESS_STACK_KB", 256, 16, 1 << 20))
                        << 10;
        return k;
    }();
    return c;
}

std::vector<cudaError_t> &sticky() {
    static std::vector<cudaError_t> &s =
        *new std::vector<cudaError_t>(static_cast<size_t>(config().devices), cudaSuccess);
    return s;
}

thread_local int t_device = 0;

}  // namespace

int device_count() { return config().devices; }
size_t device_memory_bytes() { return config().memory_bytes; }
size_t fiber_stack_bytes() { return config().stack_bytes; }
int current_device() { return t_device; }

bool memory_pools() { return config().memory_pools; }

cudaError_t init_error() {
    if (!config().driver || config().driver_version < CUDART_VERSION)
        return cudaErrorInsufficientDriver;
    if (config().devices == 0) return cudaErrorNoDevice;
    return cudaSuccess;
}

cudaError_t sticky_error(int device) { return sticky()[static_cast<size_t>(device)]; }

void set_sticky_error(int device, cudaError_t e) {
    cudaError_t &s = sticky()[static_cast<size_t>(device)];
    if (s == cudaSuccess) s = e;
}

cudaError_t usable() {
    const cudaError_t e = init_error();
    return e != cudaSuccess ? e : sticky_error(t_device);
}

}  // namespace koala_harness

using namespace koala_harness;

extern "C" {

cudaError_t koala_harness_cudaGetDeviceCount(const void *instance, int *count) {
    KOALA_HARNESS_CALL();
    if (!count) return call.done(cudaErrorInvalidValue);
    const cudaError_t e = init_error();
    if (e != cudaSuccess) return call.done(e);  // *count untouched, as the runtime does
    *count = device_count();
    return cudaSuccess;
}

// No driver: 0, as the runtime reports it.
cudaError_t koala_harness_cudaDriverGetVersion(const void *instance, int *driverVersion) {
    KOALA_HARNESS_CALL();
    if (!driverVersion) return call.done(cudaErrorInvalidValue);
    *driverVersion = config().driver_version;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaRuntimeGetVersion(const void *instance, int *runtimeVersion) {
    KOALA_HARNESS_CALL();
    if (!runtimeVersion) return call.done(cudaErrorInvalidValue);
    *runtimeVersion = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaSetDevice(const void *instance, int device) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = init_error();
    if (e != cudaSuccess) return call.done(e);
    if (device < 0 || device >= device_count()) return call.done(cudaErrorInvalidDevice);
    t_device = device;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaGetDevice(const void *instance, int *device) {
    KOALA_HARNESS_CALL();
    if (!device) return call.done(cudaErrorInvalidValue);
    const cudaError_t e = init_error();
    if (e != cudaSuccess) return call.done(e);
    *device = t_device;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaDeviceGetAttribute(const void *instance, int *value,
                                                 enum cudaDeviceAttr attr, int device) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = init_error();
    if (e != cudaSuccess) return call.done(e);
    if (!value) return call.done(cudaErrorInvalidValue);
    if (device < 0 || device >= device_count()) return call.done(cudaErrorInvalidDevice);
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = 1; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMemoryPoolsSupported: *value = memory_pools() ? 1 : 0; break;
    default: return call.done(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

cudaError_t koala_harness_cudaGetDeviceProperties(const void *instance, struct cudaDeviceProp *prop,
                                                  int device) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = init_error();
    if (e != cudaSuccess) return call.done(e);
    if (!prop) return call.done(cudaErrorInvalidValue);
    if (device < 0 || device >= device_count()) return call.done(cudaErrorInvalidDevice);
    *prop = cudaDeviceProp{};
    snprintf(prop->name, sizeof prop->name, "koala-harness CPU device %d", device);
    prop->totalGlobalMem = device_memory_bytes();
    prop->sharedMemPerBlock = 48 * 1024;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
    prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 0x7fffffff;
    prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
    prop->major = 9;
    prop->minor = 0;
    prop->multiProcessorCount = 1;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaFuncGetAttributes(const void *instance,
                                                struct cudaFuncAttributes *attr, const void *func) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!attr) return call.done(cudaErrorInvalidValue);
    if (!func) return call.done(cudaErrorInvalidDeviceFunction);
    *attr = cudaFuncAttributes{};
    attr->maxThreadsPerBlock = 1024;
    attr->ptxVersion = attr->binaryVersion = 90;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaDeviceSynchronize(const void *instance) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    e = check_unsafe_call("cudaDeviceSynchronize");
    if (e == cudaSuccess) e = check_no_capture_on(current_device(), "cudaDeviceSynchronize");
    if (e != cudaSuccess) return call.done(e);
    drain();
    return call.done(sticky_error(current_device()));
}

// As on a GPU: the device's memory, streams, events, graphs and queued
// work are gone, and its sticky error is cleared.
cudaError_t koala_harness_cudaDeviceReset(const void *instance) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = init_error();
    if (e != cudaSuccess) return call.done(e);
    const int d = current_device();
    end_captures_of(d);
    reset_device_work(d);
    free_device_memory(d);
    sticky()[static_cast<size_t>(d)] = cudaSuccess;
    return cudaSuccess;
}

}  // extern "C"
