// Finding and loading the CUDA plugin on first device use.
#pragma once
#include "device_plugin.h"

namespace koala {

// The loaded plugin, or nullptr with the reason recorded by fail()
// (KOALA_ERROR_UNSUPPORTED) in *status.
const koala_plugin_ops *device_plugin(koala_status *status);

// Runs a plugin entry's message buffer through fail(). Use as
//   char msg[256]; st = ops->x(..., msg, sizeof msg); if (st) return plugin_fail(st, msg);
koala_status plugin_fail(koala_status status, const char *msg);

}  // namespace koala
