// libFuzzer harness: bytes decoded into arguments and call sequences for
// koala_create / predict / update / update_ptr / get_info / set_lr /
// state_save / state_load.
//
// Decoded: a config (every field default or one of a palette of hostile
// values: 0, -1, NaN, +-Inf, tiny, huge, -0, raw bytes), struct_size (exact,
// too small, larger with a zero or non-zero tail), method / dtype / memory
// (valid or not), n_tensors and sizes (small, 0, overflowing, NULL array),
// a NULL out; then up to 24 calls with pointer arrays holding NULLs,
// non-finite losses and gradients, wrong dtypes, non-NULL streams.
//
// Invariants (a broken one aborts, which libFuzzer records as a crash):
//  - no crash, leak or undefined behaviour (ASan + UBSan);
//  - every status is one the function documents;
//  - every non-OK status comes with a non-empty message that names the
//    function, and changes nothing: parameters, gradients, the checkpoint
//    bytes and koala_info are as before, *out of koala_create untouched;
//  - predict and update alternate: predict succeeds only when not predicted,
//    update only when predicted, and valid arguments do succeed;
//  - after every successful call the state saves and loads back.
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "fuzz_util.h"

namespace {

double hostile_double(FuzzedDataProvider &in, double normal) {
    switch (in.ConsumeIntegralInRange<int>(0, 12)) {
    case 0: return 0.0;
    case 1: return -1.0;
    case 2: return NAN;
    case 3: return INFINITY;
    case 4: return -INFINITY;
    case 5: return 1e-300;
    case 6: return 1e300;
    case 7: return -0.0;
    case 8: return 1.0;
    case 9: return 0.999999999;
    case 10: return in.ConsumeFloatingPoint<double>();
    case 11: return in.ConsumeFloatingPointInRange<double>(-2.0, 2.0);
    default: return normal;
    }
}

// Mostly the given value, sometimes a hostile one.
double maybe_hostile(FuzzedDataProvider &in, double normal) {
    return in.ConsumeBool() ? normal : hostile_double(in, normal);
}

template <class E>
E enum_value(FuzzedDataProvider &in, E a, E b) {
    switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0: return static_cast<E>(0);
    case 1: return static_cast<E>(in.ConsumeIntegral<int>());
    case 2: return static_cast<E>(3);
    case 3: return b;
    default: return a;
    }
}

size_t tensor_size(FuzzedDataProvider &in) {
    switch (in.ConsumeIntegralInRange<int>(0, 9)) {
    case 0: return 0;
    case 1: return std::numeric_limits<size_t>::max();
    case 2: return size_t(1) << 62;  // over the byte-size limit for either dtype
    case 3: return (size_t(1) << 62) / 3;
    default: return in.ConsumeIntegralInRange<size_t>(1, 40);
    }
}

// The caller's view of one optimizer: its layout and host buffers.
struct Session {
    koala_optimizer *opt = nullptr;
    koala_method method{};
    koala_dtype dtype{};
    std::vector<size_t> sizes;
    std::vector<std::vector<unsigned char>> params, grads, bad_grads;
    bool predicted = false;

    size_t elem() const { return dtype == KOALA_FLOAT64 ? 8 : 4; }
    void set(std::vector<unsigned char> &buf, size_t i, double v) const {
        if (dtype == KOALA_FLOAT64) {
            std::memcpy(buf.data() + 8 * i, &v, 8);
        } else {
            const float f = static_cast<float>(v);
            std::memcpy(buf.data() + 4 * i, &f, 4);
        }
    }
    // Everything a failing call must leave alone.
    std::vector<unsigned char> snapshot() const {
        std::vector<unsigned char> all = fuzz::state_of(opt);
        for (const auto *group : {&params, &grads, &bad_grads})
            for (const auto &b : *group) all.insert(all.end(), b.begin(), b.end());
        return all;
    }
};

void fill_tensors(FuzzedDataProvider &in, Session &s) {
    const size_t n = s.sizes.size();
    s.params.resize(n);
    s.grads.resize(n);
    s.bad_grads.resize(n);
    for (size_t t = 0; t < n; ++t) {
        s.params[t].assign(s.sizes[t] * s.elem(), 0);
        s.grads[t].assign(s.sizes[t] * s.elem(), 0);
        s.bad_grads[t].assign(s.sizes[t] * s.elem(), 0);
        const double scale = in.ConsumeBool() ? 1.0 : hostile_double(in, 1.0);
        for (size_t i = 0; i < s.sizes[t]; ++i) {
            s.set(s.params[t], i, std::sin(0.7 * i + t));
            s.set(s.grads[t], i, scale * std::cos(1.3 * i + 2.0 * t));
            s.set(s.bad_grads[t], i, std::cos(1.3 * i));
        }
        s.set(s.bad_grads[t], s.sizes[t] - 1, hostile_double(in, NAN));
    }
}

