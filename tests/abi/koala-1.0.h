/*
 * koala.h - the public C API of libkoala.
 *
 * libkoala implements KOALA, the Kalman-filter optimizer of Davtyan, Sameni,
 * Cerkezi, Meishvili, Bielski and Favaro ("KOALA: A Kalman Optimization
 * Algorithm with Loss Adaptivity", AAAI 2022), with the numbers of the
 * official reference code (VanillaKOALA / MomentumKOALA).
 *
 * The whole API is in this file. It is usable from C99 and C++.
 *
 * ------------------------------------------------------------------------
 * Calling contract (one training iteration)
 *
 *     koala_predict(opt, params, stream);      before the forward pass
 *     ... forward: per-sample losses l_j, j = 1..m ...
 *     loss     = mean_j l_j                    the minibatch mean loss
 *     loss_var = mean_j l_j * l_j              mean of SQUARED per-sample losses
 *     ... backward of `loss` into grads ...
 *     koala_update(opt, loss, loss_var, params, grads, stream);
 *
 * - `lr` is not a step size: it is the fraction of the current loss the step
 *   tries to remove (the target loss is (1 - lr) * loss). 1.0 is the
 *   reference default; schedules multiply it (e.g. x0.2 at milestones).
 * - KOALA_MOMENTUM moves the parameters to the predicted point x + v inside
 *   koala_predict: whatever reads the parameters between predict and update
 *   sees the prediction, not the posterior.
 * - predict and update strictly alternate; the first call is predict.
 *
 * ------------------------------------------------------------------------
 * Errors
 *
 * Every function except koala_destroy, koala_status_string, koala_version
 * and koala_last_error returns a koala_status. On any status other than
 * KOALA_OK nothing has changed: parameters, gradients and optimizer state
 * are exactly as before the call, and koala_last_error() returns a message
 * naming the offending argument and the reason. No C++ exception, abort()
 * or exit() ever leaves the library.
 *
 * Threads: distinct optimizers may be used from distinct threads at the same
 * time; one optimizer must be used by one thread at a time. The error
 * message is per thread.
 *
 * Memory kinds: KOALA_HOST optimizers work on host memory with the CPU
 * (OpenMP); KOALA_DEVICE optimizers work on CUDA device memory with CUDA
 * kernels on the caller's stream and never synchronise the host inside
 * koala_predict / koala_update. The device path lives in a plugin
 * (libkoala_cuda.so, next to libkoala.so) loaded on first device use; where
 * it cannot be loaded or no GPU is usable, device calls return
 * KOALA_ERROR_UNSUPPORTED and koala_last_error() says why.
 */
#ifndef KOALA_H
#define KOALA_H

#include <stddef.h>
#include <stdint.h>

/* ---- version ----------------------------------------------------------- */
#define KOALA_VERSION_MAJOR 1
#define KOALA_VERSION_MINOR 0
#define KOALA_VERSION_PATCH 0
#define KOALA_VERSION_NUMBER \
    (KOALA_VERSION_MAJOR * 10000 + KOALA_VERSION_MINOR * 100 + KOALA_VERSION_PATCH)

/* ---- export macro ------------------------------------------------------ */
#if defined(SWIG)
#  define KOALA_API
#elif defined(_WIN32)
#  if defined(KOALA_BUILDING_LIBRARY)
#    define KOALA_API __declspec(dllexport)
#  else
#    define KOALA_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) && __GNUC__ >= 4
#  define KOALA_API __attribute__((visibility("default")))
#else
#  define KOALA_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ------------------------------------------------------------- */

/* An optimizer: its configuration, the tensor layout fixed at creation, the
 * Kalman filter scalars and (KOALA_MOMENTUM) two buffers per tensor. */
typedef struct koala_optimizer koala_optimizer;

typedef enum {
    KOALA_OK = 0,
    KOALA_ERROR_INVALID_ARGUMENT, /* a NULL, out-of-range or inconsistent argument */
    KOALA_ERROR_OUT_OF_MEMORY,    /* host or device allocation failed */
    KOALA_ERROR_NOT_FINITE,       /* loss, loss_var or a gradient norm is NaN/Inf */
    KOALA_ERROR_UNSUPPORTED,      /* e.g. device memory without a usable CUDA plugin/GPU */
    KOALA_ERROR_CUDA,             /* a CUDA runtime call failed */
    KOALA_ERROR_BAD_STATE         /* checkpoint corrupt, truncated, of another layout;
                                     also: predict/update called out of order */
} koala_status;

