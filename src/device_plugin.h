// The private interface between libkoala.so (this directory) and the CUDA
// plugin libkoala_cuda.so (cuda/). Both are built from the same tree; the
// core refuses a plugin whose abi_version differs. Every entry writes a
// human-readable reason into msg[0..msg_cap) when it returns non-OK.
// The core validates all arguments before calling an entry; the plugin
// checks only what needs the CUDA runtime (that pointers are device memory
// of the optimizer's device, and aligned).
//
// State: library-owned device state lives in the plugin's memory; with
// caller_state the plugin reads and writes the device memory bound last.
// Either way the scalar block (scalars.h) and the buffers are laid out as
// koala.h's koala_state_layout says.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "koala.h"

#define KOALA_PLUGIN_ABI_VERSION 2u
#define KOALA_PLUGIN_ENTRY "koala_cuda_plugin_ops"

extern "C" {

// What koala_create(_sharded) fixed, for the plugin's own copy.
typedef struct koala_plugin_layout {
    koala_config cfg;
    koala_dtype dtype;
    size_t n_tensors;
    const size_t *sizes;         // [n_tensors]
    const size_t *global_index;  // [n_tensors]
    size_t n_global;
    uint64_t global_elements;
    int sharded;
} koala_plugin_layout;

// Where an update reads loss and loss_var: by value, or from device memory.
typedef struct koala_plugin_loss {
    double loss, loss_var;
    const void *loss_ptr;  // NULL: use the values
    const void *loss_var_ptr;
    int is_float32;        // dtype of *loss_ptr and *loss_var_ptr
} koala_plugin_loss;

typedef struct koala_plugin_ops {
    uint32_t abi_version;

    // OK when a GPU is usable (driver new enough, a device visible, the
    // plugin has code for it).
    koala_status (*probe)(char *msg, size_t msg_cap);

    // Allocates the device state on the current device: library-owned
    // buffers zeroed and the scalar block set to `initial` (scalar_count
    // doubles, host memory; ignored with caller_state), tables, scratch.
    koala_status (*create)(const koala_plugin_layout *layout, const double *initial,
                           size_t scalar_count, void **handle, char *msg, size_t msg_cap);
    // Frees in stream order on the last stream the optimizer used.
    void (*destroy)(void *handle);

    koala_status (*predict)(void *handle, const koala_config *cfg, void *const *params,
                            void *stream, char *msg, size_t msg_cap);

    // Phase 1: partial sums into `sums` (device memory; NULL = the plugin's
    // own buffer, see internal_sums).
    koala_status (*partial_sums)(void *handle, const koala_config *cfg, void *const *params,
                                 const void *const *grads, double *sums, void *stream,
                                 char *msg, size_t msg_cap);
    // Phase 2 from summed `sums` (NULL = the plugin's own buffer). A
    // non-finite or inconsistent step is skipped on the device and counted.
    koala_status (*finish)(void *handle, const koala_config *cfg, const koala_plugin_loss *loss,
                           void *const *params, const void *const *grads, const double *sums,
                           void *stream, char *msg, size_t msg_cap);
    // The plugin's own sums buffer (device memory), what koala_update hands
    // to a sharded optimizer's all-reduce.
    double *(*internal_sums)(void *handle);

    // Synchronous on `stream`: the whole scalar block to or from host memory.
    koala_status (*read_scalars)(void *handle, double *host, void *stream, char *msg,
                                 size_t msg_cap);
    koala_status (*write_scalars)(void *handle, const double *host, void *stream, char *msg,
                                  size_t msg_cap);
    // Synchronous on `stream`: every state buffer, buffer-major then tensor
    // order (the checkpoint's order), to or from `host`. A failed copy to
    // the device leaves the state as it was.
    koala_status (*copy_buffers)(void *handle, void *host, int to_host, void *stream,
                                 char *msg, size_t msg_cap);

    // caller_state: the device memory the following calls use.
    koala_status (*bind_state)(void *handle, void *const *buffers, double *scalars, char *msg,
                               size_t msg_cap);
    // caller_state: writes the initial state (scalars from host `initial`).
    koala_status (*init_state)(void *handle, void *const *buffers, double *scalars,
                               const double *initial, void *stream, char *msg, size_t msg_cap);

    // Per global tensor lr multipliers and weight decays (host arrays of
    // n_global, copied in order on `stream`; lr NULL = all 1, wd NULL = each
    // call's cfg->weight_decay).
    koala_status (*set_tensor_hyper)(void *handle, const double *lr, const double *wd,
                                     void *stream, char *msg, size_t msg_cap);

    koala_status (*posterior)(void *handle, const koala_config *cfg, void *const *params,
                              void *const *out, void *stream, char *msg, size_t msg_cap);
} koala_plugin_ops;

// The one symbol the plugin exports.
typedef const koala_plugin_ops *(*koala_plugin_entry_fn)(void);
}
