#include "config.h"

#include <cmath>
#include <cstring>

#include "error.h"

// The 1.0 structs as 1.0 laid them out on LP64 targets (tests/abi checks a
// 1.0 program against this library).
static_assert(sizeof(size_t) != 8 || KOALA_CONFIG_SIZE_1_0 == 112, "1.0 koala_config size");
static_assert(sizeof(size_t) != 8 || KOALA_INFO_SIZE_1_0 == 72, "1.0 koala_info size");

extern "C" KOALA_API void koala_config_init_sized(koala_config *cfg, koala_method method,
                                                  size_t struct_size) {
    if (!cfg || struct_size < KOALA_CONFIG_SIZE_1_0 || struct_size > koala::kMaxStructSize)
        return;
    koala_config c;
    std::memset(&c, 0, sizeof c);
    c.struct_size = struct_size;
    // Stored as given, even an unknown value (koala_create rejects it); copied
    // as bytes because a C caller's out-of-range enum may not be read as one
    // in C++ (see enum_value in config.h).
    std::memcpy(&c.method, &method, sizeof method);
    // The official code's class defaults (ALGORITHM.md §7.5, §8). KOALA++'s
    // sigma and q defaults equal KOALA-V's.
    c.lr = 1.0;
    c.weight_decay = 0.0;
    c.r = NAN;  // online R
    c.alpha_r = 0.9;
    c.sigma = 1.0;
    c.q = 1.0;
    c.sw = 0.1;
    c.sc = 0.0;
    c.sv = 0.1;
    c.a = 0.9;
    c.qw = 0.01;
    c.qv = 0.01;
    // The 1.1 fields' defaults are their zero values. Bytes of a newer
    // caller's struct beyond ours are zeroed: zero means "default".
    const size_t ours = struct_size < sizeof c ? struct_size : sizeof c;
    std::memcpy(cfg, &c, ours);
    if (struct_size > sizeof c)
        std::memset(reinterpret_cast<unsigned char *>(cfg) + sizeof c, 0, struct_size - sizeof c);
}

// The 1.0 entry point (the header's macro of the same name reaches the
// sized one): never writes more than a 1.0 caller's struct holds.
extern "C" KOALA_API void(koala_config_init)(koala_config *cfg, koala_method method) {
    koala_config_init_sized(cfg, method, KOALA_CONFIG_SIZE_1_0);
}

