/*
 * test_abi_1_0.c - a program written against libkoala 1.0, run against this
 * library: it is compiled with the frozen 1.0 header (koala-1.0.h, a copy of
 * include/koala.h at commit f596f19), so its koala_config and koala_info are
 * 1.0's, smaller than today's.
 *
 * For KOALA-V and KOALA-M in float32 and float64 it calls every 1.0 entry
 * point: koala_config_init, koala_create, koala_predict, koala_update,
 * koala_update_ptr, koala_get_info, koala_set_lr, koala_state_size /
 * save / load, koala_status_string, koala_last_error, koala_version,
 * koala_device_probe and koala_destroy, and checks
 *   - guard bytes placed right after its koala_config and koala_info are
 *     untouched after every call (the library writes no more than the 1.0
 *     struct; a non-zero guard also shows if the library read it as fields);
 *   - the same structs placed at the very end of a page whose next page is
 *     inaccessible: any read or write beyond them crashes the test;
 *   - koala_config_init sets struct_size to the 1.0 size and the 1.0
 *     defaults, and writes every byte of the struct (no stale bytes);
 *   - koala_create accepts the 1.0 struct, and rejects a smaller struct_size;
 *   - koala_get_info fills the 1.0 fields, with the values the same run gives
 *     through today's header;
 *   - a short training run (abi_problem.h) gives bit-identical parameters and
 *     filter scalars to the same run built against today's koala.h
 *     (current_header_run.c, linked into this program);
 *   - a checkpoint saved halfway and loaded into a new optimizer continues
 *     bit for bit.
 * Exit status 0 when every check passed.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "koala-1.0.h"

#include "abi_problem.h"

/* current_header_run.c */
int abi_current_run(int method, int dtype, double *params_out, double *info_out);

static int failures = 0;
static const char *variant = "";

#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        if (!(cond)) {                                                            \
            ++failures;                                                           \
            fprintf(stderr, "abi_1_0: FAILED [%s] line %d: %s: ", variant, __LINE__, \
                    #cond);                                                       \
            fprintf(stderr, __VA_ARGS__);                                         \
            fprintf(stderr, " (koala_last_error: %s)\n", koala_last_error());    \
        }                                                                         \
    } while (0)

/* ---- guard bytes -------------------------------------------------------- */

#define GUARD 64

typedef struct {
    koala_config c;
    unsigned char guard[GUARD];
} guarded_config;

typedef struct {
    koala_info i;
    unsigned char guard[GUARD];
} guarded_info;

static void guard_fill(unsigned char *g) {
    int k;
    for (k = 0; k < GUARD; ++k) g[k] = (unsigned char)(0xA5 ^ (k * 29));
}

static int guard_intact(const unsigned char *g) {
    int k;
    for (k = 0; k < GUARD; ++k)
        if (g[k] != (unsigned char)(0xA5 ^ (k * 29))) return 0;
    return 1;
}

/* The structs whose guards every call is checked against. */
static guarded_config *watched_cfg = NULL;
static guarded_info *watched_info = NULL;

static void check_guards(const char *after, koala_status st) {
    (void)st;
    if (watched_cfg)
        CHECK(guard_intact(watched_cfg->guard), "the bytes after koala_config changed in %s",
              after);
    if (watched_info)
        CHECK(guard_intact(watched_info->guard), "the bytes after koala_info changed in %s",
              after);
}

/* ---- structs at the end of a page, the next page inaccessible ------------ */

typedef struct {
    unsigned char *base;
    size_t page;
} fence;