typedef enum {
    KOALA_VANILLA = 1,  /* KOALA-V: scalar covariance sigma, no per-parameter state */
    KOALA_MOMENTUM = 2  /* KOALA-M: weights + velocities, 2x2 covariance P, 8 B/param state */
} koala_method;

typedef enum { KOALA_HOST = 1, KOALA_DEVICE = 2 } koala_memory;
typedef enum { KOALA_FLOAT32 = 1, KOALA_FLOAT64 = 2 } koala_dtype;

/* Hyper-parameters. Always start from koala_config_init(), then change
 * fields. New fields may be appended in later versions; a zero value in an
 * appended field means the default behaviour. */
typedef struct koala_config {
    size_t struct_size;       /* = sizeof(koala_config), set by koala_config_init */
    koala_method method;
    double lr;                /* target multiplier eta >= 0 (default 1.0): remove lr*loss per step */
    double weight_decay;      /* omega >= 0 (default 0; the reference train.py uses 5e-4) */
    double r;                 /* fixed measurement noise R >= 0, or NAN (default) for the
                                 online estimate R <- alpha_r*R + (1-alpha_r)*loss_var, R0 = 1 */
    double alpha_r;           /* smoothing of the online R, in [0,1) (default 0.9) */
    double sigma, q;          /* VANILLA: initial covariance (1.0; train.py uses 0.1) and
                                 process noise added by predict (1.0); both >= 0 */
    double sw, sc, sv;        /* MOMENTUM: initial P = [[sw, sc], [sc, sv]] (0.1, 0, 0.1);
                                 sw, sv >= 0 and sw*sv >= sc*sc */
    double a;                 /* MOMENTUM: velocity decay in [0,1) (0.9) */
    double qw, qv;            /* MOMENTUM: initial weight process noise (0.01, then adapted
                                 online) and velocity process noise (0.01); both >= 0 */
} koala_config;

/* What an optimizer reports about itself. */
typedef struct koala_info {
    size_t struct_size;       /* = sizeof(koala_info), set by the CALLER */
    uint64_t steps;           /* completed koala_update calls */
    uint64_t skipped_steps;   /* device optimizers: updates skipped on the device because
                                 loss, loss_var or a gradient norm was not finite */
    double sigma;             /* VANILLA: current sigma (P after update, P-hat after predict) */
    double p00, p01, p11;     /* MOMENTUM: current 2x2 covariance */
    double r, qw;             /* current measurement noise R; MOMENTUM's current q_w */
} koala_info;

/* ---- configuration ------------------------------------------------------ */

/* Fills *cfg with the official code's class defaults for `method` and sets
 * cfg->struct_size. Fields of the other method get their defaults too.
 * A NULL cfg is ignored; an unknown method is stored as given (koala_create
 * then rejects it). */
KOALA_API void koala_config_init(koala_config *cfg, koala_method method);

/* ---- lifetime ----------------------------------------------------------- */

/* Creates an optimizer for `n_tensors` tensors; tensor i has sizes[i]
 * elements (> 0) of `dtype`, in `memory`. The config is copied and every
 * field the method uses is validated (see koala_config). On success *out
 * receives the handle (release it with koala_destroy); on failure *out is
 * not written.
 * Errors: INVALID_ARGUMENT (NULL cfg/sizes/out, struct_size too small,
 * unknown method/dtype/memory, n_tensors == 0, sizes[i] == 0, a byte size
 * that overflows, a bad config value), OUT_OF_MEMORY, UNSUPPORTED (device
 * memory where the CUDA plugin or a GPU is not usable), CUDA. */
KOALA_API koala_status koala_create(const koala_config *cfg, size_t n_tensors,
                                    const size_t *sizes, koala_dtype dtype,
                                    koala_memory memory, koala_optimizer **out);

/* Releases the optimizer and its buffers. NULL is fine. For device
 * optimizers, work queued on earlier streams is waited for first. */
KOALA_API void koala_destroy(koala_optimizer *opt);

/* ---- the step ----------------------------------------------------------- */

/* The time update, before the forward pass.
 * VANILLA: sigma <- sigma + q; `params` is not read and may be NULL.
 * MOMENTUM: params[i] (sizes[i] elements each, all non-NULL) move to the
 * prediction x + v, the velocities decay, q_w and P are predicted.
 * `stream` is a cudaStream_t for device optimizers (NULL = default stream)
 * and must be NULL for host optimizers.
 * Errors: INVALID_ARGUMENT, BAD_STATE (called twice without koala_update),
 * CUDA. */
