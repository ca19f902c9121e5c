// libkoala statuses and the handlers' own checks as XLA FFI errors. The
// message names the handler and carries libkoala's status string and
// koala_last_error(), so a failure inside jax.jit reads like a failed call
// of the C API.
#pragma once

#include <string>

#include "koala.h"
#include "xla/ffi/api/ffi.h"

namespace koala_jax {

namespace ffi = xla::ffi;

inline ffi::Error koala_error(const std::string &what, koala_status s) {
    std::string msg = "koala.jax " + what + ": " + koala_status_string(s) + ": " +
                      koala_last_error();
    ffi::ErrorCode code = ffi::ErrorCode::kInternal;
    switch (s) {
        case KOALA_ERROR_INVALID_ARGUMENT: code = ffi::ErrorCode::kInvalidArgument; break;
        case KOALA_ERROR_NOT_FINITE: code = ffi::ErrorCode::kOutOfRange; break;
        case KOALA_ERROR_BAD_STATE: code = ffi::ErrorCode::kFailedPrecondition; break;
        case KOALA_ERROR_OUT_OF_MEMORY: code = ffi::ErrorCode::kResourceExhausted; break;
        case KOALA_ERROR_UNSUPPORTED: code = ffi::ErrorCode::kUnimplemented; break;
        default: break;
    }
    return ffi::Error(code, msg);
}

inline ffi::Error invalid(const std::string &msg) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "koala.jax: " + msg);
}

inline ffi::Error internal_error(const std::string &msg) {
    return ffi::Error(ffi::ErrorCode::kInternal, "koala.jax: " + msg);
}

}  // namespace koala_jax
