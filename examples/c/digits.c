/*
 * digits: train a small neural network on handwritten digits with KOALA-V,
 * KOALA-M, KOALA++ and plain SGD, from C, with nothing but koala.h and libc/libm.
 *
 *   koala-digits [--epochs N] [--seed S] [--data PATH] [--out DIR] [--min-accuracy A]
 *
 * The network is a 64-32-10 MLP (tanh hidden layer, softmax cross-entropy)
 * with a hand-written forward and backward pass. Each optimizer starts from
 * the same initial weights and sees the same minibatches in the same order.
 * Data: examples/data/digits.csv (UCI optical digits, see its README): sample
 * i is a test sample when i % 5 == 4, 1438 train / 359 test.
 *
 * Per epoch it prints the mean training loss and the test accuracy; at the
 * end a table, and it writes DIR/digits-loss.csv and DIR/digits-loss.svg
 * (loss and accuracy curves, drawn by this program).
 * With --min-accuracy A the exit status is 1 unless every optimizer reaches
 * test accuracy >= A (the smoke test uses it).
 *
 * The KOALA calling contract, as in every training loop:
 *     koala_predict(opt, params, NULL);            before the forward pass
 *     forward: per-sample losses l_j
 *     loss = mean l_j;  loss_var = mean l_j^2      (the second feeds KOALA's R)
 *     backward of `loss` into grads
 *     koala_update(opt, loss, loss_var, params, grads, NULL);
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "koala.h"

#ifndef DIGITS_DEFAULT_DATA
#define DIGITS_DEFAULT_DATA "examples/data/digits.csv"
#endif

enum { N_IN = 64, N_HIDDEN = 32, N_OUT = 10, N_SAMPLES_MAX = 2000 };
enum { BATCH = 32 }; /* 1438 training samples: 45 steps per epoch */
enum { N_TENSORS = 4 };
enum { N_OPTIMIZERS = 4 };

/* Reference training settings (ALGORITHM.md section 8 / the authors' train.py)
 * where they carry over to this small problem. */
#define WEIGHT_DECAY 5e-4
#define KOALA_V_SIGMA 0.1 /* train.py's sigma; q = 1 is the class default */
#define SGD_LR 0.1

/* ---- data --------------------------------------------------------------- */

typedef struct dataset {
    int n;
    float x[N_SAMPLES_MAX][N_IN];
    int y[N_SAMPLES_MAX];
} dataset;

/* Reads the CSV (64 pixel counts 0..16 and a label per line) and splits it:
 * line i goes to the test set when i % 5 == 4. Returns 0 on success. */
static int load_digits(const char *path, dataset *train, dataset *test) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "digits: cannot open data file '%s': %s (use --data PATH)\n", path,
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
        if (k != N_IN || fscanf(f, "%d", &label) != 1 || label < 0 || label >= N_OUT) {
            fprintf(stderr, "digits: %s line %d: expected 64 pixels and a label 0..9\n", path,
                    line + 1);
            fclose(f);
            return -1;
        }
        dataset *d = line % 5 == 4 ? test : train;
        if (d->n == N_SAMPLES_MAX) {
            fprintf(stderr, "digits: %s has more than %d samples\n", path, N_SAMPLES_MAX);
            fclose(f);
            return -1;
        }
        for (k = 0; k < N_IN; ++k) d->x[d->n][k] = pixels[k] / 16.0f;
        d->y[d->n++] = label;
    }
    fclose(f);
    if (train->n == 0 || test->n == 0) {
        fprintf(stderr, "digits: %s holds too few samples\n", path);
        return -1;
    }
    return 0;
}

/* ---- a reproducible random generator (the same on every platform) ------- */

