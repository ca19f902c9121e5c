// Reference defaults and validation of koala_config.
#pragma once
#include <cstring>

#include "koala.h"

namespace koala {

// Larger struct_size values are taken for garbage, not for a newer header.
constexpr size_t kMaxStructSize = size_t(1) << 20;
constexpr int kMaxThreads = 1024;

// An enum argument as an int. A C caller may pass any int where koala.h
// names an enum; in C++ reading an enum object whose value lies outside its
// enumerators' range is undefined (UBSan: "load of value 9, which is not a
// valid value for type 'koala_dtype'"), so the bytes are read instead.
template <class E>
int enum_value(const E &e) {
    static_assert(sizeof(E) == sizeof(int), "C enums are int-sized");
    int v;
    std::memcpy(&v, &e, sizeof v);
    return v;
}

// Copies the caller's config (any struct_size from 1.0's up) into *out,
// filling the fields an older caller's struct lacks with their defaults, and
// checks every field the method uses. `what` names the calling function in
// messages. Returns INVALID_ARGUMENT / UNSUPPORTED with a message.
koala_status read_config(const koala_config *cfg, const char *what, koala_config *out);

// Checks the values of a complete config (used by read_config and by the
// checkpoint loader).
koala_status check_config_values(const koala_config &cfg, const char *what, koala_status status);

}  // namespace koala
