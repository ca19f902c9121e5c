/*
 * test_sharded.c - koala_create_sharded, koala_update with an all-reduce
 * callback, and the two-phase koala_update_begin / koala_update_end, with N
 * = 1..4 processes simulated in this one process.
 *
 * A scenario draws a random global layout and cuts every global tensor into
 * 1..N contiguous pieces placed on distinct random processes (so processes
 * hold none of some tensors; one scenario leaves a process with no tensor at
 * all, n_tensors = 0), each process's pieces in a random local order. One
 * unsharded optimizer (koala_create) runs the whole tensors next to them on
 * the same data, with per-tensor lr multipliers and weight decays set (per
 * global tensor). Every step, the pieces are compared with the whole:
 *   - the union of the pieces equals the whole tensors within 1e-12 (f64;
 *     the only difference is the order in which the per-tensor sums add up),
 *   - koala_get_info is bit-identical on every process (the filter runs on
 *     each from the same summed buffer) and equals the whole's to 1e-12,
 *   - the all-reduce is called exactly once per update and never in
 *     predict (KOALA-M's predict-time sum rides with the next update).
 * The callback form runs each process in its own thread with a barrier-based
 * all-reduce; the two-phase form runs the processes one after the other and
 * the test sums their buffers. Both add the processes' buffers in process
 * order, so they must agree bit for bit: the checkpoint test continues a
 * callback-form run from each process's checkpoint in the two-phase form.
 */
#define _POSIX_C_SOURCE 200809L /* pthread barriers under -std=c99 */
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

#include "harness.h"

enum { MAX_PROCS = 4 };

/* ---- the simulated processes ---------------------------------------------- */

struct group;

typedef struct proc {
    struct group *group;
    int rank;
    size_t n;                 /* local tensors (pieces) */
    size_t *sizes, *gidx, *offset; /* piece i = elements [offset, offset + sizes) of gidx */
    koala_optimizer *opt;
    void **params, **grads;
    const void **grad_args;
    size_t calls;             /* all-reduce calls */
    koala_status status;      /* of the last threaded call */
} proc;

typedef struct group {
    int n_procs;
    proc p[MAX_PROCS];
    const test_layout *global;
    koala_dtype dtype;
    pthread_barrier_t barrier;
    double *bufs[MAX_PROCS];
    size_t counts[MAX_PROCS];
    int fail_rc;              /* nonzero: the all-reduce returns this (after the exchange) */
    /* the current step's inputs for the threads */
    double loss, loss_var;
} group;

/* In-place sum over the group, in rank order, the same bits on every rank. */
static int barrier_allreduce(double *buf, size_t count, void *stream, void *user) {
    proc *me = user;
    group *g = me->group;
    if (stream != NULL) return 99;
    me->calls++;
    g->bufs[me->rank] = buf;
    g->counts[me->rank] = count;
    pthread_barrier_wait(&g->barrier);
    int rc = g->fail_rc;
    for (int r = 0; r < g->n_procs; ++r)
        if (g->counts[r] != count) rc = 98;
    double *sum = malloc((count ? count : 1) * sizeof *sum);
    if (!sum) abort();
    for (size_t e = 0; e < count && rc == 0; ++e) {
        double s = 0.0;
        for (int r = 0; r < g->n_procs; ++r) s += g->bufs[r][e];
        sum[e] = s;
    }
    pthread_barrier_wait(&g->barrier); /* everyone has read every buffer */
    if (rc == 0) memcpy(buf, sum, count * sizeof *sum);
    free(sum);
    return rc;
}

/* Cuts the global tensors into pieces over n_procs processes. empty_last:
 * the last process gets nothing. */