static unsigned long long rng_state;
static void rng_seed(unsigned long long s) { rng_state = s * 2654435761ULL + 1; }
static double rng_uniform(void) { /* in [0, 1) */
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- the network -------------------------------------------------------- */

/* Parameters in the order KOALA sees its blocks (one block per tensor). */
typedef struct mlp {
    float w1[N_HIDDEN * N_IN], b1[N_HIDDEN], w2[N_OUT * N_HIDDEN], b2[N_OUT];
} mlp;

static const size_t tensor_sizes[N_TENSORS] = {N_HIDDEN * N_IN, N_HIDDEN, N_OUT * N_HIDDEN,
                                               N_OUT};

static void tensor_pointers(mlp *m, void *out[N_TENSORS]) {
    out[0] = m->w1;
    out[1] = m->b1;
    out[2] = m->w2;
    out[3] = m->b2;
}

/* Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for Linear. */
static void init_mlp(mlp *m) {
    const double s1 = 1.0 / sqrt((double)N_IN), s2 = 1.0 / sqrt((double)N_HIDDEN);
    for (int i = 0; i < N_HIDDEN * N_IN; ++i) m->w1[i] = (float)(s1 * (2.0 * rng_uniform() - 1.0));
    for (int i = 0; i < N_HIDDEN; ++i) m->b1[i] = (float)(s1 * (2.0 * rng_uniform() - 1.0));
    for (int i = 0; i < N_OUT * N_HIDDEN; ++i) m->w2[i] = (float)(s2 * (2.0 * rng_uniform() - 1.0));
    for (int i = 0; i < N_OUT; ++i) m->b2[i] = (float)(s2 * (2.0 * rng_uniform() - 1.0));
}

/* Forward pass of one sample: hidden activations, class probabilities and
 * the cross-entropy loss. Returns the loss. */
static double forward(const mlp *m, const float *x, int label, double hidden[N_HIDDEN],
                      double prob[N_OUT]) {
    for (int j = 0; j < N_HIDDEN; ++j) {
        double z = m->b1[j];
        for (int k = 0; k < N_IN; ++k) z += (double)m->w1[j * N_IN + k] * x[k];
        hidden[j] = tanh(z);
    }
    double zmax = -HUGE_VAL, logits[N_OUT];
    for (int c = 0; c < N_OUT; ++c) {
        double z = m->b2[c];
        for (int j = 0; j < N_HIDDEN; ++j) z += (double)m->w2[c * N_HIDDEN + j] * hidden[j];
        logits[c] = z;
        if (z > zmax) zmax = z;
    }
    double sum = 0.0;
    for (int c = 0; c < N_OUT; ++c) sum += prob[c] = exp(logits[c] - zmax);
    for (int c = 0; c < N_OUT; ++c) prob[c] /= sum;
    return -(logits[label] - zmax - log(sum)); /* -log softmax, stable */
}

/* Forward and backward over a minibatch: grads = d(mean loss)/d(params).
 * Returns the mean loss and the mean squared loss in *loss_var. */
static double batch_gradient(const mlp *m, const dataset *d, const int *idx, int count, mlp *grad,
                             double *loss_var) {
    memset(grad, 0, sizeof *grad);
    double sum_l = 0.0, sum_l2 = 0.0;
    for (int s = 0; s < count; ++s) {
        const float *x = d->x[idx[s]];
        double hidden[N_HIDDEN], prob[N_OUT], dz2[N_OUT], dz1[N_HIDDEN];
        const double l = forward(m, x, d->y[idx[s]], hidden, prob);
        sum_l += l;
        sum_l2 += l * l;
        for (int c = 0; c < N_OUT; ++c)
            dz2[c] = (prob[c] - (c == d->y[idx[s]] ? 1.0 : 0.0)) / count;
        for (int j = 0; j < N_HIDDEN; ++j) {
            double da = 0.0;
            for (int c = 0; c < N_OUT; ++c) da += (double)m->w2[c * N_HIDDEN + j] * dz2[c];
            dz1[j] = da * (1.0 - hidden[j] * hidden[j]);
        }
        for (int c = 0; c < N_OUT; ++c) {
            grad->b2[c] += (float)dz2[c];
            for (int j = 0; j < N_HIDDEN; ++j) grad->w2[c * N_HIDDEN + j] += (float)(dz2[c] * hidden[j]);
        }
        for (int j = 0; j < N_HIDDEN; ++j) {
            grad->b1[j] += (float)dz1[j];
            for (int k = 0; k < N_IN; ++k) grad->w1[j * N_IN + k] += (float)(dz1[j] * x[k]);
        }
    }
    *loss_var = sum_l2 / count;
    return sum_l / count;
}

/* Mean loss and accuracy of the model on a whole set. */
static void evaluate(const mlp *m, const dataset *d, double *loss, double *accuracy) {
    double sum = 0.0;
    int correct = 0;
    for (int s = 0; s < d->n; ++s) {
        double hidden[N_HIDDEN], prob[N_OUT];
        sum += forward(m, d->x[s], d->y[s], hidden, prob);
        int best = 0;
        for (int c = 1; c < N_OUT; ++c)
            if (prob[c] > prob[best]) best = c;
        correct += best == d->y[s];
    }
    *loss = sum / d->n;
    *accuracy = (double)correct / d->n;
}

/* ---- optimizers ----------------------------------------------------------- */

typedef enum { OPT_KOALA_V, OPT_KOALA_M, OPT_KOALA_PP, OPT_SGD } optimizer_kind;
static const char *const optimizer_names[N_OPTIMIZERS] = {"KOALA-V", "KOALA-M", "KOALA++", "SGD"};
static const char *const optimizer_colors[N_OPTIMIZERS] = {"#1f77b4", "#d62728", "#2ca02c",
                                                           "#7f7f7f"};
static const koala_method optimizer_methods[N_OPTIMIZERS] = {KOALA_VANILLA, KOALA_MOMENTUM,
                                                             KOALA_PLUSPLUS, 0};

typedef struct curve {
    double train_loss[1024]; /* index = epoch; [0] = before training (full-set loss) */
    double test_loss[1024];
    double test_accuracy[1024];
} curve;

typedef struct run_result {
    double final_train_loss, final_train_accuracy, test_loss, test_accuracy, seconds;
} run_result;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int koala_check(koala_status st, const char *what) {
    if (st == KOALA_OK) return 0;
    fprintf(stderr, "digits: %s failed: %s\n  %s\n", what, koala_status_string(st),
            koala_last_error());
    return -1;
}

/* Trains one model from `init` with optimizer `kind`; minibatch order comes
 * from `seed`, so every optimizer sees the same batches. */
static int train(optimizer_kind kind, const mlp *init, const dataset *train_set,
                 const dataset *test_set, int epochs, unsigned long long seed, curve *c,
                 run_result *res) {
    static mlp model, grad;
    model = *init;
    void *params[N_TENSORS], *grad_ptrs[N_TENSORS];
    tensor_pointers(&model, params);
    tensor_pointers(&grad, grad_ptrs);

    koala_optimizer *opt = NULL;
    if (kind != OPT_SGD) {
        koala_config cfg;
        koala_config_init(&cfg, optimizer_methods[kind]);
        cfg.weight_decay = WEIGHT_DECAY;
        if (kind == OPT_KOALA_V) cfg.sigma = KOALA_V_SIGMA;
        if (koala_check(koala_create(&cfg, N_TENSORS, tensor_sizes, KOALA_FLOAT32, KOALA_HOST,
                                     &opt),
                        "koala_create"))
            return -1;
    }

    int order[N_SAMPLES_MAX];
    for (int i = 0; i < train_set->n; ++i) order[i] = i;
    rng_seed(seed);
    evaluate(&model, train_set, &c->train_loss[0], &res->final_train_accuracy);
    evaluate(&model, test_set, &c->test_loss[0], &c->test_accuracy[0]);

    const double t0 = now_seconds();
    for (int epoch = 1; epoch <= epochs; ++epoch) {
        for (int i = train_set->n - 1; i > 0; --i) { /* Fisher-Yates shuffle */
            const int j = (int)(rng_uniform() * (i + 1));
            const int t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        double epoch_loss = 0.0;
        int steps = 0;
        for (int start = 0; start < train_set->n; start += BATCH) {
            const int count = train_set->n - start < BATCH ? train_set->n - start : BATCH;
            if (opt && koala_check(koala_predict(opt, params, NULL), "koala_predict")) goto fail;
            double loss_var;
            const double loss = batch_gradient(&model, train_set, order + start, count, &grad,
                                               &loss_var);
            if (opt) {
                if (koala_check(koala_update(opt, loss, loss_var, params,
                                             (const void *const *)grad_ptrs, NULL),
                                "koala_update"))
                    goto fail;
            } else { /* plain SGD with L2 weight decay */
                for (int t = 0; t < N_TENSORS; ++t) {
                    float *x = params[t];
                    const float *g = grad_ptrs[t];
                    for (size_t k = 0; k < tensor_sizes[t]; ++k)
                        x[k] -= (float)(SGD_LR * (g[k] + WEIGHT_DECAY * x[k]));
                }
            }
            epoch_loss += loss;
            ++steps;
        }
        c->train_loss[epoch] = epoch_loss / steps;
        /* Evaluate on the posterior weights (after update, before the next
         * predict), as the reference does. */
        evaluate(&model, test_set, &c->test_loss[epoch], &c->test_accuracy[epoch]);
        printf("  %-7s epoch %3d  train loss %.4f  test loss %.4f  test accuracy %5.1f%%\n",
               optimizer_names[kind], epoch, c->train_loss[epoch], c->test_loss[epoch],
               100.0 * c->test_accuracy[epoch]);
        fflush(stdout);
    }
    res->seconds = now_seconds() - t0;
    evaluate(&model, train_set, &res->final_train_loss, &res->final_train_accuracy);
    evaluate(&model, test_set, &res->test_loss, &res->test_accuracy);
    koala_destroy(opt);
    return 0;
fail:
    koala_destroy(opt);
    return -1;
}

/* ---- output files -------------------------------------------------------- */

static int write_csv(const char *path, const curve *curves, int epochs) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "digits: cannot write '%s': %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "epoch,optimizer,train_loss,test_loss,test_accuracy\n");
    for (int o = 0; o < N_OPTIMIZERS; ++o)
        for (int e = 0; e <= epochs; ++e)
            fprintf(f, "%d,%s,%.6f,%.6f,%.6f\n", e, optimizer_names[o], curves[o].train_loss[e],
                    curves[o].test_loss[e], curves[o].test_accuracy[e]);
    return fclose(f) == 0 ? 0 : -1;
}

/* One panel of the SVG: series[o][0..epochs] against the epoch, y on a log10
 * axis when `log_y`. */
typedef struct panel {
    double left, top, width, height;
    const char *title;
    int log_y;
    double y_min, y_max; /* data units */
} panel;

static double panel_y(const panel *p, double v) {
    double lo = p->y_min, hi = p->y_max;
    if (p->log_y) v = log10(v), lo = log10(lo), hi = log10(hi);
    if (v < lo) v = lo;
    if (v > hi) v = hi;
    return p->top + p->height * (1.0 - (v - lo) / (hi - lo));
}

static double panel_x(const panel *p, int epoch, int epochs) {
    return p->left + p->width * (double)epoch / (double)(epochs > 0 ? epochs : 1);
}

static void draw_panel(FILE *f, const panel *p, const double *const series[N_OPTIMIZERS],
                       int epochs) {
    fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#333'/>\n",
            p->left, p->top, p->width, p->height);
    fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='15'>%s</text>\n",
            p->left + p->width / 2, p->top - 10, p->title);
    /* y grid and labels */
    if (p->log_y) {
        for (double d = pow(10.0, floor(log10(p->y_min))); d <= p->y_max * 1.0001; d *= 10.0)
            for (int k = 1; k < 10; ++k) {
                const double v = d * k;
                if (v < p->y_min || v > p->y_max) continue;
                const double y = panel_y(p, v);
                fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>\n",
                        p->left, y, p->left + p->width, y);
                if (k == 1 || k == 2 || k == 5)
                    fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='end' font-size='11'>%g</text>\n",
                            p->left - 4, y + 4, v);
            }
    } else {
        for (int k = 0; k <= 5; ++k) {
            const double v = p->y_min + (p->y_max - p->y_min) * k / 5.0;
            const double y = panel_y(p, v);
            fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>\n", p->left,
                    y, p->left + p->width, y);
            fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='end' font-size='11'>%g</text>\n",
                    p->left - 4, y + 4, v);
        }
    }
    /* x labels: about six epoch ticks */
    const int step = epochs <= 6 ? 1 : (epochs + 5) / 6;
    for (int e = 0; e <= epochs; e += step)
        fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='11'>%d</text>\n",
                panel_x(p, e, epochs), p->top + p->height + 16, e);
    fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='12'>epoch</text>\n",
            p->left + p->width / 2, p->top + p->height + 34);
    for (int o = 0; o < N_OPTIMIZERS; ++o) {
        fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='2' points='",
                optimizer_colors[o]);
        for (int e = 0; e <= epochs; ++e)
            fprintf(f, "%.1f,%.1f ", panel_x(p, e, epochs), panel_y(p, series[o][e]));
        fprintf(f, "'/>\n");
    }
}

