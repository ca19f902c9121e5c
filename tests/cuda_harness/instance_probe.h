// A second runtime "instance" for test_harness_runtime: this shared
// object's cudaGetLastError, which must not see the test program's errors.
#pragma once
#include <cuda_runtime.h>

__attribute__((visibility("default"))) cudaError_t probe_last_error();