static void group_layout(group *g, const test_layout *global, int n_procs, int empty_last,
                         uint64_t seed) {
    memset(g, 0, sizeof *g);
    g->n_procs = n_procs;
    g->global = global;
    test_rng rng;
    rng_seed(&rng, seed * 7919 + 13);
    const int holders = empty_last && n_procs > 1 ? n_procs - 1 : n_procs;
    for (int r = 0; r < n_procs; ++r) {
        proc *p = &g->p[r];
        p->group = g;
        p->rank = r;
        p->sizes = malloc((global->n + 1) * sizeof *p->sizes);
        p->gidx = malloc((global->n + 1) * sizeof *p->gidx);
        p->offset = malloc((global->n + 1) * sizeof *p->offset);
        if (!p->sizes || !p->gidx || !p->offset) abort();
    }
    for (size_t j = 0; j < global->n; ++j) {
        const size_t size = global->sizes[j];
        size_t k = 1 + (size_t)(rng_u64(&rng) % (uint64_t)holders);
        if (k > size) k = size;
        int order[MAX_PROCS];
        for (int r = 0; r < holders; ++r) order[r] = r;
        for (int r = holders - 1; r > 0; --r) {
            const int s = (int)(rng_u64(&rng) % (uint64_t)(r + 1));
            const int t = order[r];
            order[r] = order[s];
            order[s] = t;
        }
        /* k - 1 distinct cuts in 1..size-1, sorted */
        size_t cuts[MAX_PROCS + 1];
        cuts[0] = 0;
        size_t n_cuts = 1;
        while (n_cuts < k) {
            const size_t c = 1 + (size_t)(rng_u64(&rng) % (uint64_t)(size - 1));
            int dup = 0;
            for (size_t q = 1; q < n_cuts; ++q) dup |= cuts[q] == c;
            if (!dup) cuts[n_cuts++] = c;
        }
        for (size_t a = 1; a < n_cuts; ++a)
            for (size_t b = a + 1; b < n_cuts; ++b)
                if (cuts[b] < cuts[a]) {
                    const size_t t = cuts[a];
                    cuts[a] = cuts[b];
                    cuts[b] = t;
                }
        cuts[k] = size;
        for (size_t q = 0; q < k; ++q) {
            proc *p = &g->p[order[q]];
            p->gidx[p->n] = j;
            p->offset[p->n] = cuts[q];
            p->sizes[p->n] = cuts[q + 1] - cuts[q];
            p->n++;
        }
    }
    /* a random local order of each process's pieces */
    for (int r = 0; r < n_procs; ++r) {
        proc *p = &g->p[r];
        for (size_t i = p->n; i > 1; --i) {
            const size_t s = (size_t)(rng_u64(&rng) % i);
#define SWAP(a) do { const size_t t = p->a[i - 1]; p->a[i - 1] = p->a[s]; p->a[s] = t; } while (0)
            SWAP(sizes);
            SWAP(gidx);
            SWAP(offset);
#undef SWAP
        }
    }
}

/* The shard description of process r; global_elements as given. */
static koala_shard shard_of(proc *p, uint64_t global_elements, size_t n_global) {
    koala_shard s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    s.n_global = n_global;
    s.global_index = p->gidx;
    s.global_elements = global_elements;
    s.allreduce = barrier_allreduce;
    s.user = p;
    return s;
}

static koala_status proc_create(proc *p, const koala_config *cfg, koala_dtype dtype,
                                uint64_t global_elements, size_t n_global) {
    const koala_shard s = shard_of(p, global_elements, n_global);
    return koala_create_sharded(cfg, p->n, p->n ? p->sizes : NULL, &s, dtype, KOALA_HOST,
                                &p->opt);
}

/* Creates every process's optimizer and buffers, the pieces' parameters
 * copied from `whole`. */
static void group_create(group *g, const koala_config *cfg, koala_dtype dtype,
                         void *const *whole) {
    g->dtype = dtype;
    const size_t eb = dtype_bytes(dtype);
    for (int r = 0; r < g->n_procs; ++r) {
        proc *p = &g->p[r];
        const koala_status st = proc_create(p, cfg, dtype, g->global->total, g->global->n);
        if (st != KOALA_OK) fail_msg("rank %d: koala_create_sharded: %s", r, koala_last_error());
        p->params = p->n ? malloc(p->n * sizeof *p->params) : NULL;
        p->grads = malloc((p->n + 1) * sizeof *p->grads);
        p->grad_args = malloc((p->n + 1) * sizeof *p->grad_args);
        for (size_t i = 0; i < p->n; ++i) {
            p->params[i] = malloc(p->sizes[i] * eb);
            p->grads[i] = malloc(p->sizes[i] * eb);
            memcpy(p->params[i], (char *)whole[p->gidx[i]] + p->offset[i] * eb, p->sizes[i] * eb);
        }
    }
}

static void group_free(group *g) {
    for (int r = 0; r < g->n_procs; ++r) {
        proc *p = &g->p[r];
        koala_destroy(p->opt);
        for (size_t i = 0; i < p->n; ++i) {
            if (p->params) free(p->params[i]);
            if (p->grads) free(p->grads[i]);
        }
        free(p->params);
        free(p->grads);
        free(p->grad_args);
        free(p->sizes);
        free(p->gidx);
        free(p->offset);
    }
}

/* The pieces of this step's (already dtype-rounded) gradients. */
static void group_load_grads(group *g, void *const *whole_grads, const void *const *whole_args) {
    const size_t eb = dtype_bytes(g->dtype);
    for (int r = 0; r < g->n_procs; ++r) {
        proc *p = &g->p[r];
        for (size_t i = 0; i < p->n; ++i) {
            memcpy(p->grads[i], (const char *)whole_grads[p->gidx[i]] + p->offset[i] * eb,
                   p->sizes[i] * eb);
            p->grad_args[i] = whole_args[p->gidx[i]] ? p->grads[i] : NULL;
        }
    }
}

