/*
 * koala-nccl-sharded: sharded KOALA on several GPUs with the NCCL all-reduce
 * of koala_nccl.h, checking itself against one host process.
 *
 *   koala-nccl-sharded [--gpus G] [--steps S]
 *
 * One process, one thread per GPU (G = every visible GPU by default, at most
 * 8), one NCCL communicator over them (ncclCommInitAll). Exit status 0 when
 * every check passed, 1 when one failed, 77 when it cannot run here (no
 * GPU, or the CUDA plugin of libkoala is not usable: koala_device_probe).
 *
 * 1. The callback alone: each GPU captures koala_nccl_allreduce on its
 *    stream into a CUDA graph (thread-local capture mode: the capture fails
 *    if the callback synchronises the host or calls anything else a capture
 *    forbids), launches it twice, and checks the sums exactly.
 * 2. KOALA-V, KOALA-M and KOALA++ in float64 on a 4-tensor model (100000,
 *    257, 1 and 4099 elements); GPU g owns elements [n g / G, n (g+1) / G)
 *    of every tensor (with G > 1 some GPUs own nothing of the 1-element
 *    tensor). Each GPU's optimizer is koala_create_sharded(KOALA_DEVICE)
 *    with koala_nccl_use. Steps 1 and 2 run eagerly (koala_predict,
 *    koala_update_ptr with loss and loss_var in device memory; step 2 with
 *    a NULL gradient); then one step (predict + update_ptr, which calls
 *    ncclAllReduce) is captured into a CUDA graph and the graph is launched
 *    for the remaining steps, with new gradients and losses copied into the
 *    same device buffers before each launch. After every step each GPU's
 *    slices and filter must equal one host process (koala_create on the
 *    whole tensors, the same inputs) within 1e-12, and the filter must be
 *    identical on every GPU bit for bit.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include "koala.h"
#include "koala_nccl.h"

enum { MAX_GPUS = 8, N_GLOBAL = 4, CHECK_ELEMENTS = 1000 };
static const size_t global_sizes[N_GLOBAL] = {100000, 257, 1, 4099};
static const double grad_amplitude[N_GLOBAL] = {0.01, 1.0, 0.5, 0.1};
#define TOL 1e-12

static int n_gpus = 0, n_steps = 8;
static ncclComm_t comms[MAX_GPUS];
static pthread_barrier_t barrier;
static int failures = 0;
static int callback_ok[MAX_GPUS];
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;

/* A rank that stops halfway would leave the others inside ncclAllReduce:
 * an unexpected error ends the whole process at once. */
static void fatal(int gpu, const char *what, const char *detail) {
    fprintf(stderr, "koala-nccl-sharded (GPU %d): %s: %s\n", gpu, what, detail);
    fflush(stderr);
    _exit(1);
}
static void cuda_ok(int gpu, cudaError_t e, const char *what) {
    if (e != cudaSuccess) fatal(gpu, what, cudaGetErrorString(e));
}
static void koala_ok(int gpu, koala_status st, const char *what) {
    if (st != KOALA_OK) fatal(gpu, what, koala_last_error());
}
static void check(int ok, int gpu, const char *fmt, double value) {
    if (ok) return;
    pthread_mutex_lock(&print_lock);
    ++failures;
    fprintf(stderr, "GPU %d: FAIL: ", gpu);
    fprintf(stderr, fmt, value);
    fprintf(stderr, "\n");
    pthread_mutex_unlock(&print_lock);
}

static size_t slice_begin(size_t j, int g) { return global_sizes[j] * (size_t)g / (size_t)n_gpus; }
static size_t slice_size(size_t j, int g) { return slice_begin(j, g + 1) - slice_begin(j, g); }

static double initial_value(size_t j, size_t i) { return 0.5 * sin(1.7 * (double)i + (double)j) + 0.1; }
static double gradient(size_t j, size_t i, int step) {
    return grad_amplitude[j] * sin(0.37 * (double)i + 1.3 * (double)j + 0.71 * step);
}
static int grad_is_null(size_t j, int step) { return step == 2 && j == 1; }
static double loss_at(int step) { return 2.0 / (1.0 + 0.3 * step) + 0.1; }
static double loss_var_at(int step) { return 1.4 * loss_at(step) * loss_at(step) + 0.01; }

static double rel_diff(double a, double b) {
    return fabs(a - b) / (fabs(b) > 1.0 ? fabs(b) : 1.0);
}

/* ---- 1. the callback in a graph ---------------------------------------- */

