// Running one kernel launch: every block in turn, the CUDA threads of a
// block as fibers, with checked barriers and warp collectives.
#pragma once
#include <cuda_runtime.h>

#include <string>

namespace koala_harness {

// Runs the whole grid; on a kernel fault returns the sticky error CUDA
// would raise (illegal address, misaligned address, launch failure) and
// the report in *why.
cudaError_t run_grid(const LaunchSite &site, dim3 grid, dim3 block, const KernelCall &call,
                     std::string *why);

// Called by the signal handler (faults.cpp). If the signal was raised by a
// kernel thread of a running block, abandons the block (never returns);
// otherwise returns and the handler passes the signal on.
void kernel_signal(int signo, const void *addr);

}  // namespace koala_harness
