#include "instance_probe.h"

cudaError_t probe_last_error() { return cudaGetLastError(); }
