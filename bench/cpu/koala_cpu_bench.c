/*
 * koala_cpu_bench: time one KOALA step (koala_predict + koala_update) of the
 * host path on the CIFAR-10 ResNet-18 parameter layout and compare it with
 * the memory-traffic floor of ALGORITHM.md section 10.
 *
 *   koala_cpu_bench [--steps N] [--warmup N] [--quick]
 *   OMP_NUM_THREADS=2 koala_cpu_bench          (thread count as for libkoala)
 *
 * For each of KOALA-V / KOALA-M x float32 / float64 x (weight decay 0 or
 * 5e-4) it prints the median ms per step, the achieved bandwidth counting
 * the bytes the algorithm must move, and the ratio of the measured time to
 * the "byte floor": those bytes at the bandwidth of a read-modify-write
 * stream (y += s * x over buffers of the same size) measured in this run
 * with the same threads. A ratio of 1.0 means the step runs at stream speed.
 * Caches are evicted (untimed) before koala_predict and before koala_update,
 * as the forward and backward passes would do in training (--warm: not).
 *
 * Bytes per parameter (ALGORITHM.md section 10, E = element size):
 *   KOALA-V: norm pass reads g and x (only g without weight decay), apply
 *            pass reads g, x and writes x   -> 5E with wd, 4E without.
 *   KOALA-M: predict reads x, v, xbar, writes x, v (5E); norm pass reads g, x
 *            (g only without wd); apply reads g, x, v, xbar, writes x, v, xbar
 *            (7E)                           -> 14E with wd, 13E without.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "koala.h"
#include "resnet18_layout.h"

typedef struct bench_options {
    int steps;  /* timed steps per configuration */
    int warmup; /* untimed steps first */
    int warm;   /* 1: no cache eviction between predict and update (--warm) */
} bench_options;

/* In training, the forward and backward passes run between koala_predict and
 * koala_update and between koala_update and the next koala_predict, and they
 * evict the optimizer's data from the caches. The benchmark does the same
 * (untimed) by streaming over a buffer larger than any last-level cache, so
 * that no step is timed on data the previous call left in cache. */
enum { EVICT_FLOATS = 32 << 20 }; /* 128 MiB */
static float *evict_buffer;

typedef struct bench_result {
    const char *method, *dtype;
    double wd;
    double median_ms, min_ms;
    double bytes;
} bench_result;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, compare_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void *xmalloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0) {
        fprintf(stderr, "koala_cpu_bench: cannot allocate %zu bytes\n", bytes);
        exit(1);
    }
    return p;
}

static void die_on(koala_status st, const char *what) {
    if (st != KOALA_OK) {
        fprintf(stderr, "koala_cpu_bench: %s failed: %s (%s)\n", what, koala_status_string(st),
                koala_last_error());
        exit(1);
    }
}

/* A small deterministic generator so every run sees the same numbers. */
static double next_uniform(unsigned long long *state) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*state >> 11) * (1.0 / 9007199254740992.0) - 0.5;
}

/* Fills with parallel first touch (same static split as the stream below). */
static void fill(void *buf, size_t n, int is_double, double scale, unsigned long long seed) {
    long i;
#pragma omp parallel
    {
        unsigned long long state = seed + 7919ULL * (unsigned long long)omp_get_thread_num();
#pragma omp for schedule(static)
        for (i = 0; i < (long)n; ++i) {
            const double v = scale * next_uniform(&state);
            if (is_double) ((double *)buf)[i] = v;
            else ((float *)buf)[i] = (float)v;
        }
    }
}

/* Bandwidth of y += s * x over n elements of float (reads 2, writes 1):
 * the access pattern of the KOALA passes, with no write-allocate penalty.
 * Returns the median; *best receives the fastest repetition's bandwidth. */
static double stream_gbps(size_t n, int reps, double *best) {
    float *x = xmalloc(n * sizeof *x), *y = xmalloc(n * sizeof *y);
    double *times = xmalloc((size_t)reps * sizeof *times);
    fill(x, n, 0, 1.0, 1);
    fill(y, n, 0, 1.0, 2);
    for (int r = -2; r < reps; ++r) {
        const float s = (r % 2) ? 1e-3f : -1e-3f;
        const double t0 = now_seconds();
        long i;
#pragma omp parallel for simd schedule(static)
        for (i = 0; i < (long)n; ++i) y[i] += s * x[i];
        if (r >= 0) times[r] = now_seconds() - t0;
    }
    const double bytes = 3.0 * (double)n * sizeof(float);
    const double gbps = bytes / median(times, reps) / 1e9; /* sorts: times[0] is the minimum */
    *best = bytes / times[0] / 1e9;
    free(x);
    free(y);
    free(times);
    return gbps;
}

