/*
 * zero_digits: ZeRO-style data-parallel training with KOALA over MPI, in C.
 *
 *   mpirun -np P koala-mpi-digits [--method vanilla|momentum|plusplus]
 *          [--epochs N] [--data PATH] [--two-phase] [--min-accuracy A]
 *
 * The 64-32-10 tanh MLP of examples/c/digits.c on the UCI digits
 * (examples/data/digits.csv; sample i is a test sample when i % 5 == 4).
 * Every rank:
 *   - holds the whole model for its forward and backward pass, and takes
 *     1/P of every global minibatch of 32 samples (data parallelism);
 *   - OWNS one slice of every tensor: elements [n r / P, n (r+1) / P) of a
 *     tensor of n elements (a tensor smaller than P leaves some ranks
 *     without a slice of it). Its optimizer (koala_create_sharded) is made
 *     for these slices only, so KOALA-M's and KOALA++'s two state buffers per
 *     element take 1/P of the memory on each rank (ZeRO stage 1/2);
 *   - per step: koala_predict on its slices (KOALA-M moves them: gather);
 *     forward/backward over its samples; MPI_Reduce_scatter of the summed
 *     gradients so that it receives the global-batch gradient of its own
 *     slices; MPI_Allreduce of the loss sums (the global-batch mean loss and
 *     mean squared loss, the same on every rank); koala_update on its slices,
 *     during which the library calls MPI_Allreduce once on
 *     koala_sums_size() doubles (the per-tensor norms and dot products) and
 *     computes the same filter on every rank; MPI_Allgatherv of the updated
 *     slices to rebuild the whole model everywhere.
 * --two-phase does the library's all-reduce by hand instead of through the
 * callback: koala_update_begin, MPI_Allreduce, koala_update_end.
 *
 * Rank 0 prints the mean training loss and the test accuracy per epoch.
 * With --min-accuracy A the exit status is 1 unless the final test
 * accuracy reaches A (the meson test uses it).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "koala.h"

#ifndef DIGITS_DEFAULT_DATA
#define DIGITS_DEFAULT_DATA "examples/data/digits.csv"
#endif

enum { N_IN = 64, N_HIDDEN = 32, N_OUT = 10, N_SAMPLES_MAX = 2000 };
enum { BATCH = 32, N_TENSORS = 4 };
#define WEIGHT_DECAY 5e-4

static int rank = 0, n_ranks = 1;

/* Stops every rank: with a rank gone, the others would wait forever in
 * their next collective. */
static void die(const char *fmt, const char *detail) {
    fprintf(stderr, "koala-mpi-digits (rank %d): ", rank);
    fprintf(stderr, fmt, detail);
    fprintf(stderr, "\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static void koala_check(koala_status st, const char *what) {
    if (st == KOALA_OK) return;
    fprintf(stderr, "koala-mpi-digits (rank %d): %s failed: %s\n  %s\n", rank, what,
            koala_status_string(st), koala_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
}

/* ---- data (as examples/c/digits.c) --------------------------------------- */

typedef struct dataset {
    int n;
    float x[N_SAMPLES_MAX][N_IN];
    int y[N_SAMPLES_MAX];
} dataset;

static int load_digits(const char *path, dataset *train, dataset *test) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "koala-mpi-digits: cannot open '%s': %s (use --data PATH)\n", path,
                strerror(errno));
        return -1;
    }
    train->n = test->n = 0;
    for (int line = 0;; ++line) {
        float pixels[N_IN];
        int label, k;
        for (k = 0; k < N_IN; ++k)
            if (fscanf(f, "%f ,", &pixels[k]) != 1) break;
        if (k == 0 && feof(f)) break;
        dataset *d = line % 5 == 4 ? test : train;
        if (k != N_IN || fscanf(f, "%d", &label) != 1 || label < 0 || label >= N_OUT ||
            d->n == N_SAMPLES_MAX) {
            fprintf(stderr, "koala-mpi-digits: %s line %d: expected 64 pixels and a label\n",
                    path, line + 1);
            fclose(f);
            return -1;
        }
        for (k = 0; k < N_IN; ++k) d->x[d->n][k] = pixels[k] / 16.0f;
        d->y[d->n++] = label;
    }
    fclose(f);
    return train->n > 0 && test->n > 0 ? 0 : -1;
}