static void group_predict(group *g) {
    for (int r = 0; r < g->n_procs; ++r) {
        const koala_status st = koala_predict(g->p[r].opt, g->p[r].params, NULL);
        if (st != KOALA_OK) fail_msg("rank %d: koala_predict: %s", r, koala_last_error());
    }
}

static void *update_thread(void *arg) {
    proc *p = arg;
    p->status = koala_update(p->opt, p->group->loss, p->group->loss_var, p->params,
                             p->grad_args, NULL);
    return NULL;
}

/* koala_update on every process at once, each in its own thread. Returns
 * the statuses in p[r].status. */
static void group_update_threads(group *g, double loss, double loss_var) {
    g->loss = loss;
    g->loss_var = loss_var;
    pthread_barrier_init(&g->barrier, NULL, (unsigned)g->n_procs);
    pthread_t th[MAX_PROCS];
    for (int r = 0; r < g->n_procs; ++r)
        if (pthread_create(&th[r], NULL, update_thread, &g->p[r]) != 0) abort();
    for (int r = 0; r < g->n_procs; ++r) pthread_join(th[r], NULL);
    pthread_barrier_destroy(&g->barrier);
}

/* The two-phase form, one process after the other; the test sums. */
static koala_status group_update_two_phase(group *g, double loss, double loss_var) {
    size_t count = 0;
    assert_int_equal(koala_sums_size(g->p[0].opt, &count), KOALA_OK);
    double *bufs[MAX_PROCS];
    for (int r = 0; r < g->n_procs; ++r) {
        size_t c = 0;
        assert_int_equal(koala_sums_size(g->p[r].opt, &c), KOALA_OK);
        assert_int_equal(c, count);
        bufs[r] = malloc(count * sizeof(double));
        const koala_status st =
            koala_update_begin(g->p[r].opt, g->p[r].params, g->p[r].grad_args, bufs[r], NULL);
        if (st != KOALA_OK) fail_msg("rank %d: koala_update_begin: %s", r, koala_last_error());
    }
    double *sum = malloc(count * sizeof *sum);
    for (size_t e = 0; e < count; ++e) {
        double s = 0.0;
        for (int r = 0; r < g->n_procs; ++r) s += bufs[r][e];
        sum[e] = s;
    }
    koala_status first = KOALA_OK;
    for (int r = 0; r < g->n_procs; ++r) {
        g->p[r].status = koala_update_end(g->p[r].opt, loss, loss_var, g->p[r].params,
                                          g->p[r].grad_args, sum, NULL);
        if (r == 0) first = g->p[r].status;
        free(bufs[r]);
    }
    free(sum);
    return first;
}

static koala_info info_of(const koala_optimizer *opt) {
    koala_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (koala_get_info(opt, NULL, &info) != KOALA_OK) fail_msg("koala_get_info: %s", koala_last_error());
    return info;
}

/* The filter fields of two infos, bit for bit. */
static int same_filter(const koala_info *a, const koala_info *b) {
    return a->steps == b->steps && a->phase == b->phase &&
           memcmp(&a->sigma, &b->sigma, sizeof a->sigma) == 0 &&
           memcmp(&a->p00, &b->p00, sizeof a->p00) == 0 &&
           memcmp(&a->p01, &b->p01, sizeof a->p01) == 0 &&
           memcmp(&a->p11, &b->p11, sizeof a->p11) == 0 &&
           memcmp(&a->r, &b->r, sizeof a->r) == 0 && memcmp(&a->qw, &b->qw, sizeof a->qw) == 0;
}

static double rel(double a, double b) {
    const double d = fabs(a - b), s = fabs(b) > 1e-300 ? fabs(b) : 1.0;
    return d / s;
}

/* max over global tensors of |pieces - whole| / max(|whole|, |whole_0|). */
static double pieces_error(const group *g, void *const *whole, const double *start_norm) {
    const test_layout *l = g->global;
    double *diff = calloc(l->n, sizeof *diff);
    for (int r = 0; r < g->n_procs; ++r) {
        const proc *p = &g->p[r];
        for (size_t i = 0; i < p->n; ++i)
            for (size_t e = 0; e < p->sizes[i]; ++e) {
                const double d = buffer_get(p->params[i], e, g->dtype) -
                                 buffer_get(whole[p->gidx[i]], p->offset[i] + e, g->dtype);
                diff[p->gidx[i]] += d * d;
            }
    }
    double worst = 0.0;
    for (size_t j = 0; j < l->n; ++j) {
        double n2 = 0.0;
        for (size_t e = 0; e < l->sizes[j]; ++e) {
            const double v = buffer_get(whole[j], e, g->dtype);
            n2 += v * v;
        }
        double scale = sqrt(n2) > start_norm[j] ? sqrt(n2) : start_norm[j];
        const double err = scale > 0 ? sqrt(diff[j]) / scale : sqrt(diff[j]);
        if (!(err <= worst)) worst = err;
    }
    free(diff);
    return worst;
}

