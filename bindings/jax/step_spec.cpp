#include "step_spec.h"

#include <cstring>

namespace koala_jax {

namespace {

template <class T>
ffi::Error get(const ffi::Dictionary &attrs, const char *name, T *out) {
    auto v = attrs.get<T>(name);
    if (!v.has_value())
        return invalid(std::string("attribute '") + name + "': " + v.error().message());
    *out = *v;
    return ffi::Error::Success();
}

bool same_config(const koala_config &a, const koala_config &b) {
    // Every field that koala_create reads; NaN (online R) equals NaN.
    const double da[] = {a.lr, a.weight_decay, a.r, a.alpha_r, a.sigma, a.q,
                         a.sw, a.sc, a.sv, a.a, a.qw, a.qv};
    const double db[] = {b.lr, b.weight_decay, b.r, b.alpha_r, b.sigma, b.q,
                         b.sw, b.sc, b.sv, b.a, b.qw, b.qv};
    return a.method == b.method && std::memcmp(da, db, sizeof da) == 0 &&
           a.threads == b.threads && a.asymmetric == b.asymmetric &&
           a.fused_predict == b.fused_predict && a.caller_state == b.caller_state;
}

}  // namespace

bool OptimizerSpec::operator==(const OptimizerSpec &o) const {
    return same_config(cfg, o.cfg) && dtype == o.dtype && memory == o.memory &&
           device == o.device && sizes == o.sizes && sharded == o.sharded &&
           global_index == o.global_index && n_global == o.n_global &&
           global_elements == o.global_elements;
}

ffi::Error parse_spec(const ffi::Dictionary &attrs, StepSpec *out) {
    int64_t method = 0, dtype = 0, n_global = 0, global_elements = 0;
    ffi::Span<const double> config;
    ffi::Span<const int64_t> options, sizes, rows, contributes;
    for (ffi::Error e : {get(attrs, "method", &method), get(attrs, "dtype", &dtype),
                         get(attrs, "config", &config), get(attrs, "options", &options),
                         get(attrs, "sizes", &sizes), get(attrs, "n_global", &n_global),
                         get(attrs, "global_elements", &global_elements),
                         get(attrs, "device_rows", &rows),
                         get(attrs, "contributes", &contributes)})
        if (e.failure()) return e;
    if (method != KOALA_VANILLA && method != KOALA_MOMENTUM && method != KOALA_PLUSPLUS)
        return invalid("attribute 'method' = " + std::to_string(method) +
                       " is not a koala_method");
    if (dtype < KOALA_FLOAT32 || dtype > KOALA_FLOAT16)
        return invalid("attribute 'dtype' = " + std::to_string(dtype) + " is not a koala_dtype");
    if (config.size() != 12) return invalid("attribute 'config' must hold 12 values");
    if (options.size() != 3) return invalid("attribute 'options' must hold 3 values");

    StepSpec s;
    koala_config_init(&s.cfg, static_cast<koala_method>(method));
    double *fields[] = {&s.cfg.lr, &s.cfg.weight_decay, &s.cfg.r, &s.cfg.alpha_r,
                        &s.cfg.sigma, &s.cfg.q, &s.cfg.sw, &s.cfg.sc,
                        &s.cfg.sv, &s.cfg.a, &s.cfg.qw, &s.cfg.qv};
    for (size_t k = 0; k < 12; ++k) *fields[k] = config[k];
    s.cfg.threads = static_cast<int>(options[0]);
    s.cfg.asymmetric = static_cast<int>(options[1]);
    s.cfg.fused_predict = static_cast<int>(options[2]);
    s.cfg.caller_state = 1;
    s.dtype = static_cast<koala_dtype>(dtype);
    for (int64_t v : sizes) {
        if (v <= 0) return invalid("attribute 'sizes' holds a non-positive size");
        s.sizes.push_back(static_cast<size_t>(v));
    }
    if (n_global < 0 || global_elements < 0) return invalid("negative shard attributes");
    s.n_global = static_cast<size_t>(n_global);
    s.global_elements = static_cast<uint64_t>(global_elements);
    if (s.sharded()) {
        if (s.n_global != s.n())
            return invalid("attribute 'n_global' must equal the number of local tensors");
        s.device_rows.assign(rows.begin(), rows.end());
        s.contributes.assign(contributes.begin(), contributes.end());
        if (s.contributes.empty() || s.contributes.size() % s.n() != 0)
            return invalid("attribute 'contributes' must hold rows x tensors values");
    }
    *out = std::move(s);
    return ffi::Error::Success();
}

ffi::Error split_for_device(const StepSpec &spec, koala_memory memory, int device,
                            DeviceSplit *out) {
    DeviceSplit d;
    d.own.cfg = d.mirror.cfg = spec.cfg;
    d.own.dtype = d.mirror.dtype = spec.dtype;
    d.own.memory = d.mirror.memory = memory;
    d.own.device = d.mirror.device = memory == KOALA_DEVICE ? device : 0;
    if (!spec.sharded()) {
        d.own.sizes = spec.sizes;
        for (size_t i = 0; i < spec.n(); ++i) d.own_tensors.push_back(i);
        *out = std::move(d);
        return ffi::Error::Success();
    }
    const size_t rows = spec.contributes.size() / spec.n();
    if (device < 0 || static_cast<size_t>(device) >= spec.device_rows.size() ||
        spec.device_rows[device] < 0 || static_cast<size_t>(spec.device_rows[device]) >= rows)
        return invalid("device ordinal " + std::to_string(device) +
                       " is not in the mesh this optimizer state was made for");
    const size_t row = static_cast<size_t>(spec.device_rows[device]);
    for (size_t i = 0; i < spec.n(); ++i) {
        const bool own = spec.contributes[row * spec.n() + i] != 0;
        (own ? d.own_tensors : d.mirror_tensors).push_back(i);
        OptimizerSpec &o = own ? d.own : d.mirror;
        o.sizes.push_back(spec.sizes[i]);
        o.global_index.push_back(i);
    }
    for (OptimizerSpec *o : {&d.own, &d.mirror}) {
        o->sharded = true;
        o->n_global = spec.n_global;
        o->global_elements = spec.global_elements;
    }
    *out = std::move(d);
    return ffi::Error::Success();
}

}  // namespace koala_jax
