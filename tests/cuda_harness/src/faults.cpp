#include "faults.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "block.h"

namespace koala_harness {

namespace {

constexpr int kSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};
struct sigaction g_previous[NSIG];

void on_fault(int signo, siginfo_t *info, void *) {
    kernel_signal(signo, info->si_addr);  // does not return for a kernel thread
    // Not a kernel's: restore the previous disposition; the faulting
    // instruction runs again and raises the signal under it.
    sigaction(signo, &g_previous[signo], nullptr);
}

void install_handlers() {
    struct sigaction sa = {};
    sa.sa_sigaction = on_fault;
    // SA_NODEFER: the handler leaves through a context switch, never
    // returning, so the signal must not stay blocked afterwards.
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (int s : kSignals)
        if (sigaction(s, &sa, &g_previous[s]) != 0) {
            perror("koala-harness: sigaction");
            abort();
        }
}

}  // namespace

void install_fault_handlers() {
    static const bool installed = (install_handlers(), true);
    (void)installed;
    thread_local bool has_stack = false;
    if (has_stack) return;
    stack_t current;
    if (sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE)) {
        has_stack = true;  // the thread has one already (ASan sets one up)
        return;
    }
    const size_t size = 256 * 1024;
    void *m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    stack_t st = {};
    st.ss_sp = m;
    st.ss_size = size;
    if (m == MAP_FAILED || sigaltstack(&st, nullptr) != 0) {
        perror("koala-harness: sigaltstack");
        abort();
    }
    has_stack = true;
}

}  // namespace koala_harness
