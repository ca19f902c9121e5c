// The CPU execution harness's cuda_runtime.h. Harness builds put this
// directory first on the include path, so the unmodified cuda/*.cu and
// tests/gpu/*.cu sources compile with the host C++ compiler and run on the
// CPU: CUDA threads as fibers, one block at a time, against a fake runtime
// with an allocation registry, a stream queue and graph capture
// (tests/cuda_harness/README.md). Only what the project's sources use, and
// what a new GPU test would plausibly reach for, is provided; anything else
// is a compile error rather than a silent approximation.
#pragma once

#include "koala_harness/runtime_api.h"
#include "koala_harness/device_api.h"
#include "koala_harness/launch.h"
