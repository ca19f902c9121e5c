// The allocation registry: every cudaMalloc*, cudaMallocHost and
// cudaHostAlloc is a separate mapping whose end touches an inaccessible
// guard page, so copies can be bounds-checked against it and a kernel
// running past it faults.
#pragma once
#include <cuda_runtime.h>

#include <string>

namespace koala_harness {

// Where one end of a copy or memset lies.
enum class Side {
    kPageable,  // host memory the runtime does not know (cannot be bounds-checked)
    kPinned,    // cudaMallocHost / cudaHostAlloc
    kDevice,    // cudaMalloc
    kManaged,   // cudaMallocManaged
    kInvalid,   // overruns an allocation, or lies in freed or guard memory
};

inline bool device_accessible(Side s) { return s == Side::kDevice || s == Side::kManaged; }
inline bool host_accessible(Side s) {
    return s == Side::kPageable || s == Side::kPinned || s == Side::kManaged;
}

// Classifies [p, p + bytes); for kInvalid, *why says what is wrong.
Side classify(const void *p, size_t bytes, std::string *why);
// "device allocation 0x... (N bytes, device d) + offset", "host memory
// not registered with CUDA", "... freed earlier", for reports.
std::string describe(const void *p);

// Frees every allocation of `device` (cudaDeviceReset).
void free_device_memory(int device);
// Reports every allocation still live (at exit: a leak in the program).
void report_leaks();

}  // namespace koala_harness
