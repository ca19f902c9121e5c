/*
 * test_sharded.c - ZeRO/FSDP-style sharding over MPI ranks against one
 * process (koala_create on the whole tensors), run under mpirun with any
 * number of ranks (the meson suite `mpi` runs 1, 2, 3 and 4).
 *
 *   mpirun -np N test_sharded [--break-sums]
 *
 * The model has 5 global tensors (40000, 33, 1, 257 and 3001 float64
 * elements: one crosses the library's 32 Ki-element chunks, one has a
 * single element). Two ways of cutting it over the ranks:
 *   uneven    every tensor cut at uneven points; some ranks hold no piece of
 *             some tensors (the 1-element tensor sits on one rank only), and
 *             rank 0 also holds the last 100 elements of tensor 0 as a
 *             second piece of it;
 *   idle      the same, except that the last rank holds nothing at all
 *             (n_tensors = 0, sizes = NULL); with 1 rank, the identity
 *             layout (global_index = NULL).
 * Every rank also runs the whole model in one process (the reference) and
 * checks, for KOALA-V, KOALA-M (plain and fused_predict) and KOALA++, with
 * the all-reduce callback and with koala_update_begin / koala_update_end:
 *   - its pieces equal the reference's elements within 1e-12 (relative to
 *     max(1, |x|)) after every predict and update, over 12 steps with
 *     per-tensor weight decay and lr multipliers, NULL gradients on some
 *     tensors and steps, a step with every gradient NULL, and a global
 *     tensor whose gradient is below the skip threshold (a decision that
 *     needs the global norm);
 *   - the filter (koala_get_info) is the reference's within 1e-12 and
 *     identical on every rank bit for bit;
 *   - koala_update calls the callback exactly once, with koala_sums_size
 *     doubles, and koala_predict never calls it; the two-phase form runs
 *     with no callback at all;
 *   - a failing all-reduce (failing before communicating, or after) makes
 *     koala_update return KOALA_ERROR_COMMUNICATION with the parameters and
 *     the checkpoint bytes unchanged; the retried update then continues the
 *     run as if nothing had happened;
 *   - each rank's checkpoint round-trips (save, destroy, create, load; the
 *     per-tensor hyper-parameters come back from the checkpoint), and a
 *     checkpoint loaded into another rank's layout is refused (BAD_STATE).
 * Then the cases where ranks disagree (found at the first update, on every
 * rank, nothing changed): a global tensor with a gradient on some pieces and
 * NULL on another; pieces that do not add up to global_elements.
 *
 * --break-sums perturbs the summed buffer (every sum of global tensor 0 by
 * a relative 1e-9; the layout is that of koala_sums_size: n_global slots of
 * presence + sums, then the 4 trailer doubles) after every all-reduce, as a subtly wrong communication layer would:
 * the comparisons must then fail (meson runs it with should_fail).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpi_check.h"

enum { N_GLOBAL = 5, STEPS = 12, MAX_PIECES = 64, TAIL = 100 };
static const size_t global_sizes[N_GLOBAL] = {40000, 33, 1, 257, 3001};
static const double tensor_wd[N_GLOBAL] = {0.01, 0.0, 0.03, 0.01, 0.002};
static const double tensor_lr[N_GLOBAL] = {1.0, 0.5, 1.0, 0.25, 1.0};
static const double grad_amplitude[N_GLOBAL] = {0.01, 1.0, 0.5, 2.0, 0.1};
#define TOL 1e-12
enum { FAIL_SILENT_STEP = 4, CHECKPOINT_STEP = 6, FAIL_AFTER_STEP = 9 };

static int break_sums = 0;
static uint64_t extra_global_elements = 0; /* --disagree-global-elements */

/* ---- layouts ------------------------------------------------------------- */

typedef struct piece {
    int rank;
    size_t global, offset, count;
} piece;

typedef struct sharding {
    const char *name;
    piece pieces[MAX_PIECES]; /* sorted by (global, offset) */
    size_t n_pieces;
} sharding;