/* Bandwidth of memcpy of n floats, counted as n reads + n writes. */
static double memcpy_gbps(size_t n, int reps) {
    float *x = xmalloc(n * sizeof *x), *y = xmalloc(n * sizeof *y);
    double *times = xmalloc((size_t)reps * sizeof *times);
    fill(x, n, 0, 1.0, 3);
    fill(y, n, 0, 1.0, 4);
    for (int r = -2; r < reps; ++r) {
        const double t0 = now_seconds();
        memcpy(r % 2 ? y : x, r % 2 ? x : y, n * sizeof *x);
        if (r >= 0) times[r] = now_seconds() - t0;
    }
    const double gbps = 2.0 * (double)n * sizeof(float) / median(times, reps) / 1e9;
    free(x);
    free(y);
    free(times);
    return gbps;
}

static void evict_caches(void) {
    long i;
#pragma omp parallel for simd schedule(static)
    for (i = 0; i < (long)EVICT_FLOATS; ++i) evict_buffer[i] = evict_buffer[i] * 0.5f + 1.0f;
}

static double bytes_per_param(koala_method method, double wd, size_t elem) {
    const double norm_pass = wd != 0.0 ? 2.0 : 1.0; /* g (and x) */
    if (method == KOALA_VANILLA) return (norm_pass + 3.0) * (double)elem;
    return (5.0 + norm_pass + 7.0) * (double)elem;
}

static bench_result run_config(koala_method method, koala_dtype dtype, double wd,
                               const size_t *sizes, size_t n_total, const bench_options *o) {
    const int is_double = dtype == KOALA_FLOAT64;
    const size_t elem = is_double ? 8 : 4;
    bench_result res = {method == KOALA_VANILLA ? "KOALA-V" : "KOALA-M",
                        is_double ? "float64" : "float32", wd, 0, 0,
                        bytes_per_param(method, wd, elem) * (double)n_total};

    /* One allocation each for parameters and gradients, carved per tensor
     * like a framework's flat parameter storage. */
    char *x_all = xmalloc(n_total * elem), *g_all = xmalloc(n_total * elem);
    fill(x_all, n_total, is_double, 0.1, 11);
    fill(g_all, n_total, is_double, 1e-3, 12);
    void *params[RESNET18_TENSORS];
    const void *grads[RESNET18_TENSORS];
    size_t offset = 0;
    for (int t = 0; t < RESNET18_TENSORS; ++t) {
        params[t] = x_all + offset * elem;
        grads[t] = g_all + offset * elem;
        offset += sizes[t];
    }

    koala_config cfg;
    koala_config_init(&cfg, method);
    cfg.weight_decay = wd;
    if (method == KOALA_VANILLA) cfg.sigma = 0.1; /* train.py's setting */
    koala_optimizer *opt = NULL;
    die_on(koala_create(&cfg, RESNET18_TENSORS, sizes, dtype, KOALA_HOST, &opt), "koala_create");

    double *times = xmalloc((size_t)o->steps * sizeof *times);
    /* Small positive losses keep every step a real update; the values do not
     * change the work done. */
    const double loss = 0.05, loss_var = 0.0030;
    for (int s = -o->warmup; s < o->steps; ++s) {
        if (!o->warm) evict_caches();
        const double t0 = now_seconds();
        die_on(koala_predict(opt, params, NULL), "koala_predict");
        const double t1 = now_seconds();
        if (!o->warm) evict_caches();
        const double t2 = now_seconds();
        die_on(koala_update(opt, loss, loss_var, params, grads, NULL), "koala_update");
        if (s >= 0) times[s] = (t1 - t0) + (now_seconds() - t2);
    }
    koala_destroy(opt);
    res.median_ms = 1e3 * median(times, o->steps); /* sorts: times[0] is the minimum */
    res.min_ms = 1e3 * times[0];
    free(times);
    free(x_all);
    free(g_all);
    return res;
}

static void usage(void) {
    fprintf(stderr,
            "usage: koala_cpu_bench [--steps N] [--warmup N] [--quick] [--warm]\n"
            "  --steps N   timed steps per configuration (default 40)\n"
            "  --warmup N  untimed steps first (default 5)\n"
            "  --quick     --steps 8 --warmup 2\n"
            "  --warm      do not evict the caches before predict and update (as if\n"
            "              nothing ran between the calls)\n"
            "Threads: OMP_NUM_THREADS (as for libkoala itself).\n");
}

