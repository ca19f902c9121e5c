// Kernel faults from hardware traps: a load or store into a guard page,
// freed device memory or an unmapped address (SIGSEGV/SIGBUS), an
// alignment trap (SIGILL, kernels are built with -fsanitize=alignment in
// trap mode outside UBSan builds) or an integer division by zero (SIGFPE)
// in a kernel thread become that launch's sticky error, as a GPU fault
// would. The same signals anywhere else go to whoever handled them before.
#pragma once

namespace koala_harness {

// Installs the handlers once per process and an alternate signal stack
// once per kernel-running thread (a fiber that overflows its stack cannot
// run the handler on it).
void install_fault_handlers();

}  // namespace koala_harness