static int write_svg(const char *path, const curve *curves, int epochs, int n_train, int n_test) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "digits: cannot write '%s': %s\n", path, strerror(errno));
        return -1;
    }
    double lo = HUGE_VAL, hi = 0.0, acc_lo = 1.0;
    for (int o = 0; o < N_OPTIMIZERS; ++o)
        for (int e = 0; e <= epochs; ++e) {
            if (curves[o].train_loss[e] > 0 && curves[o].train_loss[e] < lo) lo = curves[o].train_loss[e];
            if (curves[o].train_loss[e] > hi) hi = curves[o].train_loss[e];
            if (curves[o].test_accuracy[e] < acc_lo) acc_lo = curves[o].test_accuracy[e];
        }
    /* Whole decades for the loss axis, tenths for the accuracy axis. */
    panel loss_panel = {70, 50, 380, 260, "training loss (mean over epoch, log scale)", 1,
                        pow(10.0, floor(log10(lo))), pow(10.0, ceil(log10(hi)))};
    panel acc_panel = {540, 50, 380, 260, "test accuracy", 0, floor(acc_lo * 10.0) / 10.0, 1.0};
    const double *loss_series[N_OPTIMIZERS], *acc_series[N_OPTIMIZERS];
    for (int o = 0; o < N_OPTIMIZERS; ++o) {
        loss_series[o] = curves[o].train_loss;
        acc_series[o] = curves[o].test_accuracy;
    }
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='960' height='400' "
               "font-family='sans-serif'>\n<rect width='960' height='400' fill='white'/>\n");
    draw_panel(f, &loss_panel, loss_series, epochs);
    draw_panel(f, &acc_panel, acc_series, epochs);
    for (int o = 0; o < N_OPTIMIZERS; ++o) {
        const double x = 300 + 140 * o;
        fprintf(f, "<line x1='%.0f' y1='378' x2='%.0f' y2='378' stroke='%s' stroke-width='3'/>\n", x,
                x + 24, optimizer_colors[o]);
        fprintf(f, "<text x='%.0f' y='382' font-size='13'>%s</text>\n", x + 30, optimizer_names[o]);
    }
    fprintf(f, "<text x='480' y='22' text-anchor='middle' font-size='14'>libkoala demo: 64-32-10 "
               "MLP on UCI digits (%d train / %d test), batch %d</text>\n</svg>\n",
            n_train, n_test, BATCH);
    return fclose(f) == 0 ? 0 : -1;
}