KOALA_API koala_status koala_predict(koala_optimizer *opt, void *const *params, void *stream);

/* The measurement update, after the backward pass.
 * loss     = mean minibatch loss (what was backpropagated),
 * loss_var = mean of the squared per-sample losses (feeds the online R).
 * params[i]: the parameters (all non-NULL), updated in place.
 * grads[i]:  the gradient of `loss` w.r.t. params[i], or NULL when tensor i
 *            has no gradient this step (the tensor is then left alone, as is a
 *            tensor whose raw gradient norm is below 1e-9). If every tensor is
 *            skipped, only R changes and the covariance keeps its prediction.
 * Host optimizers: a non-finite loss, loss_var or gradient norm returns
 * NOT_FINITE and changes nothing; the optimizer stays predicted, so the
 * caller may retry koala_update with another minibatch.
 * Device optimizers: the same check runs on the device; a non-finite step is
 * skipped there (nothing changes, koala_info.skipped_steps counts it) and
 * the call returns OK without synchronising.
 * Errors: INVALID_ARGUMENT (also a finite negative loss_var, which cannot
 * be a mean of squares), NOT_FINITE (host), BAD_STATE (no koala_predict
 * since the last update), CUDA. */
KOALA_API koala_status koala_update(koala_optimizer *opt, double loss, double loss_var,
                                    void *const *params, const void *const *grads,
                                    void *stream);

/* koala_update with `loss` and `loss_var` read from memory of the optimizer's
 * kind (device memory for a device optimizer, so the step needs no host
 * synchronisation), each one scalar of `loss_dtype`. */
KOALA_API koala_status koala_update_ptr(koala_optimizer *opt, const void *loss,
                                        const void *loss_var, koala_dtype loss_dtype,
                                        void *const *params, const void *const *grads,
                                        void *stream);

/* ---- inspection and control -------------------------------------------- */

/* Fills *out (the caller sets out->struct_size = sizeof(koala_info) first;
 * smaller sizes are rejected). Device optimizers: waits for `stream`. */
KOALA_API koala_status koala_get_info(const koala_optimizer *opt, void *stream, koala_info *out);

/* Sets the target multiplier used by the following updates (finite, >= 0). */
KOALA_API koala_status koala_set_lr(koala_optimizer *opt, double lr);

/* ---- checkpoint --------------------------------------------------------- */
/* A checkpoint is a versioned, little-endian byte string with a checksum,
 * holding the config, the layout (method, dtype, sizes), the filter scalars,
 * the call phase and the per-tensor buffers. Buffers live in host memory
 * for every optimizer kind. Saving then loading into an optimizer created
 * with the same method, dtype and sizes continues the run bit for bit
 * (the memory kind may differ). The config (lr included) is restored too. */

/* *bytes = the exact size koala_state_save writes. */
KOALA_API koala_status koala_state_size(const koala_optimizer *opt, size_t *bytes);

/* Writes the checkpoint into buf (size >= koala_state_size). Device
 * optimizers: waits for `stream`. Errors: INVALID_ARGUMENT (NULL, too small). */
KOALA_API koala_status koala_state_save(const koala_optimizer *opt, void *buf, size_t size,
                                        void *stream);

/* Replaces the optimizer's state with the checkpoint in buf[0..size).
 * Errors: BAD_STATE when the bytes are corrupt, truncated, of an unknown
 * format version, or of another method/dtype/layout; INVALID_ARGUMENT for
 * NULL arguments. On error the optimizer is unchanged. Device optimizers:
 * ordered on `stream`, waits for it before returning. */
KOALA_API koala_status koala_state_load(koala_optimizer *opt, const void *buf, size_t size,
                                        void *stream);

/* ---- diagnostics -------------------------------------------------------- */

/* A static English name for a status ("KOALA_ERROR_NOT_FINITE: ..."). */
KOALA_API const char *koala_status_string(koala_status s);

/* The message of this thread's last failed call ("" if none). The pointer
 * stays valid until this thread's next failing libkoala call. */
KOALA_API const char *koala_last_error(void);

/* The library's version: MAJOR*10000 + MINOR*100 + PATCH. Compare it with
 * KOALA_VERSION_NUMBER to detect a header/library mismatch. */
KOALA_API unsigned koala_version(void);

/* KOALA_OK when device optimizers can be created here (the CUDA plugin loads
 * and a GPU is visible); otherwise UNSUPPORTED (or CUDA) and
 * koala_last_error() says why. Never fails in any other way. */
KOALA_API koala_status koala_device_probe(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KOALA_H */
