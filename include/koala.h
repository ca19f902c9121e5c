/**
 * @file koala.h
 * @brief The public C API of libkoala: KOALA-V, KOALA-M and KOALA++ as a
 *        system library.
 *
 * libkoala implements KOALA, the Kalman-filter optimizer of Davtyan, Sameni,
 * Cerkezi, Meishvili, Bielski and Favaro ("KOALA: A Kalman Optimization
 * Algorithm with Loss Adaptivity", AAAI 2022), with the numbers of the
 * official reference code (VanillaKOALA / MomentumKOALA), and its successor
 * KOALA++ of Xia, Davtyan and Favaro (NeurIPS 2025), following the official
 * koalap.py. The whole API is in this file; it is usable from C99 and C++.
 *
 * @section contract Calling contract (one training iteration)
 *
 * @code
 *     koala_predict(opt, params, stream);      // before the forward pass
 *     // forward: per-sample losses l_j, j = 1..m
 *     loss     = mean_j l_j;                   // the minibatch mean loss
 *     loss_var = mean_j l_j * l_j;             // mean of SQUARED per-sample losses
 *     // backward of `loss` into grads
 *     koala_update(opt, loss, loss_var, params, grads, stream);
 * @endcode
 *
 * - `lr` is not a step size: it is the fraction of the current loss the step
 *   tries to remove (the target loss is (1 - lr) * loss). 1.0 is the
 *   reference default; schedules multiply it (e.g. x0.2 at milestones).
 * - KOALA_MOMENTUM moves the parameters to the predicted point x + v inside
 *   koala_predict: whatever reads the parameters between predict and update
 *   sees the prediction, not the posterior.
 * - predict and update strictly alternate; the first call is predict.
 *   (KOALA_VANILLA's predict only adds q to sigma; KOALA_PLUSPLUS's predict
 *   does nothing, but is still called, so one training loop serves every
 *   method.)
 *
 * @section errors Errors
 *
 * Every function except koala_destroy, koala_status_string, koala_version,
 * koala_last_error and the koala_config_init family returns a koala_status.
 * On any status other than KOALA_OK nothing has changed: parameters,
 * gradients and optimizer state are exactly as before the call, and
 * koala_last_error() returns a message naming the offending argument and the
 * reason. No C++ exception, abort() or exit() ever leaves the library.
 *
 * @section threads Threads
 *
 * Distinct optimizers may be used from distinct threads at the same time;
 * one optimizer must be used by one thread at a time. The error message is
 * per thread. A host optimizer runs its passes on koala_config::threads CPU
 * threads of the library's own pool; the workers sleep (they never spin)
 * between and after calls, so several processes can share the cores. Where
 * several processes share few cores (MPI ranks or data-parallel workers on
 * one node), one thread each (koala_config::threads = 1, or
 * KOALA_NUM_THREADS=1) is the fastest setting: the default then
 * oversubscribes the cores, which costs time but never stalls.
 *
 * @section memory Memory kinds
 *
 * KOALA_HOST optimizers work on host memory with the CPU; KOALA_DEVICE
 * optimizers work on CUDA device memory with CUDA kernels on the caller's
 * stream and never synchronise the host inside koala_predict /
 * koala_update. The device path lives in a plugin (libkoala_cuda.so, next to
 * libkoala.so) loaded on first device use. The plugin carries the CUDA
 * runtime it was built with (statically), and needs a driver at least that
 * new: R580 or newer for a plugin built with CUDA 13 (the default here), R530
 * or newer for one built with a CUDA 12.1+ toolkit (doc/readme/cuda.md says
 * how). Where it cannot be loaded, the driver is too old or no GPU is usable,
 * device calls return KOALA_ERROR_UNSUPPORTED and koala_last_error() says why
 * (naming the CUDA version the driver must support).
 *
 * All calls on one device optimizer must be ordered: either pass the same
 * stream every time, or order the streams yourself (events). The optimizer
 * lives on the CUDA device its first koala_create call found current; its
 * calls make that device current for their duration.
 *
 * @section abi ABI versions
 *
 * libkoala.so.1 keeps every 1.x program working unchanged and unrecompiled:
 * structs only grow at their end, each carries its struct_size, and the
 * library accepts every struct_size from 1.0's up to its own (fields the
 * caller's struct lacks take their defaults). The exported symbols carry
 * version nodes (KOALA_1.0, KOALA_1.1). Functions marked "since 1.1" need a
 * 1.1 library; check koala_version() >= 10100 before calling them through
 * dlsym.
 */