/* One rank's view: its pieces in order, as local tensors. */
typedef struct local_view {
    size_t n;
    size_t global[MAX_PIECES], offset[MAX_PIECES], size[MAX_PIECES];
    uint64_t elements;
    int identity; /* local i is global tensor i, whole: global_index may be NULL */
} local_view;

static void add_piece(sharding *s, int rank, size_t global, size_t offset, size_t count) {
    if (count == 0) return;
    if (s->n_pieces == MAX_PIECES) {
        fprintf(stderr, "test_sharded: too many pieces\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    s->pieces[s->n_pieces++] = (piece){rank, global, offset, count};
}

/* Tensor j goes to the ranks in proportion to weights (7 r + 3 j + 1) mod
 * (np + 1), so that some are 0; `idle` zeroes the last rank's weights. */
static sharding make_sharding(const char *name, int idle) {
    sharding s;
    memset(&s, 0, sizeof s);
    s.name = name;
    const int np = mpi_size;
    for (size_t j = 0; j < N_GLOBAL; ++j) {
        size_t w[64] = {0}, total = 0;
        for (int r = 0; r < np; ++r) {
            w[r] = (size_t)(7 * r + 3 * (int)j + 1) % (size_t)(np + 1);
            if (idle && np > 1 && r == np - 1) w[r] = 0;
            total += w[r];
        }
        if (total == 0) w[0] = total = 1;
        if (idle && np == 1) w[0] = total = 1;
        int last = 0;
        for (int r = 0; r < np; ++r)
            if (w[r]) last = r;
        const size_t n = global_sizes[j];
        size_t offset = 0;
        for (int r = 0; r < np; ++r) {
            size_t count = r == last ? n - offset : n * w[r] / total;
            const int split_tail = !idle && j == 0 && r == last && count > TAIL;
            if (split_tail) {
                add_piece(&s, r, j, offset, count - TAIL);
                add_piece(&s, 0, j, offset + count - TAIL, TAIL);
            } else {
                add_piece(&s, r, j, offset, count);
            }
            offset += count;
        }
    }
    return s;
}

static local_view view_of(const sharding *s, int rank) {
    local_view v;
    memset(&v, 0, sizeof v);
    for (size_t p = 0; p < s->n_pieces; ++p) {
        const piece *q = &s->pieces[p];
        if (q->rank != rank) continue;
        v.global[v.n] = q->global;
        v.offset[v.n] = q->offset;
        v.size[v.n] = q->count;
        v.elements += q->count;
        ++v.n;
    }
    v.identity = v.n == N_GLOBAL;
    for (size_t i = 0; i < v.n && v.identity; ++i)
        v.identity = v.global[i] == i && v.size[i] == global_sizes[i];
    return v;
}

static int same_view(const local_view *a, const local_view *b) {
    if (a->n != b->n) return 0;
    for (size_t i = 0; i < a->n; ++i)
        if (a->global[i] != b->global[i] || a->size[i] != b->size[i]) return 0;
    return 1;
}

static uint64_t model_elements(void) {
    uint64_t n = 0;
    for (size_t j = 0; j < N_GLOBAL; ++j) n += global_sizes[j];
    return n;
}

/* ---- the all-reduce ------------------------------------------------------- */

typedef enum { REDUCE_OK = 0, REDUCE_FAIL_SILENT, REDUCE_FAIL_AFTER } reduce_mode;

typedef struct reduce_ctx {
    int calls;
    int bad_arguments;
    size_t expected_count;
    reduce_mode mode;
} reduce_ctx;

/* The MPI sum every test uses, with the --break-sums perturbation. */
static int sum_partial_sums(double *buf, size_t count) {
    const int rc = sum_doubles(buf, count);
    if (break_sums) { /* every sum of global tensor 0 (after its presence slot) */
        const size_t stride = (count - 2) / N_GLOBAL;
        for (size_t k = 1; k < stride; ++k) buf[k] *= 1.0 + 1e-9;
    }
    return rc;
}

static int mpi_allreduce_callback(double *buf, size_t count, void *stream, void *user) {
    reduce_ctx *ctx = user;
    ++ctx->calls;
    if (!buf || count != ctx->expected_count || stream) ++ctx->bad_arguments;
    if (ctx->mode == REDUCE_FAIL_SILENT) return -1;
    const int rc = sum_partial_sums(buf, count);
    if (ctx->mode == REDUCE_FAIL_AFTER) return 5;
    return rc;
}

/* ---- data ------------------------------------------------------------------ */

static double initial_value(size_t j, size_t i) {
    return 0.5 * sin(1.7 * (double)i + (double)j) + 0.1;
}

/* Which global tensors have no gradient at a step (1 = NULL), and which
 * have one far below the 1e-9 skip threshold of the global norm. */
static int grad_is_null(size_t j, int step) {
    if (step == 5) return 1; /* every tensor: only R changes */
    if (step == 3) return j == 1;
    if (step == 7) return j == 0 || j == 4;
    if (step == 10) return j == 2;
    return 0;
}
static int grad_is_tiny(size_t j, int step) { return step == 8 && j == 3; }

/* The gradient of element i of global tensor j at `step`, a function of
 * the element's current value like a real gradient. */
static double gradient(size_t j, size_t i, int step, double x) {
    const double wave = sin(0.37 * (double)i + 1.3 * (double)j + 0.71 * step);
    if (grad_is_tiny(j, step)) return 1e-13 * wave;
    return grad_amplitude[j] * wave + 0.2 * x;
}

static double loss_at(int step) { return 2.0 / (1.0 + 0.3 * step) + 0.1; }
static double loss_var_at(int step) { return 1.4 * loss_at(step) * loss_at(step) + 0.01; }

/* ---- one optimizer and its tensors ----------------------------------------- */

typedef struct tensors {
    size_t n;
    double *x[MAX_PIECES], *g[MAX_PIECES];
    const void *grad_args[MAX_PIECES]; /* g[i] or NULL */
} tensors;

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "rank %d: out of memory\n", mpi_rank);
        MPI_Abort(MPI_COMM_WORLD, 4);
    }
    return p;
}