static void check_callback(int g, cudaStream_t stream) {
    double host[CHECK_ELEMENTS], *dev = NULL;
    for (int i = 0; i < CHECK_ELEMENTS; ++i) host[i] = (double)(g + 1 + i);
    cuda_ok(g, cudaMalloc((void **)&dev, sizeof host), "cudaMalloc");
    cuda_ok(g, cudaMemcpy(dev, host, sizeof host, cudaMemcpyHostToDevice), "cudaMemcpy");
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    cuda_ok(g, cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
            "cudaStreamBeginCapture");
    const int rc = koala_nccl_allreduce(dev, CHECK_ELEMENTS, stream, comms[g]);
    cuda_ok(g, cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture (callback)");
    if (rc != 0) fatal(g, "koala_nccl_allreduce during capture", ncclGetErrorString((ncclResult_t)rc));
    cuda_ok(g, cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
    cuda_ok(g, cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    cuda_ok(g, cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    cuda_ok(g, cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    cuda_ok(g, cudaMemcpy(host, dev, sizeof host, cudaMemcpyDeviceToHost), "cudaMemcpy");
    /* One launch: S_i = G (G + 1) / 2 + G i; the second sums S_i G times. */
    double worst = 0.0;
    for (int i = 0; i < CHECK_ELEMENTS; ++i) {
        const double s = n_gpus * (n_gpus + 1) / 2.0 + (double)n_gpus * i;
        const double e = fabs(host[i] - n_gpus * s);
        if (e > worst) worst = e;
    }
    callback_ok[g] = worst == 0.0;
    check(worst == 0.0, g, "the captured all-reduce is off by %g", worst);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaFree(dev);
}

/* ---- 2. sharded KOALA on the GPUs ----------------------------------------- */

typedef struct variant {
    const char *name;
    koala_method method;
} variant;
static const variant variants[] = {
    {"KOALA-V", KOALA_VANILLA}, {"KOALA-M", KOALA_MOMENTUM}, {"KOALA++", KOALA_PLUSPLUS}};
enum { N_VARIANTS = 3 };

/* Every GPU's filter after the last step, compared bit for bit at the end. */
static double final_filter[N_VARIANTS][MAX_GPUS][6];
static double worst_error[N_VARIANTS][MAX_GPUS];

static void info_fields(const koala_info *info, double out[6]) {
    out[0] = info->sigma;
    out[1] = info->p00;
    out[2] = info->p01;
    out[3] = info->p11;
    out[4] = info->r;
    out[5] = info->qw;
}

static void run_variant(int g, cudaStream_t stream, int v) {
    koala_config cfg;
    koala_config_init(&cfg, variants[v].method);
    cfg.threads = 1;
    cfg.weight_decay = 0.01;
    if (variants[v].method == KOALA_VANILLA) cfg.sigma = 0.1;

    /* One host process, whole tensors. */
    double *ref_x[N_GLOBAL], *ref_g[N_GLOBAL];
    const void *ref_grad_args[N_GLOBAL];
    for (size_t j = 0; j < N_GLOBAL; ++j) {
        ref_x[j] = malloc(global_sizes[j] * sizeof(double));
        ref_g[j] = malloc(global_sizes[j] * sizeof(double));
        if (!ref_x[j] || !ref_g[j]) fatal(g, "malloc", "out of host memory");
        for (size_t i = 0; i < global_sizes[j]; ++i) ref_x[j][i] = initial_value(j, i);
    }
    koala_optimizer *ref = NULL;
    koala_ok(g, koala_create(&cfg, N_GLOBAL, global_sizes, KOALA_FLOAT64, KOALA_HOST, &ref),
             "koala_create (host reference)");

    /* This GPU's slices. */
    size_t n_local = 0, sizes[N_GLOBAL], global_index[N_GLOBAL];
    double *x_dev[N_GLOBAL], *g_dev[N_GLOBAL], *host_slice[N_GLOBAL];
    const void *grad_args[N_GLOBAL];
    uint64_t model_elements = 0;
    for (size_t j = 0; j < N_GLOBAL; ++j) {
        model_elements += global_sizes[j];
        const size_t n = slice_size(j, g);
        if (n == 0) continue;
        sizes[n_local] = n;
        global_index[n_local] = j;
        cuda_ok(g, cudaMalloc((void **)&x_dev[n_local], n * sizeof(double)), "cudaMalloc");
        cuda_ok(g, cudaMalloc((void **)&g_dev[n_local], n * sizeof(double)), "cudaMalloc");
        host_slice[n_local] = malloc(n * sizeof(double));
        if (!host_slice[n_local]) fatal(g, "malloc", "out of host memory");
        for (size_t i = 0; i < n; ++i) host_slice[n_local][i] = initial_value(j, slice_begin(j, g) + i);
        cuda_ok(g, cudaMemcpy(x_dev[n_local], host_slice[n_local], n * sizeof(double),
                              cudaMemcpyHostToDevice),
                "cudaMemcpy");
        ++n_local;
    }
    double *loss_dev = NULL; /* loss, loss_var */
    cuda_ok(g, cudaMalloc((void **)&loss_dev, 2 * sizeof(double)), "cudaMalloc");

    koala_shard shard;
    memset(&shard, 0, sizeof shard);
    shard.struct_size = sizeof shard;
    shard.n_global = N_GLOBAL;
    shard.global_index = global_index;
    shard.global_elements = model_elements;
    koala_nccl_use(&shard, comms[g]);
    koala_optimizer *opt = NULL;
    koala_ok(g, koala_create_sharded(&cfg, n_local, n_local ? sizes : NULL, &shard, KOALA_FLOAT64,
                                     KOALA_DEVICE, &opt),
             "koala_create_sharded (device)");
    void *const *params = n_local ? (void *const *)x_dev : NULL;

    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    double worst = 0.0;
    for (int step = 1; step <= n_steps; ++step) {
        /* This step's inputs, into the same device buffers every time. */
        for (size_t j = 0; j < N_GLOBAL; ++j) {
            ref_grad_args[j] = grad_is_null(j, step) ? NULL : ref_g[j];
            for (size_t i = 0; i < global_sizes[j]; ++i) ref_g[j][i] = gradient(j, i, step);
        }
        for (size_t i = 0; i < n_local; ++i) {
            const size_t j = global_index[i];
            grad_args[i] = grad_is_null(j, step) ? NULL : g_dev[i];
            cuda_ok(g, cudaMemcpyAsync(g_dev[i], ref_g[j] + slice_begin(j, g),
                                       sizes[i] * sizeof(double), cudaMemcpyHostToDevice, stream),
                    "cudaMemcpyAsync");
        }
        const double losses[2] = {loss_at(step), loss_var_at(step)};
        cuda_ok(g, cudaMemcpyAsync(loss_dev, losses, sizeof losses, cudaMemcpyHostToDevice, stream),
                "cudaMemcpyAsync");
        cuda_ok(g, cudaStreamSynchronize(stream), "cudaStreamSynchronize"); /* losses/grads are on the stack */

        if (step <= 2) {
            koala_ok(g, koala_predict(opt, params, stream), "koala_predict");
            koala_ok(g, koala_update_ptr(opt, loss_dev, loss_dev + 1, KOALA_FLOAT64, params,
                                         grad_args, stream),
                     "koala_update_ptr");
        } else {
            if (!exec) { /* capture one whole step, NCCL all-reduce included */
                cuda_ok(g, cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
                        "cudaStreamBeginCapture");
                const koala_status p = koala_predict(opt, params, stream);
                const koala_status u = koala_update_ptr(opt, loss_dev, loss_dev + 1,
                                                        KOALA_FLOAT64, params, grad_args, stream);
                const cudaError_t e = cudaStreamEndCapture(stream, &graph);
                koala_ok(g, p, "koala_predict (captured)");
                koala_ok(g, u, "koala_update_ptr (captured)");
                cuda_ok(g, e, "cudaStreamEndCapture (KOALA step)");
                cuda_ok(g, cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
            }
            cuda_ok(g, cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
        }
        koala_ok(g, koala_predict(ref, (void *const *)ref_x, NULL), "koala_predict (host)");
        koala_ok(g, koala_update(ref, losses[0], losses[1], (void *const *)ref_x, ref_grad_args,
                                 NULL),
                 "koala_update (host)");

        /* Compare (outside the step: synchronising here is fine). */
        cuda_ok(g, cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        for (size_t i = 0; i < n_local; ++i) {
            cuda_ok(g, cudaMemcpy(host_slice[i], x_dev[i], sizes[i] * sizeof(double),
                                  cudaMemcpyDeviceToHost),
                    "cudaMemcpy");
            const double *want = ref_x[global_index[i]] + slice_begin(global_index[i], g);
            for (size_t k = 0; k < sizes[i]; ++k) {
                const double e = rel_diff(host_slice[i][k], want[k]);
                if (!(e <= worst)) worst = e;
            }
        }
        koala_info mine, theirs;
        memset(&mine, 0, sizeof mine);
        memset(&theirs, 0, sizeof theirs);
        mine.struct_size = theirs.struct_size = sizeof mine;
        koala_ok(g, koala_get_info(opt, stream, &mine), "koala_get_info");
        koala_ok(g, koala_get_info(ref, NULL, &theirs), "koala_get_info (host)");
        double a[6], b[6];
        info_fields(&mine, a);
        info_fields(&theirs, b);
        for (int k = 0; k < 6; ++k) {
            const double e = rel_diff(a[k], b[k]);
            if (!(e <= worst)) worst = e;
        }
        memcpy(final_filter[v][g], a, sizeof a);
    }
    worst_error[v][g] = worst;
    check(worst <= TOL, g, "slices or filter differ from one host process by %.3g", worst);

    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    koala_destroy(opt);
    koala_destroy(ref);
    for (size_t i = 0; i < n_local; ++i) {
        cudaFree(x_dev[i]);
        cudaFree(g_dev[i]);
        free(host_slice[i]);
    }
    cudaFree(loss_dev);
    for (size_t j = 0; j < N_GLOBAL; ++j) {
        free(ref_x[j]);
        free(ref_g[j]);
    }
}

static void *gpu_thread(void *arg) {
    const int g = (int)(size_t)arg;
    cuda_ok(g, cudaSetDevice(g), "cudaSetDevice");
    cudaStream_t stream;
    cuda_ok(g, cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    check_callback(g, stream);
    for (int v = 0; v < N_VARIANTS; ++v) {
        pthread_barrier_wait(&barrier);
        run_variant(g, stream, v);
    }
    cudaStreamDestroy(stream);
    return NULL;
}

int main(int argc, char **argv) {
    int want = 0;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--gpus") && i + 1 < argc) {
            want = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--steps") && i + 1 < argc) {
            n_steps = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: koala-nccl-sharded [--gpus G] [--steps S (>= 3)]\n");
            return 2;
        }
    }
    if (n_steps < 3) n_steps = 3;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("SKIP: no usable CUDA GPU here\n");
        return 77;
    }
    n_gpus = want > 0 ? want : count;
    if (n_gpus > count || n_gpus > MAX_GPUS) {
        printf("SKIP: %d GPU(s) asked, %d visible (at most %d)\n", n_gpus, count, MAX_GPUS);
        return 77;
    }
    if (koala_device_probe() != KOALA_OK) {
        printf("SKIP: libkoala's CUDA plugin is not usable: %s\n", koala_last_error());
        return 77;
    }
    int devices[MAX_GPUS];
    for (int g = 0; g < n_gpus; ++g) devices[g] = g;
    const ncclResult_t r = ncclCommInitAll(comms, n_gpus, devices);
    if (r != ncclSuccess) {
        fprintf(stderr, "ncclCommInitAll: %s\n", ncclGetErrorString(r));
        return 1;
    }
    int nccl_version = 0;
    ncclGetVersion(&nccl_version);
    printf("koala-nccl-sharded: %d GPU(s), NCCL %d, libkoala %u, %d steps (2 eager, then a "
           "captured CUDA graph)\n",
           n_gpus, nccl_version, koala_version(), n_steps);
    fflush(stdout);

    pthread_barrier_init(&barrier, NULL, (unsigned)n_gpus);
    pthread_t threads[MAX_GPUS];
    for (int g = 0; g < n_gpus; ++g)
        if (pthread_create(&threads[g], NULL, gpu_thread, (void *)(size_t)g) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    for (int g = 0; g < n_gpus; ++g) pthread_join(threads[g], NULL);
    int all_callbacks_ok = 1;
    for (int g = 0; g < n_gpus; ++g) all_callbacks_ok &= callback_ok[g];
    printf("%s - koala_nccl_allreduce captured in a CUDA graph sums exactly\n",
           all_callbacks_ok ? "ok" : "not ok");

    for (int v = 0; v < N_VARIANTS; ++v) {
        double worst = 0.0;
        int same = 1;
        for (int g = 0; g < n_gpus; ++g) {
            if (worst_error[v][g] > worst) worst = worst_error[v][g];
            same &= memcmp(final_filter[v][g], final_filter[v][0], sizeof final_filter[v][0]) == 0;
        }
        check(same, -1, "the filter differs between GPUs (%g)", 0.0);
        printf("%s - %s: filter identical on every GPU: %s; largest difference from one host "
               "process %.3g\n",
               worst <= TOL && same ? "ok" : "not ok", variants[v].name, same ? "yes" : "NO",
               worst);
    }
    pthread_barrier_destroy(&barrier);
    for (int g = 0; g < n_gpus; ++g) ncclCommDestroy(comms[g]);
    printf("koala-nccl-sharded: %s\n", failures ? "FAILED" : "all checks passed");
    return failures ? 1 : 0;
}