#ifndef KOALA_H
#define KOALA_H

#include <stddef.h>
#include <stdint.h>

/* ---- version ----------------------------------------------------------- */
/** Major version of this header (an incompatible ABI would change it and the soname). */
#define KOALA_VERSION_MAJOR 1
/** Minor version of this header (grows when functions or fields are appended). */
#define KOALA_VERSION_MINOR 1
/** Patch version of this header. */
#define KOALA_VERSION_PATCH 0
/** MAJOR*10000 + MINOR*100 + PATCH of this header; compare with koala_version(). */
#define KOALA_VERSION_NUMBER \
    (KOALA_VERSION_MAJOR * 10000 + KOALA_VERSION_MINOR * 100 + KOALA_VERSION_PATCH)

/* ---- export macro ------------------------------------------------------ */
/** @cond KOALA_INTERNAL (the export macro is not part of the documented API) */
#if defined(SWIG) || defined(KOALA_DOXYGEN)
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
/** @endcond */

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ------------------------------------------------------------- */

/** An optimizer: its configuration, the tensor layout fixed at creation, the
 *  Kalman filter scalars and (KOALA_MOMENTUM, KOALA_PLUSPLUS) two buffers per
 *  tensor. Opaque; create it with koala_create, release it with
 *  koala_destroy. */
typedef struct koala_optimizer koala_optimizer;

/** What every call returns. */
typedef enum {
    KOALA_OK = 0,                 /**< success */
    KOALA_ERROR_INVALID_ARGUMENT, /**< a NULL, out-of-range or inconsistent argument */
    KOALA_ERROR_OUT_OF_MEMORY,    /**< host or device allocation failed */
    KOALA_ERROR_NOT_FINITE,       /**< loss, loss_var or a gradient norm is NaN/Inf */
    KOALA_ERROR_UNSUPPORTED,      /**< e.g. device memory without a usable CUDA plugin/GPU */
    KOALA_ERROR_CUDA,             /**< a CUDA runtime call failed */
    KOALA_ERROR_BAD_STATE,        /**< checkpoint corrupt, truncated, of another layout;
                                       also: predict/update called out of order */
    KOALA_ERROR_COMMUNICATION     /**< (since 1.1) the all-reduce callback failed */
} koala_status;

/** The optimizer's method. */
typedef enum {
    KOALA_VANILLA = 1,  /**< KOALA-V: scalar covariance sigma, no per-parameter state */
    KOALA_MOMENTUM = 2, /**< KOALA-M: weights + velocities, 2x2 covariance P, 2 buffers/param */
    KOALA_PLUSPLUS = 3  /**< (since 1.1) KOALA++: the row vector v = H P per tensor
                             (symmetric variant of the official koalap.py), 2 buffers/param */
} koala_method;

/** Where parameters, gradients and optimizer state live. */
typedef enum {
    KOALA_HOST = 1,   /**< host memory, CPU threads */
    KOALA_DEVICE = 2  /**< CUDA device (or managed) memory, CUDA kernels */
} koala_memory;

/** Element type of parameters and gradients. For the 16-bit types the
 *  element math runs in float32, norms in float64, KOALA-M/KOALA++ state is
 *  float32, and results are rounded to nearest-even (or stochastically, see
 *  koala_config::stochastic_rounding). */
typedef enum {
    KOALA_FLOAT32 = 1,
    KOALA_FLOAT64 = 2,
    KOALA_BFLOAT16 = 3, /**< (since 1.1) bfloat16 (8-bit exponent, 7-bit mantissa) */
    KOALA_FLOAT16 = 4   /**< (since 1.1) IEEE binary16 */
} koala_dtype;

