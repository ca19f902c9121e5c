/*
 * gen_v1_data.c - writes the libkoala 1.0 checkpoints and the 1.0 results
 * of their continuation that tests/c/test_checkpoint.c checks this library
 * against. Build it against the 1.0 header and library (make_v1_data.sh
 * does: commit f596f19), not against this tree.
 *
 * For KOALA-V and KOALA-M, float32 and float64, weight decay 0 and 5e-4,
 * it trains V1_BEFORE steps of tests/c/v1_problem.h (a NULL gradient on
 * step 2), saves a checkpoint either after that update (phase 0) or after
 * the next predict (phase 1), and records the parameters at the save and
 * after each of the next V1_AFTER updates (a NULL gradient on one of them,
 * koala_set_lr on another), with koala_info's filter scalars.
 *
 * usage: gen_v1_data OUT_DIR
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "koala-1.0.h"

#include "v1_problem.h"

static void die(const char *what) {
    fprintf(stderr, "gen_v1_data: %s (%s)\n", what, koala_last_error());
    exit(1);
}

static void put_u64(FILE *f, uint64_t v) {
    unsigned char b[8];
    int k;
    for (k = 0; k < 8; ++k) b[k] = (unsigned char)(v >> (8 * k));
    if (fwrite(b, 1, 8, f) != 8) die("write");
}

static void put_f64(FILE *f, double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    put_u64(f, u);
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) die(path);
}

typedef struct {
    koala_dtype dtype;
    double store64[V1_TENSORS][V1_ELEMENTS];
    float store32[V1_TENSORS][V1_ELEMENTS];
    double grad64[V1_TENSORS][V1_ELEMENTS];
    float grad32[V1_TENSORS][V1_ELEMENTS];
    void *params[V1_TENSORS];
    const void *grads[V1_TENSORS];
} tensors;

static void tensors_init(tensors *s, koala_dtype dtype) {
    size_t t, i;
    s->dtype = dtype;
    for (t = 0; t < V1_TENSORS; ++t) {
        for (i = 0; i < v1_sizes[t]; ++i) {
            s->store64[t][i] = v1_start(t, i);
            s->store32[t][i] = (float)v1_start(t, i);
        }
        s->params[t] = dtype == KOALA_FLOAT32 ? (void *)s->store32[t] : (void *)s->store64[t];
    }
}

static void load_grads(tensors *s, unsigned k) {
    size_t t, i;
    for (t = 0; t < V1_TENSORS; ++t) {
        for (i = 0; i < v1_sizes[t]; ++i) {
            s->grad64[t][i] = v1_grad(k, t, i);
            s->grad32[t][i] = (float)v1_grad(k, t, i);
        }
        s->grads[t] = v1_grad_is_null(k, t) ? NULL
                      : s->dtype == KOALA_FLOAT32 ? (const void *)s->grad32[t]
                                                  : (const void *)s->grad64[t];
    }
}

static void put_params(FILE *f, const tensors *s) {
    size_t t, i;
    for (t = 0; t < V1_TENSORS; ++t)
        for (i = 0; i < v1_sizes[t]; ++i)
            put_f64(f, s->dtype == KOALA_FLOAT32 ? (double)s->store32[t][i] : s->store64[t][i]);
}

static void update(koala_optimizer *opt, tensors *s, unsigned k) {
    load_grads(s, k);
    if (k == V1_SET_LR_STEP && koala_set_lr(opt, V1_SET_LR) != KOALA_OK) die("set_lr");
    if (koala_update(opt, v1_loss(k), v1_loss_var(k), s->params, s->grads, NULL) != KOALA_OK)
        die("update");
}

static void one_set(const char *dir, koala_method method, koala_dtype dtype, double wd,
                    int phase) {
    char name[512], path[600];
    koala_config cfg;
    koala_optimizer *opt = NULL;
    tensors s;
    unsigned k;
    size_t size = 0, t;
    unsigned char *ckpt;
    FILE *f;
    koala_config_init(&cfg, method);
    V1_CONFIGURE(cfg, wd);
    if (koala_create(&cfg, V1_TENSORS, v1_sizes, dtype, KOALA_HOST, &opt) != KOALA_OK)
        die("create");
    tensors_init(&s, dtype);
    for (k = 0; k < V1_BEFORE; ++k) {
        if (koala_predict(opt, s.params, NULL) != KOALA_OK) die("predict");
        update(opt, &s, k);
    }
    if (phase == 1 && koala_predict(opt, s.params, NULL) != KOALA_OK) die("predict");
    if (koala_state_size(opt, &size) != KOALA_OK) die("state_size");
    ckpt = malloc(size);
    if (!ckpt || koala_state_save(opt, ckpt, size, NULL) != KOALA_OK) die("state_save");

    snprintf(name, sizeof name, "v1_%c%s_%s_%s", method == KOALA_VANILLA ? 'v' : 'm',
             dtype == KOALA_FLOAT32 ? "32" : "64", wd == 0.0 ? "nowd" : "wd",
             phase == 0 ? "updated" : "predicted");
    snprintf(path, sizeof path, "%s/%s.ckpt", dir, name);
    write_bytes(path, ckpt, size);
    free(ckpt);

    snprintf(path, sizeof path, "%s/%s.expected", dir, name);
    f = fopen(path, "wb");
    if (!f) die(path);
    if (fwrite(V1_EXPECTED_MAGIC, 1, 8, f) != 8) die("write");
    put_u64(f, (uint64_t)method);
    put_u64(f, (uint64_t)dtype);
    put_u64(f, V1_TENSORS);
    for (t = 0; t < V1_TENSORS; ++t) put_u64(f, v1_sizes[t]);
    put_u64(f, V1_BEFORE);
    put_u64(f, V1_AFTER);
    put_u64(f, (uint64_t)phase);
    put_f64(f, wd);
    put_params(f, &s);
    for (k = V1_BEFORE; k < V1_BEFORE + V1_AFTER; ++k) {
        koala_info info;
        if (!(phase == 1 && k == V1_BEFORE) && koala_predict(opt, s.params, NULL) != KOALA_OK)
            die("predict");
        update(opt, &s, k);
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        if (koala_get_info(opt, NULL, &info) != KOALA_OK) die("get_info");
        put_params(f, &s);
        put_f64(f, info.sigma);
        put_f64(f, info.p00);
        put_f64(f, info.p01);
        put_f64(f, info.p11);
        put_f64(f, info.r);
        put_f64(f, info.qw);
        put_u64(f, info.steps);
    }
    if (fclose(f) != 0) die(path);
    koala_destroy(opt);
    printf("gen_v1_data: %s/%s.{ckpt,expected} (%zu-byte checkpoint)\n", dir, name, size);
}

int main(int argc, char **argv) {
    static const koala_method methods[2] = {KOALA_VANILLA, KOALA_MOMENTUM};
    static const koala_dtype dtypes[2] = {KOALA_FLOAT32, KOALA_FLOAT64};
    static const double wds[2] = {0.0, 5e-4};
    int m, d, w, phase;
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
        return 2;
    }
    if (koala_version() != 10000) {
        fprintf(stderr, "gen_v1_data: this must run against libkoala 1.0.0, not %u\n",
                koala_version());
        return 1;
    }
    for (m = 0; m < 2; ++m)
        for (d = 0; d < 2; ++d)
            for (w = 0; w < 2; ++w)
                for (phase = 0; phase < 2; ++phase)
                    one_set(argv[1], methods[m], dtypes[d], wds[w], phase);
    return 0;
}
