#include "error.h"

#include <cstdarg>
#include <cstdio>

namespace koala {

namespace {
// A fixed buffer: recording an error must never allocate (it also reports
// out-of-memory).
thread_local char message[512] = "";
}  // namespace

koala_status fail(koala_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    return status;
}

const char *last_error() { return message; }

}  // namespace koala