std::vector<void *> param_array(FuzzedDataProvider &in, Session &s, bool *valid) {
    std::vector<void *> p;
    for (auto &b : s.params) p.push_back(b.data());
    *valid = true;
    if (in.ConsumeIntegralInRange<int>(0, 7) == 0) {
        p[in.ConsumeIntegralInRange<size_t>(0, p.size() - 1)] = nullptr;
        *valid = false;
    }
    return p;
}

std::vector<const void *> grad_array(FuzzedDataProvider &in, Session &s) {
    std::vector<const void *> g;
    for (size_t t = 0; t < s.grads.size(); ++t) {
        switch (in.ConsumeIntegralInRange<int>(0, 9)) {
        case 0: g.push_back(nullptr); break;  // no gradient this step: allowed
        case 1: g.push_back(s.bad_grads[t].data()); break;
        default: g.push_back(s.grads[t].data());
        }
    }
    return g;
}

void *stream_arg(FuzzedDataProvider &in, bool *valid) {
    static int some_stream;
    *valid = in.ConsumeIntegralInRange<int>(0, 15) != 0;
    return *valid ? nullptr : &some_stream;
}

// FUZZ_TRACE=1 prints every call and the filter afterwards (for turning a
// crash input into a readable reproducer).
bool trace() {
    static const bool on = std::getenv("FUZZ_TRACE") != nullptr;
    return on;
}

void print_trace(const Session &s, const char *fn, koala_status st) {
    koala_info info;
    std::memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    koala_get_info(s.opt, nullptr, &info);
    std::fprintf(stderr, "%-18s -> %d  sigma %.17g P [%.17g %.17g %.17g] r %.17g qw %.17g\n",
                 fn[0] ? fn : "(data change)", (int)st, info.sigma, info.p00, info.p01, info.p11,
                 info.r, info.qw);
}

void require_failure_contract(koala_status st, const Session &s,
                              const std::vector<unsigned char> &before, const char *fn) {
    if (st == KOALA_OK) return;
    const char *msg = koala_last_error();
    FUZZ_REQUIRE(msg[0] != '\0', "%s failed (%d) without a message", fn, (int)st);
    FUZZ_REQUIRE(std::strncmp(msg, fn, std::strlen(fn)) == 0, "%s: message names another "
                 "function", fn);
    FUZZ_REQUIRE(s.snapshot() == before, "%s failed (%d) but changed something", fn, (int)st);
}

