/*
 * test_data_parallel.c - plain data parallelism over MPI ranks: every rank
 * holds the whole model and its own optimizer (koala_create, no sharding),
 * and splits every global minibatch with the others.
 *
 *   mpirun -np N test_data_parallel DIGITS_CSV [--local-loss]
 *
 * The model is a 64-32-10 tanh MLP in float64 on examples/data/digits.csv;
 * 15 steps of a global batch of 48 samples, cut unevenly over the ranks
 * (with 3 or more ranks, one rank gets no sample at all). Each rank sums
 * its samples' gradients, losses and squared losses; one MPI_Allreduce of
 * that buffer and a division by the global batch size give every rank the
 * global-batch mean gradient, `loss` and `loss_var`, which it passes to
 * koala_update: the recipe of doc/readme/distributed.md.
 *
 * Checks, for KOALA-V, KOALA-M and KOALA++: after every step every rank's
 * parameters and filter are bit for bit those of rank 0, and equal (within
 * 1e-12 relative to max(1, |x|)) one process training on the whole batch.
 *
 * --local-loss passes each rank's own minibatch mean loss and loss_var
 * instead (gradients still averaged), as the official training loop does
 * when run unchanged under DDP: the ranks then drift apart, and the checks
 * must fail (meson runs it with should_fail for 2 and 3 ranks).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpi_check.h"

enum { N_IN = 64, N_HIDDEN = 32, N_OUT = 10, N_SAMPLES_MAX = 2000 };
enum { BATCH = 48, STEPS = 15, N_TENSORS = 4 };
enum { N_PARAMS = N_HIDDEN * N_IN + N_HIDDEN + N_OUT * N_HIDDEN + N_OUT };
#define TOL 1e-12

static int local_loss = 0;

typedef struct dataset {
    int n;
    double x[N_SAMPLES_MAX][N_IN];
    int y[N_SAMPLES_MAX];
} dataset;

/* All 1797 samples, pixels scaled to [0, 1] (the test uses no split). */
static int load_digits(const char *path, dataset *d) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "test_data_parallel: cannot open '%s': %s\n", path, strerror(errno));
        return -1;
    }
    d->n = 0;
    for (;;) {
        int k, label;
        double pixels[N_IN];
        for (k = 0; k < N_IN; ++k)
            if (fscanf(f, "%lf ,", &pixels[k]) != 1) break;
        if (k == 0 && feof(f)) break;
        if (k != N_IN || fscanf(f, "%d", &label) != 1 || label < 0 || label >= N_OUT ||
            d->n == N_SAMPLES_MAX) {
            fprintf(stderr, "test_data_parallel: %s: bad line %d\n", path, d->n + 1);
            fclose(f);
            return -1;
        }
        for (k = 0; k < N_IN; ++k) d->x[d->n][k] = pixels[k] / 16.0;
        d->y[d->n++] = label;
    }
    fclose(f);
    return d->n >= BATCH ? 0 : -1;
}

/* Parameters (and gradients) as one flat array; the tensors are views. */
typedef struct mlp {
    double flat[N_PARAMS];
} mlp;
static const size_t tensor_sizes[N_TENSORS] = {N_HIDDEN * N_IN, N_HIDDEN, N_OUT * N_HIDDEN,
                                               N_OUT};
static double *w1(mlp *m) { return m->flat; }
static double *b1(mlp *m) { return m->flat + N_HIDDEN * N_IN; }
static double *w2(mlp *m) { return m->flat + N_HIDDEN * N_IN + N_HIDDEN; }
static double *b2(mlp *m) { return m->flat + N_HIDDEN * N_IN + N_HIDDEN + N_OUT * N_HIDDEN; }
static void tensor_pointers(mlp *m, void *out[N_TENSORS]) {
    out[0] = w1(m);
    out[1] = b1(m);
    out[2] = w2(m);
    out[3] = b2(m);
}

static void init_mlp(mlp *m) {
    for (size_t i = 0; i < N_PARAMS; ++i) m->flat[i] = 0.3 * sin(0.61 * (double)i + 0.2);
}

