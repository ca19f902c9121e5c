/*
 * Runs on every machine of a CUDA build, GPU or not.
 *
 * Without a usable GPU (this project's build machines: no NVIDIA driver):
 * koala_device_probe and koala_create(KOALA_DEVICE) return
 * KOALA_ERROR_UNSUPPORTED with a message that says why (the plugin was
 * found but no driver/device, or the plugin could not be loaded), nothing
 * is returned through `out`, and the same library still runs a host
 * optimizer step whose result is checked against the closed form.
 * With a GPU: koala_create(KOALA_DEVICE) succeeds.
 *
 * argv[1] == "missing-plugin": the test is run with KOALA_CUDA_PLUGIN
 * naming a file that does not exist, and the message must say that the
 * plugin could not be loaded.
 * argv[1] == "reason", argv[2] == TEXT: the probe must fail and its
 * message contain TEXT (the CPU harness's no-device and no-driver runs).
 * KOALA_REQUIRE_GPU=1 (the GPU check): the probe must succeed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "koala.h"

static int failures = 0;

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) {                                                \
            ++failures;                                               \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                             \
            fputc('\n', stderr);                                      \
        }                                                             \
    } while (0)

/* One KOALA-V host step on x = {1, 2}, g = {3, 4}, L = 2, M = 5, defaults:
 * sigma-hat = sigma + q, R = 0.9 + 0.1 M, S = sigma-hat |g|^2 + R,
 * x -= lr L sigma-hat / S * g. */
static void host_still_works(void) {
    koala_config cfg;
    koala_config_init(&cfg, KOALA_VANILLA);
    size_t size = 2;
    koala_optimizer *opt = NULL;
    koala_status st = koala_create(&cfg, 1, &size, KOALA_FLOAT64, KOALA_HOST, &opt);
    CHECK(st == KOALA_OK, "host koala_create: %s", koala_last_error());
    if (st != KOALA_OK) return;
    double x[2] = {1.0, 2.0};
    const double g[2] = {3.0, 4.0};
    void *params[1] = {x};
    const void *grads[1] = {g};
    CHECK(koala_predict(opt, params, NULL) == KOALA_OK, "%s", koala_last_error());
    CHECK(koala_update(opt, 2.0, 5.0, params, grads, NULL) == KOALA_OK, "%s",
          koala_last_error());
    const double sigma_hat = cfg.sigma + cfg.q;
    const double r = cfg.alpha_r * 1.0 + (1.0 - cfg.alpha_r) * 5.0;
    const double S = sigma_hat * 25.0 + r;
    const double c = cfg.lr * 2.0 * sigma_hat / S;
    CHECK(fabs(x[0] - (1.0 - c * 3.0)) < 1e-15, "x[0] = %.17g", x[0]);
    CHECK(fabs(x[1] - (2.0 - c * 4.0)) < 1e-15, "x[1] = %.17g", x[1]);
    koala_destroy(opt);
}

int main(int argc, char **argv) {
    const int missing_plugin = argc > 1 && strcmp(argv[1], "missing-plugin") == 0;
    const char *reason = argc > 2 && strcmp(argv[1], "reason") == 0 ? argv[2] : NULL;
    const char *require = getenv("KOALA_REQUIRE_GPU");
    const int require_gpu = require && strcmp(require, "1") == 0;
    koala_config cfg;
    koala_config_init(&cfg, KOALA_MOMENTUM);
    size_t sizes[2] = {10, 20};
    koala_optimizer *opt = (koala_optimizer *)&cfg; /* must be left alone on failure */
    koala_optimizer *const sentinel = opt;

    const koala_status probe = koala_device_probe();
    const char *why = koala_last_error();
    printf("koala_device_probe: %s (%s)\n", koala_status_string(probe),
           probe == KOALA_OK ? "GPU usable" : why);

    if (probe == KOALA_OK) {
        CHECK(!missing_plugin, "the probe succeeded without the plugin");
        CHECK(!reason, "the probe succeeded; expected it to fail with \"%s\"", reason);
        koala_status st = koala_create(&cfg, 2, sizes, KOALA_FLOAT32, KOALA_DEVICE, &opt);
        CHECK(st == KOALA_OK, "device koala_create on a usable GPU: %s", koala_last_error());
        if (st == KOALA_OK) koala_destroy(opt);
    } else {
        CHECK(!require_gpu, "no usable GPU, and KOALA_REQUIRE_GPU=1: %s", why);
        CHECK(probe == KOALA_ERROR_UNSUPPORTED, "probe returned %d", (int)probe);
        CHECK(why && strlen(why) > 20, "probe gives no reason");
        if (missing_plugin) {
            CHECK(strstr(why, "could not be loaded") != NULL, "message: %s", why);
        } else if (reason) {
            CHECK(strstr(why, reason) != NULL, "message: %s", why);
        } else {
            /* The plugin was found and loaded: the reason comes from the CUDA
             * runtime (no driver, no device, or no code for the device). */
            CHECK(strstr(why, "driver") || strstr(why, "device"), "message: %s", why);
        }
        koala_status st = koala_create(&cfg, 2, sizes, KOALA_FLOAT32, KOALA_DEVICE, &opt);
        const char *msg = koala_last_error();
        CHECK(st == KOALA_ERROR_UNSUPPORTED, "device koala_create returned %d", (int)st);
        CHECK(opt == sentinel, "koala_create wrote *out on failure");
        CHECK(msg && strstr(msg, "device memory unavailable") != NULL &&
                  (strstr(msg, "driver") || strstr(msg, "device") || strstr(msg, "loaded")),
              "message: %s", msg ? msg : "(null)");
        printf("koala_create(KOALA_DEVICE): %s: %s\n", koala_status_string(st), msg);
    }
    host_still_works();
    if (failures) {
        printf("test_plugin_load: %d check(s) FAILED\n", failures);
        return 1;
    }
    printf("test_plugin_load: all checks passed\n");
    return 0;
}