static void tensors_alloc(tensors *t, size_t n, const size_t *sizes) {
    memset(t, 0, sizeof *t);
    t->n = n;
    for (size_t i = 0; i < n; ++i) {
        t->x[i] = xcalloc(sizes[i], sizeof(double));
        t->g[i] = xcalloc(sizes[i], sizeof(double));
    }
}

static void tensors_free(tensors *t) {
    for (size_t i = 0; i < t->n; ++i) {
        free(t->x[i]);
        free(t->g[i]);
    }
}

/* The gradients of a step for tensors that are pieces (global[i], offset[i]). */
static void fill_grads(tensors *t, const size_t *global, const size_t *offset,
                       const size_t *sizes, int step) {
    for (size_t i = 0; i < t->n; ++i) {
        const size_t j = global[i];
        t->grad_args[i] = grad_is_null(j, step) ? NULL : t->g[i];
        for (size_t k = 0; k < sizes[i]; ++k)
            t->g[i][k] = gradient(j, offset[i] + k, step, t->x[i][k]);
    }
}

/* Arrays as a rank with no tensor passes them: NULL (allowed when
 * n_tensors is 0; with a NULL grads refused there, that rank would skip the
 * all-reduce the others wait in). */
static void *const *params_arg(tensors *t) { return t->n ? (void *const *)t->x : NULL; }
static const void *const *grads_arg(tensors *t) {
    return t->n ? (const void *const *)t->grad_args : NULL;
}

static unsigned char *save_state(const koala_optimizer *opt, size_t *size) {
    EXPECT_OK(koala_state_size(opt, size));
    unsigned char *bytes = xcalloc(*size, 1);
    EXPECT_OK(koala_state_save(opt, bytes, *size, NULL));
    return bytes;
}

static koala_info info_of(const koala_optimizer *opt) {
    koala_info info;
    memset(&info, 0, sizeof info); /* no stale bytes in the bitwise comparison */
    info.struct_size = sizeof info;
    EXPECT_OK(koala_get_info(opt, NULL, &info));
    return info;
}

/* ---- a variant ------------------------------------------------------------ */