/** Hyper-parameters. Always start from koala_config_init(), then change
 *  fields. New fields are only ever appended; a zero value in an appended
 *  field means the default behaviour. */
typedef struct koala_config {
    size_t struct_size;       /**< = sizeof(koala_config), set by koala_config_init */
    koala_method method;      /**< KOALA_VANILLA, KOALA_MOMENTUM or KOALA_PLUSPLUS (set by
                                   koala_config_init) */
    double lr;                /**< target multiplier eta >= 0 (default 1.0): remove lr*loss per step */
    double weight_decay;      /**< omega >= 0 (default 0; the reference train.py uses 5e-4) */
    double r;                 /**< fixed measurement noise R >= 0, or NAN (default) for the
                                   online estimate R <- alpha_r*R + (1-alpha_r)*loss_var, R0 = 1 */
    double alpha_r;           /**< smoothing of the online R, in [0,1) (default 0.9) */
    double sigma;             /**< VANILLA: initial covariance (1.0; train.py uses 0.1);
                                   PLUSPLUS: initial P0 = sigma*I (1.0); >= 0 */
    double q;                 /**< VANILLA: process noise added by predict (1.0);
                                   PLUSPLUS: process noise Q (1.0); >= 0 */
    /** @{ */
    double sw, sc, sv;        /**< MOMENTUM: initial P = [[sw, sc], [sc, sv]] (0.1, 0, 0.1);
                                   sw, sv >= 0 and sw*sv >= sc*sc */
    /** @} */
    double a;                 /**< MOMENTUM: velocity decay in [0,1) (0.9) */
    /** @{ */
    double qw, qv;            /**< MOMENTUM: initial weight process noise (0.01, then adapted
                                   online) and velocity process noise (0.01); both >= 0 */
    /** @} */
    /* ---- since 1.1 (a 1.0 caller's struct ends above; these take the defaults) ---- */
    int threads;              /**< HOST: CPU threads for this optimizer's passes; 0 (default)
                                   = the environment variable KOALA_NUM_THREADS if set, else
                                   OMP_NUM_THREADS if set, else the CPUs this process may run
                                   on (sched_getaffinity). Idle workers sleep; they never spin,
                                   and a worker the OS schedules late is not waited for. With
                                   several processes per node (MPI, DDP) give each one its
                                   share of the cores. Results do not depend on the count. */
    int stochastic_rounding;  /**< BFLOAT16/FLOAT16: 0 (default) rounds updated parameters to
                                   nearest-even; 1 rounds them stochastically, reproducibly
                                   from `seed`, the step count and the element's position */
    uint64_t seed;            /**< seed of the stochastic rounding (default 0) */
    int asymmetric;           /**< PLUSPLUS: 0 (default) the symmetric variant of koalap.py
                                   (is_symmetric=True), 1 the asymmetric one (w_k = 0) */
    int fused_predict;        /**< MOMENTUM: 0 (default) the reference's passes (52 B/param per
                                   step in float32); 1 = the update also applies the next
                                   prediction (36 B/param): after koala_update the parameters
                                   already hold x + v, koala_predict only touches tensors the
                                   update skipped, and koala_posterior gives the posterior
                                   weights for evaluation. The trajectory is the same. */
    int caller_state;         /**< 0 (default): the library allocates and owns the optimizer's
                                   state. 1: the caller owns it (koala_state_layout,
                                   koala_state_init, koala_bind_state); nothing per-parameter
                                   is allocated by the library. */
} koala_config;

/** The size of a 1.0 koala_config, the smallest struct_size accepted. */
#define KOALA_CONFIG_SIZE_1_0 offsetof(koala_config, threads)