/* The same generator on every rank: the same initial model and batches. */
static unsigned long long rng_state;
static void rng_seed(unsigned long long s) { rng_state = s * 2654435761ULL + 1; }
static double rng_uniform(void) {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- the network ----------------------------------------------------------- */

typedef struct mlp {
    float w1[N_HIDDEN * N_IN], b1[N_HIDDEN], w2[N_OUT * N_HIDDEN], b2[N_OUT];
} mlp;
static const size_t tensor_sizes[N_TENSORS] = {N_HIDDEN * N_IN, N_HIDDEN, N_OUT * N_HIDDEN,
                                               N_OUT};
static float *tensor_of(mlp *m, int t) {
    float *const t_ptr[N_TENSORS] = {m->w1, m->b1, m->w2, m->b2};
    return t_ptr[t];
}

static void init_mlp(mlp *m) {
    const double s1 = 1.0 / sqrt((double)N_IN), s2 = 1.0 / sqrt((double)N_HIDDEN);
    for (int i = 0; i < N_HIDDEN * N_IN; ++i) m->w1[i] = (float)(s1 * (2.0 * rng_uniform() - 1.0));
    for (int i = 0; i < N_HIDDEN; ++i) m->b1[i] = (float)(s1 * (2.0 * rng_uniform() - 1.0));
    for (int i = 0; i < N_OUT * N_HIDDEN; ++i) m->w2[i] = (float)(s2 * (2.0 * rng_uniform() - 1.0));
    for (int i = 0; i < N_OUT; ++i) m->b2[i] = (float)(s2 * (2.0 * rng_uniform() - 1.0));
}

static double forward(const mlp *m, const float *x, int label, double hidden[N_HIDDEN],
                      double prob[N_OUT]) {
    for (int j = 0; j < N_HIDDEN; ++j) {
        double z = m->b1[j];
        for (int k = 0; k < N_IN; ++k) z += (double)m->w1[j * N_IN + k] * x[k];
        hidden[j] = tanh(z);
    }
    double zmax = -HUGE_VAL, logits[N_OUT], sum = 0.0;
    for (int c = 0; c < N_OUT; ++c) {
        double z = m->b2[c];
        for (int j = 0; j < N_HIDDEN; ++j) z += (double)m->w2[c * N_HIDDEN + j] * hidden[j];
        logits[c] = z;
        if (z > zmax) zmax = z;
    }
    for (int c = 0; c < N_OUT; ++c) sum += prob[c] = exp(logits[c] - zmax);
    for (int c = 0; c < N_OUT; ++c) prob[c] /= sum;
    return -(logits[label] - zmax - log(sum));
}

/* Adds the gradients of the losses of samples idx[0..count) (a SUM, not a
 * mean: the ranks' sums add up to the global batch's) into *grad; returns
 * the sum of the losses and their squares in sums[0], sums[1]. */
static void local_gradient(const mlp *m, const dataset *d, const int *idx, int count, mlp *grad,
                           double sums[2]) {
    memset(grad, 0, sizeof *grad);
    sums[0] = sums[1] = 0.0;
    for (int s = 0; s < count; ++s) {
        const float *x = d->x[idx[s]];
        double hidden[N_HIDDEN], prob[N_OUT], dz2[N_OUT];
        const double l = forward(m, x, d->y[idx[s]], hidden, prob);
        sums[0] += l;
        sums[1] += l * l;
        for (int c = 0; c < N_OUT; ++c) dz2[c] = prob[c] - (c == d->y[idx[s]] ? 1.0 : 0.0);
        for (int j = 0; j < N_HIDDEN; ++j) {
            double da = 0.0;
            for (int c = 0; c < N_OUT; ++c) da += (double)m->w2[c * N_HIDDEN + j] * dz2[c];
            const double dz1 = da * (1.0 - hidden[j] * hidden[j]);
            grad->b1[j] += (float)dz1;
            for (int k = 0; k < N_IN; ++k) grad->w1[j * N_IN + k] += (float)(dz1 * x[k]);
        }
        for (int c = 0; c < N_OUT; ++c) {
            grad->b2[c] += (float)dz2[c];
            for (int j = 0; j < N_HIDDEN; ++j)
                grad->w2[c * N_HIDDEN + j] += (float)(dz2[c] * hidden[j]);
        }
    }
}

static double test_accuracy(const mlp *m, const dataset *d) {
    int correct = 0;
    for (int s = 0; s < d->n; ++s) {
        double hidden[N_HIDDEN], prob[N_OUT];
        forward(m, d->x[s], d->y[s], hidden, prob);
        int best = 0;
        for (int c = 1; c < N_OUT; ++c)
            if (prob[c] > prob[best]) best = c;
        correct += best == d->y[s];
    }
    return (double)correct / d->n;
}

/* ---- slices ------------------------------------------------------------------ */

/* Rank r owns elements [slice_begin(t, r), slice_begin(t, r + 1)) of tensor t. */
static size_t slice_begin(int t, int r) {
    return tensor_sizes[t] * (size_t)r / (size_t)n_ranks;
}
static size_t slice_size(int t, int r) { return slice_begin(t, r + 1) - slice_begin(t, r); }

/* The "packed" order the collectives use: rank 0's slices of tensors 0..3,
 * then rank 1's, ... so that each rank's part is contiguous
 * (MPI_Reduce_scatter / MPI_Allgatherv need that). */
typedef struct packing {
    int counts[64], displs[64]; /* per rank, in floats */
    size_t total;
} packing;

static packing make_packing(void) {
    packing p;
    size_t at = 0;
    for (int r = 0; r < n_ranks; ++r) {
        size_t n = 0;
        for (int t = 0; t < N_TENSORS; ++t) n += slice_size(t, r);
        p.counts[r] = (int)n;
        p.displs[r] = (int)at;
        at += n;
    }
    p.total = at;
    return p;
}

static void pack(mlp *m, float *packed) {
    for (int r = 0; r < n_ranks; ++r)
        for (int t = 0; t < N_TENSORS; ++t) {
            const size_t n = slice_size(t, r);
            memcpy(packed, tensor_of(m, t) + slice_begin(t, r), n * sizeof(float));
            packed += n;
        }
}

static void unpack(const float *packed, mlp *m) {
    for (int r = 0; r < n_ranks; ++r)
        for (int t = 0; t < N_TENSORS; ++t) {
            const size_t n = slice_size(t, r);
            memcpy(tensor_of(m, t) + slice_begin(t, r), packed, n * sizeof(float));
            packed += n;
        }
}

/* Rebuilds the whole model on every rank from everyone's slices. */
static void gather_model(mlp *m, const packing *p, float *scratch) {
    pack(m, scratch); /* only this rank's part of scratch is read */
    if (MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, scratch, p->counts, p->displs,
                       MPI_FLOAT, MPI_COMM_WORLD) != MPI_SUCCESS)
        die("%s", "MPI_Allgatherv failed");
    unpack(scratch, m);
}

