#include "thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace koala {

namespace {

struct Pool {
    std::mutex busy;  // held by the thread whose job is running
    std::mutex m;
    std::condition_variable work, done;
    int workers = 0;           // worker ids are 1..workers
    unsigned long generation = 0;
    const PartFn *job = nullptr;
    int parts = 0;
    int pending = 0;           // parts still running on workers
};

// Leaked on purpose: workers block in it until the process ends, and
// libkoala is linked with -z nodelete so its code outlives any dlclose.
Pool *pool = new Pool;

void worker(Pool *p, int id) {
    unsigned long seen = 0;
    std::unique_lock<std::mutex> lock(p->m);
    for (;;) {
        p->work.wait(lock, [&] { return p->generation != seen; });
        seen = p->generation;
        if (id >= p->parts) continue;  // not needed for this job
        const PartFn *job = p->job;
        const int parts = p->parts;
        lock.unlock();
        (*job)(id, parts);
        lock.lock();
        if (--p->pending == 0) p->done.notify_one();
    }
}

// A forked child has none of the parent's workers, and the parent's locks
// may have been held at the fork: start the child with an empty pool.
void reset_in_child() { pool = new Pool; }
const int registered = pthread_atfork(nullptr, nullptr, reset_in_child);

}  // namespace

int default_threads() {
    (void)registered;
    if (const char *env = std::getenv("KOALA_NUM_THREADS")) {
        const long n = std::strtol(env, nullptr, 10);
        if (n > 0) return n > 1024 ? 1024 : static_cast<int>(n);
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? static_cast<int>(n) : 1;
}

void run_parts(int threads, const PartFn &part) {
    Pool *p = pool;
    std::unique_lock<std::mutex> busy(p->busy, std::try_to_lock);
    if (threads <= 1 || !busy.owns_lock()) {
        part(0, 1);
        return;
    }
    {
        std::lock_guard<std::mutex> lock(p->m);
        try {
            for (; p->workers < threads - 1; ++p->workers)
                std::thread(worker, p, p->workers + 1).detach();
        } catch (...) {
            // No more threads to be had: run with the workers there are.
        }
        threads = p->workers + 1 < threads ? p->workers + 1 : threads;
        p->job = &part;
        p->parts = threads;
        p->pending = threads - 1;
        ++p->generation;
    }
    if (threads > 1) p->work.notify_all();
    part(0, threads);
    std::unique_lock<std::mutex> lock(p->m);
    p->done.wait(lock, [&] { return p->pending == 0; });
    p->job = nullptr;
}

}  // namespace koala
