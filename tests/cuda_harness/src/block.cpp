// The block scheduler. All threads of a block start as fibers in
// linear-index order; a thread runs until it waits at a barrier or warp
// collective, then switches straight to the next runnable thread. The last
// thread to arrive completes the rendezvous (computes every lane's result)
// and carries on; the others become runnable again (a warp's lanes first,
// so one warp's chain of shuffles runs while its stacks are hot).
//
// A rendezvous that can never complete is a fault, raised the moment it
// becomes certain: a full-mask collective with lanes exited, missing from
// the block, waiting at a block barrier or at another collective; a
// barrier after some threads exited or with threads waiting at another
// barrier or inside a warp collective; a thread exiting while others wait.
// If the run still stalls, the stall itself is reported.
#include "block.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <vector>

#include "api.h"
#include "faults.h"
#include "fiber.h"
#include "memory.h"

namespace koala_harness {

Builtins builtins;

namespace {

constexpr unsigned kFullMask = 0xffffffffu;

struct Site {
    const char *file;
    int line;
};

bool same_site(Site a, Site b) {
    return a.line == b.line && (a.file == b.file || strcmp(a.file, b.file) == 0);
}

enum class State : unsigned char { kNew, kReady, kWarp, kBlock, kExited };

struct Thread {
    Context ctx;
    Stack *stack;
    uint3 idx;
    State state;
    Site site;  // where it waits
};

struct Warp {
    int lanes;    // threads of the block in this warp
    int arrived;  // lanes waiting in the current collective
    int exited;
    int at_barrier;  // lanes waiting at a block barrier
    Collective kind;
    Site site;
    int width;
    uint64_t in[32];
    int arg[32];
    uint64_t out[32];
};

struct BlockBarrier {
    int arrived;
    Barrier kind;
    Site site;
    int count;  // predicates that were true
    int result;
};

// Threads waiting to run; each thread is in it at most once.
class ReadyQueue {
public:
    void reset(int capacity) {
        ring_.assign(static_cast<size_t>(capacity), 0);
        head_ = count_ = 0;
    }
    void push_back(int t) { ring_[(head_ + count_++) % ring_.size()] = t; }
    void push_front(int t) {
        head_ = (head_ + ring_.size() - 1) % ring_.size();
        ring_[head_] = t;
        ++count_;
    }
    int pop() {
        if (count_ == 0) return -1;
        const int t = ring_[head_];
        head_ = (head_ + 1) % ring_.size();
        --count_;
        return t;
    }

private:
    std::vector<int> ring_;
    size_t head_ = 0, count_ = 0;
};

const char *collective_name(Collective k) {
    switch (k) {
    case Collective::kShflIdx: return "__shfl_sync";
    case Collective::kShflUp: return "__shfl_up_sync";
    case Collective::kShflDown: return "__shfl_down_sync";
    case Collective::kShflXor: return "__shfl_xor_sync";
    case Collective::kBallot: return "__ballot_sync";
    case Collective::kAny: return "__any_sync";
    case Collective::kAll: return "__all_sync";
    case Collective::kSyncWarp: return "__syncwarp";
    }
    return "?";
}

const char *barrier_name(Barrier k) {
    switch (k) {
    case Barrier::kSync: return "__syncthreads";
    case Barrier::kOr: return "__syncthreads_or";
    case Barrier::kAnd: return "__syncthreads_and";
    case Barrier::kCount: return "__syncthreads_count";
    }
    return "?";
}

void fiber_entry(void *arg);

class BlockRun {
public:
    BlockRun(const LaunchSite &site, dim3 grid, dim3 block, const KernelCall &call)
        : site_(site),
          grid_(grid),
          call_(call),
          n_(static_cast<int>(block.x * block.y * block.z)),
          threads_(static_cast<size_t>(n_)),
          warps_(static_cast<size_t>((n_ + 31) / 32)),
          tid_(syscall(SYS_gettid)) {
        for (int t = 0; t < n_; ++t) {
            const unsigned u = static_cast<unsigned>(t);
            threads_[static_cast<size_t>(t)].idx =
                uint3{u % block.x, u / block.x % block.y, u / (block.x * block.y)};
        }
    }