static void *fence_end(fence *f, size_t bytes) {
    f->page = (size_t)sysconf(_SC_PAGESIZE);
    f->base = mmap(NULL, 2 * f->page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (f->base == MAP_FAILED) {
        perror("abi_1_0: mmap");
        exit(1);
    }
    if (mprotect(f->base + f->page, f->page, PROT_NONE) != 0) {
        perror("abi_1_0: mprotect");
        exit(1);
    }
    memset(f->base, 0x5A, f->page);
    return f->base + f->page - bytes;
}

static void fence_free(fence *f) { munmap(f->base, 2 * f->page); }

/* ---- checks ---------------------------------------------------------------- */

static int same_bits(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

static void check_1_0_defaults(const koala_config *c, koala_method m) {
    CHECK(c->struct_size == sizeof(koala_config), "struct_size %zu, the 1.0 size is %zu",
          c->struct_size, sizeof(koala_config));
    CHECK(c->method == m, "method %d", (int)c->method);
    CHECK(c->lr == 1.0 && c->weight_decay == 0.0, "lr %g weight_decay %g", c->lr,
          c->weight_decay);
    CHECK(isnan(c->r) && c->alpha_r == 0.9, "r %g alpha_r %g", c->r, c->alpha_r);
    CHECK(c->sigma == 1.0 && c->q == 1.0, "sigma %g q %g", c->sigma, c->q);
    CHECK(c->sw == 0.1 && c->sc == 0.0 && c->sv == 0.1, "sw %g sc %g sv %g", c->sw, c->sc,
          c->sv);
    CHECK(c->a == 0.9 && c->qw == 0.01 && c->qv == 0.01, "a %g qw %g qv %g", c->a, c->qw,
          c->qv);
    {   /* the padding after `method` too: the whole struct is written */
        const unsigned char *p = (const unsigned char *)c;
        size_t k;
        for (k = offsetof(koala_config, method) + sizeof c->method;
             k < offsetof(koala_config, lr); ++k)
            CHECK(p[k] == 0, "byte %zu of the config is 0x%02x after koala_config_init", k, p[k]);
    }
}

static void info_fields(const koala_info *i, double *out) {
    out[0] = (double)i->steps;
    out[1] = (double)i->skipped_steps;
    out[2] = i->sigma;
    out[3] = i->p00;
    out[4] = i->p01;
    out[5] = i->p11;
    out[6] = i->r;
    out[7] = i->qw;
}

static const char *info_names[8] = {"steps", "skipped_steps", "sigma", "p00",
                                    "p01",   "p11",           "r",     "qw"};

/* One method x dtype: the whole 1.0 API with guards. */
static void run_variant(koala_method method, koala_dtype dtype) {
    guarded_config gc;
    guarded_info gi;
    koala_optimizer *opt = NULL, *resumed = NULL;
    abi_tensors run, rerun;
    double current_params[32], current_info[8], params[32], info[8], resumed_params[32];
    size_t size = 0, size2 = 0, k;
    unsigned char *ckpt;
    const size_t n = abi_elements();
    koala_status st;

    /* koala_config_init over garbage: 1.0 size, 1.0 defaults, guard intact. */
    memset(&gc.c, 0xEE, sizeof gc.c);
    guard_fill(gc.guard);
    watched_cfg = &gc;
    watched_info = NULL;
    koala_config_init(&gc.c, method);
    check_guards("koala_config_init", KOALA_OK);
    check_1_0_defaults(&gc.c, method);
    koala_config_init(NULL, method); /* must not crash */

    /* koala_create takes the 1.0 struct (and reads nothing beyond it). */
    ABI_CONFIGURE(gc.c);
    st = koala_create(&gc.c, ABI_TENSORS, abi_sizes, dtype, KOALA_HOST, &opt);
    check_guards("koala_create", st);
    CHECK(st == KOALA_OK && opt != NULL, "koala_create with the 1.0 struct: status %d", (int)st);
    if (st != KOALA_OK) return;

    /* The training run, guards checked after every call. */
    abi_tensors_init(&run, dtype);
    st = abi_train(opt, &run, 0, ABI_SAVE_AT, check_guards);
    CHECK(st == KOALA_OK, "training steps 0..%d: status %d", ABI_SAVE_AT - 1, (int)st);

    /* Checkpoint halfway. */
    st = koala_state_size(opt, &size);
    check_guards("koala_state_size", st);
    CHECK(st == KOALA_OK && size > 0, "koala_state_size: status %d, %zu bytes", (int)st, size);
    ckpt = malloc(size);
    CHECK(ckpt != NULL, "malloc of %zu bytes", size);
    if (!ckpt) exit(1);
    st = koala_state_save(opt, ckpt, size, NULL);
    check_guards("koala_state_save", st);
    CHECK(st == KOALA_OK, "koala_state_save: status %d", (int)st);
    memcpy(&rerun, &run, sizeof rerun);
    for (k = 0; k < ABI_TENSORS; ++k) { /* rerun's pointers into its own storage */
        rerun.params[k] = rerun.store[0][k];
        rerun.grad_bufs[k] = rerun.store[1][k];
    }

    st = abi_train(opt, &run, ABI_SAVE_AT, ABI_STEPS, check_guards);
    CHECK(st == KOALA_OK, "training steps %d..%d: status %d", ABI_SAVE_AT, ABI_STEPS - 1, (int)st);

    /* koala_get_info with the 1.0 struct. */
    memset(&gi.i, 0xEE, sizeof gi.i);
    gi.i.struct_size = sizeof gi.i;
    guard_fill(gi.guard);
    watched_info = &gi;
    st = koala_get_info(opt, NULL, &gi.i);
    check_guards("koala_get_info", st);
    CHECK(st == KOALA_OK, "koala_get_info with the 1.0 struct: status %d", (int)st);
    CHECK(gi.i.struct_size == sizeof(koala_info), "get_info changed struct_size to %zu",
          gi.i.struct_size);
    CHECK(gi.i.steps == ABI_STEPS, "info.steps %llu", (unsigned long long)gi.i.steps);
    CHECK(gi.i.skipped_steps == 0, "info.skipped_steps %llu",
          (unsigned long long)gi.i.skipped_steps);
    info_fields(&gi.i, info);
    abi_flatten(&run, params);

    /* The same run through today's header: the same bits. */
    st = (koala_status)abi_current_run((int)method, (int)dtype, current_params, current_info);
    CHECK(st == KOALA_OK, "the run through today's header: status %d", (int)st);
    for (k = 0; k < n; ++k)
        CHECK(same_bits(params[k], current_params[k]),
              "parameter %zu: %.17g through the 1.0 header, %.17g through today's", k, params[k],
              current_params[k]);
    for (k = 0; k < 8; ++k)
        CHECK(same_bits(info[k], current_info[k]),
              "info.%s: %.17g through the 1.0 header, %.17g through today's", info_names[k],
              info[k], current_info[k]);
    /* The fields the method uses are real numbers, not left-over bytes. */
    if (method == KOALA_VANILLA)
        CHECK(gi.i.sigma > 0.0 && isfinite(gi.i.sigma), "sigma %g", gi.i.sigma);
    else
        CHECK(gi.i.p00 > 0.0 && gi.i.p11 > 0.0 && gi.i.qw > 0.0, "p00 %g p11 %g qw %g",
              gi.i.p00, gi.i.p11, gi.i.qw);
    CHECK(gi.i.r > 0.0 && isfinite(gi.i.r), "r %g", gi.i.r);

    /* The checkpoint continues bit for bit in a new optimizer. */
    st = koala_create(&gc.c, ABI_TENSORS, abi_sizes, dtype, KOALA_HOST, &resumed);
    check_guards("koala_create (resume)", st);
    CHECK(st == KOALA_OK, "koala_create for the resume: status %d", (int)st);
    if (st == KOALA_OK) {
        st = koala_state_size(resumed, &size2);
        CHECK(st == KOALA_OK && size2 == size, "state_size of the new optimizer: %zu, saved %zu",
              size2, size);
        st = koala_state_load(resumed, ckpt, size, NULL);
        check_guards("koala_state_load", st);
        CHECK(st == KOALA_OK, "koala_state_load: status %d", (int)st);
        st = abi_train(resumed, &rerun, ABI_SAVE_AT, ABI_STEPS, check_guards);
        CHECK(st == KOALA_OK, "resumed training: status %d", (int)st);
        abi_flatten(&rerun, resumed_params);
        for (k = 0; k < n; ++k)
            CHECK(same_bits(resumed_params[k], params[k]),
                  "parameter %zu after resuming from the checkpoint: %.17g, uninterrupted %.17g",
                  k, resumed_params[k], params[k]);
        memset(&gi.i, 0, sizeof gi.i);
        gi.i.struct_size = sizeof gi.i;
        st = koala_get_info(resumed, NULL, &gi.i);
        check_guards("koala_get_info (resumed)", st);
        info_fields(&gi.i, current_info);
        for (k = 0; k < 8; ++k)
            CHECK(same_bits(info[k], current_info[k]), "info.%s after resuming: %.17g, %.17g",
                  info_names[k], current_info[k], info[k]);
    }

    /* 1.0's error paths with 1.0 structs: a smaller struct_size is rejected
     * with a message naming it, and nothing is written. */
    {
        koala_optimizer *untouched = (koala_optimizer *)(void *)&gc;
        koala_optimizer *out = untouched;
        gc.c.struct_size = sizeof(koala_config) - 8;
        st = koala_create(&gc.c, ABI_TENSORS, abi_sizes, dtype, KOALA_HOST, &out);
        check_guards("koala_create (struct_size too small)", st);
        CHECK(st == KOALA_ERROR_INVALID_ARGUMENT, "create with struct_size - 8: status %d",
              (int)st);
        CHECK(strstr(koala_last_error(), "struct_size") != NULL, "the message names struct_size");
        CHECK(out == untouched, "a failed koala_create wrote *out");
        gc.c.struct_size = sizeof(koala_config);
        gi.i.struct_size = sizeof(koala_info) - 8;
        st = koala_get_info(opt, NULL, &gi.i);
        check_guards("koala_get_info (struct_size too small)", st);
        CHECK(st == KOALA_ERROR_INVALID_ARGUMENT, "get_info with struct_size - 8: status %d",
              (int)st);
        CHECK(strstr(koala_last_error(), "struct_size") != NULL, "the message names struct_size");
    }

    /* koala_set_lr's error path (the run set a valid lr at step 7). */
    st = koala_set_lr(opt, -1.0);
    CHECK(st == KOALA_ERROR_INVALID_ARGUMENT, "set_lr(-1): status %d", (int)st);

    free(ckpt);
    koala_destroy(resumed);
    koala_destroy(opt);
    watched_cfg = NULL;
    watched_info = NULL;
}

/* The structs at the end of a page: a read or write beyond 1.0's size
 * faults. */
static void run_fenced(koala_method method, koala_dtype dtype) {
    fence fc, fi;
    koala_config *c = fence_end(&fc, sizeof(koala_config));
    koala_info *i = fence_end(&fi, sizeof(koala_info));
    koala_optimizer *opt = NULL;
    abi_tensors s;
    koala_status st;
    koala_config_init(c, method);
    check_1_0_defaults(c, method);
    ABI_CONFIGURE(*c);
    st = koala_create(c, ABI_TENSORS, abi_sizes, dtype, KOALA_HOST, &opt);
    CHECK(st == KOALA_OK, "create with the config at a page end: status %d", (int)st);
    if (st == KOALA_OK) {
        abi_tensors_init(&s, dtype);
        CHECK(abi_train(opt, &s, 0, 2, NULL) == KOALA_OK, "two steps");
        i->struct_size = sizeof(koala_info);
        st = koala_get_info(opt, NULL, i);
        CHECK(st == KOALA_OK && i->steps == 2, "get_info at a page end: status %d, steps %llu",
              (int)st, (unsigned long long)i->steps);
    }
    koala_destroy(opt);
    fence_free(&fc);
    fence_free(&fi);
}

int main(void) {
    static const struct {
        const char *name;
        koala_method method;
        koala_dtype dtype;
    } variants[] = {
        {"KOALA-V float32", KOALA_VANILLA, KOALA_FLOAT32},
        {"KOALA-V float64", KOALA_VANILLA, KOALA_FLOAT64},
        {"KOALA-M float32", KOALA_MOMENTUM, KOALA_FLOAT32},
        {"KOALA-M float64", KOALA_MOMENTUM, KOALA_FLOAT64},
    };
    size_t v;
    int s;
    const char *msg;
    koala_status st;

    printf("abi_1_0: 1.0 header: sizeof(koala_config) = %zu, sizeof(koala_info) = %zu; "
           "library %u, header %d\n",
           sizeof(koala_config), sizeof(koala_info), koala_version(), KOALA_VERSION_NUMBER);
    /* The 1.0 layout: struct_size, method (+ padding), 12 doubles; 3 words + 6 doubles. */
    CHECK(sizeof(koala_config) == offsetof(koala_config, qv) + sizeof(double),
          "unexpected 1.0 koala_config layout");
    CHECK(sizeof(koala_info) == offsetof(koala_info, qw) + sizeof(double),
          "unexpected 1.0 koala_info layout");

    variant = "version";
    CHECK(koala_version() >= KOALA_VERSION_NUMBER && koala_version() / 10000 == 1,
          "koala_version() = %u with a %d header", koala_version(), KOALA_VERSION_NUMBER);

    variant = "status strings";
    for (s = KOALA_OK; s <= KOALA_ERROR_BAD_STATE; ++s) {
        const char *name = koala_status_string((koala_status)s);
        CHECK(name != NULL && name[0] != '\0', "koala_status_string(%d) is empty", s);
    }

    variant = "last_error";
    st = koala_create(NULL, ABI_TENSORS, abi_sizes, KOALA_FLOAT32, KOALA_HOST, NULL);
    msg = koala_last_error();
    CHECK(st == KOALA_ERROR_INVALID_ARGUMENT, "koala_create(NULL cfg): status %d", (int)st);
    CHECK(msg != NULL && strstr(msg, "koala_create") != NULL && strstr(msg, "cfg") != NULL,
          "the message names the function and the argument: %s", msg ? msg : "(null)");

    variant = "device_probe";
    st = koala_device_probe();
    CHECK(st == KOALA_OK || st == KOALA_ERROR_UNSUPPORTED || st == KOALA_ERROR_CUDA,
          "koala_device_probe: status %d", (int)st);
    if (st != KOALA_OK)
        CHECK(koala_last_error()[0] != '\0', "koala_device_probe failed without a reason");
    printf("abi_1_0: koala_device_probe: %s%s%s\n", koala_status_string(st),
           st == KOALA_OK ? "" : ": ", st == KOALA_OK ? "" : koala_last_error());

    koala_destroy(NULL); /* allowed */

    for (v = 0; v < sizeof variants / sizeof variants[0]; ++v) {
        const int before = failures;
        variant = variants[v].name;
        run_variant(variants[v].method, variants[v].dtype);
        run_fenced(variants[v].method, variants[v].dtype);
        printf("abi_1_0: %s: %s\n", variant, failures == before ? "ok" : "FAILED");
    }
    printf("abi_1_0: %s\n", failures == 0 ? "every 1.0 entry point behaves as in 1.0"
                                          : "FAILED");
    return failures == 0 ? 0 : 1;
}
