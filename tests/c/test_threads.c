/*
 * test_threads.c - koala_config::threads: results do not depend on the
 * thread count, koala_info.threads reports the resolved count, and
 * KOALA_NUM_THREADS is the default when cfg.threads is 0.
 *
 * The layout has 241k elements in 9 chunks of 32 Ki (above the 64 Ki
 * elements below which the library stays on one thread), so 2, 3 and 4
 * threads split the chunks into different ranges. Every method and dtype (f64, f32, bf16, fp16), with
 * weight decay and skipped tensors, runs 6 steps with threads = 1, 2, 3,
 * 4 and the default; parameters, koala_get_info and the checkpoints must
 * be identical bit for bit (the checkpoint does not store the thread
 * count).
 */
#define _GNU_SOURCE /* sched_getaffinity, setenv */
#include <math.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

static koala_info info_of(const koala_optimizer *opt) {
    koala_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (koala_get_info(opt, NULL, &info) != KOALA_OK) fail_msg("koala_get_info: %s", koala_last_error());
    return info;
}

static void test_bit_identical(void **state) {
    (void)state;
    const koala_method methods[] = {KOALA_VANILLA, KOALA_MOMENTUM, KOALA_PLUSPLUS};
    const koala_dtype dtypes[] = {KOALA_FLOAT64, KOALA_FLOAT32, KOALA_BFLOAT16, KOALA_FLOAT16};
    const int threads[] = {1, 2, 3, 4, 0};
    const size_t sizes[] = {70000, 3, 131073, 1, 40000};
    test_layout layout = layout_make(5, sizes);
    unsetenv("KOALA_NUM_THREADS");
    for (size_t m = 0; m < 3; ++m)
        for (size_t d = 0; d < 4; ++d) {
            void **first = NULL;
            unsigned char *first_ck = NULL;
            size_t first_n = 0;
            koala_info first_info;
            memset(&first_info, 0, sizeof first_info);
            for (size_t t = 0; t < 5; ++t) {
                koala_config cfg;
                koala_config_init(&cfg, methods[m]);
                cfg.weight_decay = 1e-3;
                cfg.threads = threads[t];
                test_pair pair;
                assert_int_equal(pair_init(&pair, &cfg, &layout, dtypes[d], 900 + m, 0), KOALA_OK);
                const koala_info resolved = info_of(pair.opt);
                if (threads[t] > 0) assert_int_equal(resolved.threads, threads[t]);
                test_step step;
                step_alloc(&step, &layout);
                for (unsigned k = 0; k < 6; ++k) {
                    assert_int_equal(pair_predict(&pair), KOALA_OK);
                    step_fill(&step, &layout, 900 + m, k, 20, 0);
                    assert_int_equal(pair_update(&pair, &step), KOALA_OK);
                }
                size_t n;
                unsigned char *ck = save_state(pair.opt, &n);
                const koala_info info = info_of(pair.opt);
                if (!first) {
                    first = buffers_alloc(&layout, dtypes[d]);
                    buffers_copy(first, pair.params, &layout, dtypes[d]);
                    first_ck = ck;
                    first_n = n;
                    first_info = info;
                } else {
                    if (!buffers_equal(first, pair.params, &layout, dtypes[d]))
                        fail_msg("method %d dtype %d: %d threads give other parameters than 1",
                                 methods[m], dtypes[d], threads[t]);
                    if (n != first_n || memcmp(ck, first_ck, n) != 0)
                        fail_msg("method %d dtype %d: %d threads give another checkpoint than 1",
                                 methods[m], dtypes[d], threads[t]);
                    assert_true(info.sigma == first_info.sigma && info.p00 == first_info.p00 &&
                                info.p01 == first_info.p01 && info.p11 == first_info.p11 &&
                                info.r == first_info.r && info.qw == first_info.qw);
                    free(ck);
                }
                step_free(&step, &layout);
                pair_free(&pair);
            }
            buffers_free(first, &layout);
            free(first_ck);
        }
    layout_free(&layout);
}

/* The resolved count: cfg.threads when > 0; else KOALA_NUM_THREADS when
 * set to a positive number; else the CPUs this process may run on. */
static void test_resolved_count(void **state) {
    (void)state;
    const size_t n = 10;
    koala_config cfg;
    koala_config_init(&cfg, KOALA_VANILLA);
    koala_optimizer *opt = NULL;

    cpu_set_t set;
    assert_int_equal(sched_getaffinity(0, sizeof set, &set), 0);
    const int cpus = CPU_COUNT(&set);
    unsetenv("KOALA_NUM_THREADS");
    assert_int_equal(koala_create(&cfg, 1, &n, KOALA_FLOAT32, KOALA_HOST, &opt), KOALA_OK);
    assert_int_equal(info_of(opt).threads, cpus);
    koala_destroy(opt);

    setenv("KOALA_NUM_THREADS", "3", 1);
    assert_int_equal(koala_create(&cfg, 1, &n, KOALA_FLOAT32, KOALA_HOST, &opt), KOALA_OK);
    assert_int_equal(info_of(opt).threads, 3);
    koala_destroy(opt);
    setenv("KOALA_NUM_THREADS", "7", 1);
    assert_int_equal(koala_create(&cfg, 1, &n, KOALA_FLOAT32, KOALA_HOST, &opt), KOALA_OK);
    assert_int_equal(info_of(opt).threads, 7);
    koala_destroy(opt);

    cfg.threads = 2; /* an explicit count wins over the environment */
    assert_int_equal(koala_create(&cfg, 1, &n, KOALA_FLOAT32, KOALA_HOST, &opt), KOALA_OK);
    assert_int_equal(info_of(opt).threads, 2);
    koala_destroy(opt);
    unsetenv("KOALA_NUM_THREADS");
    cfg.threads = 5;
    assert_int_equal(koala_create(&cfg, 1, &n, KOALA_FLOAT32, KOALA_HOST, &opt), KOALA_OK);
    assert_int_equal(info_of(opt).threads, 5);
    koala_destroy(opt);

    /* a checkpoint does not carry the count to another handle */
    size_t bytes;
    unsigned char *ck = NULL;
    cfg.threads = 3;
    assert_int_equal(koala_create(&cfg, 1, &n, KOALA_FLOAT32, KOALA_HOST, &opt), KOALA_OK);
    ck = save_state(opt, &bytes);
    koala_destroy(opt);
    cfg.threads = 1;
    assert_int_equal(koala_create(&cfg, 1, &n, KOALA_FLOAT32, KOALA_HOST, &opt), KOALA_OK);
    assert_int_equal(koala_state_load(opt, ck, bytes, NULL), KOALA_OK);
    assert_int_equal(info_of(opt).threads, 1);
    koala_destroy(opt);
    free(ck);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bit_identical),
        cmocka_unit_test(test_resolved_count),
    };
    return cmocka_run_group_tests_name("threads", tests, NULL, NULL);
}