/* Adds sample s's gradient of its loss to *grad; returns the loss. */
static double add_sample_gradient(mlp *m, const dataset *d, int s, mlp *grad) {
    const double *x = d->x[s];
    double hidden[N_HIDDEN], logits[N_OUT], prob[N_OUT], dz2[N_OUT];
    for (int j = 0; j < N_HIDDEN; ++j) {
        double z = b1(m)[j];
        for (int k = 0; k < N_IN; ++k) z += w1(m)[j * N_IN + k] * x[k];
        hidden[j] = tanh(z);
    }
    double zmax = -HUGE_VAL, sum = 0.0;
    for (int c = 0; c < N_OUT; ++c) {
        double z = b2(m)[c];
        for (int j = 0; j < N_HIDDEN; ++j) z += w2(m)[c * N_HIDDEN + j] * hidden[j];
        logits[c] = z;
        if (z > zmax) zmax = z;
    }
    for (int c = 0; c < N_OUT; ++c) sum += prob[c] = exp(logits[c] - zmax);
    for (int c = 0; c < N_OUT; ++c) {
        prob[c] /= sum;
        dz2[c] = prob[c] - (c == d->y[s] ? 1.0 : 0.0);
        b2(grad)[c] += dz2[c];
        for (int j = 0; j < N_HIDDEN; ++j) w2(grad)[c * N_HIDDEN + j] += dz2[c] * hidden[j];
    }
    for (int j = 0; j < N_HIDDEN; ++j) {
        double da = 0.0;
        for (int c = 0; c < N_OUT; ++c) da += w2(m)[c * N_HIDDEN + j] * dz2[c];
        const double dz1 = da * (1.0 - hidden[j] * hidden[j]);
        b1(grad)[j] += dz1;
        for (int k = 0; k < N_IN; ++k) w1(grad)[j * N_IN + k] += dz1 * x[k];
    }
    return -(logits[d->y[s]] - zmax - log(sum));
}

/* Sample b of the global batch of `step`. */
static int batch_sample(const dataset *d, int step, int b) {
    return (int)(((long)step * BATCH + b) * 7919L % d->n);
}

/* Rank r's share of the global batch: [*first, *first + *count). Weights
 * (r + 1) mod 3 with 3+ ranks (one rank gets nothing), r + 1 otherwise. */
static void batch_share(int rank, int *first, int *count) {
    int w[64], total = 0;
    for (int r = 0; r < mpi_size; ++r) total += w[r] = mpi_size >= 3 ? (r + 1) % 3 : r + 1;
    int begin = 0;
    for (int r = 0; r < rank; ++r) begin += BATCH * w[r] / total;
    *first = begin;
    *count = rank == mpi_size - 1 ? BATCH - begin : BATCH * w[rank] / total;
}

/* Sums of gradients, losses and squared losses over samples [first,
 * first + count) of the global batch, into buf[0..N_PARAMS + 2). */
static void batch_sums(mlp *m, const dataset *d, int step, int first, int count, double *buf) {
    mlp *grad = (mlp *)buf;
    memset(buf, 0, (N_PARAMS + 2) * sizeof(double));
    double sum_l = 0.0, sum_l2 = 0.0;
    for (int b = first; b < first + count; ++b) {
        const double l = add_sample_gradient(m, d, batch_sample(d, step, b), grad);
        sum_l += l;
        sum_l2 += l * l;
    }
    buf[N_PARAMS] = sum_l;
    buf[N_PARAMS + 1] = sum_l2;
}

static koala_info info_of(const koala_optimizer *opt) {
    koala_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    EXPECT_OK(koala_get_info(opt, NULL, &info));
    return info;
}