/* ---- the scenario ------------------------------------------------------------ */

typedef struct scenario {
    const char *name;
    koala_method method;
    koala_dtype dtype;
    int n_procs;
    int empty_last;    /* the last process holds no tensor */
    int two_phase;     /* 0: callback form in threads, 1: koala_update_begin/end */
    unsigned steps;
    uint64_t seed;
    double weight_decay;
    double tolerance;
} scenario;

static void check_group(const scenario *s, const group *g, const test_pair *whole,
                        const char *when, unsigned k, double *worst) {
    const double e = pieces_error(g, whole->params, whole->start_norm);
    if (!(e <= s->tolerance)) fail_msg("%s: %s %u: pieces differ from the whole by %g", s->name, when, k, e);
    if (e > *worst) *worst = e;
}

static void check_infos(const scenario *s, const group *g, const test_pair *whole, unsigned k,
                        double *worst) {
    const koala_info w = info_of(whole->opt);
    const koala_info i0 = info_of(g->p[0].opt);
    for (int r = 1; r < g->n_procs; ++r) {
        const koala_info ir = info_of(g->p[r].opt);
        if (!same_filter(&i0, &ir))
            fail_msg("%s: update %u: rank %d's filter scalars differ from rank 0's", s->name, k, r);
    }
    assert_int_equal(i0.steps, w.steps);
    const double e = fmax(fmax(rel(i0.sigma, w.sigma), rel(i0.r, w.r)),
                          fmax(fmax(rel(i0.p00, w.p00), rel(i0.p01, w.p01)),
                               fmax(rel(i0.p11, w.p11), rel(i0.qw, w.qw))));
    if (!(e <= s->tolerance)) fail_msg("%s: update %u: filter scalars differ from the whole's by %g", s->name, k, e);
    if (e > *worst) *worst = e;
}

/* Steps from..to-1 of the scenario's data on the group (and the whole, if
 * given), with the scenario's checks. */
static void run_steps(const scenario *s, group *g, test_pair *whole, test_step *step,
                      unsigned from, unsigned to, int two_phase, double *worst_p,
                      double *worst_i) {
    const test_layout *l = g->global;
    for (unsigned k = from; k < to; ++k) {
        size_t calls[MAX_PROCS];
        for (int r = 0; r < g->n_procs; ++r) calls[r] = g->p[r].calls;
        group_predict(g);
        if (whole) assert_int_equal(koala_predict(whole->opt, whole->params, NULL), KOALA_OK);
        for (int r = 0; r < g->n_procs; ++r)
            if (g->p[r].calls != calls[r]) fail_msg("%s: predict %u called the all-reduce", s->name, k);
        if (whole && s->method == KOALA_MOMENTUM) check_group(s, g, whole, "predict", k, worst_p);

        /* NULL on some steps (the same global tensors on every process),
         * tiny and zero gradients too, and every tensor skipped on one. */
        step_fill(step, l, s->seed, k, 20, k == 5);
        if (whole) {
            pair_load_grads(whole, step);
        } else {
            /* no whole: a scratch pair-like rounding of the gradients */
            void **gb = buffers_alloc(l, g->dtype);
            const void **ga = malloc(l->n * sizeof *ga);
            for (size_t j = 0; j < l->n; ++j) {
                for (size_t e = 0; e < l->sizes[j]; ++e) buffer_set(gb[j], e, g->dtype, step->grad[j][e]);
                ga[j] = step->kind[j] == GRAD_NULL ? NULL : gb[j];
            }
            group_load_grads(g, gb, ga);
            buffers_free(gb, l);
            free(ga);
        }
        if (whole) group_load_grads(g, whole->grads, whole->grad_args);
        if (two_phase) {
            group_update_two_phase(g, step->loss, step->loss_var);
        } else {
            group_update_threads(g, step->loss, step->loss_var);
        }
        for (int r = 0; r < g->n_procs; ++r) {
            if (g->p[r].status != KOALA_OK)
                fail_msg("%s: update %u rank %d: %s", s->name, k, r, koala_last_error());
            const size_t want = calls[r] + (two_phase ? 0 : 1);
            if (g->p[r].calls != want)
                fail_msg("%s: update %u rank %d: %zu all-reduce calls, expected %zu", s->name, k,
                         r, g->p[r].calls - calls[r], want - calls[r]);
        }
        if (whole) {
            assert_int_equal(koala_update(whole->opt, step->loss, step->loss_var, whole->params,
                                          whole->grad_args, NULL),
                             KOALA_OK);
            check_group(s, g, whole, "update", k, worst_p);
            check_infos(s, g, whole, k, worst_i);
        }
    }
}

static unsigned char *checkpoint_of(const koala_optimizer *opt, size_t *size) {
    return save_state(opt, size);
}