/* ---- the all-reduce KOALA needs --------------------------------------------- */

/* koala_allreduce_fn over MPI: sums `count` doubles over the communicator in
 * `user`, in place. MPI counts are int: larger buffers go in pieces. A
 * non-zero return makes koala_update fail with KOALA_ERROR_COMMUNICATION and
 * change nothing. */
static int mpi_allreduce_sum(double *buf, size_t count, void *stream, void *user) {
    (void)stream; /* host optimizer: always NULL */
    MPI_Comm comm = *(MPI_Comm *)user;
    while (count > 0) {
        const int n = count > (size_t)INT_MAX ? INT_MAX : (int)count;
        const int rc = MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, comm);
        if (rc != MPI_SUCCESS) return rc;
        buf += n;
        count -= (size_t)n;
    }
    return 0;
}

/* ---- main ----------------------------------------------------------------------- */

static void usage(void) {
    if (rank == 0)
        fprintf(stderr,
                "usage: mpirun -np P koala-mpi-digits [--method vanilla|momentum|plusplus]\n"
                "         [--epochs N] [--data PATH] [--two-phase] [--min-accuracy A]\n");
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm comm = MPI_COMM_WORLD;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &n_ranks);
    /* MPI errors come back as codes: the callback passes them to KOALA. */
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);

    koala_method method = KOALA_MOMENTUM;
    int epochs = 10, two_phase = 0;
    double min_accuracy = -1.0;
    const char *data_path = DIGITS_DEFAULT_DATA;
    for (int i = 1; i < argc; ++i) {
        const int has_value = i + 1 < argc;
        if (!strcmp(argv[i], "--method") && has_value) {
            const char *m = argv[++i];
            if (!strcmp(m, "vanilla")) method = KOALA_VANILLA;
            else if (!strcmp(m, "momentum")) method = KOALA_MOMENTUM;
            else if (!strcmp(m, "plusplus")) method = KOALA_PLUSPLUS;
            else epochs = -1;
        } else if (!strcmp(argv[i], "--epochs") && has_value) {
            epochs = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--data") && has_value) {
            data_path = argv[++i];
        } else if (!strcmp(argv[i], "--min-accuracy") && has_value) {
            min_accuracy = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--two-phase")) {
            two_phase = 1;
        } else {
            epochs = -1;
        }
    }
    if (epochs < 1 || epochs > 1000 || n_ranks > 64) {
        usage();
        MPI_Finalize();
        return 2;
    }
    static dataset train_set, test_set;
    if (load_digits(data_path, &train_set, &test_set)) die("%s", "cannot load the data");

    /* The model (whole, on every rank) and this rank's slices of it. */
    static mlp model, grad;
    rng_seed(1);
    init_mlp(&model);
    const packing packed = make_packing();
    float *scratch = malloc(packed.total * sizeof(float));
    float *grad_packed = malloc(packed.total * sizeof(float));
    float *my_grad = malloc(((size_t)packed.counts[rank] + 1) * sizeof(float));
    if (!scratch || !grad_packed || !my_grad) die("%s", "out of memory");

    size_t n_local = 0, local_sizes[N_TENSORS], global_index[N_TENSORS];
    void *slices[N_TENSORS];
    const void *grad_slices[N_TENSORS];
    size_t at = 0; /* offset of the slice in my part of the reduce-scattered gradient */
    for (int t = 0; t < N_TENSORS; ++t) {
        const size_t n = slice_size(t, rank);
        if (n == 0) continue; /* no slice of this tensor here */
        local_sizes[n_local] = n;
        global_index[n_local] = (size_t)t;
        slices[n_local] = tensor_of(&model, t) + slice_begin(t, rank);
        grad_slices[n_local] = my_grad + at;
        at += n;
        ++n_local;
    }
    uint64_t model_elements = 0;
    for (int t = 0; t < N_TENSORS; ++t) model_elements += tensor_sizes[t];

    koala_config cfg;
    koala_config_init(&cfg, method);
    cfg.weight_decay = WEIGHT_DECAY;
    if (method == KOALA_VANILLA) cfg.sigma = 0.1;
    cfg.threads = 1; /* one rank per core; raise it when each rank has cores of its own */
    koala_shard shard = {0};
    shard.struct_size = sizeof shard;
    shard.n_global = N_TENSORS;
    shard.global_index = global_index;
    shard.global_elements = model_elements;
    shard.allreduce = two_phase ? NULL : mpi_allreduce_sum;
    shard.user = &comm;
    koala_optimizer *opt = NULL;
    koala_check(koala_create_sharded(&cfg, n_local, local_sizes, &shard, KOALA_FLOAT32,
                                     KOALA_HOST, &opt),
                "koala_create_sharded");
    size_t sums_count = 0;
    koala_check(koala_sums_size(opt, &sums_count), "koala_sums_size");
    double *sums = malloc(sums_count * sizeof(double));
    if (!sums) die("%s", "out of memory");

    static const char *const method_names[] = {"", "KOALA-V", "KOALA-M", "KOALA++"};
    if (rank == 0) {
        printf("koala-mpi-digits: %s on %d rank(s), %s; 64-32-10 MLP, %d train / %d test "
               "samples, global batch %d\n",
               method_names[method], n_ranks,
               two_phase ? "koala_update_begin/end + MPI_Allreduce" : "all-reduce callback",
               train_set.n, test_set.n, BATCH);
        printf("every rank owns 1/%d of every tensor; the library's all-reduce: %zu doubles "
               "(%zu bytes) per step\n",
               n_ranks, sums_count, sums_count * sizeof(double));
        fflush(stdout);
    }

    void *const *slice_args = n_local ? slices : NULL;
    int order[N_SAMPLES_MAX];
    for (int i = 0; i < train_set.n; ++i) order[i] = i;
    rng_seed(1001);
    double accuracy = 0.0;
    for (int epoch = 1; epoch <= epochs; ++epoch) {
        for (int i = train_set.n - 1; i > 0; --i) { /* the same shuffle on every rank */
            const int j = (int)(rng_uniform() * (i + 1));
            const int tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }
        double epoch_loss = 0.0;
        int steps = 0;
        for (int start = 0; start < train_set.n; start += BATCH) {
            const int batch = train_set.n - start < BATCH ? train_set.n - start : BATCH;
            /* My share of this global batch. */
            const int first = batch * rank / n_ranks, last = batch * (rank + 1) / n_ranks;

            koala_check(koala_predict(opt, slice_args, NULL), "koala_predict");
            if (method == KOALA_MOMENTUM) gather_model(&model, &packed, scratch);

            double loss_sums[2];
            local_gradient(&model, &train_set, order + start + first, last - first, &grad,
                           loss_sums);
            /* Gradient of my slices, summed over ranks; then the batch mean. */
            pack(&grad, grad_packed);
            if (MPI_Reduce_scatter(grad_packed, my_grad, packed.counts, MPI_FLOAT, MPI_SUM,
                                   comm) != MPI_SUCCESS)
                die("%s", "MPI_Reduce_scatter failed");
            for (int i = 0; i < packed.counts[rank]; ++i) my_grad[i] /= (float)batch;
            /* loss and loss_var: global-batch means, like the gradient. */
            if (MPI_Allreduce(MPI_IN_PLACE, loss_sums, 2, MPI_DOUBLE, MPI_SUM, comm) !=
                MPI_SUCCESS)
                die("%s", "MPI_Allreduce failed");
            const double loss = loss_sums[0] / batch, loss_var = loss_sums[1] / batch;

            if (!two_phase) {
                koala_check(koala_update(opt, loss, loss_var, slice_args, grad_slices, NULL),
                            "koala_update");
            } else {
                koala_check(koala_update_begin(opt, slice_args, grad_slices, sums, NULL),
                            "koala_update_begin");
                if (mpi_allreduce_sum(sums, sums_count, NULL, &comm) != 0)
                    die("%s", "MPI_Allreduce of the partial sums failed");
                koala_check(koala_update_end(opt, loss, loss_var, slice_args, grad_slices, sums,
                                             NULL),
                            "koala_update_end");
            }
            gather_model(&model, &packed, scratch);
            epoch_loss += loss;
            ++steps;
        }
        if (rank == 0) {
            accuracy = test_accuracy(&model, &test_set);
            printf("epoch %3d  train loss %.4f  test accuracy %5.1f%%\n", epoch,
                   epoch_loss / steps, 100.0 * accuracy);
            fflush(stdout);
        }
    }

    /* Every rank ends with the same filter (the library computes it from
     * the same summed buffer everywhere) and the same model. */
    koala_info info = {0};
    info.struct_size = sizeof info;
    koala_check(koala_get_info(opt, NULL, &info), "koala_get_info");
    double mine[3] = {info.r, info.sigma, info.p00}, lowest[3], highest[3];
    MPI_Allreduce(mine, lowest, 3, MPI_DOUBLE, MPI_MIN, comm);
    MPI_Allreduce(mine, highest, 3, MPI_DOUBLE, MPI_MAX, comm);
    int ok = memcmp(lowest, highest, sizeof lowest) == 0;
    if (rank == 0) {
        printf("filter after %llu steps: R %.6g%s\n", (unsigned long long)info.steps, info.r,
               ok ? " (identical on every rank)" : " (RANKS DIFFER)");
        if (min_accuracy >= 0 && accuracy < min_accuracy) {
            fprintf(stderr, "koala-mpi-digits: test accuracy %.3f is below %.3f\n", accuracy,
                    min_accuracy);
            ok = 0;
        }
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, comm);
    koala_destroy(opt);
    free(sums);
    free(my_grad);
    free(grad_packed);
    free(scratch);
    MPI_Finalize();
    return ok ? 0 : 1;
}
