// What every runtime entry shares: the one lock, the calling runtime
// instance and its last error, sticky errors per device, violations, and
// the configured fake devices.
#pragma once
#include <cuda_runtime.h>

#include <mutex>
#include <string>

namespace koala_harness {

// Every exported entry holds this lock for its whole call; kernels run
// under it too (inside the synchronising call that drains the queue), so
// the runtime and the device are used by one OS thread at a time.
// It and every registry of the runtime are heap objects never destroyed:
// the exit-time leak report and calls from other static destructors still
// find them, and LeakSanitizer counts what they hold as reachable.
std::recursive_mutex &api_mutex();

// One call of an exported runtime entry, from the runtime instance
// `instance` (the calling shared object's token, runtime_api.h).
class ApiCall {
public:
    explicit ApiCall(const void *instance);
    // Records e (unless cudaSuccess) as this instance's last error; returns e.
    cudaError_t done(cudaError_t e);
    // The last error of this instance; `reset` clears it.
    cudaError_t last_error(bool reset);

private:
    std::lock_guard<std::recursive_mutex> lock_;
    const void *instance_;
};

// In an entry koala_harness_<name>(const void *instance, ...).
#define KOALA_HARNESS_CALL() ::koala_harness::ApiCall call(instance)

// Prints "koala-harness: VIOLATION: ..." to stderr and counts it; a
// process that ends with violations not taken exits with status 1.
void violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// The fake devices (KOALA_HARNESS_DEVICES, KOALA_HARNESS_MEMORY_MB).
int device_count();
// cudaErrorInsufficientDriver without a driver, cudaErrorNoDevice with
// none, cudaSuccess otherwise: what every device call fails with first.
cudaError_t init_error();
int current_device();
size_t device_memory_bytes();
// Whether the devices have a stream-ordered memory pool (KOALA_HARNESS_MEMORY_POOLS).
bool memory_pools();
// Bytes of the fiber stack of one CUDA thread (KOALA_HARNESS_STACK_KB).
size_t fiber_stack_bytes();

// A kernel fault poisons the device's context for good, as on a GPU:
// every later call returns it until cudaDeviceReset.
cudaError_t sticky_error(int device);
void set_sticky_error(int device, cudaError_t e);
// init_error(), else the current device's sticky error.
cudaError_t usable();

}  // namespace koala_harness
