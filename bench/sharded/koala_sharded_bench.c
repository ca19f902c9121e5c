/*
 * koala_sharded_bench: what sharding costs, in one process, on the CIFAR-10
 * ResNet-18 parameter layout (62 tensors, 11,173,962 float32 parameters).
 *
 *   koala_sharded_bench [--steps N] [--warmup N] [--threads T] [--quick] [--warm]
 *
 * For KOALA-V, KOALA-M and KOALA++ (weight decay 5e-4), the median and the
 * minimum time of one step (koala_predict + the update; the steps of the
 * four contenders are interleaved, each with its own parameters) of:
 *   plain     koala_create on the whole model, koala_update;
 *   1 shard   koala_create_sharded owning everything, koala_update with an
 *             all-reduce callback that only counts (calls, doubles): the
 *             sharded code path itself, and the communication it asks for;
 *   S shards  (S = 2, 4) S optimizers in this process, shard s owning
 *             elements [n s / S, n (s+1) / S) of every tensor (ZeRO style),
 *             through the two-phase form: koala_update_begin on every shard,
 *             the S partial-sums buffers added element-wise (what an
 *             all-reduce would deliver), koala_update_end on every shard.
 *             Reported: the total for all S shards (the same elements as
 *             plain; the ratio to plain is the overhead of cutting the
 *             model), and total / S, what each of S ranks would spend if
 *             each ran on cores of its own.
 * Every optimizer gets `--threads` threads (default 1: this is a 2-core
 * shared machine, and 1 thread shows the per-element cost best). Caches are
 * evicted (untimed) before predict and before the update, as the forward and
 * backward passes would (--warm: not).
 * It also prints the all-reduce per step of every method: calls (counted
 * in the callback, predict included) and bytes (koala_sums_size doubles x 8).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "koala.h"
#include "resnet18_layout.h"

enum { MAX_SHARDS = 4, EVICT_FLOATS = 32 << 20 }; /* 128 MiB */

typedef struct options {
    int steps, warmup, threads, warm;
} options;

static float *evict_buffer;

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
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) {
        fprintf(stderr, "koala_sharded_bench: cannot allocate %zu bytes\n", bytes);
        exit(1);
    }
    return p;
}

static void die_on(koala_status st, const char *what) {
    if (st != KOALA_OK) {
        fprintf(stderr, "koala_sharded_bench: %s failed: %s (%s)\n", what,
                koala_status_string(st), koala_last_error());
        exit(1);
    }
}

static void evict_caches(const options *o) {
    if (o->warm) return;
    for (size_t i = 0; i < (size_t)EVICT_FLOATS; ++i) evict_buffer[i] = evict_buffer[i] * 0.5f + 1.0f;
}

/* The model: one flat float32 allocation each for parameters and gradients,
 * carved per tensor like a framework's flat storage. */
typedef struct model {
    size_t sizes[RESNET18_TENSORS], offset[RESNET18_TENSORS], total;
    float *x, *g;
} model;

static model make_model(void) {
    model m;
    m.total = 0;
    for (int t = 0; t < RESNET18_TENSORS; ++t) {
        m.sizes[t] = layout_numel(&resnet18_cifar10[t]);
        m.offset[t] = m.total;
        m.total += m.sizes[t];
    }
    m.x = xmalloc(m.total * sizeof(float));
    m.g = xmalloc(m.total * sizeof(float));
    unsigned long long s = 12345;
    for (size_t i = 0; i < m.total; ++i) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        const double u = (double)(s >> 11) * (1.0 / 9007199254740992.0) - 0.5;
        m.x[i] = (float)(0.1 * u);
        m.g[i] = (float)(1e-3 * u);
    }
    return m;
}

/* One optimizer over the elements [n s / S, n (s+1) / S) of every tensor. */
typedef struct shard_run {
    koala_optimizer *opt;
    size_t n_local, sizes[RESNET18_TENSORS], global_index[RESNET18_TENSORS];
    void *params[RESNET18_TENSORS];
    const void *grads[RESNET18_TENSORS];
    double *sums;
    size_t sums_count;
} shard_run;