/** What an optimizer reports about itself (koala_get_info). */
typedef struct koala_info {
    size_t struct_size;       /**< = sizeof(koala_info), set by the CALLER */
    uint64_t steps;           /**< completed koala_update calls (device optimizers: also those
                                   whose step was skipped on the device, and every replay of
                                   a captured update) */
    uint64_t skipped_steps;   /**< device optimizers: updates skipped on the device because
                                   loss, loss_var or a gradient norm was not finite */
    double sigma;             /**< VANILLA: current sigma (P after update, P-hat after predict) */
    /** @{ */
    double p00, p01, p11;     /**< MOMENTUM: current 2x2 covariance (a sharded optimizer
                                   predicts P inside koala_update, so between predict and
                                   update it still shows the posterior) */
    /** @} */
    /** @{ */
    double r, qw;             /**< current measurement noise R; MOMENTUM's current q_w */
    /** @} */
    /* ---- since 1.1 ---- */
    double lr;                /**< the current target multiplier (koala_set_lr) */
    int threads;              /**< HOST: CPU threads the passes run on (resolved default) */
    int phase;                /**< 0 = updated (predict next), 1 = predicted (update next),
                                   2 = koala_update_begin done (koala_update_end next) */
} koala_info;

/** The size of a 1.0 koala_info, the smallest struct_size accepted. */
#define KOALA_INFO_SIZE_1_0 offsetof(koala_info, lr)

/* ---- configuration ------------------------------------------------------ */

/** Fills the first @p struct_size bytes of *cfg with the official code's
 *  class defaults for @p method (fields of the other methods get their
 *  defaults too; bytes this library does not know are zeroed) and sets
 *  cfg->struct_size = struct_size. A NULL cfg, or a struct_size smaller than
 *  KOALA_CONFIG_SIZE_1_0, writes nothing. An unknown method is stored as given
 *  (koala_create then rejects it). Call it through the koala_config_init
 *  macro. Since 1.1. */
KOALA_API void koala_config_init_sized(koala_config *cfg, koala_method method,
                                       size_t struct_size);

/** The 1.0 entry point: koala_config_init_sized(cfg, method,
 *  KOALA_CONFIG_SIZE_1_0). Programs compiled against this header reach
 *  koala_config_init_sized through the macro below, with their own
 *  sizeof(koala_config). */
KOALA_API void (koala_config_init)(koala_config *cfg, koala_method method);
/** koala_config_init(cfg, method) for programs compiled against this header:
 *  koala_config_init_sized(cfg, method, sizeof(koala_config)), the defaults
 *  in the caller's whole struct. */
#define koala_config_init(cfg, method) \
    koala_config_init_sized((cfg), (method), sizeof(koala_config))

/* ---- lifetime ----------------------------------------------------------- */

/** Creates an optimizer for @p n_tensors tensors; tensor i has sizes[i]
 *  elements (> 0) of @p dtype, in @p memory. The config is copied and every
 *  field the method uses is validated (see koala_config). On success *out
 *  receives the handle (release it with koala_destroy); on failure *out is
 *  not written.
 *  Errors: INVALID_ARGUMENT (NULL cfg/sizes/out, struct_size too small,
 *  unknown method/dtype/memory, n_tensors == 0, sizes[i] == 0, a byte size
 *  that overflows, a bad config value), UNSUPPORTED (cfg sets fields this
 *  library does not know; device memory where the CUDA plugin or a GPU is not
 *  usable), OUT_OF_MEMORY, CUDA. */
KOALA_API koala_status koala_create(const koala_config *cfg, size_t n_tensors,
                                    const size_t *sizes, koala_dtype dtype,
                                    koala_memory memory, koala_optimizer **out);

/** Releases the optimizer and its buffers. NULL is fine. For device
 *  optimizers, memory is freed in stream order (work already queued that
 *  uses it completes first); the host is not synchronised. */
KOALA_API void koala_destroy(koala_optimizer *opt);

/* ---- the step ----------------------------------------------------------- */

/** The time update, before the forward pass.
 *  VANILLA: sigma <- sigma + q; PLUSPLUS: nothing; for both @p params is not
 *  read and may be NULL.
 *  MOMENTUM: params[i] (sizes[i] elements each, all non-NULL) move to the
 *  prediction x + v, the velocities decay, q_w and P are predicted.
 *  @p stream is a cudaStream_t for device optimizers (NULL = default stream)
 *  and must be NULL for host optimizers.
 *  Errors: INVALID_ARGUMENT, BAD_STATE (called twice without koala_update),
 *  CUDA. */
