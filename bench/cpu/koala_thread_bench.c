/*
 * koala_thread_bench: one process of the thread-control benchmark
 * (bench/cpu/threads.sh starts 1, 2 or 3 of them at once on the same cores).
 *
 *   koala_thread_bench [--threads N] [--steps N] [--work-ms W] [--per-ms N]
 *   koala_thread_bench --calibrate      prints the work loop's iterations per ms
 *
 * A training loop in miniature on the CIFAR-10 ResNet-18 layout: KOALA-M
 * float32 with weight decay, and between koala_predict and koala_update W ms
 * of single-threaded arithmetic standing for the forward and backward pass.
 * It prints one line: the median time per step spent inside libkoala, the
 * median time of the "model work" (which a library whose idle threads spin
 * would slow down) and the median iteration time. --threads 0 is the
 * library's default (cfg.threads = 0).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "koala.h"
#include "resnet18_layout.h"

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

static volatile double work_sink;

/* About `ms` milliseconds of dependent floating-point work on this thread,
 * calibrated once. */
static long work_iterations_per_ms(void) {
    long n = 1 << 20;
    for (;;) {
        const double t0 = now_seconds();
        double a = 1.0;
        for (long i = 0; i < n; ++i) a = a * 1.0000001 + 1e-9;
        work_sink = a;
        const double ms = (now_seconds() - t0) * 1e3;
        if (ms > 20) return (long)((double)n / ms);
        n *= 2;
    }
}

static void work(long iterations) {
    double a = 1.0;
    for (long i = 0; i < iterations; ++i) a = a * 1.0000001 + 1e-9;
    work_sink = a;
}

int main(int argc, char **argv) {
    int threads = 0, steps = 30;
    double work_ms = 20.0;
    long per_ms = 0;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--calibrate")) {
            printf("%ld\n", work_iterations_per_ms());
            return 0;
        }
        if (!strcmp(argv[i], "--per-ms") && i + 1 < argc) per_ms = atol(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--work-ms") && i + 1 < argc) work_ms = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: koala_thread_bench [--threads N] [--steps N] [--work-ms W] [--per-ms N] | --calibrate\n");
            return 2;
        }
    }
    size_t sizes[RESNET18_TENSORS], n = 0;
    for (int t = 0; t < RESNET18_TENSORS; ++t) n += sizes[t] = layout_numel(&resnet18_cifar10[t]);
    float *x = malloc(n * sizeof *x), *g = malloc(n * sizeof *g);
    if (!x || !g) return 1;
    for (size_t i = 0; i < n; ++i) {
        x[i] = 0.01f * (float)((i * 7919) % 201 - 100);
        g[i] = 1e-4f * (float)((i * 104729) % 201 - 100);
    }
    void *params[RESNET18_TENSORS];
    const void *grads[RESNET18_TENSORS];
    for (size_t t = 0, off = 0; t < RESNET18_TENSORS; off += sizes[t++]) {
        params[t] = x + off;
        grads[t] = g + off;
    }
    koala_config cfg;
    koala_config_init(&cfg, KOALA_MOMENTUM);
    cfg.weight_decay = 5e-4;
    cfg.threads = threads;
    koala_optimizer *opt;
    if (koala_create(&cfg, RESNET18_TENSORS, sizes, KOALA_FLOAT32, KOALA_HOST, &opt) != KOALA_OK) {
        fprintf(stderr, "koala_create: %s\n", koala_last_error());
        return 1;
    }
    koala_info info = {0};
    info.struct_size = sizeof info;
    koala_get_info(opt, NULL, &info);
    if (per_ms <= 0) per_ms = work_iterations_per_ms();
    double *in_koala = malloc((size_t)steps * sizeof *in_koala);
    double *in_work = malloc((size_t)steps * sizeof *in_work);
    double *iteration = malloc((size_t)steps * sizeof *iteration);
    for (int s = -3; s < steps; ++s) {
        const double t0 = now_seconds();
        koala_predict(opt, params, NULL);
        const double t1 = now_seconds();
        work((long)(work_ms * (double)per_ms));
        const double t2 = now_seconds();
        if (koala_update(opt, 0.05, 0.003, params, grads, NULL) != KOALA_OK) {
            fprintf(stderr, "koala_update: %s\n", koala_last_error());
            return 1;
        }
        const double t3 = now_seconds();
        if (s < 0) continue;
        in_koala[s] = (t1 - t0) + (t3 - t2);
        in_work[s] = t2 - t1;
        iteration[s] = t3 - t0;
    }
    printf("threads %d: libkoala %.2f ms/step, model work %.2f ms (nominal %.1f), iteration %.2f ms\n",
           info.threads, 1e3 * median(in_koala, steps), 1e3 * median(in_work, steps), work_ms,
           1e3 * median(iteration, steps));
    koala_destroy(opt);
    return 0;
}