static void run_scenario(void **state) {
    const scenario *s = *state;
    koala_config cfg;
    koala_config_init(&cfg, s->method);
    cfg.weight_decay = s->weight_decay;
    test_layout layout = layout_random(s->seed, 12, 1);
    test_pair whole;
    assert_int_equal(pair_init(&whole, &cfg, &layout, s->dtype, s->seed, 1), KOALA_OK);
    group g;
    group_layout(&g, &layout, s->n_procs, s->empty_last, s->seed);
    if (s->empty_last) assert_int_equal(g.p[s->n_procs - 1].n, 0);
    group_create(&g, &cfg, s->dtype, whole.params);
    /* Per-tensor lr multipliers and weight decays (one per GLOBAL tensor,
     * the same on every process), from the first step on. */
    double *tlr = malloc(layout.n * sizeof *tlr), *twd = malloc(layout.n * sizeof *twd);
    test_rng hr;
    rng_seed(&hr, s->seed + 1);
    for (size_t j = 0; j < layout.n; ++j) {
        tlr[j] = rng_range(&hr, 0.2, 1.5);
        twd[j] = rng_range(&hr, 0.0, 2.0 * s->weight_decay);
    }
    assert_int_equal(koala_set_tensor_lr(whole.opt, tlr, NULL), KOALA_OK);
    assert_int_equal(koala_set_tensor_weight_decay(whole.opt, twd, NULL), KOALA_OK);
    for (int r = 0; r < g.n_procs; ++r) {
        assert_int_equal(koala_set_tensor_lr(g.p[r].opt, tlr, NULL), KOALA_OK);
        assert_int_equal(koala_set_tensor_weight_decay(g.p[r].opt, twd, NULL), KOALA_OK);
    }
    free(tlr);
    free(twd);
    test_step step;
    step_alloc(&step, &layout);

    double worst_p = 0.0, worst_i = 0.0;
    const unsigned save_at = s->steps / 2;
    run_steps(s, &g, &whole, &step, 0, save_at, s->two_phase, &worst_p, &worst_i);

    /* every process saves its checkpoint and parameters */
    unsigned char *ckpt[MAX_PROCS];
    size_t ckpt_size[MAX_PROCS];
    void **saved_params[MAX_PROCS];
    for (int r = 0; r < g.n_procs; ++r) {
        ckpt[r] = checkpoint_of(g.p[r].opt, &ckpt_size[r]);
        saved_params[r] = NULL;
        if (g.p[r].n) {
            test_layout pl = layout_make(g.p[r].n, g.p[r].sizes);
            saved_params[r] = buffers_alloc(&pl, s->dtype);
            buffers_copy(saved_params[r], g.p[r].params, &pl, s->dtype);
            layout_free(&pl);
        }
    }
    run_steps(s, &g, &whole, &step, save_at, s->steps, s->two_phase, &worst_p, &worst_i);

    /* A fresh group of the same layout loads the checkpoints and repeats the
     * second half in the OTHER form: it must end with the same bits. */
    group g2;
    group_layout(&g2, &layout, s->n_procs, s->empty_last, s->seed);
    group_create(&g2, &cfg, s->dtype, whole.params);
    for (int r = 0; r < g2.n_procs; ++r) {
        if (koala_state_load(g2.p[r].opt, ckpt[r], ckpt_size[r], NULL) != KOALA_OK)
            fail_msg("%s: rank %d: koala_state_load: %s", s->name, r, koala_last_error());
        if (g2.p[r].n) {
            test_layout pl = layout_make(g2.p[r].n, g2.p[r].sizes);
            buffers_copy(g2.p[r].params, saved_params[r], &pl, s->dtype);
            buffers_free(saved_params[r], &pl);
            layout_free(&pl);
        }
    }
    run_steps(s, &g2, NULL, &step, save_at, s->steps, !s->two_phase, NULL, NULL);
    for (int r = 0; r < g.n_procs; ++r) {
        const koala_info a = info_of(g.p[r].opt), b = info_of(g2.p[r].opt);
        if (!same_filter(&a, &b)) fail_msg("%s: rank %d: the continued run's filter differs", s->name, r);
        if (g.p[r].n) {
            test_layout pl = layout_make(g.p[r].n, g.p[r].sizes);
            if (!buffers_equal(g.p[r].params, g2.p[r].params, &pl, s->dtype))
                fail_msg("%s: rank %d: the continued run's parameters differ", s->name, r);
            layout_free(&pl);
        }
        size_t n1, n2;
        unsigned char *c1 = checkpoint_of(g.p[r].opt, &n1), *c2 = checkpoint_of(g2.p[r].opt, &n2);
        if (n1 != n2 || memcmp(c1, c2, n1) != 0)
            fail_msg("%s: rank %d: the continued run's checkpoint differs", s->name, r);
        free(c1);
        free(c2);
        free(ckpt[r]);
    }
    printf("# %s: %zu global tensors, %zu elements, %d processes (sizes:", s->name, layout.n,
           layout.total, s->n_procs);
    for (int r = 0; r < g.n_procs; ++r) printf(" %zu", g.p[r].n);
    printf(" pieces), %u steps: pieces vs whole %.3g, filter %.3g\n", s->steps, worst_p, worst_i);

    group_free(&g2);
    group_free(&g);
    step_free(&step, &layout);
    pair_free(&whole);
    layout_free(&layout);
}