typedef struct counter {
    long calls;
    size_t doubles;
} counter;

static int counting_allreduce(double *buf, size_t count, void *stream, void *user) {
    (void)buf;
    (void)stream;
    counter *c = user;
    ++c->calls;
    c->doubles += count;
    return 0; /* one process: the buffer already holds the sum */
}

static koala_config config_of(koala_method method, const options *o) {
    koala_config cfg;
    koala_config_init(&cfg, method);
    cfg.weight_decay = 5e-4;
    cfg.threads = o->threads;
    if (method == KOALA_VANILLA) cfg.sigma = 0.1;
    return cfg;
}

static void make_shard(shard_run *r, koala_method method, const options *o, model *m, int s,
                       int n_shards, counter *count) {
    memset(r, 0, sizeof *r);
    for (int t = 0; t < RESNET18_TENSORS; ++t) {
        const size_t begin = m->sizes[t] * (size_t)s / (size_t)n_shards;
        const size_t end = m->sizes[t] * (size_t)(s + 1) / (size_t)n_shards;
        if (end == begin) continue;
        r->sizes[r->n_local] = end - begin;
        r->global_index[r->n_local] = (size_t)t;
        r->params[r->n_local] = m->x + m->offset[t] + begin;
        r->grads[r->n_local] = m->g + m->offset[t] + begin;
        ++r->n_local;
    }
    const koala_config cfg = config_of(method, o);
    koala_shard shard;
    memset(&shard, 0, sizeof shard);
    shard.struct_size = sizeof shard;
    shard.n_global = RESNET18_TENSORS;
    shard.global_index = r->global_index;
    shard.global_elements = m->total;
    shard.allreduce = count ? counting_allreduce : NULL;
    shard.user = count;
    die_on(koala_create_sharded(&cfg, r->n_local, r->sizes, &shard, KOALA_FLOAT32, KOALA_HOST,
                                &r->opt),
           "koala_create_sharded");
    die_on(koala_sums_size(r->opt, &r->sums_count), "koala_sums_size");
    r->sums = xmalloc(r->sums_count * sizeof(double));
}

static const double loss = 0.05, loss_var = 0.0030;

/* The four contenders of one method. Each has its own copy of the
 * parameters (the gradients are shared, read-only), and their steps are
 * interleaved so that a change of load on the machine hits them alike. */
enum { PLAIN, ONE_SHARD, TWO_SHARDS, FOUR_SHARDS, N_CONTENDERS };
static const int contender_shards[N_CONTENDERS] = {0, 1, 2, 4};

typedef struct contender {
    model m;                  /* x: its own copy; g: the shared gradients */
    koala_optimizer *plain;   /* PLAIN */
    shard_run shards[MAX_SHARDS];
    int n_shards;             /* 0 for PLAIN */
    counter count;            /* ONE_SHARD's callback */
    double *total;            /* the summed buffer (two-phase) */
    double *times, *sum_times;
    long predict_calls;
} contender;

static void contender_init(contender *c, int kind, koala_method method, const options *o,
                           const model *base) {
    memset(c, 0, sizeof *c);
    c->m = *base;
    c->m.x = xmalloc(base->total * sizeof(float));
    memcpy(c->m.x, base->x, base->total * sizeof(float));
    c->n_shards = contender_shards[kind];
    c->times = xmalloc((size_t)o->steps * sizeof(double));
    c->sum_times = xmalloc((size_t)o->steps * sizeof(double));
    if (kind == PLAIN) {
        const koala_config cfg = config_of(method, o);
        die_on(koala_create(&cfg, RESNET18_TENSORS, c->m.sizes, KOALA_FLOAT32, KOALA_HOST,
                            &c->plain),
               "koala_create");
        return;
    }
    for (int s = 0; s < c->n_shards; ++s)
        make_shard(&c->shards[s], method, o, &c->m, s, c->n_shards,
                   kind == ONE_SHARD ? &c->count : NULL);
    c->total = xmalloc(c->shards[0].sums_count * sizeof(double));
}