int main(int argc, char **argv) {
    bench_options o = {40, 5, 0};
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc) o.steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) o.warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) o.steps = 8, o.warmup = 2;
        else if (!strcmp(argv[i], "--warm")) o.warm = 1;
        else {
            usage();
            return 2;
        }
    }
    if (o.steps < 1 || o.warmup < 0) {
        usage();
        return 2;
    }

    /* The layout, checked against the known totals of the model. */
    size_t sizes[RESNET18_TENSORS], n_total = 0;
    for (int t = 0; t < RESNET18_TENSORS; ++t) n_total += sizes[t] = layout_numel(&resnet18_cifar10[t]);
    if (RESNET18_TENSORS != RESNET18_EXPECTED_TENSORS || n_total != RESNET18_EXPECTED_PARAMS) {
        fprintf(stderr, "koala_cpu_bench: layout has %d tensors / %zu params, expected %d / %zu\n",
                RESNET18_TENSORS, n_total, RESNET18_EXPECTED_TENSORS, RESNET18_EXPECTED_PARAMS);
        return 1;
    }

    const char *env_threads = getenv("OMP_NUM_THREADS");
    printf("libkoala %u, CPU step benchmark\n", koala_version());
    printf("layout: CIFAR-10 ResNet-18, %d tensors, %zu parameters\n", RESNET18_TENSORS, n_total);
    printf("threads: %d (OMP_NUM_THREADS=%s)\n", omp_get_max_threads(),
           env_threads ? env_threads : "unset");
    printf("timing: median of %d steps after %d warm-up steps; step = predict + update\n",
           o.steps, o.warmup);
    printf("caches: %s\n\n", o.warm ? "kept warm between calls (--warm)"
                                     : "evicted before predict and before update (untimed)");
    evict_buffer = xmalloc((size_t)EVICT_FLOATS * sizeof *evict_buffer);
    fill(evict_buffer, EVICT_FLOATS, 0, 1.0, 5);
    fflush(stdout);

    const int stream_reps = 3 * o.steps > 20 ? 3 * o.steps : 20;
    double stream_best = 0.0;
    const double stream_bw = stream_gbps(n_total, stream_reps, &stream_best);
    const double copy_bw = memcpy_gbps(n_total, stream_reps);
    printf("reference bandwidth over %zu-float buffers:\n", n_total);
    printf("  stream y += s*x (2 reads + 1 write): %.1f GB/s median, %.1f GB/s best"
           "  <- the byte floor uses these\n",
           stream_bw, stream_best);
    printf("  memcpy (1 read + 1 write)          : %.1f GB/s\n\n", copy_bw);
    fflush(stdout);

    const koala_method methods[2] = {KOALA_VANILLA, KOALA_MOMENTUM};
    const koala_dtype dtypes[2] = {KOALA_FLOAT32, KOALA_FLOAT64};
    const double wds[2] = {5e-4, 0.0};
    bench_result results[8];
    int n_results = 0;
    for (int m = 0; m < 2; ++m)
        for (int d = 0; d < 2; ++d)
            for (int w = 0; w < 2; ++w) {
                printf("[%d/8] %s %s wd=%g ... ", n_results + 1,
                       methods[m] == KOALA_VANILLA ? "KOALA-V" : "KOALA-M",
                       dtypes[d] == KOALA_FLOAT32 ? "float32" : "float64", wds[w]);
                fflush(stdout);
                results[n_results] = run_config(methods[m], dtypes[d], wds[w], sizes, n_total, &o);
                printf("%.2f ms/step\n", results[n_results].median_ms);
                fflush(stdout);
                ++n_results;
            }

    printf("\n| method  | dtype   | wd     | B/param | ms/step (median) | min ms | GB/s  | floor ms | x floor | x floor (min) |\n");
    printf("|---------|---------|--------|---------|------------------|--------|-------|----------|---------|---------------|\n");
    for (int i = 0; i < n_results; ++i) {
        const bench_result *r = &results[i];
        const double gbps = r->bytes / (r->median_ms * 1e-3) / 1e9;
        const double floor_ms = 1e3 * r->bytes / (stream_bw * 1e9);
        const double best_floor_ms = 1e3 * r->bytes / (stream_best * 1e9);
        printf("| %-7s | %-7s | %-6g | %7.0f | %16.2f | %6.2f | %5.1f | %8.2f | %7.2f | %13.2f |\n",
               r->method, r->dtype, r->wd, r->bytes / (double)n_total, r->median_ms, r->min_ms,
               gbps, floor_ms, r->median_ms / floor_ms, r->min_ms / best_floor_ms);
    }
    printf("\nx floor = median step time / (bytes moved / median stream bandwidth); 1.00 is stream\n"
           "speed. x floor (min) = fastest step / (bytes / fastest stream): less sensitive to\n"
           "other processes on a shared machine.\n");
    free(evict_buffer);
    return 0;
}