static double run_method(koala_method method, const char *name, const dataset *d) {
    koala_config cfg;
    koala_config_init(&cfg, method);
    cfg.threads = 1;
    cfg.weight_decay = 5e-4;
    if (method == KOALA_VANILLA) cfg.sigma = 0.1;

    static mlp model, whole, grad_whole;
    static double buf[N_PARAMS + 2];
    init_mlp(&model);
    whole = model;
    void *params[N_TENSORS], *params_whole[N_TENSORS], *grads[N_TENSORS], *grads_whole[N_TENSORS];
    tensor_pointers(&model, params);
    tensor_pointers(&whole, params_whole);
    tensor_pointers((mlp *)buf, grads);
    tensor_pointers(&grad_whole, grads_whole);
    koala_optimizer *opt = NULL, *one = NULL;
    EXPECT_OK(koala_create(&cfg, N_TENSORS, tensor_sizes, KOALA_FLOAT64, KOALA_HOST, &opt));
    EXPECT_OK(koala_create(&cfg, N_TENSORS, tensor_sizes, KOALA_FLOAT64, KOALA_HOST, &one));
    int first, count;
    batch_share(mpi_rank, &first, &count);

    double worst = 0.0;
    for (int step = 0; step < STEPS; ++step) {
        /* This rank's part of the global batch, summed over every rank. */
        EXPECT_OK(koala_predict(opt, params, NULL));
        batch_sums(&model, d, step, first, count, buf);
        double loss = 0.0, loss_var = 0.0;
        if (local_loss) { /* the mistake: this rank's own minibatch statistics */
            loss = count ? buf[N_PARAMS] / count : 0.0;
            loss_var = count ? buf[N_PARAMS + 1] / count : 0.0;
        }
        if (sum_doubles(buf, N_PARAMS + 2) != 0) {
            fprintf(stderr, "rank %d: MPI_Allreduce failed\n", mpi_rank);
            MPI_Abort(MPI_COMM_WORLD, 5);
        }
        for (size_t i = 0; i < N_PARAMS + 2; ++i) buf[i] /= BATCH;
        if (!local_loss) {
            loss = buf[N_PARAMS];
            loss_var = buf[N_PARAMS + 1];
        }
        EXPECT_OK(koala_update(opt, loss, loss_var, params, (const void *const *)grads, NULL));

        /* One process on the whole batch. */
        EXPECT_OK(koala_predict(one, params_whole, NULL));
        static double whole_buf[N_PARAMS + 2];
        batch_sums(&whole, d, step, 0, BATCH, whole_buf);
        for (size_t i = 0; i < N_PARAMS; ++i) grad_whole.flat[i] = whole_buf[i] / BATCH;
        EXPECT_OK(koala_update(one, whole_buf[N_PARAMS] / BATCH, whole_buf[N_PARAMS + 1] / BATCH,
                               params_whole, (const void *const *)grads_whole, NULL));

        const double e = max_rel_diff(model.flat, whole.flat, N_PARAMS);
        CHECK(e <= TOL, "%s: step %d: parameters differ from one process by %.3g", name, step, e);
        if (!(e <= worst)) worst = e;
        const koala_info mine = info_of(opt), ref = info_of(one);
        const double fa[] = {mine.sigma, mine.p00, mine.p01, mine.p11, mine.r, mine.qw};
        const double fb[] = {ref.sigma, ref.p00, ref.p01, ref.p11, ref.r, ref.qw};
        const double ie = max_rel_diff(fa, fb, 6);
        CHECK(ie <= TOL, "%s: step %d: the filter differs from one process by %.3g", name, step,
              ie);
        CHECK(same_on_every_rank(model.flat, sizeof model.flat),
              "%s: step %d: the parameters differ between ranks", name, step);
        CHECK(same_on_every_rank(&mine, sizeof mine),
              "%s: step %d: koala_get_info differs between ranks", name, step);
    }
    koala_destroy(opt);
    koala_destroy(one);
    return worst;
}

int main(int argc, char **argv) {
    mpi_check_init(&argc, &argv);
    const char *path = NULL;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--local-loss"))
            local_loss = 1;
        else if (!path)
            path = argv[i];
        else
            path = NULL, i = argc;
    }
    static dataset data;
    if (!path || mpi_size > 64 || load_digits(path, &data) != 0) {
        if (mpi_rank == 0)
            fprintf(stderr, "usage: mpirun -np N (<= 64) test_data_parallel DIGITS_CSV "
                            "[--local-loss]\n");
        MPI_Finalize();
        return 2;
    }
    int first, count;
    batch_share(mpi_rank, &first, &count);
    printf("test_data_parallel: rank %d of %d takes %d of the %d samples per step%s\n", mpi_rank,
           mpi_size, count, BATCH, local_loss ? " (--local-loss)" : "");
    fflush(stdout);
    const struct {
        koala_method method;
        const char *name;
    } methods[] = {{KOALA_VANILLA, "KOALA-V"}, {KOALA_MOMENTUM, "KOALA-M"},
                   {KOALA_PLUSPLUS, "KOALA++"}};
    for (int m = 0; m < 3; ++m) {
        const int failed_before = check_failures_all();
        const double worst = run_method(methods[m].method, methods[m].name, &data);
        double worst_all = 0.0;
        MPI_Allreduce(&worst, &worst_all, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        const int failed = check_failures_all() - failed_before;
        if (mpi_rank == 0)
            printf("%s - %s: every rank identical; largest difference from one process on the "
                   "whole batch %.3g\n",
                   failed ? "not ok" : "ok", methods[m].name, worst_all);
    }
    return mpi_check_finish("test_data_parallel");
}