/* ---- main ----------------------------------------------------------------- */

static void usage(void) {
    fprintf(stderr,
            "usage: koala-digits [--epochs N] [--seed S] [--data PATH] [--out DIR] [--min-accuracy A]\n"
            "  --epochs N        training epochs, 1..1000 (default 30)\n"
            "  --seed S          seed of the initial weights and batch order (default 1)\n"
            "  --data PATH       digits CSV (default %s)\n"
            "  --out DIR         where digits-loss.csv/.svg go (default .)\n"
            "  --min-accuracy A  exit 1 unless every optimizer reaches test accuracy >= A\n",
            DIGITS_DEFAULT_DATA);
}

int main(int argc, char **argv) {
    int epochs = 30;
    unsigned long long seed = 1;
    const char *data_path = DIGITS_DEFAULT_DATA, *out_dir = ".";
    double min_accuracy = -1.0;
    for (int i = 1; i < argc; ++i) {
        const int has_value = i + 1 < argc;
        if (!strcmp(argv[i], "--epochs") && has_value) epochs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && has_value) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--data") && has_value) data_path = argv[++i];
        else if (!strcmp(argv[i], "--out") && has_value) out_dir = argv[++i];
        else if (!strcmp(argv[i], "--min-accuracy") && has_value) min_accuracy = atof(argv[++i]);
        else {
            usage();
            return 2;
        }
    }
    if (epochs < 1 || epochs > 1000) {
        fprintf(stderr, "digits: --epochs must be in 1..1000\n");
        return 2;
    }
    if (mkdir(out_dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "digits: cannot create output directory '%s': %s\n", out_dir,
                strerror(errno));
        return 1;
    }

    static dataset train_set, test_set;
    if (load_digits(data_path, &train_set, &test_set)) return 1;
    printf("libkoala %u demo: 64-32-10 tanh MLP on UCI optical digits\n", koala_version());
    printf("data: %s, %d train / %d test samples; batch %d, %d epochs, seed %llu\n", data_path,
           train_set.n, test_set.n, BATCH, epochs, seed);
    printf("KOALA-V: sigma %.1f, q 1, weight decay %g; KOALA-M, KOALA++: class defaults, weight "
           "decay %g; SGD: lr %g, weight decay %g\n\n",
           KOALA_V_SIGMA, WEIGHT_DECAY, WEIGHT_DECAY, SGD_LR, WEIGHT_DECAY);

    static mlp init;
    rng_seed(seed);
    init_mlp(&init);
    static curve curves[N_OPTIMIZERS];
    run_result results[N_OPTIMIZERS];
    for (int o = 0; o < N_OPTIMIZERS; ++o) {
        printf("%s\n", optimizer_names[o]);
        if (train((optimizer_kind)o, &init, &train_set, &test_set, epochs, seed + 1000, &curves[o],
                  &results[o]))
            return 1;
    }

    printf("\n| optimizer | final train loss | train accuracy | test loss | test accuracy | time (s) |\n");
    printf("|-----------|------------------|----------------|-----------|---------------|----------|\n");
    int ok = 1;
    for (int o = 0; o < N_OPTIMIZERS; ++o) {
        const run_result *r = &results[o];
        printf("| %-9s | %16.4f | %13.1f%% | %9.4f | %12.1f%% | %8.2f |\n", optimizer_names[o],
               r->final_train_loss, 100.0 * r->final_train_accuracy, r->test_loss,
               100.0 * r->test_accuracy, r->seconds);
        if (r->test_accuracy < min_accuracy || !(r->final_train_loss == r->final_train_loss)) ok = 0;
    }

    char csv_path[4096], svg_path[4096];
    snprintf(csv_path, sizeof csv_path, "%s/digits-loss.csv", out_dir);
    snprintf(svg_path, sizeof svg_path, "%s/digits-loss.svg", out_dir);
    if (write_csv(csv_path, curves, epochs) ||
        write_svg(svg_path, curves, epochs, train_set.n, test_set.n))
        return 1;
    printf("\nwrote %s and %s\n", csv_path, svg_path);
    if (!ok) {
        fprintf(stderr, "digits: an optimizer stayed below test accuracy %.3f\n", min_accuracy);
        return 1;
    }
    return 0;
}