KOALA_API koala_status koala_predict(koala_optimizer *opt, void *const *params, void *stream);

/** The measurement update, after the backward pass.
 *  loss     = mean minibatch loss (what was backpropagated),
 *  loss_var = mean of the squared per-sample losses (feeds the online R).
 *  params[i]: the parameters (all non-NULL), updated in place.
 *  grads[i]:  the gradient of `loss` w.r.t. params[i], or NULL when tensor i
 *             has no gradient this step (the tensor is then left alone, as is a
 *             tensor whose raw gradient norm is below 1e-9). If every tensor is
 *             skipped, only R changes and the covariance keeps its prediction.
 *  As in the reference, a negative loss and a loss_var below loss*loss are
 *  accepted and used as given (a negative loss reverses the step: the target
 *  (1 - lr)*loss then lies above it; KOALA++'s reference scripts pass
 *  loss_var = loss*loss or 0). Only a finite negative loss_var, which no
 *  mean of squares can be, is rejected.
 *  Host optimizers: a non-finite loss, loss_var or gradient norm returns
 *  NOT_FINITE and changes nothing; the optimizer stays predicted, so the
 *  caller may call koala_update again with the next minibatch.
 *  Device optimizers: the same check runs on the device; a non-finite step is
 *  skipped there (nothing changes, koala_info.skipped_steps counts it) and
 *  the call returns OK without synchronising.
 *  Sharded optimizers call the all-reduce callback once (see
 *  koala_create_sharded).
 *  Errors: INVALID_ARGUMENT (also a finite negative loss_var), NOT_FINITE
 *  (host), BAD_STATE (no koala_predict since the last update),
 *  COMMUNICATION, CUDA. */
KOALA_API koala_status koala_update(koala_optimizer *opt, double loss, double loss_var,
                                    void *const *params, const void *const *grads,
                                    void *stream);

/** koala_update with @p loss and @p loss_var read from memory of the
 *  optimizer's kind (device memory for a device optimizer, so the step needs
 *  no host synchronisation), each one scalar of @p loss_dtype (FLOAT32 or
 *  FLOAT64). */
KOALA_API koala_status koala_update_ptr(koala_optimizer *opt, const void *loss,
                                        const void *loss_var, koala_dtype loss_dtype,
                                        void *const *params, const void *const *grads,
                                        void *stream);

/* ---- inspection and control -------------------------------------------- */

/** Fills *out up to out->struct_size bytes (the caller sets
 *  out->struct_size = sizeof(koala_info) first; any size from
 *  KOALA_INFO_SIZE_1_0 up is accepted, a larger caller struct keeps its tail
 *  and gets struct_size unchanged). Device optimizers: waits for @p stream. */
KOALA_API koala_status koala_get_info(const koala_optimizer *opt, void *stream, koala_info *out);

/** Sets the target multiplier used by the following updates (finite, >= 0).
 *  A device step captured in a CUDA graph keeps the lr it was captured with:
 *  re-capture after changing it. */
KOALA_API koala_status koala_set_lr(koala_optimizer *opt, double lr);

/* ---- checkpoint --------------------------------------------------------- */
/* A checkpoint is a versioned, little-endian byte string with a checksum,
 * holding the config, the layout (method, dtype, sizes, shard layout), the
 * filter scalars, the call phase, the per-tensor hyper-parameters and the
 * per-tensor buffers. Buffers live in host memory for every optimizer kind.
 * Saving then loading into an optimizer created with the same method, dtype,
 * sizes and shard layout continues the run bit for bit (the memory kind may
 * differ). The config (lr included) is restored too, except the fields that
 * describe the handle rather than the run (threads, caller_state). */

/** *bytes = the exact size koala_state_save writes. */
KOALA_API koala_status koala_state_size(const koala_optimizer *opt, size_t *bytes);

