// What every entry point of the ABI boundary (api*.cpp) does the same way:
// exceptions into statuses, and the argument checks shared between entries.
// Each check records a message naming the calling entry (`what`) and the
// argument, and returns its status.
#pragma once
#include <new>

#include "device.h"
#include "error.h"
#include "optimizer.h"

namespace koala {

// Runs `body`, turning any escaping C++ exception into a status.
template <class F>
koala_status guarded(const char *what, F &&body) {
    try {
        return body();
    } catch (const std::bad_alloc &) {
        return fail(KOALA_ERROR_OUT_OF_MEMORY, "%s: out of host memory", what);
    } catch (...) {
        return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: unexpected internal error", what);
    }
}

koala_status check_handle(const koala_optimizer *opt, const char *what);
koala_status check_stream(const koala_optimizer *opt, void *stream, const char *what);
koala_status check_params(const koala_optimizer *opt, void *const *params, const char *what);
// grads may be NULL only for a process that holds no tensor.
koala_status check_grads(const koala_optimizer *opt, const void *const *grads, const char *what);
// FLOAT32 or FLOAT64 (the dtypes a loss may be read as).
koala_status check_loss_dtype(int dtype, const char *what, const char *name);
// loss_var is a mean of squares: a finite negative value is a caller bug
// that would drive the online R (a variance) negative. Non-finite values
// are left to the NOT_FINITE path.
koala_status check_loss_var(double loss_var, const char *what, const char *name);
// A caller_state optimizer must have its state bound.
koala_status check_bound(const koala_optimizer *opt, const char *what);
// BAD_STATE unless the optimizer's phase is one of `allowed` (a bit mask of
// 1 << Phase). Device optimizers with caller state cannot be checked
// without a synchronisation and pass.
koala_status check_phase(const koala_optimizer *opt, unsigned allowed, const char *what);

// The phase as the host knows it, and its update.
int phase_of(const koala_optimizer *opt);
void set_phase(koala_optimizer *opt, int phase);

// The loaded CUDA plugin (nullptr with UNSUPPORTED recorded).
inline const koala_plugin_ops *plugin(koala_status *st) { return device_plugin(st); }

}  // namespace koala
