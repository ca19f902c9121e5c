/*
 * train.c - an outside program using an INSTALLED libkoala, the way a user
 * meets it: only <koala.h>, C99, built with `pkg-config --cflags --libs
 * koala` (see run_consumer.sh, which also runs it without the loader
 * cache, like a machine without CUDA libraries).
 *
 * It fits a linear model y = w.a + c to generated data by least squares,
 * minibatch by minibatch, with KOALA-V (float32) and KOALA-M (float64),
 * and checks that the loss falls; it also checks the header/library
 * version and that device memory is refused cleanly where no GPU is usable.
 * Exit status 0 = all checks passed.
 */
#include <koala.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FEATURES 8
#define SAMPLES 512
#define BATCH 64
#define EPOCHS 25

static double data_a[SAMPLES][FEATURES];
static double data_y[SAMPLES];

/* A small LCG so the data is the same on every machine. */
static unsigned long long lcg_state = 12345;
static double uniform(void) {
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) / 9007199254740992.0; /* [0, 1) */
}

static void make_data(void) {
    double w_true[FEATURES];
    for (int f = 0; f < FEATURES; ++f) w_true[f] = 2.0 * uniform() - 1.0;
    for (int s = 0; s < SAMPLES; ++s) {
        double y = 0.5; /* true bias */
        for (int f = 0; f < FEATURES; ++f) {
            data_a[s][f] = 2.0 * uniform() - 1.0;
            y += w_true[f] * data_a[s][f];
        }
        data_y[s] = y + 0.05 * (uniform() - 0.5); /* a little noise */
    }
}

/* Mean squared-error loss over all samples (half the square per sample). */
static double full_loss(const double *w, double c) {
    double sum = 0.0;
    for (int s = 0; s < SAMPLES; ++s) {
        double r = c - data_y[s];
        for (int f = 0; f < FEATURES; ++f) r += w[f] * data_a[s][f];
        sum += 0.5 * r * r;
    }
    return sum / SAMPLES;
}

static int check(int ok, const char *what) {
    if (!ok) fprintf(stderr, "train: FAILED: %s (%s)\n", what, koala_last_error());
    return ok;
}

/* Trains with one method; parameters live in `dtype` buffers, as a float32
 * or float64 framework would hold them. Returns 1 when the loss fell. */
static int train(koala_method method, koala_dtype dtype) {
    koala_config cfg;
    koala_config_init(&cfg, method);
    if (method == KOALA_VANILLA) cfg.sigma = 0.1; /* the reference train.py setting */
    const size_t sizes[2] = {FEATURES, 1};    /* tensor 0: weights, tensor 1: bias */
    koala_optimizer *opt = NULL;
    if (!check(koala_create(&cfg, 2, sizes, dtype, KOALA_HOST, &opt) == KOALA_OK, "create"))
        return 0;

    float w32[FEATURES] = {0}, c32[1] = {0}, gw32[FEATURES], gc32[1];
    double w64[FEATURES] = {0}, c64[1] = {0}, gw64[FEATURES], gc64[1];
    const int f32 = dtype == KOALA_FLOAT32;
    void *params[2] = {f32 ? (void *)w32 : (void *)w64, f32 ? (void *)c32 : (void *)c64};
    const void *grads[2] = {f32 ? (const void *)gw32 : (const void *)gw64,
                            f32 ? (const void *)gc32 : (const void *)gc64};

    double w[FEATURES], c;
    const double start = full_loss(w64, 0.0);
    double final_loss = start;
    int ok = 1;
    for (int epoch = 0; epoch < EPOCHS && ok; ++epoch) {
        if (epoch == 15) ok &= check(koala_set_lr(opt, 0.2) == KOALA_OK, "set_lr"); /* milestone */
        for (int b = 0; b < SAMPLES / BATCH && ok; ++b) {
            ok &= check(koala_predict(opt, params, NULL) == KOALA_OK, "predict");
            /* Forward and backward at the (predicted) parameters. */
            for (int f = 0; f < FEATURES; ++f) w[f] = f32 ? w32[f] : w64[f];
            c = f32 ? c32[0] : c64[0];
            double gw[FEATURES] = {0}, gc = 0.0, loss = 0.0, loss_sq = 0.0;
            for (int s = b * BATCH; s < (b + 1) * BATCH; ++s) {
                double r = c - data_y[s];
                for (int f = 0; f < FEATURES; ++f) r += w[f] * data_a[s][f];
                const double l = 0.5 * r * r; /* per-sample loss */
                loss += l / BATCH;
                loss_sq += l * l / BATCH;
                for (int f = 0; f < FEATURES; ++f) gw[f] += r * data_a[s][f] / BATCH;
                gc += r / BATCH;
            }
            for (int f = 0; f < FEATURES; ++f) {
                gw32[f] = (float)gw[f];
                gw64[f] = gw[f];
            }
            gc32[0] = (float)gc;
            gc64[0] = gc;
            ok &= check(koala_update(opt, loss, loss_sq, params, grads, NULL) == KOALA_OK,
                        "update");
        }
    }
    for (int f = 0; f < FEATURES; ++f) w[f] = f32 ? w32[f] : w64[f];
    c = f32 ? c32[0] : c64[0];
    final_loss = full_loss(w, c);
    koala_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    ok &= check(koala_get_info(opt, NULL, &info) == KOALA_OK, "get_info");
    ok &= check(info.steps == (uint64_t)EPOCHS * (SAMPLES / BATCH), "step count");
    printf("train: %s %s: loss %.4g -> %.4g after %llu steps\n",
           method == KOALA_VANILLA ? "KOALA-V" : "KOALA-M", f32 ? "float32" : "float64", start,
           final_loss, (unsigned long long)info.steps);
    ok &= check(final_loss < 0.05 * start, "the loss fell to under 5% of its start");
    koala_destroy(opt);
    return ok;
}

int main(void) {
    int ok = 1;
    ok &= check(koala_version() == KOALA_VERSION_NUMBER, "koala_version() == KOALA_VERSION_NUMBER");
    ok &= check(strlen(koala_status_string(KOALA_ERROR_BAD_STATE)) > 0, "status string");

    /* Device memory: OK exactly where the plugin loads and a GPU is usable;
     * otherwise a clean UNSUPPORTED with a reason. */
    const koala_status probe = koala_device_probe();
    koala_config cfg;
    koala_config_init(&cfg, KOALA_VANILLA);
    const size_t one = 4;
    koala_optimizer *dev = NULL;
    const koala_status st = koala_create(&cfg, 1, &one, KOALA_FLOAT32, KOALA_DEVICE, &dev);
    if (probe == KOALA_OK) {
        ok &= check(st == KOALA_OK, "device create where koala_device_probe() is OK");
        printf("train: a GPU is usable here\n");
    } else {
        const char *why = koala_last_error();
        ok &= check(st == KOALA_ERROR_UNSUPPORTED, "device create without a GPU: UNSUPPORTED");
        ok &= check(why != NULL && why[0] != '\0', "device create: a message says why");
        ok &= check(dev == NULL, "device create: *out untouched");
        printf("train: no device (%s)\n", why ? why : "");
    }
    koala_destroy(dev);

    make_data();
    ok &= train(KOALA_VANILLA, KOALA_FLOAT32);
    ok &= train(KOALA_MOMENTUM, KOALA_FLOAT64);
    printf("train: %s\n", ok ? "all checks passed" : "FAILED");
    return ok ? 0 : 1;
}