/* ---- layouts that do not fit ---------------------------------------------- */

/* A checkpoint of one shard layout loaded into an optimizer of another:
 * BAD_STATE, and the target unchanged. */
static void test_checkpoint_other_layout(void **state) {
    (void)state;
    for (int m = KOALA_VANILLA; m <= KOALA_PLUSPLUS; ++m) {
        koala_config cfg;
        koala_config_init(&cfg, (koala_method)m);
        const size_t sizes[] = {5, 3};
        const size_t gi[] = {2, 0};
        const size_t gi_other[] = {1, 0};
        koala_shard sh;
        memset(&sh, 0, sizeof sh);
        sh.struct_size = sizeof sh;
        sh.n_global = 3;
        sh.global_index = gi;
        sh.global_elements = 20;
        sh.allreduce = barrier_allreduce;
        koala_optimizer *src = NULL;
        assert_int_equal(koala_create_sharded(&cfg, 2, sizes, &sh, KOALA_FLOAT64, KOALA_HOST, &src),
                         KOALA_OK);
        size_t n;
        unsigned char *ck = save_state(src, &n);

        koala_optimizer *targets[5] = {NULL};
        koala_shard other = sh;
        other.global_index = gi_other; /* same sizes, other global tensors */
        assert_int_equal(koala_create_sharded(&cfg, 2, sizes, &other, KOALA_FLOAT64, KOALA_HOST, &targets[0]), KOALA_OK);
        other = sh;
        other.n_global = 4; /* another model */
        assert_int_equal(koala_create_sharded(&cfg, 2, sizes, &other, KOALA_FLOAT64, KOALA_HOST, &targets[1]), KOALA_OK);
        other = sh;
        other.global_elements = 21;
        assert_int_equal(koala_create_sharded(&cfg, 2, sizes, &other, KOALA_FLOAT64, KOALA_HOST, &targets[2]), KOALA_OK);
        assert_int_equal(koala_create(&cfg, 2, sizes, KOALA_FLOAT64, KOALA_HOST, &targets[3]), KOALA_OK);
        const size_t swapped[] = {3, 5};
        assert_int_equal(koala_create_sharded(&cfg, 2, swapped, &sh, KOALA_FLOAT64, KOALA_HOST, &targets[4]), KOALA_OK);
        for (int t = 0; t < 5; ++t) {
            size_t before_n;
            unsigned char *before = save_state(targets[t], &before_n);
            const koala_status st = koala_state_load(targets[t], ck, n, NULL);
            if (st != KOALA_ERROR_BAD_STATE)
                fail_msg("method %d, target %d: loading another shard layout gave %d", m, t, st);
            size_t after_n;
            unsigned char *after = save_state(targets[t], &after_n);
            assert_true(before_n == after_n && memcmp(before, after, before_n) == 0);
            free(before);
            free(after);
            koala_destroy(targets[t]);
        }
        /* and the same layout loads */
        koala_optimizer *same = NULL;
        assert_int_equal(koala_create_sharded(&cfg, 2, sizes, &sh, KOALA_FLOAT64, KOALA_HOST, &same), KOALA_OK);
        assert_int_equal(koala_state_load(same, ck, n, NULL), KOALA_OK);
        koala_destroy(same);
        free(ck);
        koala_destroy(src);
    }
}

/* Processes whose pieces do not add up to the model they all describe: the
 * first update is INVALID_ARGUMENT on every process (callback and
 * two-phase forms) and changes nothing. Cases: global_elements 3 more than
 * the pieces hold; a global tensor no process holds (n_global one more). */