static void contender_free(contender *c) {
    koala_destroy(c->plain);
    for (int s = 0; s < c->n_shards; ++s) {
        free(c->shards[s].sums);
        koala_destroy(c->shards[s].opt);
    }
    free(c->total);
    free(c->times);
    free(c->sum_times);
    free(c->m.x);
}

/* One timed step; index < 0 = warm-up. */
static void contender_step(contender *c, int kind, const options *o, int index) {
    double spent = 0.0, sum_spent = 0.0, t0;
    evict_caches(o);
    if (kind == PLAIN) {
        void *params[RESNET18_TENSORS];
        const void *grads[RESNET18_TENSORS];
        for (int t = 0; t < RESNET18_TENSORS; ++t) {
            params[t] = c->m.x + c->m.offset[t];
            grads[t] = c->m.g + c->m.offset[t];
        }
        t0 = now_seconds();
        die_on(koala_predict(c->plain, params, NULL), "koala_predict");
        spent += now_seconds() - t0;
        evict_caches(o);
        t0 = now_seconds();
        die_on(koala_update(c->plain, loss, loss_var, params, grads, NULL), "koala_update");
        spent += now_seconds() - t0;
    } else if (kind == ONE_SHARD) {
        shard_run *r = &c->shards[0];
        const long before = c->count.calls;
        t0 = now_seconds();
        die_on(koala_predict(r->opt, r->params, NULL), "koala_predict");
        spent += now_seconds() - t0;
        c->predict_calls += c->count.calls - before;
        evict_caches(o);
        t0 = now_seconds();
        die_on(koala_update(r->opt, loss, loss_var, r->params, r->grads, NULL), "koala_update");
        spent += now_seconds() - t0;
    } else {
        const size_t count = c->shards[0].sums_count;
        t0 = now_seconds();
        for (int s = 0; s < c->n_shards; ++s)
            die_on(koala_predict(c->shards[s].opt, c->shards[s].params, NULL), "koala_predict");
        spent += now_seconds() - t0;
        evict_caches(o);
        t0 = now_seconds();
        for (int s = 0; s < c->n_shards; ++s)
            die_on(koala_update_begin(c->shards[s].opt, c->shards[s].params, c->shards[s].grads,
                                      c->shards[s].sums, NULL),
                   "koala_update_begin");
        const double t_sum = now_seconds();
        memset(c->total, 0, count * sizeof(double));
        for (int s = 0; s < c->n_shards; ++s)
            for (size_t k = 0; k < count; ++k) c->total[k] += c->shards[s].sums[k];
        sum_spent = now_seconds() - t_sum;
        for (int s = 0; s < c->n_shards; ++s)
            die_on(koala_update_end(c->shards[s].opt, loss, loss_var, c->shards[s].params,
                                    c->shards[s].grads, c->total, NULL),
                   "koala_update_end");
        spent += now_seconds() - t0;
    }
    if (index >= 0) {
        c->times[index] = spent;
        c->sum_times[index] = sum_spent;
    }
}

static double min_of(const double *v, int n) {
    double m = v[0];
    for (int i = 1; i < n; ++i)
        if (v[i] < m) m = v[i];
    return m;
}