namespace koala {

namespace {

bool finite(double v) { return std::isfinite(v); }

koala_status check_flag(int v, const char *name, const char *what, koala_status st) {
    if (v != 0 && v != 1) return fail(st, "%s: cfg->%s is %d; it must be 0 or 1", what, name, v);
    return KOALA_OK;
}

}  // namespace

koala_status check_config_values(const koala_config &c, const char *what, koala_status st) {
    const int method = enum_value(c.method);
    if (method != KOALA_VANILLA && method != KOALA_MOMENTUM && method != KOALA_PLUSPLUS)
        return fail(st,
                    "%s: cfg->method is %d; expected KOALA_VANILLA (1), KOALA_MOMENTUM (2) or "
                    "KOALA_PLUSPLUS (3)",
                    what, method);
    if (!finite(c.lr) || c.lr < 0)
        return fail(st, "%s: cfg->lr is %g; it must be finite and >= 0", what, c.lr);
    if (!finite(c.weight_decay) || c.weight_decay < 0)
        return fail(st, "%s: cfg->weight_decay is %g; it must be finite and >= 0", what,
                    c.weight_decay);
    if (!std::isnan(c.r) && (!finite(c.r) || c.r < 0))
        return fail(st, "%s: cfg->r is %g; it must be NAN (online estimate) or finite and >= 0",
                    what, c.r);
    if (!(c.alpha_r >= 0 && c.alpha_r < 1))
        return fail(st, "%s: cfg->alpha_r is %g; it must be in [0, 1)", what, c.alpha_r);
    if (c.method != KOALA_MOMENTUM) {
        if (!finite(c.sigma) || c.sigma < 0)
            return fail(st, "%s: cfg->sigma is %g; it must be finite and >= 0", what, c.sigma);
        if (!finite(c.q) || c.q < 0)
            return fail(st, "%s: cfg->q is %g; it must be finite and >= 0", what, c.q);
    } else {
        if (!finite(c.sw) || c.sw < 0)
            return fail(st, "%s: cfg->sw is %g; it must be finite and >= 0", what, c.sw);
        if (!finite(c.sv) || c.sv < 0)
            return fail(st, "%s: cfg->sv is %g; it must be finite and >= 0", what, c.sv);
        if (!finite(c.sc))
            return fail(st, "%s: cfg->sc is %g; it must be finite", what, c.sc);
        if (c.sc * c.sc > c.sw * c.sv)
            return fail(st,
                        "%s: cfg->sc is %g; the initial covariance [[sw, sc], [sc, sv]] must be "
                        "positive semi-definite (sc*sc <= sw*sv = %g)",
                        what, c.sc, c.sw * c.sv);
        if (!(c.a >= 0 && c.a < 1))
            return fail(st, "%s: cfg->a is %g; it must be in [0, 1)", what, c.a);
        if (!finite(c.qw) || c.qw < 0)
            return fail(st, "%s: cfg->qw is %g; it must be finite and >= 0", what, c.qw);
        if (!finite(c.qv) || c.qv < 0)
            return fail(st, "%s: cfg->qv is %g; it must be finite and >= 0", what, c.qv);
    }
    if (c.threads < 0 || c.threads > kMaxThreads)
        return fail(st, "%s: cfg->threads is %d; it must be in [0, %d] (0 = the default)", what,
                    c.threads, kMaxThreads);
    koala_status s = check_flag(c.stochastic_rounding, "stochastic_rounding", what, st);
    if (s == KOALA_OK) s = check_flag(c.asymmetric, "asymmetric", what, st);
    if (s == KOALA_OK) s = check_flag(c.fused_predict, "fused_predict", what, st);
    if (s == KOALA_OK) s = check_flag(c.caller_state, "caller_state", what, st);
    return s;
}

koala_status read_config(const koala_config *cfg, const char *what, koala_config *out) {
    if (!cfg) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: cfg is NULL", what);
    if (cfg->struct_size < KOALA_CONFIG_SIZE_1_0)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: cfg->struct_size is %zu; expected at least %zu, the size of a 1.0 "
                    "koala_config (call koala_config_init first)",
                    what, cfg->struct_size, static_cast<size_t>(KOALA_CONFIG_SIZE_1_0));
    if (cfg->struct_size > kMaxStructSize)
        return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: cfg->struct_size %zu is implausible",
                    what, cfg->struct_size);
    // A newer caller's struct: fields this library does not know must be zero
    // (zero means "default" by contract).
    if (cfg->struct_size > sizeof(koala_config)) {
        const unsigned char *extra = reinterpret_cast<const unsigned char *>(cfg) + sizeof *cfg;
        for (size_t i = 0; i < cfg->struct_size - sizeof *cfg; ++i)
            if (extra[i] != 0)
                return fail(KOALA_ERROR_UNSUPPORTED,
                            "%s: cfg sets fields beyond byte %zu that this libkoala (%u) does not "
                            "know",
                            what, sizeof *cfg, koala_version());
    }
    // An older caller's struct: the fields it lacks keep their zero defaults.
    koala_config copy;
    std::memset(&copy, 0, sizeof copy);
    std::memcpy(&copy, cfg, cfg->struct_size < sizeof copy ? cfg->struct_size : sizeof copy);
    copy.struct_size = sizeof copy;
    const koala_status st = check_config_values(copy, what, KOALA_ERROR_INVALID_ARGUMENT);
    if (st != KOALA_OK) return st;
    *out = copy;
    return KOALA_OK;
}

}  // namespace koala
