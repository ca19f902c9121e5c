// The private interface between libkoala.so (this directory) and the CUDA
// plugin libkoala_cuda.so (cuda/). Both are built from the same tree; the
// core refuses a plugin whose abi_version differs. Every entry writes a
// human-readable reason into msg[0..msg_cap) when it returns non-OK.
// The core validates all arguments before calling an entry; the plugin
// checks only what needs the CUDA runtime (e.g. that pointers are device
// memory).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "kalman.h"
#include "koala.h"

#define KOALA_PLUGIN_ABI_VERSION 1u
#define KOALA_PLUGIN_ENTRY "koala_cuda_plugin_ops"

extern "C" {

typedef struct koala_plugin_ops {
    uint32_t abi_version;

    // OK when a GPU is usable.
    koala_status (*probe)(char *msg, size_t msg_cap);

    // Allocates the device state: filter scalars initialised to `initial`,
    // KOALA-M buffers zeroed, tensor tables, scratch. The layout is copied.
    koala_status (*create)(const koala_config *cfg, size_t n_tensors, const size_t *sizes,
                           koala_dtype dtype, const koala::FilterState *initial,
                           void **handle, char *msg, size_t msg_cap);
    void (*destroy)(void *handle);

    koala_status (*predict)(void *handle, const koala_config *cfg, void *const *params,
                            void *stream, char *msg, size_t msg_cap);

    // loss/loss_var come either by value (loss_ptr == NULL) or from device
    // memory of loss_dtype. Non-finite steps are skipped on the device.
    koala_status (*update)(void *handle, const koala_config *cfg, double loss, double loss_var,
                           const void *loss_ptr, const void *loss_var_ptr, koala_dtype loss_dtype,
                           void *const *params, const void *const *grads, void *stream,
                           char *msg, size_t msg_cap);

    // Synchronous on `stream`: read or replace the filter scalars.
    koala_status (*get_filter)(void *handle, void *stream, koala::FilterState *out, char *msg,
                               size_t msg_cap);
    koala_status (*set_filter)(void *handle, void *stream, const koala::FilterState *in,
                               char *msg, size_t msg_cap);

    // Synchronous on `stream`: copy per-tensor buffer `which` (0 = velocity,
    // 1 = xbar) of `tensor` to or from host memory (sizes[tensor] elements).
    koala_status (*copy_buffer)(void *handle, int which, size_t tensor, void *host,
                                int to_host, void *stream, char *msg, size_t msg_cap);
} koala_plugin_ops;

// The one symbol the plugin exports.
typedef const koala_plugin_ops *(*koala_plugin_entry_fn)(void);
}