    // Runs one block; false on a fault (code() and why()).
    bool run(uint3 block_idx) {
        block_idx_ = block_idx;
        builtins.block_idx = block_idx;
        for (Thread &t : threads_) {
            t.stack = nullptr;
            t.state = State::kNew;
        }
        for (size_t w = 0; w < warps_.size(); ++w) {
            Warp &wp = warps_[w];
            wp.lanes = n_ - static_cast<int>(w) * 32 < 32 ? n_ - static_cast<int>(w) * 32 : 32;
            wp.arrived = wp.exited = wp.at_barrier = 0;
        }
        barrier_.arrived = 0;
        exited_ = 0;
        faulted_ = false;
        signo_ = 0;
        ready_.reset(n_);
        for (int t = 0; t < n_; ++t) ready_.push_back(t);
        while (!faulted_) {
            const int t = ready_.pop();
            if (t < 0) break;
            start_or_resume(main_, t);
            current_ = -1;
            if (finished_) {
                release_stack(finished_);
                finished_ = nullptr;
            }
        }
        if (!faulted_ && exited_ < n_) fail_from_main(cudaErrorLaunchFailure, stall_report());
        if (signo_) describe_signal();
        for (Thread &t : threads_) {
            if (!t.stack) continue;
            t.stack->dirty = true;  // abandoned mid-call
            release_stack(t.stack);
            t.stack = nullptr;
        }
        return !faulted_;
    }

    cudaError_t code() const { return code_; }
    const std::string &why() const { return why_; }
    bool running() const { return current_ >= 0; }
    // The signal-handler test: a fiber runs and it is this OS thread's.
    bool in_kernel_thread() const { return current_ >= 0 && syscall(SYS_gettid) == tid_; }

    [[noreturn]] void thread_main(int t) {
        current_ = t;
        builtins.thread_idx = threads_[static_cast<size_t>(t)].idx;
        bool threw = false;
        try {
            call_.run_thread();
        } catch (...) {
            threw = true;  // fault() below, outside the handler
        }
        if (threw) fault(cudaErrorLaunchFailure, "a C++ exception escaped the kernel");
        Thread &me = threads_[static_cast<size_t>(t)];
        Warp &w = warps_[static_cast<size_t>(t / 32)];
        me.state = State::kExited;
        ++exited_;
        ++w.exited;
        if (barrier_.arrived > 0)
            fault(cudaErrorLaunchFailure,
                  "exited while %d thread(s) wait at %s (%s:%d): every thread of the "
                  "block must reach each barrier",
                  barrier_.arrived, barrier_name(barrier_.kind), barrier_.site.file,
                  barrier_.site.line);
        if (w.arrived > 0)
            fault(cudaErrorLaunchFailure,
                  "exited while %d lane(s) of its warp wait in %s (%s:%d): every lane the "
                  "mask names must arrive",
                  w.arrived, collective_name(w.kind), w.site.file, w.site.line);
        finished_ = me.stack;
        me.stack = nullptr;
        current_ = -1;
        leave_context(main_);
    }