typedef struct variant {
    const char *name;
    koala_method method;
    int fused_predict;
} variant;

static const variant variants[] = {
    {"KOALA-V", KOALA_VANILLA, 0},
    {"KOALA-M", KOALA_MOMENTUM, 0},
    {"KOALA-M fused", KOALA_MOMENTUM, 1},
    {"KOALA++", KOALA_PLUSPLUS, 0},
};

static koala_config config_of(const variant *v) {
    koala_config cfg;
    koala_config_init(&cfg, v->method);
    cfg.threads = 1; /* several ranks share 2 cores */
    cfg.weight_decay = 0.01;
    cfg.fused_predict = v->fused_predict;
    if (v->method == KOALA_VANILLA) cfg.sigma = 0.1;
    return cfg;
}

typedef enum { FORM_CALLBACK, FORM_TWO_PHASE } step_form;

static koala_optimizer *create_sharded(const koala_config *cfg, const local_view *view,
                                       reduce_ctx *ctx, step_form form, size_t n_local,
                                       const size_t *sizes) {
    koala_shard shard;
    memset(&shard, 0, sizeof shard);
    shard.struct_size = sizeof shard;
    shard.n_global = N_GLOBAL;
    shard.global_index = view->identity ? NULL : view->global;
    shard.global_elements = model_elements() + extra_global_elements;
    shard.allreduce = form == FORM_CALLBACK ? mpi_allreduce_callback : NULL;
    shard.user = ctx;
    koala_optimizer *opt = NULL;
    EXPECT_OK(koala_create_sharded(cfg, n_local, n_local ? sizes : NULL, &shard, KOALA_FLOAT64,
                                   KOALA_HOST, &opt));
    return opt;
}