/** Writes the checkpoint into buf (size >= koala_state_size). Device
 *  optimizers: waits for @p stream. Errors: INVALID_ARGUMENT (NULL, too small). */
KOALA_API koala_status koala_state_save(const koala_optimizer *opt, void *buf, size_t size,
                                        void *stream);

/** Replaces the optimizer's state with the checkpoint in buf[0..size).
 *  Errors: BAD_STATE when the bytes are corrupt, truncated, of an unknown
 *  format version, or of another method/dtype/layout; INVALID_ARGUMENT for
 *  NULL arguments. On error the optimizer is unchanged. Device optimizers:
 *  ordered on @p stream, waits for it before returning. Reads checkpoints
 *  written by libkoala 1.0 too. */
KOALA_API koala_status koala_state_load(koala_optimizer *opt, const void *buf, size_t size,
                                        void *stream);

/* ---- diagnostics -------------------------------------------------------- */

/** A static English name for a status ("KOALA_ERROR_NOT_FINITE: ..."). */
KOALA_API const char *koala_status_string(koala_status s);

/** The message of this thread's last failed call ("" if none). The pointer
 *  stays valid until this thread's next failing libkoala call. */
KOALA_API const char *koala_last_error(void);

/** The library's version: MAJOR*10000 + MINOR*100 + PATCH. Compare it with
 *  KOALA_VERSION_NUMBER to detect a header/library mismatch. */
KOALA_API unsigned koala_version(void);

/** KOALA_OK when device optimizers can be created here (the CUDA plugin loads,
 *  the driver is new enough and a GPU is visible); otherwise UNSUPPORTED (or
 *  CUDA) and koala_last_error() says why, naming the driver the plugin needs
 *  where the driver is too old. Never fails in any other way. */
KOALA_API koala_status koala_device_probe(void);

/* ======================================================================== */
/* ---- since 1.1: many processes ----------------------------------------- */

/** Sums @p count doubles at @p buf element-wise over every process of the
 *  group, in place (MPI_Allreduce with MPI_SUM, ncclAllReduce with ncclSum on
 *  @p stream, torch.distributed.all_reduce, ...). @p buf is host memory for
 *  host optimizers, device memory for device ones (ordered on @p stream, the
 *  stream of the koala call; the callback must not synchronise the host if
 *  the step is to be graph-captured). Return 0 on success; anything else
 *  makes the koala call return KOALA_ERROR_COMMUNICATION with nothing
 *  changed. Since 1.1. */
typedef int (*koala_allreduce_fn)(double *buf, size_t count, void *stream, void *user);

/** How this process's tensors sit in the whole model (koala_create_sharded). */
typedef struct koala_shard {
    size_t struct_size;          /**< = sizeof(koala_shard) */
    size_t n_global;             /**< tensors of the whole model, the same on every process */
    const size_t *global_index;  /**< [n_tensors]: the global tensor that local tensor i is a
                                      piece of; pieces of one global tensor may sit on several
                                      processes, and a process may hold none of some. NULL
                                      means local tensor i is global tensor i. */
    uint64_t global_elements;    /**< elements of the whole model (KOALA-M's q_w normalisation;
                                      checked against the sum of every process's sizes) */
    koala_allreduce_fn allreduce;/**< called by koala_update; may be NULL if only
                                      koala_update_begin / koala_update_end are used */
    void *user;                  /**< passed to allreduce */
} koala_shard;

