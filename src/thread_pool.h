// The CPU path's worker threads: one process-wide pool whose workers sleep
// on a condition variable between calls, so that several processes sharing
// the cores, or an idle optimizer, cost nothing. After a job a worker polls
// for the next one for a few tens of microseconds only (the next pass of the
// same call follows that soon), then sleeps.
#pragma once

namespace koala {

// The thread count a host optimizer uses when koala_config::threads is 0:
// KOALA_NUM_THREADS if set to a positive number, else OMP_NUM_THREADS if
// set, else the number of CPUs this process may run on.
int default_threads();

// Calls part(p, parts) once for every p in [0, parts), on the calling thread
// and up to threads - 1 pool workers, which claim parts in increasing p as
// they come (a worker the OS schedules late just takes fewer), and returns
// when all are done. Which thread runs which part is not fixed; results must
// not depend on it. A caller that finds the pool busy (another thread's
// optimizer is stepping) runs every part itself, in order. `part` must not
// throw.
class PartFn {
public:
    virtual void operator()(int part, int parts) const = 0;

protected:
    ~PartFn() = default;
};
void run_parts(int threads, int parts, const PartFn &part);

// run_parts for a lambda.
template <class F>
void run_parts(int threads, int parts, const F &f) {
    struct Adapter final : PartFn {
        const F &f;
        explicit Adapter(const F &fn) : f(fn) {}
        void operator()(int part, int parts) const override { f(part, parts); }
    } adapter(f);
    run_parts(threads, parts, static_cast<const PartFn &>(adapter));
}

}  // namespace koala