    int barrier(Barrier kind, int pred, Site site) {
        const int t = current_;
        Thread &me = threads_[static_cast<size_t>(t)];
        Warp &w = warps_[static_cast<size_t>(t / 32)];
        BlockBarrier &b = barrier_;
        if (exited_ > 0) {
            const uint3 first = threads_[static_cast<size_t>(first_exited())].idx;
            fault(cudaErrorLaunchFailure,
                  "%s at %s:%d after %d thread(s) exited (the first: thread (%u,%u,%u)): every "
                  "thread of the block must reach each barrier",
                  barrier_name(kind), site.file, site.line, exited_, first.x, first.y, first.z);
        }
        if (b.arrived > 0 && (b.kind != kind || !same_site(b.site, site)))
            fault(cudaErrorLaunchFailure,
                  "divergent barrier: it reached %s at %s:%d while %d thread(s) wait at "
                  "%s at %s:%d",
                  barrier_name(kind), site.file, site.line, b.arrived, barrier_name(b.kind),
                  b.site.file, b.site.line);
        if (w.arrived > 0)
            fault(cudaErrorLaunchFailure,
                  "deadlock: it reached %s at %s:%d while %d lane(s) of its warp wait in "
                  "%s at %s:%d",
                  barrier_name(kind), site.file, site.line, w.arrived, collective_name(w.kind),
                  w.site.file, w.site.line);
        if (b.arrived == 0) {
            b.kind = kind;
            b.site = site;
            b.count = 0;
        }
        b.count += pred != 0;
        if (++b.arrived < n_) {
            me.state = State::kBlock;
            me.site = site;
            ++w.at_barrier;
            wait(t);
            return b.result;
        }
        b.result = kind == Barrier::kOr      ? b.count > 0
                   : kind == Barrier::kAnd   ? b.count == n_
                   : kind == Barrier::kCount ? b.count
                                             : 0;
        b.arrived = 0;
        for (int u = 0; u < n_; ++u) {
            Thread &th = threads_[static_cast<size_t>(u)];
            if (th.state != State::kBlock) continue;
            th.state = State::kReady;
            --warps_[static_cast<size_t>(u / 32)].at_barrier;
            ready_.push_back(u);
        }
        return b.result;
    }

    uint64_t collective(Collective kind, unsigned mask, uint64_t value, int arg, int width,
                        Site site) {
        const int t = current_;
        const int lane = t % 32;
        Thread &me = threads_[static_cast<size_t>(t)];
        Warp &w = warps_[static_cast<size_t>(t / 32)];
        if (mask != kFullMask)
            fault(cudaErrorLaunchFailure,
                  "%s at %s:%d with mask 0x%08x: the harness runs only full-mask warp "
                  "collectives (0xffffffff)",
                  collective_name(kind), site.file, site.line, mask);
        if (w.lanes != 32)
            fault(cudaErrorLaunchFailure,
                  "%s at %s:%d with a full mask in a warp of %d thread(s): the mask names "
                  "lanes the block does not have",
                  collective_name(kind), site.file, site.line, w.lanes);
        if (width < 1 || width > 32 || (width & (width - 1)) != 0)
            fault(cudaErrorLaunchFailure,
                  "%s at %s:%d with width %d: it must be a power of two up to 32",
                  collective_name(kind), site.file, site.line, width);
        if (w.exited > 0)
            fault(cudaErrorLaunchFailure,
                  "%s at %s:%d after %d lane(s) of the warp exited: every lane the mask "
                  "names must arrive",
                  collective_name(kind), site.file, site.line, w.exited);
        if (w.at_barrier > 0)
            fault(cudaErrorLaunchFailure,
                  "deadlock: %s at %s:%d while %d lane(s) of the warp wait at %s (%s:%d)",
                  collective_name(kind), site.file, site.line, w.at_barrier,
                  barrier_name(barrier_.kind), barrier_.site.file, barrier_.site.line);
        if (w.arrived > 0 && (w.kind != kind || !same_site(w.site, site) || w.width != width))
            fault(cudaErrorLaunchFailure,
                  "divergent warp: it reached %s at %s:%d (width %d) while %d lane(s) wait "
                  "in %s at %s:%d (width %d)",
                  collective_name(kind), site.file, site.line, width, w.arrived,
                  collective_name(w.kind), w.site.file, w.site.line, w.width);
        if (w.arrived == 0) {
            w.kind = kind;
            w.site = site;
            w.width = width;
        }
        w.in[lane] = value;
        w.arg[lane] = arg;
        if (++w.arrived < 32) {
            me.state = State::kWarp;
            me.site = site;
            wait(t);
            return w.out[lane];
        }
        complete(w);
        w.arrived = 0;
        const int first = t - lane;
        for (int l = 31; l >= 0; --l) {
            Thread &th = threads_[static_cast<size_t>(first + l)];
            if (th.state != State::kWarp) continue;
            th.state = State::kReady;
            ready_.push_front(first + l);
        }
        return w.out[lane];
    }

