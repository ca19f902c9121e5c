#include "config.h"

#include <cmath>
#include <cstring>

#include "error.h"

extern "C" KOALA_API void koala_config_init(koala_config *cfg, koala_method method) {
    if (!cfg) return;
    std::memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    // Stored as given, even an unknown value (koala_create rejects it); copied
    // as bytes because a C caller's out-of-range enum may not be read as one
    // in C++ (see enum_value in config.h).
    std::memcpy(&cfg->method, &method, sizeof method);
    // The official code's class defaults (ALGORITHM.md §8).
    cfg->lr = 1.0;
    cfg->weight_decay = 0.0;
    cfg->r = NAN;  // online R
    cfg->alpha_r = 0.9;
    cfg->sigma = 1.0;
    cfg->q = 1.0;
    cfg->sw = 0.1;
    cfg->sc = 0.0;
    cfg->sv = 0.1;
    cfg->a = 0.9;
    cfg->qw = 0.01;
    cfg->qv = 0.01;
}

namespace koala {

namespace {

bool finite(double v) { return std::isfinite(v); }

}  // namespace

koala_status check_config_values(const koala_config &c, const char *what, koala_status st) {
    const int method = enum_value(c.method);
    if (method != KOALA_VANILLA && method != KOALA_MOMENTUM)
        return fail(st, "%s: cfg->method is %d; expected KOALA_VANILLA (1) or KOALA_MOMENTUM (2)",
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
    if (c.method == KOALA_VANILLA) {
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
    return KOALA_OK;
}

koala_status read_config(const koala_config *cfg, const char *what, koala_config *out) {
    if (!cfg) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: cfg is NULL", what);
    if (cfg->struct_size < sizeof(koala_config))
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: cfg->struct_size is %zu; expected %zu (call koala_config_init first)",
                    what, cfg->struct_size, sizeof(koala_config));
    // A newer caller's struct: fields this library does not know must be zero
    // (zero means "default" by contract).
    if (cfg->struct_size > sizeof(koala_config)) {
        if (cfg->struct_size > (size_t(1) << 20))
            return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: cfg->struct_size %zu is implausible",
                        what, cfg->struct_size);
        const unsigned char *extra = reinterpret_cast<const unsigned char *>(cfg) + sizeof *cfg;
        for (size_t i = 0; i < cfg->struct_size - sizeof *cfg; ++i)
            if (extra[i] != 0)
                return fail(KOALA_ERROR_UNSUPPORTED,
                            "%s: cfg sets fields beyond byte %zu that this libkoala (%u) does not "
                            "know",
                            what, sizeof *cfg, koala_version());
    }
    koala_config copy;
    std::memcpy(&copy, cfg, sizeof copy);
    copy.struct_size = sizeof copy;
    const koala_status st = check_config_values(copy, what, KOALA_ERROR_INVALID_ARGUMENT);
    if (st != KOALA_OK) return st;
    *out = copy;
    return KOALA_OK;
}

}  // namespace koala