/** Creates an optimizer for this process's pieces of a model whose elements
 *  are spread over several processes (ZeRO / FSDP style: every element sits
 *  on exactly one process). Every process calls predict/update on its own
 *  pieces with the same loss and loss_var (the global-batch means, averaged
 *  over data-parallel processes like the gradients) and the same NULL/non-NULL
 *  pattern of gradients per global tensor. The library sums the per-tensor
 *  quantities (norms, dot products, KOALA-M's weight-difference sum) over
 *  processes through one all-reduce of koala_sums_size() doubles per update
 *  (KOALA-M's predict-time sum rides with the next update's, so predict never
 *  communicates), and computes the filter on every process identically.
 *  Results equal one process running koala_create on the whole tensors,
 *  rounding of the sums aside. Plain data parallelism (every process holds
 *  every tensor whole) needs no sharding: average loss and loss_var like the
 *  gradients and use koala_create. A process may hold no tensor at all
 *  (n_tensors == 0, sizes may then be NULL).
 *  Errors: as koala_create, plus INVALID_ARGUMENT for a NULL shard, a bad
 *  shard->struct_size, n_global == 0, NULL global_index with n_tensors >
 *  n_global, global_index[i] >= n_global, global_elements smaller than this
 *  process's elements. Layout disagreements between processes are found at
 *  the first update (INVALID_ARGUMENT on every process, nothing changed).
 *  Since 1.1. */
KOALA_API koala_status koala_create_sharded(const koala_config *cfg, size_t n_tensors,
                                            const size_t *sizes, const koala_shard *shard,
                                            koala_dtype dtype, koala_memory memory,
                                            koala_optimizer **out);

/** *count = the number of doubles of the partial-sums buffer of
 *  koala_update_begin / koala_update_end (and of the all-reduce). Since 1.1. */
KOALA_API koala_status koala_sums_size(const koala_optimizer *opt, size_t *count);

/** Phase 1 of a two-phase update, for engines that cannot be called back
 *  inside a step (JAX inside jit, a hand-written communication schedule):
 *  writes this process's partial sums into sums[0..koala_sums_size) (memory
 *  of the optimizer's kind, ordered on @p stream). Sum the buffer element-wise
 *  over the processes, then call koala_update_end with the same params and
 *  grads. Changes nothing but the phase (koala_info.phase = 2); calling it
 *  again recomputes. Works on every optimizer (for an unsharded one the
 *  buffer is already complete).
 *  Errors: INVALID_ARGUMENT (as koala_update; NULL sums), BAD_STATE (not
 *  predicted). Since 1.1. */
KOALA_API koala_status koala_update_begin(koala_optimizer *opt, void *const *params,
                                          const void *const *grads, double *sums,
                                          void *stream);

/** Phase 2: finishes the update from the summed buffer, exactly as
 *  koala_update would have. On NOT_FINITE (host) or an error nothing changes
 *  and the optimizer is predicted again (call koala_update_begin anew).
 *  Errors: as koala_update, and BAD_STATE when koala_update_begin was not
 *  called since the last predict. Since 1.1. */
KOALA_API koala_status koala_update_end(koala_optimizer *opt, double loss, double loss_var,
                                        void *const *params, const void *const *grads,
                                        const double *sums, void *stream);

/** koala_update_end with loss and loss_var read from memory of the
 *  optimizer's kind (see koala_update_ptr). Since 1.1. */
KOALA_API koala_status koala_update_end_ptr(koala_optimizer *opt, const void *loss,
                                            const void *loss_var, koala_dtype loss_dtype,
                                            void *const *params, const void *const *grads,
                                            const double *sums, void *stream);

/* ---- since 1.1: state the caller owns --------------------------------- */

/** The shape of an optimizer's state, for koala_config::caller_state = 1:
 *  *buffers_per_tensor per-element buffers for each tensor (0 VANILLA; 2
 *  MOMENTUM: velocity, slow weight average; 2 PLUSPLUS: v, previous H), each
 *  sizes[i] elements of *state_dtype (the parameter dtype, float32 for the
 *  16-bit types), and *scalar_count doubles of filter scalars, all in memory
 *  of the optimizer's kind. Any pointer argument may be NULL. Works for
 *  library-owned optimizers too. Since 1.1. */
KOALA_API koala_status koala_state_layout(const koala_optimizer *opt,
                                          size_t *buffers_per_tensor,
                                          koala_dtype *state_dtype, size_t *scalar_count);