int main(int argc, char **argv) {
    options o = {20, 3, 1, 0};
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc) o.steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) o.warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) o.threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) o.steps = 3, o.warmup = 1;
        else if (!strcmp(argv[i], "--warm")) o.warm = 1;
        else {
            fprintf(stderr, "usage: koala_sharded_bench [--steps N] [--warmup N] [--threads T] "
                            "[--quick] [--warm]\n");
            return 2;
        }
    }
    if (o.steps < 1 || o.warmup < 0 || o.threads < 1) {
        fprintf(stderr, "koala_sharded_bench: --steps >= 1, --warmup >= 0, --threads >= 1\n");
        return 2;
    }
    model m = make_model();
    if (RESNET18_TENSORS != RESNET18_EXPECTED_TENSORS || m.total != RESNET18_EXPECTED_PARAMS) {
        fprintf(stderr, "koala_sharded_bench: the ResNet-18 layout has %d tensors, %zu params\n",
                RESNET18_TENSORS, m.total);
        return 1;
    }
    evict_buffer = xmalloc((size_t)EVICT_FLOATS * sizeof(float));
    memset(evict_buffer, 0, (size_t)EVICT_FLOATS * sizeof(float));
    printf("koala_sharded_bench: libkoala %u, ResNet-18 layout (%d tensors, %zu float32 "
           "params), weight decay 5e-4, %d thread(s) per optimizer, median of %d steps "
           "after %d warm-up, caches %s\n\n",
           koala_version(), RESNET18_TENSORS, m.total, o.threads, o.steps, o.warmup,
           o.warm ? "warm" : "evicted before predict and update");

    const struct {
        koala_method method;
        const char *name;
    } methods[] = {{KOALA_VANILLA, "KOALA-V"}, {KOALA_MOMENTUM, "KOALA-M"},
                   {KOALA_PLUSPLUS, "KOALA++"}};
    printf("Per step: median ms / min ms. Ratios to plain: of the medians / of the minima "
           "(on a loaded machine the minima are the steadier). \"per rank\": median total / "
           "shards, what each rank would spend on cores of its own.\n\n");
    printf("| method  | plain         | 1 shard (callback)          | 2 shards (two-phase), "
           "per rank      | 4 shards (two-phase), per rank      | sum of 4 buffers |\n");
    printf("|---------|---------------|-----------------------------|-----------------------"
           "--------------|-------------------------------------|------------------|\n");
    double calls[3], bytes[3];
    long predict_calls[3];
    for (int k = 0; k < 3; ++k) {
        static contender c[N_CONTENDERS];
        for (int kind = 0; kind < N_CONTENDERS; ++kind)
            contender_init(&c[kind], kind, methods[k].method, &o, &m);
        for (int step = -o.warmup; step < o.steps; ++step)
            for (int kind = 0; kind < N_CONTENDERS; ++kind) contender_step(&c[kind], kind, &o, step);
        double med[N_CONTENDERS], low[N_CONTENDERS];
        for (int kind = 0; kind < N_CONTENDERS; ++kind) {
            low[kind] = 1e3 * min_of(c[kind].times, o.steps);
            med[kind] = 1e3 * median(c[kind].times, o.steps);
        }
        const double sum4 = 1e3 * median(c[FOUR_SHARDS].sum_times, o.steps);
        const int total_steps = o.warmup + o.steps;
        calls[k] = (double)c[ONE_SHARD].count.calls / total_steps;
        bytes[k] = 8.0 * (double)c[ONE_SHARD].count.doubles / total_steps;
        predict_calls[k] = c[ONE_SHARD].predict_calls;
        printf("| %-7s | %5.2f / %5.2f | %5.2f / %5.2f x%4.2f/%4.2f ", methods[k].name,
               med[PLAIN], low[PLAIN], med[ONE_SHARD], low[ONE_SHARD],
               med[ONE_SHARD] / med[PLAIN], low[ONE_SHARD] / low[PLAIN]);
        for (int kind = TWO_SHARDS; kind <= FOUR_SHARDS; ++kind)
            printf("| %5.2f / %5.2f x%4.2f/%4.2f, %5.2f     ", med[kind], low[kind],
                   med[kind] / med[PLAIN], low[kind] / low[PLAIN],
                   med[kind] / contender_shards[kind]);
        printf("| %9.4f ms     |\n", sum4);
        fflush(stdout);
        for (int kind = 0; kind < N_CONTENDERS; ++kind) contender_free(&c[kind]);
    }
    printf("\nall-reduce per step (koala_update with the callback; predict included):\n");
    printf("| method  | calls per step | calls in predict | bytes per step | doubles |\n");
    printf("|---------|----------------|------------------|----------------|---------|\n");
    for (int k = 0; k < 3; ++k)
        printf("| %-7s | %14.2f | %16ld | %14.0f | %7.0f |\n", methods[k].name, calls[k],
               predict_calls[k], bytes[k], bytes[k] / 8);
    free(m.x);
    free(m.g);
    free(evict_buffer);
    return 0;
}
