/*
 * Concurrency: distinct optimizers used from distinct threads at once give
 * exactly the results they give alone, and koala_last_error() is per thread.
 *
 * Eight jobs (both methods, both dtypes, different layouts, NULL gradients on
 * some steps, a set_lr schedule and a checkpoint round trip mid-run) are run
 * one after another on the main thread first; then all eight run at once,
 * one thread each, and every final parameter byte, checkpoint byte and
 * koala_info must equal the single-threaded run.
 *
 * While they run, every thread but thread 0 makes a failing call with a
 * message unique to it, all threads meet at a barrier, and each then checks
 * that koala_last_error() still holds its own message (thread 0, which never
 * fails, must still read ""). A shared message buffer would fail this.
 *
 * A third test drives the library's own worker pool hard (more threads than
 * cores, two user threads at once) and requires the bits of a one-thread
 * run: it caught a worker running a finished job's function on the next
 * job's parts (src/thread_pool.cpp).
 *
 * Environment: KOALA_TEST_SMALL=1 shrinks the runs for valgrind (which
 * serialises threads): the largest job drops below the library's parallel
 * threshold (65536 elements) and the pool test makes 20 steps instead of
 * 400. Without it, one of the eight jobs and the pool test split their
 * steps over the pool's workers, inside user threads, as the
 * ThreadSanitizer run of tools/hardening.sh needs to see the pool's
 * synchronisation.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "koala.h"

#define N_JOBS 8
#define N_STEPS 30
#define MAX_TENSORS 4

typedef struct {
    koala_method method;
    koala_dtype dtype;
    size_t n_tensors;
    size_t sizes[MAX_TENSORS];
} job_spec;

/* Different methods, dtypes and layouts; the last is big enough to be split
 * over the pool's workers unless KOALA_TEST_SMALL is set. */
static job_spec kJobs[N_JOBS] = {
    {KOALA_VANILLA, KOALA_FLOAT32, 3, {10, 3, 7}},
    {KOALA_MOMENTUM, KOALA_FLOAT32, 2, {64, 1}},
    {KOALA_VANILLA, KOALA_FLOAT64, 1, {257}},
    {KOALA_MOMENTUM, KOALA_FLOAT64, 4, {5, 6, 7, 8}},
    {KOALA_MOMENTUM, KOALA_FLOAT32, 1, {4096}},
    {KOALA_VANILLA, KOALA_FLOAT32, 2, {1000, 33}},
    {KOALA_MOMENTUM, KOALA_FLOAT64, 3, {31, 1, 129}},
    {KOALA_MOMENTUM, KOALA_FLOAT32, 2, {70000, 100}},
};

typedef struct {
    unsigned char *bytes;
    size_t size;
} result;

typedef struct {
    int index;
    int threaded;       /* provoke per-thread errors and meet at the barrier */
    result out;
    char failure[256];  /* first problem found inside the thread, "" if none */
} job_run;

static pthread_barrier_t barrier;