static void disagreement_case(koala_method method, int two_phase, int which) {
    const size_t gsizes[] = {7, 40, 1};
    test_layout layout = layout_make(3, gsizes);
    koala_config cfg;
    koala_config_init(&cfg, method);
    test_pair whole;
    assert_int_equal(pair_init(&whole, &cfg, &layout, KOALA_FLOAT64, 3, 0), KOALA_OK);
    group g;
    group_layout(&g, &layout, 3, 0, 3);
    g.dtype = KOALA_FLOAT64;
    const uint64_t elements = layout.total + (which == 0 ? 3 : 0);
    const size_t n_global = layout.n + (which == 1 ? 1 : 0);
    for (int r = 0; r < g.n_procs; ++r) {
        proc *p = &g.p[r];
        assert_int_equal(proc_create(p, &cfg, KOALA_FLOAT64, elements, n_global), KOALA_OK);
        p->params = malloc((p->n + 1) * sizeof *p->params);
        p->grads = malloc((p->n + 1) * sizeof *p->grads);
        p->grad_args = malloc((p->n + 1) * sizeof *p->grad_args);
        for (size_t i = 0; i < p->n; ++i) {
            p->params[i] = malloc(p->sizes[i] * 8);
            p->grads[i] = malloc(p->sizes[i] * 8);
            memcpy(p->params[i], (double *)whole.params[p->gidx[i]] + p->offset[i], p->sizes[i] * 8);
        }
    }
    test_step step;
    step_alloc(&step, &layout);
    step_fill(&step, &layout, 3, 0, 0, 0);
    pair_load_grads(&whole, &step);
    group_load_grads(&g, whole.grads, whole.grad_args);
    group_predict(&g);
    unsigned char *before[MAX_PROCS];
    size_t before_n[MAX_PROCS];
    for (int r = 0; r < g.n_procs; ++r) before[r] = save_state(g.p[r].opt, &before_n[r]);
    if (two_phase)
        group_update_two_phase(&g, step.loss, step.loss_var);
    else
        group_update_threads(&g, step.loss, step.loss_var);
    for (int r = 0; r < g.n_procs; ++r) {
        if (g.p[r].status != KOALA_ERROR_INVALID_ARGUMENT)
            fail_msg("method %d two_phase %d case %d rank %d: status %d, expected INVALID_ARGUMENT",
                     method, two_phase, which, r, g.p[r].status);
        size_t n;
        unsigned char *after = save_state(g.p[r].opt, &n);
        if (n != before_n[r]) fail_msg("case %d/%d/%d rank %d: checkpoint size changed", method, two_phase, which, r);
        for (size_t b = 0; b < n; ++b)
            if (after[b] != before[r][b])
                fail_msg("method %d two_phase %d case %d rank %d: checkpoint byte %zu of %zu changed",
                         method, two_phase, which, r, b, n);
        free(after);
        free(before[r]);
        for (size_t i = 0; i < g.p[r].n; ++i)
            assert_memory_equal(g.p[r].params[i], (double *)whole.params[g.p[r].gidx[i]] + g.p[r].offset[i],
                                g.p[r].sizes[i] * 8);
        const koala_info info = info_of(g.p[r].opt);
        assert_int_equal(info.steps, 0);
        assert_int_equal(info.phase, 1); /* predicted again (koala.h, koala_update_end) */
    }
    /* (KOALA-M's first predict adds v = 0: the parameters are still the
     * whole's initial ones.) */
    step_free(&step, &layout);
    group_free(&g);
    pair_free(&whole);
    layout_free(&layout);
}

static void test_layout_disagreement(void **state) {
    (void)state;
    for (int m = KOALA_VANILLA; m <= KOALA_PLUSPLUS; ++m)
        for (int two = 0; two < 2; ++two)
            for (int which = 0; which < 2; ++which)
                disagreement_case((koala_method)m, two, which);
}

/* A failing all-reduce: COMMUNICATION on every process, nothing changed,
 * and the same step then succeeds. */
static void test_allreduce_failure(void **state) {
    (void)state;
    for (int m = KOALA_VANILLA; m <= KOALA_PLUSPLUS; ++m) {
        const size_t gsizes[] = {9, 70000, 2};
        test_layout layout = layout_make(3, gsizes);
        koala_config cfg;
        koala_config_init(&cfg, (koala_method)m);
        test_pair whole;
        assert_int_equal(pair_init(&whole, &cfg, &layout, KOALA_FLOAT64, 4, 0), KOALA_OK);
        group g;
        group_layout(&g, &layout, 2, 0, 4);
        group_create(&g, &cfg, KOALA_FLOAT64, whole.params);
        test_step step;
        step_alloc(&step, &layout);
        step_fill(&step, &layout, 4, 0, 0, 0);
        pair_load_grads(&whole, &step);
        group_load_grads(&g, whole.grads, whole.grad_args);
        group_predict(&g);
        unsigned char *before[MAX_PROCS];
        size_t before_n[MAX_PROCS];
        void **pbefore[MAX_PROCS];
        for (int r = 0; r < g.n_procs; ++r) {
            before[r] = save_state(g.p[r].opt, &before_n[r]);
            test_layout pl = layout_make(g.p[r].n, g.p[r].sizes);
            pbefore[r] = buffers_alloc(&pl, KOALA_FLOAT64);
            buffers_copy(pbefore[r], g.p[r].params, &pl, KOALA_FLOAT64);
            layout_free(&pl);
        }
        g.fail_rc = 5;
        group_update_threads(&g, step.loss, step.loss_var);
        for (int r = 0; r < g.n_procs; ++r) {
            assert_int_equal(g.p[r].status, KOALA_ERROR_COMMUNICATION);
            size_t n;
            unsigned char *after = save_state(g.p[r].opt, &n);
            assert_true(n == before_n[r] && memcmp(after, before[r], n) == 0);
            free(after);
            test_layout pl = layout_make(g.p[r].n, g.p[r].sizes);
            assert_true(buffers_equal(pbefore[r], g.p[r].params, &pl, KOALA_FLOAT64));
            buffers_free(pbefore[r], &pl);
            layout_free(&pl);
            free(before[r]);
        }
        g.fail_rc = 0;
        group_update_threads(&g, step.loss, step.loss_var);
        for (int r = 0; r < g.n_procs; ++r) assert_int_equal(g.p[r].status, KOALA_OK);
        step_free(&step, &layout);
        group_free(&g);
        pair_free(&whole);
        layout_free(&layout);
    }
}