    // Called from the signal handler on the faulting fiber: async-signal-
    // safe bookkeeping only; main writes the report.
    [[noreturn]] void on_signal(int signo, const void *addr) {
        signo_ = signo;
        signal_addr_ = addr;
        signal_thread_ = current_;
        faulted_ = true;
        threads_[static_cast<size_t>(current_)].stack->dirty = true;
        current_ = -1;
        leave_context(main_);
    }

private:
    // Every lane's result of the collective that just completed.
    static void complete(Warp &w) {
        const int width = w.width;
        unsigned votes = 0;
        for (int l = 0; l < 32; ++l)
            if (w.arg[l]) votes |= 1u << l;
        for (int l = 0; l < 32; ++l) {
            const int seg = l & ~(width - 1);
            const int in_seg = l & (width - 1);
            const int a = w.arg[l];
            int src = l;
            switch (w.kind) {
            case Collective::kShflIdx: src = seg + (a & (width - 1)); break;
            case Collective::kShflUp:
                if (a >= 0 && in_seg >= a) src = l - a;
                break;
            case Collective::kShflDown:
                if (a >= 0 && in_seg + a < width) src = l + a;
                break;
            case Collective::kShflXor: {
                const int x = l ^ a;
                if (x >= 0 && x < 32 && (x & ~(width - 1)) <= seg) src = x;
                break;
            }
            case Collective::kBallot: w.out[l] = votes; continue;
            case Collective::kAny: w.out[l] = votes != 0; continue;
            case Collective::kAll: w.out[l] = votes == kFullMask; continue;
            case Collective::kSyncWarp: w.out[l] = 0; continue;
            }
            w.out[l] = w.in[src];
        }
    }

    void start_or_resume(Context &from, int t) {
        Thread &th = threads_[static_cast<size_t>(t)];
        if (th.state == State::kNew) {
            th.state = State::kReady;
            th.stack = acquire_stack();
            prepare_context(th.ctx, *th.stack, &fiber_entry,
                            reinterpret_cast<void *>(static_cast<intptr_t>(t)));
        }
        switch_context(from, th.ctx);
    }

    // The running thread t waits; returns once it is resumed.
    void wait(int t) {
        const int next = ready_.pop();
        if (next < 0)
            switch_context(threads_[static_cast<size_t>(t)].ctx, main_);  // stalled: main reports
        else
            start_or_resume(threads_[static_cast<size_t>(t)].ctx, next);
        current_ = t;
        builtins.thread_idx = threads_[static_cast<size_t>(t)].idx;
    }

