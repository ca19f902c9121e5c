#include "checkpoint.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "config.h"
#include "error.h"
#include "method_momentum.h"
#include "numeric.h"
#include "state.h"

namespace koala {

namespace {

constexpr char kMagic[8] = {'K', 'O', 'A', 'L', 'A', 'C', 'K', 'P'};
constexpr uint32_t kFormatVersion = 2;
constexpr size_t kConfigDoubles = 12;
constexpr size_t kV1FilterDoubles = 6;
constexpr uint32_t kHasTensorLr = 1, kHasTensorWd = 2;

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
    void put_doubles(const double *d, size_t n) {
        std::memcpy(p, d, n * sizeof(double));
        p += n * sizeof(double);
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
    bool get_doubles(double *d, size_t n) {
        if (static_cast<size_t>(end - p) / sizeof(double) < n) return false;
        std::memcpy(d, p, n * sizeof(double));
        p += n * sizeof(double);
        return true;
    }
};

// The config's doubles, in the checkpoint's order.
constexpr double koala_config::*kConfigFields[kConfigDoubles] = {
    &koala_config::lr, &koala_config::weight_decay, &koala_config::r,  &koala_config::alpha_r,
    &koala_config::sigma, &koala_config::q,       &koala_config::sw, &koala_config::sc,
    &koala_config::sv,    &koala_config::a,       &koala_config::qw, &koala_config::qv};

void config_doubles(const koala_config &c, double *d) {
    for (size_t i = 0; i < kConfigDoubles; ++i) d[i] = c.*kConfigFields[i];
}

void set_config_doubles(koala_config &c, const double *d) {
    for (size_t i = 0; i < kConfigDoubles; ++i) c.*kConfigFields[i] = d[i];
}

uint32_t hyper_flags(const koala_optimizer *opt) {
    return (opt->tensor_lr.empty() ? 0u : kHasTensorLr) |
           (opt->tensor_wd.empty() ? 0u : kHasTensorWd);
}

size_t v2_size(const koala_optimizer *opt, uint32_t flags) {
    const size_t n = opt->layout.n_tensors(), ng = opt->layout.n_global;
    size_t bytes = 8 + 4 * 4 + 8 + 8 * n;       // magic .. sizes
    bytes += 8 + 8 + 8 * n + 4 + 4;             // shard layout
    bytes += 8 * kConfigDoubles + 4 * 4 + 8;    // config
    bytes += 8 + 8 * scalar_count(opt);         // scalars
    bytes += 8 * ng * (((flags & kHasTensorLr) ? 1 : 0) + ((flags & kHasTensorWd) ? 1 : 0));
    return bytes + buffer_bytes(opt) + 8;
}

size_t v1_size(const koala_optimizer *opt) {
    const size_t n = opt->layout.n_tensors();
    return 8 + 4 * 4 + 8 + 8 * n + 8 * (kConfigDoubles + kV1FilterDoubles) + 8 * 2 + 4 * 2 +
           buffer_bytes(opt) + 8;
}

// The state a checkpoint holds, decoded and checked, ready to replace the
// optimizer's.
struct Decoded {
    koala_config cfg;
    std::vector<double> scalars;
    std::vector<double> tensor_lr, tensor_wd;
    const unsigned char *buffers = nullptr;
};

koala_status bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
koala_status bad(const char *fmt, ...) {
    char text[400];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return fail(KOALA_ERROR_BAD_STATE, "koala_state_load: %s", text);
}

// The layout fields every version starts with (after the version).
koala_status check_layout_head(const koala_optimizer *opt, Reader &r) {
    uint32_t method, dtype, buffers;
    uint64_t n_tensors;
    if (!r.get(method) || !r.get(dtype) || !r.get(buffers) || !r.get(n_tensors))
        return bad("checkpoint header truncated");
    if (method != static_cast<uint32_t>(opt->cfg.method))
        return bad("checkpoint is for method %u, this optimizer uses method %d", method,
                   static_cast<int>(opt->cfg.method));
    if (dtype != static_cast<uint32_t>(opt->dtype))
        return bad("checkpoint is for dtype %u, this optimizer uses dtype %d", dtype,
                   static_cast<int>(opt->dtype));
    if (buffers != buffers_per_tensor(opt->cfg.method))
        return bad("checkpoint has %u buffers per tensor", buffers);
    if (n_tensors != opt->layout.n_tensors())
        return bad("checkpoint has %llu tensors, this optimizer has %zu",
                   static_cast<unsigned long long>(n_tensors), opt->layout.n_tensors());
    for (size_t t = 0; t < n_tensors; ++t) {
        uint64_t s;
        if (!r.get(s)) return bad("checkpoint truncated");
        if (s != opt->layout.sizes[t])
            return bad("checkpoint tensor %zu has %llu elements, this optimizer's has %zu", t,
                       static_cast<unsigned long long>(s), opt->layout.sizes[t]);
    }
    return KOALA_OK;
}

// Checks the filter scalars the method uses: variances >= 0 and finite,
// KOALA-M's P positive semi-definite, counts and phase plausible, the
// per-tensor scalars of the method.
koala_status check_scalars(const koala_config &cfg, const std::vector<double> &s,
                           size_t n_global) {
    const ScalarHeader &h = *reinterpret_cast<const ScalarHeader *>(s.data());
    const double *f = s.data();
    for (size_t i = 0; i < 6; ++i) {
        // sigma, p00, p11, r, qw are variances; p01 is a covariance. Only the
        // scalars the method uses are checked: the others come from config
        // fields the method ignores (and koala_create does not validate).
        const bool is_variance = i != 2;
        const bool used = i == 4 || (cfg.method == KOALA_MOMENTUM ? i != 0 : i == 0);
        if (!used) continue;
        if (!std::isfinite(f[i]) || (is_variance && f[i] < 0))
            return bad("checkpoint filter scalar %zu is %g", i, f[i]);
    }
    // An indefinite P drives p11 negative on the next update. The tolerance
    // leaves room for the rounding of states the library itself saved.
    if (cfg.method == KOALA_MOMENTUM && h.p01 * h.p01 > h.p00 * h.p11 * (1.0 + 1e-9))
        return bad("checkpoint covariance P = [[%g, %g], [%g, %g]] is not positive "
                   "semi-definite",
                   h.p00, h.p01, h.p01, h.p11);
    if (!(h.phase == kUpdated || h.phase == kPredicted || h.phase == kBegun))
        return bad("checkpoint phase field is invalid");
    if (!(h.steps >= 0 && h.steps < 9e15) || !(h.skipped_steps >= 0 && h.skipped_steps < 9e15))
        return bad("checkpoint step counts are invalid");
    // KOALA-M's pending |xbar - x|^2 is NaN or +Inf after a step on
    // non-finite weights (which no check rejects when weight decay is 0), and
    // the next predict then keeps q_w (method_momentum.h): such a state saves,
    // so it must load. It is never negative.
    if (h.pending_d2 < 0 || !std::isfinite(h.lr_scale) || h.lr_scale < 0)
        return bad("checkpoint scalars 9-10 are invalid");
    const double *ts = s.data() + kHeaderDoubles;
    for (size_t j = 0; j < n_global; ++j) {
        if (cfg.method == KOALA_MOMENTUM) {
            const double flag = ts[j];
            const bool plain = flag == momentum::kPlain || flag == momentum::kCounted;
            const bool ahead = flag == momentum::kAhead || flag == momentum::kAheadStale;
            if (!plain && !(ahead && cfg.fused_predict))
                return bad("checkpoint tensor %zu's state flag %g is invalid", j, flag);
        } else if (cfg.method == KOALA_PLUSPLUS) {
            const double S = ts[2 * j], seen = ts[2 * j + 1];
            if (!(seen == 0.0 || (seen == 1.0 && std::isfinite(S) && S > 0.0)))
                return bad("checkpoint tensor %zu's KOALA++ scalars (S = %g, seen = %g) are "
                           "invalid",
                           j, S, seen);
        }
    }
    return KOALA_OK;
}

koala_status check_tensor_values(const std::vector<double> &v, const char *name) {
    for (size_t j = 0; j < v.size(); ++j)
        if (!std::isfinite(v[j]) || v[j] < 0)
            return bad("checkpoint tensor %s[%zu] is %g", name, j, v[j]);
    return KOALA_OK;
}

koala_status decode_v2(const koala_optimizer *opt, Reader &r, size_t size, Decoded &d) {
    koala_status st = check_layout_head(opt, r);
    if (st != KOALA_OK) return st;
    const Layout &L = opt->layout;
    uint64_t n_global, global_elements;
    uint32_t sharded, flags;
    if (!r.get(n_global) || !r.get(global_elements)) return bad("checkpoint truncated");
    bool same = n_global == L.n_global && global_elements == L.global_elements;
    for (size_t t = 0; t < L.n_tensors(); ++t) {
        uint64_t g;
        if (!r.get(g)) return bad("checkpoint truncated");
        same = same && g == L.global_index[t];
    }
    if (!r.get(sharded) || !r.get(flags)) return bad("checkpoint truncated");
    if (!same || sharded != (L.sharded ? 1u : 0u))
        return bad("checkpoint shard layout (n_global %llu, global_elements %llu, its "
                   "global_index, sharded %u) differs from this optimizer's",
                   static_cast<unsigned long long>(n_global),
                   static_cast<unsigned long long>(global_elements), sharded);
    if (flags > (kHasTensorLr | kHasTensorWd)) return bad("checkpoint flags are invalid");
    if (size != v2_size(opt, flags))
        return bad("size is %zu bytes; a checkpoint of this layout has %zu", size,
                   v2_size(opt, flags));
    double c[kConfigDoubles];
    uint32_t ints[4] = {};
    uint64_t seed = 0;
    r.get_doubles(c, kConfigDoubles);
    for (uint32_t &i : ints) r.get(i);
    r.get(seed);
    d.cfg = opt->cfg;
    set_config_doubles(d.cfg, c);
    d.cfg.stochastic_rounding = static_cast<int>(ints[0]);
    d.cfg.asymmetric = static_cast<int>(ints[1]);
    d.cfg.fused_predict = static_cast<int>(ints[2]);
    d.cfg.seed = seed;
    if (ints[0] > 1 || ints[1] > 1 || ints[2] > 1 || ints[3] != 0)
        return bad("checkpoint config flags are invalid");
    st = check_config_values(d.cfg, "koala_state_load", KOALA_ERROR_BAD_STATE);
    if (st != KOALA_OK) return st;
    uint64_t count = 0;
    r.get(count);
    if (count != scalar_count(opt)) return bad("checkpoint has %llu scalars", static_cast<unsigned long long>(count));
    d.scalars.resize(count);
    r.get_doubles(d.scalars.data(), count);
    st = check_scalars(d.cfg, d.scalars, L.n_global);
    if (st != KOALA_OK) return st;
    if (flags & kHasTensorLr) {
        d.tensor_lr.resize(L.n_global);
        r.get_doubles(d.tensor_lr.data(), L.n_global);
        if ((st = check_tensor_values(d.tensor_lr, "lr")) != KOALA_OK) return st;
    }
    if (flags & kHasTensorWd) {
        d.tensor_wd.resize(L.n_global);
        r.get_doubles(d.tensor_wd.data(), L.n_global);
        if ((st = check_tensor_values(d.tensor_wd, "weight_decay")) != KOALA_OK) return st;
    }
    d.buffers = r.p;
    return KOALA_OK;
}

// A libkoala 1.0 checkpoint: KOALA-V or KOALA-M of an unsharded layout.
koala_status decode_v1(const koala_optimizer *opt, Reader &r, size_t size, Decoded &d) {
    koala_status st = check_layout_head(opt, r);
    if (st != KOALA_OK) return st;
    if (opt->layout.sharded) return bad("a version 1 checkpoint cannot load into a sharded optimizer");
    if (size != v1_size(opt))
        return bad("size is %zu bytes; a checkpoint of this layout has %zu", size, v1_size(opt));
    double c[kConfigDoubles], f[kV1FilterDoubles];
    uint64_t steps = 0, skipped = 0;
    uint32_t predicted = 0, zero = 0;
    r.get_doubles(c, kConfigDoubles);
    r.get_doubles(f, kV1FilterDoubles);
    r.get(steps);
    r.get(skipped);
    r.get(predicted);
    r.get(zero);
    d.cfg = opt->cfg;
    set_config_doubles(d.cfg, c);
    d.cfg.stochastic_rounding = d.cfg.asymmetric = d.cfg.fused_predict = 0;
    d.cfg.seed = 0;
    st = check_config_values(d.cfg, "koala_state_load", KOALA_ERROR_BAD_STATE);
    if (st != KOALA_OK) return st;
    if (predicted > 1 || zero != 0) return bad("checkpoint phase field is invalid");
    d.scalars.assign(scalar_count(opt), 0.0);  // KOALA-M's tensor flags: kPlain
    ScalarHeader &h = *reinterpret_cast<ScalarHeader *>(d.scalars.data());
    h.sigma = f[0];
    h.p00 = f[1];
    h.p01 = f[2];
    h.p11 = f[3];
    h.r = f[4];
    h.qw = f[5];
    h.steps = static_cast<double>(steps);
    h.skipped_steps = static_cast<double>(skipped);
    h.phase = predicted ? kPredicted : kUpdated;
    h.lr_scale = 1.0;
    st = check_scalars(d.cfg, d.scalars, opt->layout.n_global);
    if (st != KOALA_OK) return st;
    d.buffers = r.p;
    return KOALA_OK;
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

size_t checkpoint_size(const koala_optimizer *opt) { return v2_size(opt, hyper_flags(opt)); }

koala_status checkpoint_save(const koala_optimizer *opt, void *buf, size_t size, void *stream) {
    const size_t need = checkpoint_size(opt);
    if (size < need)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "koala_state_save: size is %zu bytes; the checkpoint needs %zu "
                    "(koala_state_size)",
                    size, need);
    std::vector<double> scalars;
    koala_status st = read_scalars(opt, stream, scalars);
    if (st != KOALA_OK) return st;
    const Layout &L = opt->layout;
    const uint32_t flags = hyper_flags(opt);
    unsigned char *start = static_cast<unsigned char *>(buf);
    Writer w{start};
    std::memcpy(w.p, kMagic, 8);
    w.p += 8;
    w.put<uint32_t>(kFormatVersion);
    w.put<uint32_t>(static_cast<uint32_t>(opt->cfg.method));
    w.put<uint32_t>(static_cast<uint32_t>(opt->dtype));
    w.put<uint32_t>(static_cast<uint32_t>(buffers_per_tensor(opt->cfg.method)));
    w.put<uint64_t>(L.n_tensors());
    for (size_t s : L.sizes) w.put<uint64_t>(s);
    w.put<uint64_t>(L.n_global);
    w.put<uint64_t>(L.global_elements);
    for (size_t g : L.global_index) w.put<uint64_t>(g);
    w.put<uint32_t>(L.sharded ? 1u : 0u);
    w.put<uint32_t>(flags);
    double cfg[kConfigDoubles];
    config_doubles(opt->cfg, cfg);
    w.put_doubles(cfg, kConfigDoubles);
    w.put<uint32_t>(static_cast<uint32_t>(opt->cfg.stochastic_rounding));
    w.put<uint32_t>(static_cast<uint32_t>(opt->cfg.asymmetric));
    w.put<uint32_t>(static_cast<uint32_t>(opt->cfg.fused_predict));
    w.put<uint32_t>(0u);
    w.put<uint64_t>(opt->cfg.seed);
    w.put<uint64_t>(scalars.size());
    w.put_doubles(scalars.data(), scalars.size());
    if (flags & kHasTensorLr) w.put_doubles(opt->tensor_lr.data(), L.n_global);
    if (flags & kHasTensorWd) w.put_doubles(opt->tensor_wd.data(), L.n_global);
    st = read_buffers(opt, w.p, stream);
    if (st != KOALA_OK) return st;
    w.p += buffer_bytes(opt);
    w.put<uint64_t>(checkpoint_checksum(start, static_cast<size_t>(w.p - start)));
    return KOALA_OK;
}

koala_status checkpoint_load(koala_optimizer *opt, const void *buf, size_t size, void *stream) {
    const unsigned char *start = static_cast<const unsigned char *>(buf);
    if (size < 8 + 4 + 8 || std::memcmp(start, kMagic, 8) != 0)
        return bad("buf is not a libkoala checkpoint (bad magic)");
    // The checksum covers everything else, so check it before trusting any field.
    uint64_t stored;
    std::memcpy(&stored, start + size - 8, 8);
    if (checkpoint_checksum(start, size - 8) != stored)
        return bad("checksum mismatch: the checkpoint is corrupt or truncated (%zu bytes)", size);
    Reader r{start + 8, start + size - 8};
    uint32_t version;
    if (!r.get(version)) return bad("checkpoint header truncated");
    Decoded d;
    koala_status st;
    if (version == kFormatVersion)
        st = decode_v2(opt, r, size, d);
    else if (version == 1)
        st = decode_v1(opt, r, size, d);
    else
        return bad("checkpoint format version %u; this libkoala reads versions 1 and 2", version);
    if (st != KOALA_OK) return st;

    // Everything is checked: only the copies into device memory can fail
    // from here on, and they leave the state as it was (the plugin stages
    // them), scalars last.
    st = write_buffers(opt, d.buffers, stream);
    if (st == KOALA_OK) st = push_tensor_hyper(opt, d.tensor_lr, d.tensor_wd, stream);
    if (st == KOALA_OK) st = write_scalars(opt, d.scalars.data(), stream);
    if (st != KOALA_OK) return st;
    const int threads = opt->cfg.threads, caller_state = opt->cfg.caller_state;
    opt->cfg = d.cfg;
    opt->cfg.threads = threads;
    opt->cfg.caller_state = caller_state;
    opt->tensor_lr = std::move(d.tensor_lr);
    opt->tensor_wd = std::move(d.tensor_wd);
    opt->plan.tensor_wd = opt->tensor_wd.empty()
                              ? std::vector<double>(opt->layout.n_global, opt->cfg.weight_decay)
                              : opt->tensor_wd;
    return KOALA_OK;
}

}  // namespace koala
