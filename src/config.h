// Reference defaults and validation of koala_config.
#pragma once
#include "koala.h"

namespace koala {

// Copies the caller's config (whatever its struct_size) into *out and checks
// every field the method uses. `what` names the calling function in
// messages. Returns INVALID_ARGUMENT / UNSUPPORTED with a message.
koala_status read_config(const koala_config *cfg, const char *what, koala_config *out);

// Checks the values of a complete config (used by read_config and by the
// checkpoint loader).
koala_status check_config_values(const koala_config &cfg, const char *what, koala_status status);

}  // namespace koala