/** Index of the lr multiplier in the scalar block of caller-owned state: the
 *  effective target multiplier is cfg.lr * scalars[KOALA_SCALAR_LR_SCALE]
 *  (koala_state_init writes 1). Engines whose lr is a traced value (JAX's
 *  optax.inject_hyperparams) write it there between calls; it must be finite
 *  and >= 0 (otherwise an update returns INVALID_ARGUMENT on the host and is
 *  skipped and counted on a device). The other slots are the library's. */
#define KOALA_SCALAR_LR_SCALE 10

/* The scalar block is a 16-double header followed by the method's
 * per-tensor filter scalars in global tensor order (KOALA-M: 1 per tensor,
 * KOALA++: 2, KOALA-V: none), so an optimizer for the same tensors plus
 * appended ones starts its block with the shorter block's bytes (the new
 * tensors' slots initialised as koala_state_init does: zeros). */

/** Writes the initial state (zero buffers, the config's filter scalars, phase
 *  "updated") into caller memory: buffers[b * n_tensors + i] is buffer b of
 *  tensor i, scalars holds scalar_count doubles (see koala_state_layout). On a
 *  device optimizer both are device memory, written on @p stream.
 *  Errors: INVALID_ARGUMENT (NULL, not caller_state). Since 1.1. */
KOALA_API koala_status koala_state_init(koala_optimizer *opt, void *const *buffers,
                                        double *scalars, void *stream);

/** Makes the following calls of a caller_state optimizer read and write the
 *  state at @p buffers / @p scalars (laid out as for koala_state_init); the
 *  pointer table is copied, the memory is not. Rebind whenever the memory
 *  moves (every call, for JAX). predict/update/get_info/state_save/
 *  state_load of a caller_state optimizer with nothing bound return
 *  BAD_STATE. On a host optimizer the phase stored in the scalars is checked
 *  as in library-owned mode; on a device optimizer the order of calls is the
 *  caller's responsibility (checking it would need a host synchronisation).
 *  Errors: INVALID_ARGUMENT (NULL, not caller_state). Since 1.1. */
KOALA_API koala_status koala_bind_state(koala_optimizer *opt, void *const *buffers,
                                        double *scalars);

/* ---- since 1.1: per-tensor hyper-parameters ----------------------------- */

/** Per-tensor lr multipliers: tensor i steps with target multiplier
 *  cfg.lr * scale[i] (the official code's per-param-group lr, with cfg.lr = 1
 *  and scale[i] = its group's lr). scale has one finite value >= 0 per global
 *  tensor (n_global; n_tensors for an optimizer from koala_create); NULL
 *  restores 1 for every tensor. The values are copied (device optimizers:
 *  in order on @p stream). Errors: INVALID_ARGUMENT naming the bad entry;
 *  nothing changes. Since 1.1. */
KOALA_API koala_status koala_set_tensor_lr(koala_optimizer *opt, const double *scale,
                                           void *stream);

/** Per-tensor weight decay (an extension: the official code has one
 *  optimizer-wide weight_decay): tensor i uses omega = weight_decay[i]
 *  (finite, >= 0) everywhere cfg.weight_decay would enter (the regularised
 *  gradient, the per-tensor loss term). One value per global tensor; NULL
 *  restores cfg.weight_decay for every tensor. Errors and copying as
 *  koala_set_tensor_lr. Since 1.1. */
KOALA_API koala_status koala_set_tensor_weight_decay(koala_optimizer *opt,
                                                     const double *weight_decay,
                                                     void *stream);

/* ---- since 1.1: posterior view ----------------------------------------- */

/** Writes the posterior weights of the last update into out[i] (sizes[i]
 *  elements of dtype each, distinct from params[i]): with
 *  koala_config::fused_predict the parameters already hold the next
 *  prediction, and this subtracts it again (to rounding); otherwise it copies
 *  params. Call it after koala_update (not between predict and update of a
 *  KOALA_MOMENTUM optimizer, where the parameters hold the prediction:
 *  BAD_STATE). Since 1.1. */
KOALA_API koala_status koala_posterior(const koala_optimizer *opt, void *const *params,
                                       void *const *out, void *stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KOALA_H */