static size_t elem_size(koala_dtype d) { return d == KOALA_FLOAT64 ? 8 : 4; }
static double get(const void *p, koala_dtype d, size_t i) {
    return d == KOALA_FLOAT64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
static void set(void *p, koala_dtype d, size_t i, double v) {
    if (d == KOALA_FLOAT64)
        ((double *)p)[i] = v;
    else
        ((float *)p)[i] = (float)v;
}

static void append(result *r, const void *p, size_t n) {
    unsigned char *grown = realloc(r->bytes, r->size + n);
    if (!grown) abort();
    r->bytes = grown;
    memcpy(r->bytes + r->size, p, n);
    r->size += n;
}

#define CHECK(run, cond, ...)                                                    \
    do {                                                                         \
        if (!(cond) && (run)->failure[0] == '\0')                                \
            snprintf((run)->failure, sizeof (run)->failure, __VA_ARGS__);        \
    } while (0)

/* Each thread (k >= 1) fails koala_create with a config whose lr is unique
 * to it, all threads meet, then each checks it still reads its own message. */
static void error_round(job_run *run, int step) {
    char mine[64];
    const double bad_lr = -(run->index + 0.25);
    const size_t one = 1;
    int rc;
    if (run->index > 0) {
        koala_config cfg;
        koala_optimizer *never = NULL;
        koala_status st;
        koala_config_init(&cfg, KOALA_VANILLA);
        cfg.lr = bad_lr;
        st = koala_create(&cfg, 1, &one, KOALA_FLOAT32, KOALA_HOST, &never);
        CHECK(run, st == KOALA_ERROR_INVALID_ARGUMENT && never == NULL, "create gave %d",
              (int)st);
    }
    rc = pthread_barrier_wait(&barrier);
    CHECK(run, rc == 0 || rc == PTHREAD_BARRIER_SERIAL_THREAD, "barrier %d", rc);
    if (run->index == 0) {
        CHECK(run, koala_last_error()[0] == '\0',
              "thread 0 never failed but reads \"%s\" at step %d", koala_last_error(), step);
    } else {
        snprintf(mine, sizeof mine, "koala_create: cfg->lr is %g;", bad_lr);
        CHECK(run, strstr(koala_last_error(), mine) != NULL,
              "thread %d expected \"%s\", reads \"%s\" at step %d", run->index, mine,
              koala_last_error(), step);
    }
    rc = pthread_barrier_wait(&barrier);
    CHECK(run, rc == 0 || rc == PTHREAD_BARRIER_SERIAL_THREAD, "barrier %d", rc);
}

/* A thread-distinct failure on the thread's own optimizer: set_lr with a
 * negative lr unique to the thread. Nothing may change. */
static void own_failure_round(job_run *run, koala_optimizer *opt, int step) {
    char mine[64];
    const double bad_lr = -(run->index + 0.25);
    int rc;
    if (run->index > 0) {
        koala_status st = koala_set_lr(opt, bad_lr);
        CHECK(run, st == KOALA_ERROR_INVALID_ARGUMENT, "set_lr(%g) gave %d", bad_lr, (int)st);
    }
    rc = pthread_barrier_wait(&barrier);
    CHECK(run, rc == 0 || rc == PTHREAD_BARRIER_SERIAL_THREAD, "barrier %d", rc);
    if (run->index > 0) {
        snprintf(mine, sizeof mine, "lr is %g;", bad_lr);
        CHECK(run, strstr(koala_last_error(), mine) != NULL,
              "thread %d expected \"%s\" in its message, reads \"%s\" at step %d", run->index,
              mine, koala_last_error(), step);
    } else {
        CHECK(run, koala_last_error()[0] == '\0',
              "thread 0 never failed but reads \"%s\" at step %d", koala_last_error(), step);
    }
    rc = pthread_barrier_wait(&barrier);
    CHECK(run, rc == 0 || rc == PTHREAD_BARRIER_SERIAL_THREAD, "barrier %d", rc);
}

static void *run_job(void *arg) {
    job_run *run = arg;
    const job_spec *spec = &kJobs[run->index];
    const koala_dtype d = spec->dtype;
    void *params[MAX_TENSORS], *targets[MAX_TENSORS], *grads_store[MAX_TENSORS];
    const void *grads[MAX_TENSORS];
    koala_config cfg;
    koala_optimizer *opt = NULL;
    koala_info info;
    size_t t, i, total = 0, state_size = 0;
    int step;
    unsigned char *state;

    koala_config_init(&cfg, spec->method);
    cfg.weight_decay = run->index % 2 ? 5e-4 : 0.0;
    if (spec->method == KOALA_VANILLA) cfg.sigma = 0.1;
    for (t = 0; t < spec->n_tensors; ++t) {
        const size_t n = spec->sizes[t];
        params[t] = malloc(n * elem_size(d));
        targets[t] = malloc(n * elem_size(d));
        grads_store[t] = malloc(n * elem_size(d));
        if (!params[t] || !targets[t] || !grads_store[t]) abort();
        for (i = 0; i < n; ++i) {
            set(params[t], d, i, sin(0.37 * (double)(i + 13 * t + run->index)));
            set(targets[t], d, i, 0.5 * cos(0.11 * (double)(i + 7 * t)));
        }
        total += n;
    }
    CHECK(run, koala_create(&cfg, spec->n_tensors, spec->sizes, d, KOALA_HOST, &opt) == KOALA_OK,
          "create: %s", koala_last_error());
    if (!opt) return NULL;

    for (step = 0; step < N_STEPS; ++step) {
        double loss = 0.0;
        CHECK(run, koala_predict(opt, params, NULL) == KOALA_OK, "predict: %s",
              koala_last_error());
        /* Quadratic loss 0.5 * mean (x - target)^2 and its exact gradient. */
        for (t = 0; t < spec->n_tensors; ++t)
            for (i = 0; i < spec->sizes[t]; ++i) {
                const double diff = get(params[t], d, i) - get(targets[t], d, i);
                loss += 0.5 * diff * diff / (double)total;
                set(grads_store[t], d, i, diff / (double)total);
            }
        for (t = 0; t < spec->n_tensors; ++t)
            /* Tensor 0 has no gradient every fifth step (p.grad is None). */
            grads[t] = (t == 0 && step % 5 == 4) ? NULL : grads_store[t];
        if (run->threaded) {
            if (step % 3 == 0)
                error_round(run, step);
            else
                own_failure_round(run, opt, step);
        }
        CHECK(run,
              koala_update(opt, loss, 1.5 * loss * loss, params, grads, NULL) == KOALA_OK,
              "update step %d: %s", step, koala_last_error());
        if (step == 10) CHECK(run, koala_set_lr(opt, 0.5) == KOALA_OK, "set_lr");
        if (step == 20) { /* checkpoint round trip mid-run */
            CHECK(run, koala_state_size(opt, &state_size) == KOALA_OK, "state_size");
            state = malloc(state_size);
            if (!state) abort();
            CHECK(run, koala_state_save(opt, state, state_size, NULL) == KOALA_OK, "save");
            koala_destroy(opt);
            opt = NULL;
            CHECK(run, koala_create(&cfg, spec->n_tensors, spec->sizes, d, KOALA_HOST, &opt) ==
                           KOALA_OK, "re-create");
            CHECK(run, koala_state_load(opt, state, state_size, NULL) == KOALA_OK, "load: %s",
                  koala_last_error());
            free(state);
        }
    }

    for (t = 0; t < spec->n_tensors; ++t) append(&run->out, params[t], spec->sizes[t] * elem_size(d));
    CHECK(run, koala_state_size(opt, &state_size) == KOALA_OK, "state_size");
    state = malloc(state_size);
    if (!state) abort();
    CHECK(run, koala_state_save(opt, state, state_size, NULL) == KOALA_OK, "save");
    append(&run->out, state, state_size);
    free(state);
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK(run, koala_get_info(opt, NULL, &info) == KOALA_OK, "info");
    CHECK(run, info.steps == N_STEPS, "steps %llu", (unsigned long long)info.steps);
    append(&run->out, &info, sizeof info);
    koala_destroy(opt);
    for (t = 0; t < spec->n_tensors; ++t) {
        free(params[t]);
        free(targets[t]);
        free(grads_store[t]);
    }
    return NULL;
}

static void test_threads_match_serial(void **state) {
    job_run serial[N_JOBS], threaded[N_JOBS];
    pthread_t threads[N_JOBS];
    int k;
    (void)state;
    memset(serial, 0, sizeof serial);
    memset(threaded, 0, sizeof threaded);
    for (k = 0; k < N_JOBS; ++k) {
        serial[k].index = k;
        run_job(&serial[k]);
        if (serial[k].failure[0]) fail_msg("serial job %d: %s", k, serial[k].failure);
    }
    assert_int_equal(pthread_barrier_init(&barrier, NULL, N_JOBS), 0);
    for (k = 0; k < N_JOBS; ++k) {
        threaded[k].index = k;
        threaded[k].threaded = 1;
        assert_int_equal(pthread_create(&threads[k], NULL, run_job, &threaded[k]), 0);
    }
    for (k = 0; k < N_JOBS; ++k) assert_int_equal(pthread_join(threads[k], NULL), 0);
    pthread_barrier_destroy(&barrier);
    for (k = 0; k < N_JOBS; ++k) {
        if (threaded[k].failure[0]) fail_msg("thread %d: %s", k, threaded[k].failure);
        assert_int_equal(serial[k].out.size, threaded[k].out.size);
        if (memcmp(serial[k].out.bytes, threaded[k].out.bytes, serial[k].out.size) != 0)
            fail_msg("job %d: threaded result differs from the single-threaded run", k);
        free(serial[k].out.bytes);
        free(threaded[k].out.bytes);
    }
}

/* The library's own worker pool (src/thread_pool.cpp): one optimizer large
 * enough to be split into parts, stepped many times with more threads than
 * the machine has cores (so workers are often scheduled late, after the
 * caller has claimed every part of a job and moved on to the next), gives
 * the bits it gives with one thread; meanwhile a second user thread steps its
 * own large optimizer, so calls also find the pool busy and run their parts
 * themselves. A part skipped, run twice or run with another job's function
 * changes the result (or crashes); TSan (tools/hardening.sh) checks the
 * pool's synchronisation on the same run. */
#define POOL_ELEMENTS 70000 /* 3 chunks of 32768: 3 parts per job */

typedef struct {
    int threads;
    int steps;
    unsigned char *state; /* the checkpoint after the run */
    size_t size;
    float *params;        /* the parameters after the run */
} pool_run;

static void *pool_job(void *arg) {
    pool_run *r = arg;
    koala_config cfg;
    koala_optimizer *opt = NULL;
    float *g = malloc(POOL_ELEMENTS * sizeof *g);
    const size_t n = POOL_ELEMENTS;
    void *params[1];
    const void *grads[1];
    int s;
    size_t i;
    r->params = malloc(POOL_ELEMENTS * sizeof *r->params);
    if (!g || !r->params) abort();
    for (i = 0; i < n; ++i) {
        r->params[i] = (float)(0.5 * sin(0.001 * (double)i));
        g[i] = (float)(0.01 * cos(0.003 * (double)i));
    }
    params[0] = r->params;
    grads[0] = g;
    koala_config_init(&cfg, KOALA_MOMENTUM);
    cfg.threads = r->threads;
    cfg.weight_decay = 1e-4;
    if (koala_create(&cfg, 1, &n, KOALA_FLOAT32, KOALA_HOST, &opt) != KOALA_OK) abort();
    for (s = 0; s < r->steps; ++s) {
        if (koala_predict(opt, params, NULL) != KOALA_OK) abort();
        g[(size_t)s % n] = (float)(0.02 * sin((double)s));
        if (koala_update(opt, 1.0 + 0.01 * (s % 7), 1.5, params, grads, NULL) != KOALA_OK)
            abort();
    }
    if (koala_state_size(opt, &r->size) != KOALA_OK) abort();
    r->state = malloc(r->size);
    if (!r->state || koala_state_save(opt, r->state, r->size, NULL) != KOALA_OK) abort();
    koala_destroy(opt);
    free(g);
    return NULL;
}

static void test_pool_matches_one_thread(void **state) {
    const char *small = getenv("KOALA_TEST_SMALL");
    const int steps = small && small[0] == '1' ? 20 : 150;
    pool_run one = {1, 0, NULL, 0, NULL};
    const int thread_counts[] = {2, 3, 8};
    size_t k;
    (void)state;
    one.steps = steps;
    pool_job(&one);
    for (k = 0; k < sizeof thread_counts / sizeof thread_counts[0]; ++k) {
        pool_run many = {thread_counts[k], steps, NULL, 0, NULL};
        pool_run other = {thread_counts[k], steps, NULL, 0, NULL};
        pthread_t thread;
        assert_int_equal(pthread_create(&thread, NULL, pool_job, &other), 0);
        pool_job(&many);
        assert_int_equal(pthread_join(thread, NULL), 0);
        if (memcmp(many.params, one.params, POOL_ELEMENTS * sizeof *one.params) != 0 ||
            memcmp(other.params, one.params, POOL_ELEMENTS * sizeof *one.params) != 0)
            fail_msg("threads = %d: parameters differ from threads = 1", thread_counts[k]);
        assert_int_equal(many.size, one.size);
        if (memcmp(many.state, one.state, one.size) != 0 ||
            memcmp(other.state, one.state, one.size) != 0)
            fail_msg("threads = %d: optimizer state differs from threads = 1", thread_counts[k]);
        free(many.params);
        free(many.state);
        free(other.params);
        free(other.state);
    }
    free(one.params);
    free(one.state);
}

/* The main thread's message is its own too: after the threads' failures it
 * still reads the message of its own last failure. */
static void test_main_thread_message_is_own(void **state) {
    (void)state;
    assert_int_equal(koala_state_size(NULL, NULL), KOALA_ERROR_INVALID_ARGUMENT);
    {
        job_run run;
        pthread_t thread;
        memset(&run, 0, sizeof run);
        run.index = 0;
        assert_int_equal(pthread_create(&thread, NULL, run_job, &run), 0);
        assert_int_equal(pthread_join(thread, NULL), 0);
        free(run.out.bytes);
    }
    assert_non_null(strstr(koala_last_error(), "koala_state_size: opt is NULL"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_match_serial),
        cmocka_unit_test(test_main_thread_message_is_own),
        cmocka_unit_test(test_pool_matches_one_thread),
    };
    const char *small = getenv("KOALA_TEST_SMALL");
    if (small && small[0] == '1') kJobs[N_JOBS - 1].sizes[0] = 7000;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
