// The thread-local error message behind koala_last_error(), and the one
// helper every failing path goes through.
#pragma once
#include "koala.h"

namespace koala {

// Records a printf-style message for this thread and returns `status`, so a
// failing check reads `return fail(KOALA_ERROR_INVALID_ARGUMENT, "...")`.
koala_status fail(koala_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

const char *last_error();

}  // namespace koala