void run_calls(FuzzedDataProvider &in, Session &s) {
    for (int call = 0; call < 24 && in.remaining_bytes() > 0; ++call) {
        const std::vector<unsigned char> before = s.snapshot();
        koala_status st = KOALA_OK;
        const char *fn = "";
        bool ok_args = true, ok_stream = true;
        switch (in.ConsumeIntegralInRange<int>(0, 7)) {
        case 0: {
            fn = "koala_predict";
            std::vector<void *> p = param_array(in, s, &ok_args);
            const bool null_array = in.ConsumeIntegralInRange<int>(0, 9) == 0;
            void *stream = stream_arg(in, &ok_stream);
            st = koala_predict(s.opt, null_array ? nullptr : p.data(), stream);
            // KOALA-V does not read params: NULL is fine there.
            if (s.method == KOALA_MOMENTUM && (null_array || !ok_args)) ok_args = false;
            else ok_args = true;
            FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_INVALID_ARGUMENT ||
                             st == KOALA_ERROR_BAD_STATE, "predict status %d", (int)st);
            if (st == KOALA_OK) FUZZ_REQUIRE(!s.predicted, "predict succeeded twice");
            if (ok_args && ok_stream && !s.predicted)
                FUZZ_REQUIRE(st == KOALA_OK, "valid predict failed");
            if (st == KOALA_OK) s.predicted = true;
            break;
        }
        case 1:
        case 2: {
            const bool by_ptr = in.ConsumeBool();
            fn = by_ptr ? "koala_update_ptr" : "koala_update";
            std::vector<void *> p = param_array(in, s, &ok_args);
            std::vector<const void *> g = grad_array(in, s);
            const bool null_grads = in.ConsumeIntegralInRange<int>(0, 11) == 0;
            void *stream = stream_arg(in, &ok_stream);
            const double loss = maybe_hostile(in, 0.5);
            const double loss_var = maybe_hostile(in, 0.4);
            if (by_ptr) {
                const koala_dtype d = enum_value(in, KOALA_FLOAT64, KOALA_FLOAT32);
                const double l64 = loss, v64 = loss_var;
                const float l32 = static_cast<float>(loss), v32 = static_cast<float>(loss_var);
                const bool f32 = d == KOALA_FLOAT32;
                const void *lp = in.ConsumeIntegralInRange<int>(0, 11) == 0
                                     ? nullptr : (f32 ? static_cast<const void *>(&l32) : &l64);
                const void *vp = in.ConsumeIntegralInRange<int>(0, 11) == 0
                                     ? nullptr : (f32 ? static_cast<const void *>(&v32) : &v64);
                st = koala_update_ptr(s.opt, lp, vp, d, p.data(), null_grads ? nullptr : g.data(),
                                      stream);
            } else {
                st = koala_update(s.opt, loss, loss_var, p.data(),
                                  null_grads ? nullptr : g.data(), stream);
            }
            FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_INVALID_ARGUMENT ||
                             st == KOALA_ERROR_BAD_STATE || st == KOALA_ERROR_NOT_FINITE,
                         "update status %d", (int)st);
            if (st == KOALA_OK) FUZZ_REQUIRE(s.predicted, "update succeeded without predict");
            if (st == KOALA_OK) s.predicted = false;
            break;
        }
        case 3: {
            fn = "koala_get_info";
            struct {
                koala_info info;
                unsigned char tail[16];
            } out;
            std::memset(&out, 0x5A, sizeof out);
            const int which = in.ConsumeIntegralInRange<int>(0, 4);
            out.info.struct_size = which == 0   ? 0
                                   : which == 1 ? sizeof(koala_info) - 8
                                   : which == 2 ? sizeof out
                                                : sizeof(koala_info);
            const bool null_out = in.ConsumeIntegralInRange<int>(0, 9) == 0;
            void *stream = stream_arg(in, &ok_stream);
            st = koala_get_info(s.opt, stream, null_out ? nullptr : &out.info);
            FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_INVALID_ARGUMENT, "info %d", (int)st);
            for (unsigned char c : out.tail) FUZZ_REQUIRE(c == 0x5A, "get_info wrote past koala_info");
            break;
        }
        case 4: {
            fn = "koala_set_lr";
            const double lr = hostile_double(in, 0.3);
            st = koala_set_lr(s.opt, lr);
            FUZZ_REQUIRE((st == KOALA_OK) == (std::isfinite(lr) && lr >= 0), "set_lr(%g) gave %d",
                         lr, (int)st);
            break;
        }
        case 5: {
            fn = "koala_state_save";
            size_t need = 0;
            FUZZ_REQUIRE(koala_state_size(s.opt, &need) == KOALA_OK, "size");
            const int which = in.ConsumeIntegralInRange<int>(0, 3);
            const size_t size = which == 0 ? 0 : which == 1 ? need - 1 : need + which - 2;
            std::vector<unsigned char> buf(size + 1, 0xC3);
            void *stream = stream_arg(in, &ok_stream);
            st = koala_state_save(s.opt, buf.data(), size, stream);
            FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_INVALID_ARGUMENT, "save %d", (int)st);
            FUZZ_REQUIRE((st == KOALA_OK) == (size >= need && ok_stream), "save size logic");
            for (size_t i = (st == KOALA_OK ? need : 0); i <= size; ++i)
                FUZZ_REQUIRE(buf[i] == 0xC3, "save wrote past the checkpoint or on failure");
            if (st == KOALA_OK) {
                // Load it back, possibly with one byte changed.
                fn = "koala_state_load";
                if (in.ConsumeBool() && need > 0)
                    buf[in.ConsumeIntegralInRange<size_t>(0, need - 1)] ^=
                        static_cast<unsigned char>(1u << in.ConsumeIntegralInRange<int>(0, 7));
                const std::vector<unsigned char> before_load = s.snapshot();
                st = koala_state_load(s.opt, buf.data(), need, nullptr);
                FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_BAD_STATE, "load %d", (int)st);
                require_failure_contract(st, s, before_load, fn);
                if (st == KOALA_OK) FUZZ_REQUIRE(s.snapshot() == before_load, "reload changed state");
                continue;
            }
            break;
        }
        case 6: {
            // The caller changes its data between calls (hostile values too).
            if (s.sizes.empty()) break;
            const size_t t = in.ConsumeIntegralInRange<size_t>(0, s.sizes.size() - 1);
            const size_t i = in.ConsumeIntegralInRange<size_t>(0, s.sizes[t] - 1);
            auto &buf = in.ConsumeBool() ? s.grads[t] : s.params[t];
            s.set(buf, i, hostile_double(in, 0.1));
            continue;
        }
        default: {
            fn = "koala_state_size";
            size_t bytes = 0;
            st = koala_state_size(s.opt, in.ConsumeBool() ? &bytes : nullptr);
            FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_INVALID_ARGUMENT, "size %d", (int)st);
            break;
        }
        }
        require_failure_contract(st, s, before, fn);
        if (trace()) print_trace(s, fn, st);
        if (st == KOALA_OK) fuzz::require_round_trip(s.opt, fn);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FuzzedDataProvider in(data, size);

    // A config behind a possibly larger struct (a newer caller's).
    struct {
        koala_config cfg;
        unsigned char tail[16];
    } big;
    std::memset(&big, 0, sizeof big);
    const koala_method method = enum_value(in, KOALA_VANILLA, KOALA_MOMENTUM);
    koala_config_init(&big.cfg, method);
    koala_config &c = big.cfg;
    for (double *field : {&c.lr, &c.weight_decay, &c.r, &c.alpha_r, &c.sigma, &c.q, &c.sw, &c.sc,
                          &c.sv, &c.a, &c.qw, &c.qv})
        if (in.ConsumeIntegralInRange<int>(0, 5) == 0) *field = hostile_double(in, *field);
    switch (in.ConsumeIntegralInRange<int>(0, 9)) {
    case 0: c.struct_size = 0; break;
    case 1: c.struct_size = sizeof(koala_config) - 8; break;
    case 2: c.struct_size = sizeof big; break;
    case 3: c.struct_size = sizeof big; big.tail[in.ConsumeIntegralInRange<int>(0, 15)] = 1; break;
    default: break;
    }
    const size_t n_tensors = in.ConsumeIntegralInRange<int>(0, 15) == 0
                                 ? (in.ConsumeBool() ? 0 : std::numeric_limits<size_t>::max())
                                 : in.ConsumeIntegralInRange<size_t>(1, 4);
    std::vector<size_t> sizes;
    for (size_t t = 0; t < std::min<size_t>(n_tensors, 4); ++t) sizes.push_back(tensor_size(in));
    const bool null_sizes = in.ConsumeIntegralInRange<int>(0, 15) == 0;
    const koala_dtype dtype = enum_value(in, KOALA_FLOAT32, KOALA_FLOAT64);
    const koala_memory memory = in.ConsumeIntegralInRange<int>(0, 7) == 0
                                    ? enum_value(in, KOALA_DEVICE, static_cast<koala_memory>(7))
                                    : KOALA_HOST;
    const bool null_out = in.ConsumeIntegralInRange<int>(0, 15) == 0;

    // n_tensors = SIZE_MAX must be rejected before sizes[] is read, so
    // handing it a 4-element array is fine (ASan would catch a read).
    static char sentinel;
    koala_optimizer *out = reinterpret_cast<koala_optimizer *>(&sentinel);
    const koala_status st = koala_create(&c, n_tensors, null_sizes ? nullptr : sizes.data(), dtype,
                                         memory, null_out ? nullptr : &out);
    if (st != KOALA_OK) {
        FUZZ_REQUIRE(st == KOALA_ERROR_INVALID_ARGUMENT || st == KOALA_ERROR_UNSUPPORTED ||
                         st == KOALA_ERROR_OUT_OF_MEMORY,
                     "create status %d", (int)st);
        FUZZ_REQUIRE(koala_last_error()[0] != '\0', "create failed without a message");
        FUZZ_REQUIRE(out == reinterpret_cast<koala_optimizer *>(&sentinel), "*out written");
        return 0;
    }
    FUZZ_REQUIRE(!null_out && !null_sizes && n_tensors >= 1 && n_tensors <= 4 && memory == KOALA_HOST,
                 "create accepted bad arguments");
    if (trace())
        std::fprintf(stderr,
                     "create method %d dtype %d sizes %zu: lr %g wd %g r %g alpha_r %g sigma %g "
                     "q %g sw %g sc %g sv %g a %g qw %g qv %g\n",
                     (int)method, (int)dtype, n_tensors, c.lr, c.weight_decay, c.r, c.alpha_r,
                     c.sigma, c.q, c.sw, c.sc, c.sv, c.a, c.qw, c.qv);
    Session s;
    s.opt = out;
    s.method = c.method;
    s.dtype = dtype;
    s.sizes = sizes;
    fill_tensors(in, s);
    run_calls(in, s);
    koala_destroy(s.opt);
    return 0;
}
