#include "checkpoint.h"

#include <cmath>
#include <cstring>

#include "config.h"
#include "device.h"
#include "error.h"

namespace koala {

namespace {

constexpr char kMagic[8] = {'K', 'O', 'A', 'L', 'A', 'C', 'K', 'P'};
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kConfigDoubles = 12;
constexpr size_t kFilterDoubles = 6;

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "libkoala's checkpoint code assumes a little-endian host"
#endif

struct Writer {
    unsigned char *p;
    template <class T>
    void put(T v) {
        std::memcpy(p, &v, sizeof v);
        p += sizeof v;
    }
};

struct Reader {
    const unsigned char *p;
    const unsigned char *end;
    template <class T>
    bool get(T &v) {
        if (static_cast<size_t>(end - p) < sizeof v) return false;
        std::memcpy(&v, p, sizeof v);
        p += sizeof v;
        return true;
    }
};

size_t header_size(size_t n_tensors) {
    return 8 + 4 * 4 + 8 + 8 * n_tensors + 8 * (kConfigDoubles + kFilterDoubles) + 8 * 2 + 4 * 2;
}

void config_doubles(const koala_config &c, double *d) {
    const double v[kConfigDoubles] = {c.lr, c.weight_decay, c.r, c.alpha_r, c.sigma, c.q,
                                      c.sw, c.sc,           c.sv, c.a,      c.qw,    c.qv};
    std::memcpy(d, v, sizeof v);
}

}  // namespace

// FNV-1a over little-endian 64-bit words (the tail zero-padded), seeded with
// the length. Every word step is a bijection, so any single changed word
// changes the sum; fast enough to run over gigabytes of state.
uint64_t checkpoint_checksum(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
    }
    if (i < n) {
        uint64_t w = 0;
        std::memcpy(&w, p + i, n - i);
        h = (h ^ w) * 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

size_t checkpoint_size(const koala_optimizer *opt) {
    const size_t buffers = buffers_per_tensor(opt->cfg.method);
    return header_size(opt->sizes.size()) +
           buffers * opt->total_elements * dtype_size(opt->dtype) + 8;
}

koala_status checkpoint_save(const koala_optimizer *opt, void *buf, size_t size, void *stream) {
    const size_t need = checkpoint_size(opt);
    if (size < need)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "koala_state_save: size is %zu bytes; the checkpoint needs %zu "
                    "(koala_state_size)",
                    size, need);
    FilterState filter = opt->filter;
    const koala_plugin_ops *ops = nullptr;
    char msg[256];
    if (opt->device) {
        koala_status st;
        ops = device_plugin(&st);
        if (!ops) return st;
        st = ops->get_filter(opt->device, stream, &filter, msg, sizeof msg);
        if (st != KOALA_OK) return plugin_fail(st, msg);
    }
    unsigned char *start = static_cast<unsigned char *>(buf);
    Writer w{start};
    std::memcpy(w.p, kMagic, 8);
    w.p += 8;
    const uint32_t buffers = static_cast<uint32_t>(buffers_per_tensor(opt->cfg.method));
    w.put<uint32_t>(kFormatVersion);
    w.put<uint32_t>(static_cast<uint32_t>(opt->cfg.method));
    w.put<uint32_t>(static_cast<uint32_t>(opt->dtype));
    w.put<uint32_t>(buffers);
    w.put<uint64_t>(opt->sizes.size());
    for (size_t s : opt->sizes) w.put<uint64_t>(s);
    double cfg[kConfigDoubles];
    config_doubles(opt->cfg, cfg);
    for (double d : cfg) w.put(d);
    const double f[kFilterDoubles] = {filter.sigma, filter.p00, filter.p01,
                                      filter.p11,   filter.r,   filter.qw};
    for (double d : f) w.put(d);
    w.put<uint64_t>(opt->steps);
    w.put<uint64_t>(filter.skipped_steps);
    w.put<uint32_t>(opt->predicted ? 1u : 0u);
    w.put<uint32_t>(0u);
    const size_t elem = dtype_size(opt->dtype);
    for (uint32_t which = 0; which < buffers; ++which) {
        for (size_t t = 0; t < opt->sizes.size(); ++t) {
            const size_t bytes = opt->sizes[t] * elem;
            if (ops) {
                koala_status st = ops->copy_buffer(opt->device, static_cast<int>(which), t, w.p, 1,
                                                   stream, msg, sizeof msg);
                if (st != KOALA_OK) return plugin_fail(st, msg);
            } else {
                const void *src = which == 0 ? opt->buffers.velocity[t] : opt->buffers.xbar[t];
                std::memcpy(w.p, src, bytes);
            }
            w.p += bytes;
        }
    }
    w.put<uint64_t>(checkpoint_checksum(start, static_cast<size_t>(w.p - start)));
    return KOALA_OK;
}

koala_status checkpoint_load(koala_optimizer *opt, const void *buf, size_t size, void *stream) {
    const char *what = "koala_state_load";
    const unsigned char *start = static_cast<const unsigned char *>(buf);
    if (size < 8 + 4 + 8 || std::memcmp(start, kMagic, 8) != 0)
        return fail(KOALA_ERROR_BAD_STATE, "%s: buf is not a libkoala checkpoint (bad magic)",
                    what);
    // The checksum covers everything else, so check it before trusting any field.
    uint64_t stored;
    std::memcpy(&stored, start + size - 8, 8);
    if (checkpoint_checksum(start, size - 8) != stored)
        return fail(KOALA_ERROR_BAD_STATE,
                    "%s: checksum mismatch: the checkpoint is corrupt or truncated (%zu bytes)",
                    what, size);
    Reader r{start + 8, start + size - 8};
    uint32_t version, method, dtype, buffers;
    uint64_t n_tensors;
    if (!r.get(version) || !r.get(method) || !r.get(dtype) || !r.get(buffers) ||
        !r.get(n_tensors))
        return fail(KOALA_ERROR_BAD_STATE, "%s: checkpoint header truncated", what);
    if (version != kFormatVersion)
        return fail(KOALA_ERROR_BAD_STATE,
                    "%s: checkpoint format version %u; this libkoala reads version %u", what,
                    version, kFormatVersion);
    if (method != static_cast<uint32_t>(opt->cfg.method))
        return fail(KOALA_ERROR_BAD_STATE,
                    "%s: checkpoint is for method %u, this optimizer uses method %d", what, method,
                    static_cast<int>(opt->cfg.method));
    if (dtype != static_cast<uint32_t>(opt->dtype))
        return fail(KOALA_ERROR_BAD_STATE,
                    "%s: checkpoint is for dtype %u, this optimizer uses dtype %d", what, dtype,
                    static_cast<int>(opt->dtype));
    if (buffers != buffers_per_tensor(opt->cfg.method))
        return fail(KOALA_ERROR_BAD_STATE, "%s: checkpoint has %u buffers per tensor", what,
                    buffers);
    if (n_tensors != opt->sizes.size())
        return fail(KOALA_ERROR_BAD_STATE,
                    "%s: checkpoint has %llu tensors, this optimizer has %zu", what,
                    static_cast<unsigned long long>(n_tensors), opt->sizes.size());
    for (size_t t = 0; t < n_tensors; ++t) {
        uint64_t s;
        if (!r.get(s)) return fail(KOALA_ERROR_BAD_STATE, "%s: checkpoint truncated", what);
        if (s != opt->sizes[t])
            return fail(KOALA_ERROR_BAD_STATE,
                        "%s: checkpoint tensor %zu has %llu elements, this optimizer's has %zu",
                        what, t, static_cast<unsigned long long>(s), opt->sizes[t]);
    }
    if (size != checkpoint_size(opt))
        return fail(KOALA_ERROR_BAD_STATE,
                    "%s: size is %zu bytes; a checkpoint of this layout has %zu", what, size,
                    checkpoint_size(opt));
    double c[kConfigDoubles] = {}, f[kFilterDoubles] = {};
    for (double &d : c) r.get(d);
    for (double &d : f) r.get(d);
    uint64_t steps = 0, skipped = 0;
    uint32_t predicted = 0, zero = 0;
    r.get(steps);
    r.get(skipped);
    r.get(predicted);
    r.get(zero);
    koala_config cfg = opt->cfg;
    cfg.lr = c[0];
    cfg.weight_decay = c[1];
    cfg.r = c[2];
    cfg.alpha_r = c[3];
    cfg.sigma = c[4];
    cfg.q = c[5];
    cfg.sw = c[6];
    cfg.sc = c[7];
    cfg.sv = c[8];
    cfg.a = c[9];
    cfg.qw = c[10];
    cfg.qv = c[11];
    koala_status st = check_config_values(cfg, what, KOALA_ERROR_BAD_STATE);
    if (st != KOALA_OK) return st;
    if (predicted > 1 || zero != 0)
        return fail(KOALA_ERROR_BAD_STATE, "%s: checkpoint phase field is invalid", what);
    for (size_t i = 0; i < kFilterDoubles; ++i) {
        // sigma, p00, p11, r, qw are variances; p01 is a covariance.
        const bool is_variance = i != 2;
        // Only the scalars the method uses are checked: the others come from
        // config fields the method ignores (and koala_create does not
        // validate), so e.g. a KOALA-V optimizer created with qw = -1 must
        // still load its own checkpoint.
        const bool used = i == 4 || (cfg.method == KOALA_VANILLA ? i == 0 : i != 0);
        if (!used) continue;
        if (!std::isfinite(f[i]) || (is_variance && f[i] < 0))
            return fail(KOALA_ERROR_BAD_STATE, "%s: checkpoint filter scalar %zu is %g", what, i,
                        f[i]);
    }
    // KOALA-M's 2x2 covariance must be positive semi-definite: an indefinite
    // P drives p11 negative on the next update. The tolerance leaves room
    // for the rounding of states the library itself saved.
    if (cfg.method == KOALA_MOMENTUM && f[2] * f[2] > f[1] * f[3] * (1.0 + 1e-9))
        return fail(KOALA_ERROR_BAD_STATE,
                    "%s: checkpoint covariance P = [[%g, %g], [%g, %g]] is not positive "
                    "semi-definite",
                    what, f[1], f[2], f[2], f[3]);
    FilterState filter{f[0], f[1], f[2], f[3], f[4], f[5], skipped};

    // Everything is checked: from here on the load cannot fail on host.
    if (opt->device) {
        const koala_plugin_ops *ops = device_plugin(&st);
        if (!ops) return st;
        char msg[256];
        const size_t elem = dtype_size(opt->dtype);
        const unsigned char *p = r.p;
        for (uint32_t which = 0; which < buffers; ++which)
            for (size_t t = 0; t < opt->sizes.size(); ++t) {
                st = ops->copy_buffer(opt->device, static_cast<int>(which), t,
                                      const_cast<unsigned char *>(p), 0, stream, msg, sizeof msg);
                if (st != KOALA_OK) return plugin_fail(st, msg);
                p += opt->sizes[t] * elem;
            }
        st = ops->set_filter(opt->device, stream, &filter, msg, sizeof msg);
        if (st != KOALA_OK) return plugin_fail(st, msg);
    } else {
        const size_t elem = dtype_size(opt->dtype);
        const unsigned char *p = r.p;
        for (uint32_t which = 0; which < buffers; ++which)
            for (size_t t = 0; t < opt->sizes.size(); ++t) {
                void *dst = which == 0 ? opt->buffers.velocity[t] : opt->buffers.xbar[t];
                std::memcpy(dst, p, opt->sizes[t] * elem);
                p += opt->sizes[t] * elem;
            }
        opt->filter = filter;
    }
    opt->cfg = cfg;
    opt->steps = steps;
    opt->predicted = predicted != 0;
    return KOALA_OK;
}

}  // namespace koala