/* Largest relative difference of this rank's pieces from the reference. */
static double pieces_error(const tensors *local, const local_view *view, const tensors *ref) {
    double worst = 0.0;
    for (size_t i = 0; i < view->n; ++i) {
        const double e = max_rel_diff(local->x[i], ref->x[view->global[i]] + view->offset[i],
                                      view->size[i]);
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

static double info_error(const koala_info *a, const koala_info *b) {
    const double fa[] = {a->sigma, a->p00, a->p01, a->p11, a->r, a->qw, a->lr};
    const double fb[] = {b->sigma, b->p00, b->p01, b->p11, b->r, b->qw, b->lr};
    double e = max_rel_diff(fa, fb, sizeof fa / sizeof fa[0]);
    if (a->steps != b->steps || a->phase != b->phase) e = INFINITY;
    return e;
}

/* The sharded update of one step in the chosen form. */
static koala_status sharded_update(koala_optimizer *opt, step_form form, int step,
                                   tensors *local) {
    if (form == FORM_CALLBACK)
        return koala_update(opt, loss_at(step), loss_var_at(step), params_arg(local),
                            grads_arg(local), NULL);
    size_t count = 0;
    EXPECT_OK(koala_sums_size(opt, &count));
    double *sums = xcalloc(count, sizeof(double));
    koala_status st = koala_update_begin(opt, params_arg(local), grads_arg(local), sums, NULL);
    if (st == KOALA_OK) {
        if (sum_partial_sums(sums, count) != 0) {
            fprintf(stderr, "rank %d: MPI_Allreduce failed\n", mpi_rank);
            MPI_Abort(MPI_COMM_WORLD, 5);
        }
        st = koala_update_end(opt, loss_at(step), loss_var_at(step), params_arg(local),
                              grads_arg(local), sums, NULL);
    }
    free(sums);
    return st;
}

/* A failing all-reduce: COMMUNICATION, one call, nothing changed. */
static void check_failing_allreduce(koala_optimizer *opt, reduce_ctx *ctx, reduce_mode mode,
                                    int step, tensors *local, const local_view *view,
                                    const char *label) {
    size_t size_before = 0, size_after = 0;
    unsigned char *before = save_state(opt, &size_before);
    double *x_before[MAX_PIECES];
    for (size_t i = 0; i < view->n; ++i) {
        x_before[i] = xcalloc(view->size[i], sizeof(double));
        memcpy(x_before[i], local->x[i], view->size[i] * sizeof(double));
    }
    const int calls = ctx->calls;
    ctx->mode = mode;
    expect_status(koala_update(opt, loss_at(step), loss_var_at(step), params_arg(local),
                               grads_arg(local), NULL),
                  KOALA_ERROR_COMMUNICATION, "koala_update with a failing all-reduce");
    ctx->mode = REDUCE_OK;
    CHECK(ctx->calls == calls + 1, "%s: the failing update called the all-reduce %d times",
          label, ctx->calls - calls);
    CHECK(strstr(koala_last_error(), "all-reduce") != NULL,
          "%s: the COMMUNICATION message does not name the all-reduce: %s", label,
          koala_last_error());
    unsigned char *after = save_state(opt, &size_after);
    CHECK(size_before == size_after && memcmp(before, after, size_before) == 0,
          "%s: the failing update changed the optimizer's state", label);
    for (size_t i = 0; i < view->n; ++i) {
        CHECK(memcmp(x_before[i], local->x[i], view->size[i] * sizeof(double)) == 0,
              "%s: the failing update changed local tensor %zu", label, i);
        free(x_before[i]);
    }
    free(before);
    free(after);
}

/* Each rank saves; the optimizer is rebuilt from its checkpoint; a
 * checkpoint of the next-lower rank is refused unless its layout is ours. */
static koala_optimizer *checkpoint_round_trip(koala_optimizer *opt, const koala_config *cfg,
                                              const sharding *s, const local_view *view,
                                              reduce_ctx *ctx, step_form form,
                                              const char *label) {
    size_t size = 0;
    unsigned char *bytes = save_state(opt, &size);
    koala_destroy(opt);
    koala_optimizer *fresh = create_sharded(cfg, view, ctx, form, view->n, view->size);
    EXPECT_OK(koala_state_load(fresh, bytes, size, NULL));
    size_t size_again = 0;
    unsigned char *again = save_state(fresh, &size_again);
    CHECK(size_again == size && memcmp(again, bytes, size) == 0,
          "%s: the reloaded checkpoint does not save back to the same bytes", label);
    free(again);

    /* Pass checkpoints around the ring: rank r gets rank r-1's. */
    const int to = (mpi_rank + 1) % mpi_size, from = (mpi_rank + mpi_size - 1) % mpi_size;
    unsigned long my_size = size, their_size = 0;
    MPI_Sendrecv(&my_size, 1, MPI_UNSIGNED_LONG, to, 1, &their_size, 1, MPI_UNSIGNED_LONG, from,
                 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    unsigned char *theirs = xcalloc(their_size, 1);
    MPI_Sendrecv(bytes, (int)size, MPI_BYTE, to, 2, theirs, (int)their_size, MPI_BYTE, from, 2,
                 MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    const local_view their_view = view_of(s, from);
    koala_optimizer *scratch = create_sharded(cfg, view, ctx, form, view->n, view->size);
    const koala_status st = koala_state_load(scratch, theirs, their_size, NULL);
    if (same_view(view, &their_view))
        CHECK(st == KOALA_OK, "%s: loading rank %d's checkpoint (same layout) gave %s: %s", label,
              from, koala_status_string(st), koala_last_error());
    else
        CHECK(st == KOALA_ERROR_BAD_STATE,
              "%s: rank %d's checkpoint (another shard layout) loaded with %s", label, from,
              koala_status_string(st));
    koala_destroy(scratch);
    free(theirs);
    free(bytes);
    return fresh;
}

/* One method x form x layout over STEPS steps. Returns the largest error. */
static double run_case(const variant *v, step_form form, const sharding *s) {
    char label[128];
    snprintf(label, sizeof label, "%s, %s, %s layout", v->name,
             form == FORM_CALLBACK ? "callback" : "two-phase", s->name);
    const koala_config cfg = config_of(v);
    const local_view view = view_of(s, mpi_rank);

    /* One process, whole tensors. */
    tensors ref;
    tensors_alloc(&ref, N_GLOBAL, global_sizes);
    koala_optimizer *one = NULL;
    EXPECT_OK(koala_create(&cfg, N_GLOBAL, global_sizes, KOALA_FLOAT64, KOALA_HOST, &one));
    EXPECT_OK(koala_set_tensor_lr(one, tensor_lr, NULL));
    EXPECT_OK(koala_set_tensor_weight_decay(one, tensor_wd, NULL));
    size_t ref_global[N_GLOBAL], ref_offset[N_GLOBAL] = {0};
    for (size_t j = 0; j < N_GLOBAL; ++j) {
        ref_global[j] = j;
        for (size_t k = 0; k < global_sizes[j]; ++k) ref.x[j][k] = initial_value(j, k);
    }

    /* This rank's pieces. */
    tensors local;
    tensors_alloc(&local, view.n, view.size);
    for (size_t i = 0; i < view.n; ++i)
        for (size_t k = 0; k < view.size[i]; ++k)
            local.x[i][k] = initial_value(view.global[i], view.offset[i] + k);
    reduce_ctx ctx = {0, 0, 0, REDUCE_OK};
    koala_optimizer *opt = create_sharded(&cfg, &view, &ctx, form, view.n, view.size);
    EXPECT_OK(koala_sums_size(opt, &ctx.expected_count));
    EXPECT_OK(koala_set_tensor_lr(opt, tensor_lr, NULL));
    EXPECT_OK(koala_set_tensor_weight_decay(opt, tensor_wd, NULL));
    size_t ref_count = 0;
    EXPECT_OK(koala_sums_size(one, &ref_count));
    CHECK(ref_count == ctx.expected_count, "%s: koala_sums_size is %zu sharded, %zu whole", label,
          ctx.expected_count, ref_count);

    double worst = 0.0;
    int expected_calls = 0;
    for (int step = 1; step <= STEPS; ++step) {
        const int calls_before_predict = ctx.calls;
        EXPECT_OK(koala_predict(one, (void *const *)ref.x, NULL));
        EXPECT_OK(koala_predict(opt, params_arg(&local), NULL));
        CHECK(ctx.calls == calls_before_predict, "%s: koala_predict called the all-reduce", label);
        double e = pieces_error(&local, &view, &ref);
        CHECK(e <= TOL, "%s: step %d: after predict, pieces differ by %.3g", label, step, e);
        if (!(e <= worst)) worst = e;

        fill_grads(&ref, ref_global, ref_offset, global_sizes, step);
        fill_grads(&local, view.global, view.offset, view.size, step);
        EXPECT_OK(koala_update(one, loss_at(step), loss_var_at(step), (void *const *)ref.x,
                               grads_arg(&ref), NULL));
        if (form == FORM_CALLBACK && step == FAIL_SILENT_STEP) {
            check_failing_allreduce(opt, &ctx, REDUCE_FAIL_SILENT, step, &local, &view, label);
            ++expected_calls;
        }
        if (form == FORM_CALLBACK && step == FAIL_AFTER_STEP) {
            check_failing_allreduce(opt, &ctx, REDUCE_FAIL_AFTER, step, &local, &view, label);
            ++expected_calls;
        }
        EXPECT_OK(sharded_update(opt, form, step, &local));
        if (form == FORM_CALLBACK) ++expected_calls;
        CHECK(ctx.calls == expected_calls, "%s: step %d: %d all-reduce calls, expected %d", label,
              step, ctx.calls, expected_calls);

        e = pieces_error(&local, &view, &ref);
        CHECK(e <= TOL, "%s: step %d: after update, pieces differ by %.3g", label, step, e);
        if (!(e <= worst)) worst = e;
        const koala_info mine = info_of(opt), theirs = info_of(one);
        const double ie = info_error(&mine, &theirs);
        CHECK(ie <= TOL, "%s: step %d: the filter differs from one process by %.3g", label, step,
              ie);
        if (!(ie <= worst)) worst = ie;
        CHECK(same_on_every_rank(&mine, sizeof mine),
              "%s: step %d: koala_get_info differs between ranks", label, step);

        if (step == CHECKPOINT_STEP)
            opt = checkpoint_round_trip(opt, &cfg, s, &view, &ctx, form, label);
    }
    CHECK(ctx.bad_arguments == 0, "%s: the callback got a wrong buffer, count or stream %d times",
          label, ctx.bad_arguments);
    koala_destroy(opt);
    koala_destroy(one);
    tensors_free(&local);
    tensors_free(&ref);
    return worst;
}

/* ---- ranks that disagree ---------------------------------------------------- */

/* Rank 0 passes NULL for its second piece of tensor 0 while every other
 * piece of it has a gradient; then rank 0 leaves that piece out of its
 * optimizer altogether. Both are found at the update, on every rank. */
static void run_disagreements(void) {
    const variant *v = &variants[0];
    const koala_config cfg = config_of(v);
    const sharding s = make_sharding("uneven", 0);
    const local_view view = view_of(&s, mpi_rank);
    tensors local;
    tensors_alloc(&local, view.n, view.size);
    for (size_t i = 0; i < view.n; ++i)
        for (size_t k = 0; k < view.size[i]; ++k)
            local.x[i][k] = initial_value(view.global[i], view.offset[i] + k);

    /* (a) the NULL pattern differs between pieces of one global tensor */
    reduce_ctx ctx = {0, 0, 0, REDUCE_OK};
    koala_optimizer *opt = create_sharded(&cfg, &view, &ctx, FORM_CALLBACK, view.n, view.size);
    EXPECT_OK(koala_sums_size(opt, &ctx.expected_count));
    EXPECT_OK(koala_predict(opt, params_arg(&local), NULL));
    fill_grads(&local, view.global, view.offset, view.size, 1);
    size_t tail = view.n;
    for (size_t i = 0; i < view.n; ++i)
        if (view.global[i] == 0 && view.offset[i] + view.size[i] == global_sizes[0]) tail = i;
    if (mpi_rank == 0) {
        CHECK(tail < view.n, "rank 0 holds no tail piece of tensor 0");
        if (tail < view.n) local.grad_args[tail] = NULL;
    }
    size_t size = 0, size_after = 0;
    unsigned char *before = save_state(opt, &size);
    expect_status(koala_update(opt, loss_at(1), loss_var_at(1), params_arg(&local),
                               grads_arg(&local), NULL),
                  KOALA_ERROR_INVALID_ARGUMENT, "koala_update with a mixed NULL pattern");
    CHECK(strstr(koala_last_error(), "global tensor 0") != NULL,
          "mixed NULL pattern: the message does not name global tensor 0: %s",
          koala_last_error());
    unsigned char *after = save_state(opt, &size_after);
    CHECK(size == size_after && memcmp(before, after, size) == 0,
          "mixed NULL pattern: the refused update changed the state");
    free(before);
    free(after);
    /* The same step with a consistent pattern goes through. */
    if (mpi_rank == 0 && tail < view.n) local.grad_args[tail] = local.g[tail];
    EXPECT_OK(koala_update(opt, loss_at(1), loss_var_at(1), params_arg(&local), grads_arg(&local),
                           NULL));
    koala_destroy(opt);

    /* (b) rank 0 leaves out its tail piece: the pieces do not add up */
    local_view short_view = view;
    if (mpi_rank == 0 && tail < view.n) {
        for (size_t i = tail; i + 1 < view.n; ++i) {
            short_view.global[i] = view.global[i + 1];
            short_view.offset[i] = view.offset[i + 1];
            short_view.size[i] = view.size[i + 1];
        }
        --short_view.n;
        short_view.identity = 0;
    }
    tensors short_local;
    tensors_alloc(&short_local, short_view.n, short_view.size);
    ctx = (reduce_ctx){0, 0, 0, REDUCE_OK};
    opt = create_sharded(&cfg, &short_view, &ctx, FORM_CALLBACK, short_view.n, short_view.size);
    EXPECT_OK(koala_sums_size(opt, &ctx.expected_count));
    EXPECT_OK(koala_predict(opt, params_arg(&short_local), NULL));
    fill_grads(&short_local, short_view.global, short_view.offset, short_view.size, 1);
    expect_status(koala_update(opt, loss_at(1), loss_var_at(1), params_arg(&short_local),
                               grads_arg(&short_local), NULL),
                  KOALA_ERROR_INVALID_ARGUMENT, "koala_update with a missing piece");
    CHECK(strstr(koala_last_error(), "global_elements") != NULL,
          "missing piece: the message does not name global_elements: %s", koala_last_error());
    koala_destroy(opt);
    tensors_free(&short_local);
    tensors_free(&local);
}

/* Ranks that disagree on shard->global_elements (rank r claims r more than
 * the model has): koala.h says every process then gets INVALID_ARGUMENT at
 * the first update. */
static int run_global_elements_disagreement(void) {
    const koala_config cfg = config_of(&variants[0]);
    const sharding s = make_sharding("uneven", 0);
    const local_view view = view_of(&s, mpi_rank);
    tensors local;
    tensors_alloc(&local, view.n, view.size);
    reduce_ctx ctx = {0, 0, 0, REDUCE_OK};
    extra_global_elements = (uint64_t)mpi_rank;
    koala_optimizer *opt = create_sharded(&cfg, &view, &ctx, FORM_CALLBACK, view.n, view.size);
    extra_global_elements = 0;
    EXPECT_OK(koala_sums_size(opt, &ctx.expected_count));
    EXPECT_OK(koala_predict(opt, params_arg(&local), NULL));
    fill_grads(&local, view.global, view.offset, view.size, 1);
    const koala_status st = koala_update(opt, loss_at(1), loss_var_at(1), params_arg(&local),
                                         grads_arg(&local), NULL);
    CHECK(st == KOALA_ERROR_INVALID_ARGUMENT,
          "global_elements %llu (rank 0: %llu): koala_update gave %s, not INVALID_ARGUMENT",
          (unsigned long long)(model_elements() + (uint64_t)mpi_rank),
          (unsigned long long)model_elements(), koala_status_string(st));
    koala_destroy(opt);
    tensors_free(&local);
    return mpi_check_finish("test_sharded --disagree-global-elements");
}

int main(int argc, char **argv) {
    mpi_check_init(&argc, &argv);
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--break-sums")) {
            break_sums = 1;
        } else if (!strcmp(argv[i], "--disagree-global-elements")) {
            return run_global_elements_disagreement();
        } else {
            if (mpi_rank == 0)
                fprintf(stderr, "usage: test_sharded [--break-sums | --disagree-global-elements]\n");
            MPI_Finalize();
            return 2;
        }
    }
    if (mpi_size > 64) {
        if (mpi_rank == 0) fprintf(stderr, "test_sharded: at most 64 ranks\n");
        MPI_Finalize();
        return 2;
    }
    const sharding layouts[2] = {make_sharding("uneven", 0), make_sharding("idle", 1)};
    if (mpi_rank == 0) {
        printf("test_sharded: %d rank(s); pieces per layout:", mpi_size);
        for (int l = 0; l < 2; ++l) printf(" %s %zu", layouts[l].name, layouts[l].n_pieces);
        printf("\n");
    }
    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; ++v)
        for (int form = 0; form < 2; ++form)
            for (int l = 0; l < 2; ++l) {
                const int failed_before = check_failures_all();
                const double worst = run_case(&variants[v], (step_form)form, &layouts[l]);
                double worst_all = 0.0;
                MPI_Allreduce(&worst, &worst_all, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
                const int failed = check_failures_all() - failed_before;
                if (mpi_rank == 0)
                    printf("%s - %s, %s, %s layout: largest difference from one process %.3g\n",
                           failed ? "not ok" : "ok", variants[v].name,
                           form == FORM_CALLBACK ? "callback" : "two-phase", layouts[l].name,
                           worst_all);
            }
    const int failed_before = check_failures_all();
    run_disagreements();
    const int failed = check_failures_all() - failed_before;
    if (mpi_rank == 0)
        printf("%s - ranks that disagree are refused on every rank\n", failed ? "not ok" : "ok");
    return mpi_check_finish("test_sharded");
}
