#include "thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

namespace koala {

namespace {

// One job at a time: its parts are claimed from `next` by the calling
// thread and by whichever workers wake up in time. A worker that the OS
// schedules late (several processes sharing the cores) finds every part
// claimed and goes back to sleep, so nobody waits for a descheduled thread.
struct Pool {
    std::mutex busy;  // held by the thread whose job is running
    std::mutex m;
    std::condition_variable work, done;
    int workers = 0;           // worker threads started so far
    int wanted = 0;            // workers the current job may use
    std::atomic<unsigned long> generation{0};
    const PartFn *job = nullptr;
    int parts = 0;
    std::atomic<int> next{0};  // the next unclaimed part
    int finished = 0;          // parts done (under m)
    int active = 0;            // workers holding the current job (under m): the
                               // job outlives them, and `next` is not reset while
                               // one of them may still claim from it
};

// Leaked on purpose: workers block in it until the process ends, and
// libkoala is linked with -z nodelete so its code outlives any dlclose.
Pool *pool = new Pool;

// Claims and runs parts of the current job until none is left; returns how
// many it ran.
int run_claimed(Pool *p, const PartFn &job, int parts) {
    int ran = 0;
    for (int k; (k = p->next.fetch_add(1, std::memory_order_relaxed)) < parts; ++ran) job(k, parts);
    return ran;
}

// How long a worker polls for the next job before it sleeps: about the gap
// between two passes of one call (the scalar algebra in between), much less
// than the gap between calls (a forward and backward pass).
constexpr auto kPoll = std::chrono::microseconds(50);

void worker(Pool *p, int id) {
    unsigned long seen = 0;
    std::unique_lock<std::mutex> lock(p->m);
    for (;;) {
        if (p->generation.load() == seen) {
            lock.unlock();
            const auto until = std::chrono::steady_clock::now() + kPoll;
            while (p->generation.load(std::memory_order_relaxed) == seen &&
                   std::chrono::steady_clock::now() < until)
                std::this_thread::yield();
            lock.lock();
        }
        p->work.wait(lock, [&] { return p->generation.load() != seen && p->job != nullptr; });
        seen = p->generation.load();
        if (id > p->wanted) continue;  // this job wants fewer threads
        const PartFn *job = p->job;
        const int parts = p->parts;
        ++p->active;
        lock.unlock();
        const int ran = run_claimed(p, *job, parts);
        lock.lock();
        p->finished += ran;
        --p->active;
        if (p->finished == p->parts && p->active == 0) p->done.notify_one();
    }
}

// A forked child has none of the parent's workers, and the parent's locks
// may have been held at the fork: start the child with an empty pool.
void reset_in_child() { pool = new Pool; }
const int registered = pthread_atfork(nullptr, nullptr, reset_in_child);

int positive_env(const char *name) {
    const char *env = std::getenv(name);
    if (!env) return 0;
    char *end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end == env || n <= 0) return 0;
    return n > 1024 ? 1024 : static_cast<int>(n);
}

}  // namespace

int default_threads() {
    (void)registered;
    // OMP_NUM_THREADS is the convention every numerical library honours, and
    // what launchers set per process (torchrun sets it to 1).
    if (int n = positive_env("KOALA_NUM_THREADS")) return n;
    if (int n = positive_env("OMP_NUM_THREADS")) return n;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? static_cast<int>(n) : 1;
}

void run_parts(int threads, int parts, const PartFn &part) {
    Pool *p = pool;
    std::unique_lock<std::mutex> busy(p->busy, std::try_to_lock);
    if (threads <= 1 || parts <= 1 || !busy.owns_lock()) {
        for (int k = 0; k < parts; ++k) part(k, parts);
        return;
    }
    {
        std::lock_guard<std::mutex> lock(p->m);
        try {
            for (; p->workers < threads - 1; ++p->workers) std::thread(worker, p, p->workers + 1).detach();
        } catch (...) {
            // No more threads to be had: the parts still all run (claimed by
            // this thread and the workers there are).
        }
        p->job = &part;
        p->parts = parts;
        p->wanted = threads - 1;
        p->next.store(0, std::memory_order_relaxed);
        p->finished = 0;
        p->generation.fetch_add(1);
    }
    p->work.notify_all();
    const int ran = run_claimed(p, part, parts);
    std::unique_lock<std::mutex> lock(p->m);
    p->finished += ran;
    p->done.wait(lock, [&] { return p->finished == p->parts && p->active == 0; });
    p->job = nullptr;
}

}  // namespace koala