/* float64: the pieces' sums add up in another order than the whole's
 * (chunks of pieces, then processes), rounding of the sums only; 1e-12 as
 * the brief asks, the figures printed are ~1e-15.
 * float32: a different last bit of a step coefficient changes a float32
 * parameter by one ulp (6e-8 relative) now and then, and that accumulates
 * over the steps; 1e-5 bounds it for 20 steps. */
#define TOL64 1e-12
#define TOL32 1e-5

/* name, method, dtype, procs, empty_last, two_phase, steps, seed, wd, tol */
static scenario scenarios[] = {
    {"V f64 1 process", KOALA_VANILLA, KOALA_FLOAT64, 1, 0, 0, 20, 101, 0.0, TOL64},
    {"V f64 2 processes, wd", KOALA_VANILLA, KOALA_FLOAT64, 2, 0, 0, 24, 102, 5e-4, TOL64},
    {"V f64 3 processes, two-phase", KOALA_VANILLA, KOALA_FLOAT64, 3, 0, 1, 24, 103, 0.01, TOL64},
    {"V f32 4 processes, one empty", KOALA_VANILLA, KOALA_FLOAT32, 4, 1, 0, 20, 104, 5e-4, TOL32},
    {"M f64 1 process, two-phase", KOALA_MOMENTUM, KOALA_FLOAT64, 1, 0, 1, 20, 111, 5e-4, TOL64},
    {"M f64 2 processes", KOALA_MOMENTUM, KOALA_FLOAT64, 2, 0, 0, 24, 112, 0.0, TOL64},
    {"M f64 3 processes, one empty, wd", KOALA_MOMENTUM, KOALA_FLOAT64, 3, 1, 0, 24, 113, 0.01, TOL64},
    {"M f64 4 processes, two-phase, wd", KOALA_MOMENTUM, KOALA_FLOAT64, 4, 0, 1, 24, 114, 5e-4, TOL64},
    {"M f32 3 processes, wd", KOALA_MOMENTUM, KOALA_FLOAT32, 3, 0, 0, 20, 115, 5e-4, TOL32},
    {"++ f64 1 process", KOALA_PLUSPLUS, KOALA_FLOAT64, 1, 0, 0, 20, 121, 0.0, TOL64},
    {"++ f64 2 processes, two-phase, wd", KOALA_PLUSPLUS, KOALA_FLOAT64, 2, 0, 1, 24, 122, 5e-4, TOL64},
    {"++ f64 3 processes, wd", KOALA_PLUSPLUS, KOALA_FLOAT64, 3, 0, 0, 24, 123, 0.01, TOL64},
    {"++ f64 4 processes, one empty", KOALA_PLUSPLUS, KOALA_FLOAT64, 4, 1, 1, 24, 124, 0.0, TOL64},
    {"++ f32 2 processes, wd", KOALA_PLUSPLUS, KOALA_FLOAT32, 2, 0, 0, 20, 125, 5e-4, TOL32},
    {"++ f32 3 processes, one empty, two-phase", KOALA_PLUSPLUS, KOALA_FLOAT32, 3, 1, 1, 20, 126, 5e-4, TOL32},
};

int main(void) {
    enum { N = sizeof scenarios / sizeof scenarios[0] };
    struct CMUnitTest tests[N + 3];
    for (size_t i = 0; i < N; ++i) {
        struct CMUnitTest t = cmocka_unit_test_prestate(run_scenario, &scenarios[i]);
        t.name = scenarios[i].name;
        tests[i] = t;
    }
    const struct CMUnitTest extra[] = {
        cmocka_unit_test(test_checkpoint_other_layout),
        cmocka_unit_test(test_layout_disagreement),
        cmocka_unit_test(test_allreduce_failure),
    };
    memcpy(tests + N, extra, sizeof extra);
    return _cmocka_run_group_tests("sharded", tests, N + 3, NULL, NULL);
}