    // Abandons the running fiber: nothing on its stack is destroyed, so
    // the report is formatted straight into why_ (a std::string argument
    // built by the caller would leak).
    [[noreturn]] __attribute__((format(printf, 3, 4))) void fault(cudaError_t code, const char *fmt,
                                                                  ...) {
        char what[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        faulted_ = true;
        code_ = code;
        why_ = where();
        why_ += ", " + thread_name(current_) + ": " + what;
        threads_[static_cast<size_t>(current_)].stack->dirty = true;
        current_ = -1;
        leave_context(main_);
    }

    void fail_from_main(cudaError_t code, const std::string &what) {
        faulted_ = true;
        code_ = code;
        why_ = where() + ": " + what;
    }

    void describe_signal() {
        const std::string thread = thread_name(signal_thread_);
        if ((signo_ == SIGSEGV || signo_ == SIGBUS) && in_stack_guard(signal_addr_)) {
            code_ = cudaErrorLaunchFailure;
            why_ = where() + ", " + thread + ": overflowed its " +
                   std::to_string(fiber_stack_bytes() / 1024) +
                   " KiB fiber stack (KOALA_HARNESS_STACK_KB sets the size)";
        } else if (signo_ == SIGSEGV || signo_ == SIGBUS) {
            code_ = cudaErrorIllegalAddress;
            why_ = where() + ", " + thread + ": illegal memory access at " +
                   format("%p", signal_addr_) + " (" + describe(signal_addr_) + ")";
        } else if (signo_ == SIGILL) {
            code_ = cudaErrorMisalignedAddress;
            why_ =
                where() + ", " + thread +
                ": trapped (the harness builds kernels with -fsanitize=alignment in trap mode, so "
                "this is a misaligned load or store, or __builtin_trap)";
        } else {
            code_ = cudaErrorLaunchFailure;
            why_ = where() + ", " + thread +
                   ": arithmetic exception (an integer division by zero gives an unspecified value "
                   "on a GPU; on the CPU it traps)";
        }
    }

    std::string where() const {
        return format("kernel %s (launched at %s:%d), block (%u,%u,%u) of grid (%u,%u,%u)",
                      site_.kernel, site_.file, site_.line, block_idx_.x, block_idx_.y,
                      block_idx_.z, grid_.x, grid_.y, grid_.z);
    }

    std::string thread_name(int t) const {
        if (t < 0) return "no thread";
        const uint3 i = threads_[static_cast<size_t>(t)].idx;
        return format("thread (%u,%u,%u)", i.x, i.y, i.z);
    }

    int first_exited() const {
        for (int t = 0; t < n_; ++t)
            if (threads_[static_cast<size_t>(t)].state == State::kExited) return t;
        return 0;
    }

    // Runs of consecutive threads in the same state at the same site.
    std::string stall_report() const {
        std::string r = "stalled: no thread can continue:";
        int t = 0;
        while (t < n_) {
            const Thread &a = threads_[static_cast<size_t>(t)];
            int u = t + 1;
            while (u < n_) {
                const Thread &b = threads_[static_cast<size_t>(u)];
                if (b.state != a.state || (a.state != State::kExited && !same_site(a.site, b.site)))
                    break;
                ++u;
            }
            r += format(" threads %d-%d ", t, u - 1);
            if (a.state == State::kExited)
                r += "exited;";
            else
                r += format("wait at %s:%d;", a.site.file, a.site.line);
            t = u;
        }
        return r;
    }

    const LaunchSite &site_;
    dim3 grid_;
    const KernelCall &call_;
    int n_;
    std::vector<Thread> threads_;
    std::vector<Warp> warps_;
    BlockBarrier barrier_{};
    ReadyQueue ready_;
    Context main_;
    long tid_;
    uint3 block_idx_{};
    int current_ = -1;
    int exited_ = 0;
    Stack *finished_ = nullptr;  // stack of the thread that just exited
    bool faulted_ = false;
    cudaError_t code_ = cudaSuccess;
    std::string why_;
    volatile int signo_ = 0;
    const void *volatile signal_addr_ = nullptr;
    volatile int signal_thread_ = -1;
};

BlockRun *g_run = nullptr;

void fiber_entry(void *arg) {
    fiber_started();
    g_run->thread_main(static_cast<int>(reinterpret_cast<intptr_t>(arg)));
}

BlockRun &running_block(const char *what) {
    if (!g_run || !g_run->running()) {
        fprintf(stderr, "koala-harness: %s called outside a kernel\n", what);
        abort();
    }
    return *g_run;
}

}  // namespace

int block_barrier(Barrier kind, int pred, const char *file, int line) {
    return running_block(barrier_name(kind)).barrier(kind, pred, Site{file, line});
}

uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int arg, int width,
                         const char *file, int line) {
    return running_block(collective_name(kind))
        .collective(kind, mask, value, arg, width, Site{file, line});
}

cudaError_t run_grid(const LaunchSite &site, dim3 grid, dim3 block, const KernelCall &call,
                     std::string *why) {
    install_fault_handlers();
    BlockRun run(site, grid, block, call);
    builtins.grid_dim = grid;
    builtins.block_dim = block;
    g_run = &run;
    cudaError_t e = cudaSuccess;
    for (unsigned z = 0; z < grid.z && e == cudaSuccess; ++z)
        for (unsigned y = 0; y < grid.y && e == cudaSuccess; ++y)
            for (unsigned x = 0; x < grid.x && e == cudaSuccess; ++x)
                if (!run.run(uint3{x, y, z})) {
                    e = run.code();
                    *why = run.why();
                }
    g_run = nullptr;
    return e;
}

void kernel_signal(int signo, const void *addr) {
    BlockRun *run = g_run;
    if (run && run->in_kernel_thread()) run->on_signal(signo, addr);
}

}  // namespace koala_harness
