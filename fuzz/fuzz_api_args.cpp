// libFuzzer harness: bytes decoded into arguments and call sequences for
// every entry point of koala.h that takes an optimizer, after a fuzzed
// koala_create or koala_create_sharded.
//
// Decoded: a config (every field default or one of a palette of hostile
// values: 0, -1, NaN, +-Inf, tiny, huge, -0, raw bytes; the 1.1 fields
// threads, stochastic_rounding, seed, asymmetric, fused_predict and
// caller_state too), struct_size (exact, the 1.0 size, too small, larger with
// a zero or non-zero tail), method (KOALA-V, KOALA-M, KOALA++ or not one),
// dtype (float32, float64, bfloat16, float16 or not one), memory, n_tensors
// and sizes (small, 0, overflowing, NULL array), sometimes a shard (global
// indices, n_global, global_elements, an all-reduce that works, fails or is
// NULL), a NULL out; then up to 24 calls: predict, update, update_ptr, the
// two-phase update_begin / update_end / update_end_ptr, get_info, set_lr,
// per-tensor lr and weight decay, posterior, state save / load / size,
// caller-owned state (layout, init, bind), with pointer arrays holding NULLs,
// non-finite losses and gradients, wrong dtypes, non-NULL streams.
//
// Invariants (a broken one aborts, which libFuzzer records as a crash):
//  - no crash, leak or undefined behaviour (ASan + UBSan);
//  - every status is one the function documents;
//  - every non-OK status comes with a non-empty message that names the
//    function, and changes nothing: parameters, gradients, the caller's sums
//    buffer, caller-owned state and posterior buffers, the checkpoint bytes
//    and koala_info are as before, *out of koala_create untouched;
//  - the call order holds: predict succeeds only in phase "updated", update
//    and update_begin only after a predict, update_end only after
//    update_begin, each moves koala_info.phase where it should, and valid
//    arguments do succeed;
//  - after every successful call the state saves and loads back.
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "fuzz_layouts.h"

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

int hostile_int(FuzzedDataProvider &in, int normal) {
    switch (in.ConsumeIntegralInRange<int>(0, 9)) {
    case 0: return -1;
    case 1: return 2;
    case 2: return in.ConsumeIntegral<int>();
    case 3: return 1;
    default: return normal;
    }
}

// a (mostly), b, or one of the values koala.h does not name.
template <class E>
E enum_value(FuzzedDataProvider &in, E a, E b, E c = static_cast<E>(0), E d = static_cast<E>(0)) {
    switch (in.ConsumeIntegralInRange<int>(0, 8)) {
    case 0: return static_cast<E>(0);
    case 1: return static_cast<E>(in.ConsumeIntegral<int>());
    case 2: return static_cast<E>(5);
    case 3: return b;
    case 4: return static_cast<int>(c) ? c : a;
    case 5: return static_cast<int>(d) ? d : a;
    default: return a;
    }
}

size_t tensor_size(FuzzedDataProvider &in) {
    switch (in.ConsumeIntegralInRange<int>(0, 9)) {
    case 0: return 0;
    case 1: return std::numeric_limits<size_t>::max();
    case 2: return size_t(1) << 62;  // over the byte-size limit for every dtype
    case 3: return (size_t(1) << 62) / 3;
    default: return in.ConsumeIntegralInRange<size_t>(1, 40);
    }
}

// The all-reduce callback: a process alone in its group, which fails when
// the harness says so (after scribbling over the buffer, as a broken
// communicator might).
int g_allreduce_rc = 0;
int allreduce(double *buf, size_t count, void *, void *) {
    if (g_allreduce_rc == 0) return 0;
    for (size_t i = 0; i < count; ++i) buf[i] = NAN;
    return g_allreduce_rc;
}

bool is_known_dtype(koala_dtype d) {
    const int v = static_cast<int>(d);
    return v >= KOALA_FLOAT32 && v <= KOALA_FLOAT16;
}

// The caller's view of one optimizer: its layout and every buffer it hands
// the library.
struct Session {
    koala_optimizer *opt = nullptr;
    koala_method method{};
    koala_dtype dtype{};
    std::vector<size_t> sizes;
    size_t n_global = 0;
    bool caller_state = false;
    std::vector<std::vector<unsigned char>> params, grads, bad_grads, post;
    std::vector<double> sums;
    // caller-owned state (koala_state_layout's shape)
    std::vector<std::vector<unsigned char>> state;
    std::vector<void *> state_ptrs;
    std::vector<double> scalars;
    // The arguments of the last successful koala_update_begin, to begin anew
    // after a koala_update_end that left the optimizer predicted again, and
    // whether the caller changed its data since.
    std::vector<void *> begin_params;
    std::vector<const void *> begin_grads;
    bool changed_since_begin = false;

    size_t elem() const { return fuzz::elem_bytes(dtype); }
    void set(std::vector<unsigned char> &buf, size_t i, double v) const {
        fuzz::put(buf, dtype, i, v);
    }
    // Everything a failing call must leave alone.
    std::vector<unsigned char> snapshot() const {
        std::vector<unsigned char> all = fuzz::state_of(opt);
        for (const auto *group : {&params, &grads, &bad_grads, &post, &state})
            for (const auto &b : *group) all.insert(all.end(), b.begin(), b.end());
        for (const auto *d : {&sums, &scalars}) {
            const unsigned char *p = reinterpret_cast<const unsigned char *>(d->data());
            all.insert(all.end(), p, p + d->size() * sizeof(double));
        }
        return all;
    }
};

void fill_tensors(FuzzedDataProvider &in, Session &s) {
    const size_t n = s.sizes.size();
    s.params.resize(n);
    s.grads.resize(n);
    s.bad_grads.resize(n);
    s.post.resize(n);
    for (size_t t = 0; t < n; ++t) {
        s.params[t].assign(s.sizes[t] * s.elem(), 0);
        s.grads[t].assign(s.sizes[t] * s.elem(), 0);
        s.bad_grads[t].assign(s.sizes[t] * s.elem(), 0);
        s.post[t].assign(s.sizes[t] * s.elem(), 0xB7);
        const double scale = in.ConsumeBool() ? 1.0 : hostile_double(in, 1.0);
        for (size_t i = 0; i < s.sizes[t]; ++i) {
            s.set(s.params[t], i, std::sin(0.7 * i + t));
            s.set(s.grads[t], i, scale * std::cos(1.3 * i + 2.0 * t));
            s.set(s.bad_grads[t], i, std::cos(1.3 * i));
        }
        s.set(s.bad_grads[t], s.sizes[t] - 1, hostile_double(in, NAN));
    }
    size_t count = 0;
    FUZZ_REQUIRE(koala_sums_size(s.opt, &count) == KOALA_OK, "sums_size");
    s.sums.assign(count, 0.25);
    size_t per_tensor = 0, n_scalars = 0;
    koala_dtype state_dtype;
    FUZZ_REQUIRE(koala_state_layout(s.opt, &per_tensor, &state_dtype, &n_scalars) == KOALA_OK,
                 "state_layout");
    if (s.caller_state) {
        s.state.resize(per_tensor * n);
        for (size_t k = 0; k < per_tensor * n; ++k) {
            s.state[k].assign(s.sizes[k % n] * fuzz::elem_bytes(state_dtype), 0x3C);
            s.state_ptrs.push_back(s.state[k].data());
        }
        s.scalars.assign(n_scalars, -7.0);
    }
}

std::vector<void *> param_array(FuzzedDataProvider &in, Session &s, bool *valid) {
    std::vector<void *> p;
    for (auto &b : s.params) p.push_back(b.data());
    *valid = true;
    if (!p.empty() && in.ConsumeIntegralInRange<int>(0, 7) == 0) {
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

// Per-global-tensor values for koala_set_tensor_lr / weight_decay, or NULL.
std::vector<double> tensor_values(FuzzedDataProvider &in, size_t n, bool *null_array) {
    *null_array = in.ConsumeIntegralInRange<int>(0, 5) == 0;
    std::vector<double> v(n > 0 ? n : 1);
    for (double &x : v) x = in.ConsumeBool() ? 0.5 : maybe_hostile(in, 1.0);
    return v;
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
    std::fprintf(stderr,
                 "%-28s -> %d  phase %d sigma %.17g P [%.17g %.17g %.17g] r %.17g qw %.17g\n",
                 fn[0] ? fn : "(data change)", (int)st, info.phase, info.sigma, info.p00,
                 info.p01, info.p11, info.r, info.qw);
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

bool one_of(koala_status st, std::initializer_list<koala_status> allowed) {
    for (koala_status a : allowed)
        if (st == a) return true;
    return false;
}

void run_calls(FuzzedDataProvider &in, Session &s) {
    for (int call = 0; call < 24 && in.remaining_bytes() > 0; ++call) {
        const std::vector<unsigned char> before = s.snapshot();
        const int phase = fuzz::phase_of(s.opt);  // -1: caller state, nothing bound
        koala_status st = KOALA_OK;
        const char *fn = "";
        bool ok_args = true, ok_stream = true;
        switch (in.ConsumeIntegralInRange<int>(0, 14)) {
        case 0: {
            fn = "koala_predict";
            std::vector<void *> p = param_array(in, s, &ok_args);
            const bool null_array = in.ConsumeIntegralInRange<int>(0, 9) == 0;
            void *stream = stream_arg(in, &ok_stream);
            st = koala_predict(s.opt, null_array ? nullptr : p.data(), stream);
            // Only KOALA-M reads params: NULL is fine for the others.
            ok_args = s.method != KOALA_MOMENTUM || (!null_array && ok_args);
            FUZZ_REQUIRE(one_of(st, {KOALA_OK, KOALA_ERROR_INVALID_ARGUMENT, KOALA_ERROR_BAD_STATE}),
                         "predict status %d", (int)st);
            if (st == KOALA_OK) FUZZ_REQUIRE(phase == 0, "predict succeeded in phase %d", phase);
            if (ok_args && ok_stream && phase == 0)
                FUZZ_REQUIRE(st == KOALA_OK, "valid predict failed");
            if (st == KOALA_OK) FUZZ_REQUIRE(fuzz::phase_of(s.opt) == 1, "phase after predict");
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
            g_allreduce_rc = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? 5 : 0;
            if (by_ptr) {
                const koala_dtype d = enum_value(in, KOALA_FLOAT64, KOALA_FLOAT32, KOALA_BFLOAT16);
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
            g_allreduce_rc = 0;
            FUZZ_REQUIRE(one_of(st, {KOALA_OK, KOALA_ERROR_INVALID_ARGUMENT, KOALA_ERROR_BAD_STATE,
                                     KOALA_ERROR_NOT_FINITE, KOALA_ERROR_COMMUNICATION}),
                         "update status %d", (int)st);
            if (st == KOALA_OK) {
                FUZZ_REQUIRE(phase == 1 || phase == 2, "update succeeded in phase %d", phase);
                FUZZ_REQUIRE(fuzz::phase_of(s.opt) == 0, "phase after update");
            }
            break;
        }
        case 3: {
            fn = "koala_get_info";
            struct {
                koala_info info;
                unsigned char tail[16];
            } out;
            std::memset(&out, 0x5A, sizeof out);
            const int which = in.ConsumeIntegralInRange<int>(0, 5);
            out.info.struct_size = which == 0   ? 0
                                   : which == 1 ? KOALA_INFO_SIZE_1_0 - 8
                                   : which == 2 ? sizeof out
                                   : which == 3 ? KOALA_INFO_SIZE_1_0
                                                : sizeof(koala_info);
            const size_t asked = out.info.struct_size;
            const bool null_out = in.ConsumeIntegralInRange<int>(0, 9) == 0;
            void *stream = stream_arg(in, &ok_stream);
            st = koala_get_info(s.opt, stream, null_out ? nullptr : &out.info);
            FUZZ_REQUIRE(one_of(st, {KOALA_OK, KOALA_ERROR_INVALID_ARGUMENT, KOALA_ERROR_BAD_STATE}),
                         "info %d", (int)st);
            // Nothing past the caller's struct_size (or this library's
            // koala_info, for a newer caller's larger struct) is written,
            // and nothing at all on failure.
            const unsigned char *bytes = reinterpret_cast<const unsigned char *>(&out);
            const size_t written = asked < sizeof(koala_info) ? asked : sizeof(koala_info);
            for (size_t i = st == KOALA_OK ? written : sizeof(size_t); i < sizeof out; ++i)
                FUZZ_REQUIRE(bytes[i] == 0x5A, "get_info wrote byte %zu of a %zu-byte struct", i,
                             asked);
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
            FUZZ_REQUIRE(one_of(st, {KOALA_OK, KOALA_ERROR_INVALID_ARGUMENT, KOALA_ERROR_BAD_STATE}),
                         "save %d", (int)st);
            if (phase >= 0)
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
                continue;  // (a reload restores the very state: phase 1's inputs are unchanged)
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
            s.changed_since_begin = true;
            continue;
        }
        case 7: {
            fn = "koala_state_size";
            size_t bytes = 0;
            st = koala_state_size(s.opt, in.ConsumeBool() ? &bytes : nullptr);
            FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_INVALID_ARGUMENT, "size %d", (int)st);
            break;
        }
        case 8: {
            fn = "koala_sums_size";
            size_t count = 0;
            const bool null_count = in.ConsumeBool();
            st = koala_sums_size(s.opt, null_count ? nullptr : &count);
            FUZZ_REQUIRE((st == KOALA_OK) == !null_count, "sums_size %d", (int)st);
            if (st == KOALA_OK) FUZZ_REQUIRE(count == s.sums.size(), "sums_size changed");
            break;
        }
        case 9: {
            fn = "koala_update_begin";
            std::vector<void *> p = param_array(in, s, &ok_args);
            std::vector<const void *> g = grad_array(in, s);
            const bool null_grads = in.ConsumeIntegralInRange<int>(0, 11) == 0;
            const bool null_sums = in.ConsumeIntegralInRange<int>(0, 11) == 0;
            void *stream = stream_arg(in, &ok_stream);
            st = koala_update_begin(s.opt, p.data(), null_grads ? nullptr : g.data(),
                                    null_sums ? nullptr : s.sums.data(), stream);
            FUZZ_REQUIRE(one_of(st, {KOALA_OK, KOALA_ERROR_INVALID_ARGUMENT, KOALA_ERROR_BAD_STATE}),
                         "update_begin status %d", (int)st);
            if (st == KOALA_OK) {
                FUZZ_REQUIRE(phase == 1 || phase == 2, "update_begin succeeded in phase %d", phase);
                FUZZ_REQUIRE(fuzz::phase_of(s.opt) == 2, "phase after update_begin");
                s.begin_params = p;
                s.begin_grads = g;
                s.changed_since_begin = false;
            }
            if ((phase == 1 || phase == 2) && ok_args && ok_stream && !null_grads && !null_sums)
                FUZZ_REQUIRE(st == KOALA_OK, "valid update_begin failed");
            break;
        }
        case 10: {
            const bool by_ptr = in.ConsumeBool();
            fn = by_ptr ? "koala_update_end_ptr" : "koala_update_end";
            std::vector<void *> p = param_array(in, s, &ok_args);
            std::vector<const void *> g = grad_array(in, s);
            const bool null_grads = in.ConsumeIntegralInRange<int>(0, 11) == 0;
            const bool null_sums = in.ConsumeIntegralInRange<int>(0, 11) == 0;
            // Sometimes the sums are tampered with, as a broken reduction would.
            std::vector<double> sums_arg = s.sums;
            if (!sums_arg.empty() && in.ConsumeIntegralInRange<int>(0, 7) == 0)
                sums_arg[in.ConsumeIntegralInRange<size_t>(0, sums_arg.size() - 1)] =
                    hostile_double(in, 3.0);
            void *stream = stream_arg(in, &ok_stream);
            const double loss = maybe_hostile(in, 0.5), loss_var = maybe_hostile(in, 0.4);
            const double *sums = null_sums ? nullptr : sums_arg.data();
            if (by_ptr) {
                const koala_dtype d = enum_value(in, KOALA_FLOAT32, KOALA_FLOAT64, KOALA_FLOAT16);
                const double l64 = loss, v64 = loss_var;
                const float l32 = static_cast<float>(loss), v32 = static_cast<float>(loss_var);
                const bool f32 = d == KOALA_FLOAT32;
                st = koala_update_end_ptr(s.opt, f32 ? static_cast<const void *>(&l32) : &l64,
                                          f32 ? static_cast<const void *>(&v32) : &v64, d,
                                          p.data(), null_grads ? nullptr : g.data(), sums, stream);
            } else {
                st = koala_update_end(s.opt, loss, loss_var, p.data(),
                                      null_grads ? nullptr : g.data(), sums, stream);
            }
            FUZZ_REQUIRE(one_of(st, {KOALA_OK, KOALA_ERROR_INVALID_ARGUMENT, KOALA_ERROR_BAD_STATE,
                                     KOALA_ERROR_NOT_FINITE}),
                         "update_end status %d", (int)st);
            if (st == KOALA_OK) {
                FUZZ_REQUIRE(phase == 2, "update_end succeeded in phase %d", phase);
                FUZZ_REQUIRE(fuzz::phase_of(s.opt) == 0, "phase after update_end");
            }
            if (st != KOALA_OK && phase == 2 && fuzz::phase_of(s.opt) != 2) {
                // Past its phase check a failure leaves the optimizer
                // predicted again (koala.h); phase 1 anew with the same
                // arguments then gives back exactly the state before.
                FUZZ_REQUIRE(fuzz::phase_of(s.opt) == 1, "phase %d after a failed update_end",
                             fuzz::phase_of(s.opt));
                const char *msg = koala_last_error();
                FUZZ_REQUIRE(std::strncmp(msg, fn, std::strlen(fn)) == 0,
                             "%s: message names another function", fn);
                FUZZ_REQUIRE(koala_update_begin(s.opt, s.begin_params.data(),
                                                s.begin_grads.data(), s.sums.data(),
                                                nullptr) == KOALA_OK,
                             "update_begin anew after a failed update_end");
                if (!s.changed_since_begin)
                    FUZZ_REQUIRE(s.snapshot() == before, "%s failed (%d) but changed more than "
                                 "the phase", fn, (int)st);
                continue;
            }
            const std::vector<unsigned char> &before_end = before;
            require_failure_contract(st, s, before_end, fn);
            if (trace()) print_trace(s, fn, st);
            if (st == KOALA_OK) fuzz::require_round_trip(s.opt, fn);
            continue;
        }
        case 11: {
            const bool lr = in.ConsumeBool();
            fn = lr ? "koala_set_tensor_lr" : "koala_set_tensor_weight_decay";
            bool null_array = false;
            const std::vector<double> v = tensor_values(in, s.n_global, &null_array);
            void *stream = stream_arg(in, &ok_stream);
            const double *arg = null_array ? nullptr : v.data();
            st = lr ? koala_set_tensor_lr(s.opt, arg, stream)
                    : koala_set_tensor_weight_decay(s.opt, arg, stream);
            bool values_ok = true;
            for (size_t j = 0; j < s.n_global && !null_array; ++j)
                values_ok = values_ok && std::isfinite(v[j]) && v[j] >= 0;
            FUZZ_REQUIRE((st == KOALA_OK) == (values_ok && ok_stream), "%s gave %d", fn, (int)st);
            break;
        }
        case 12: {
            fn = "koala_posterior";
            std::vector<void *> p = param_array(in, s, &ok_args);
            std::vector<void *> o;
            for (auto &b : s.post) o.push_back(b.data());
            if (!o.empty() && in.ConsumeIntegralInRange<int>(0, 7) == 0) {
                const size_t t = in.ConsumeIntegralInRange<size_t>(0, o.size() - 1);
                o[t] = in.ConsumeBool() ? nullptr : s.params[t].data();
            }
            const bool null_out = in.ConsumeIntegralInRange<int>(0, 11) == 0;
            void *stream = stream_arg(in, &ok_stream);
            st = koala_posterior(s.opt, p.data(), null_out ? nullptr : o.data(), stream);
            FUZZ_REQUIRE(one_of(st, {KOALA_OK, KOALA_ERROR_INVALID_ARGUMENT, KOALA_ERROR_BAD_STATE}),
                         "posterior %d", (int)st);
            break;
        }
        case 13: {
            // Caller-owned state: init or bind the session's own buffers (with
            // NULLs, or a scalar block whose phase slot is not a phase).
            const bool init = in.ConsumeBool();
            fn = init ? "koala_state_init" : "koala_bind_state";
            std::vector<void *> b = s.state_ptrs;
            bool valid = true;
            if (!b.empty() && in.ConsumeIntegralInRange<int>(0, 7) == 0) {
                b[in.ConsumeIntegralInRange<size_t>(0, b.size() - 1)] = nullptr;
                valid = false;
            }
            const bool null_buffers = in.ConsumeIntegralInRange<int>(0, 11) == 0;
            const bool null_scalars = in.ConsumeIntegralInRange<int>(0, 11) == 0;
            valid = valid && !null_scalars && (!null_buffers || b.empty());
            std::vector<double> garbage = s.scalars;
            bool garbage_phase = false;
            if (!init && garbage.size() > 8 && in.ConsumeIntegralInRange<int>(0, 5) == 0) {
                const double bad[] = {3.0, -1.0, 0.5, NAN, INFINITY, 1e300};
                garbage[8] = bad[in.ConsumeIntegralInRange<int>(0, 5)];
                garbage_phase = true;
            }
            double *scalars = null_scalars ? nullptr
                              : garbage_phase ? garbage.data()
                                              : (s.scalars.empty() ? garbage.data()
                                                                   : s.scalars.data());
            void *const *buffers = null_buffers ? nullptr : b.data();
            if (init) {
                void *stream = stream_arg(in, &ok_stream);
                st = koala_state_init(s.opt, buffers, scalars, stream);
            } else {
                st = koala_bind_state(s.opt, buffers, scalars);
            }
            FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_INVALID_ARGUMENT, "%s gave %d", fn,
                         (int)st);
            if (!s.caller_state) FUZZ_REQUIRE(st != KOALA_OK, "%s on library-owned state", fn);
            if (st == KOALA_OK && !init)
                FUZZ_REQUIRE(!garbage_phase, "bind_state took a scalar block with phase %g",
                             garbage[8]);
            // Binding the block koala_state_init has not written yet (phase
            // slot -7) is refused too; after an init it is a real block.
            if (s.caller_state && valid && ok_stream && init)
                FUZZ_REQUIRE(st == KOALA_OK, "valid state_init failed");
            break;
        }
        default: {
            fn = "koala_state_layout";
            size_t per_tensor = 0, n_scalars = 0;
            koala_dtype state_dtype;
            st = koala_state_layout(s.opt, in.ConsumeBool() ? &per_tensor : nullptr,
                                    in.ConsumeBool() ? &state_dtype : nullptr,
                                    in.ConsumeBool() ? &n_scalars : nullptr);
            FUZZ_REQUIRE(st == KOALA_OK, "state_layout %d", (int)st);
            break;
        }
        }
        require_failure_contract(st, s, before, fn);
        if (trace()) print_trace(s, fn, st);
        if (st == KOALA_OK) fuzz::require_round_trip(s.opt, fn);
        // What phase 1 reads besides params and grads: per-tensor weight
        // decay, the state (init, bind).
        const char *changers[] = {"koala_set_tensor_weight_decay", "koala_state_init",
                                  "koala_bind_state", "koala_state_load"};
        for (const char *c : changers)
            if (st == KOALA_OK && std::strcmp(fn, c) == 0) s.changed_since_begin = true;
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
    const koala_method method = enum_value(in, KOALA_VANILLA, KOALA_MOMENTUM, KOALA_PLUSPLUS);
    koala_config_init(&big.cfg, method);
    koala_config &c = big.cfg;
    for (double *field : {&c.lr, &c.weight_decay, &c.r, &c.alpha_r, &c.sigma, &c.q, &c.sw, &c.sc,
                          &c.sv, &c.a, &c.qw, &c.qv})
        if (in.ConsumeIntegralInRange<int>(0, 5) == 0) *field = hostile_double(in, *field);
    if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {
        c.threads = in.ConsumeBool() ? hostile_int(in, 0) : in.ConsumeIntegralInRange<int>(0, 3);
        c.stochastic_rounding = hostile_int(in, 0);
        c.seed = in.ConsumeIntegral<uint64_t>();
        c.asymmetric = hostile_int(in, 0);
        c.fused_predict = hostile_int(in, 0);
    }
    if (in.ConsumeIntegralInRange<int>(0, 5) == 0) c.caller_state = hostile_int(in, 1);
    switch (in.ConsumeIntegralInRange<int>(0, 11)) {
    case 0: c.struct_size = 0; break;
    case 1: c.struct_size = KOALA_CONFIG_SIZE_1_0 - 8; break;
    case 2: c.struct_size = sizeof big; break;
    case 3: c.struct_size = sizeof big; big.tail[in.ConsumeIntegralInRange<int>(0, 15)] = 1; break;
    case 4: c.struct_size = KOALA_CONFIG_SIZE_1_0; break;  // a 1.0 caller: 1.1 fields ignored
    default: break;
    }
    // A 1.0 caller's struct ends before the 1.1 fields: the library must
    // not read them (they are set above and would change the result).
    const bool old_struct = c.struct_size == KOALA_CONFIG_SIZE_1_0;
    const bool sharded = in.ConsumeIntegralInRange<int>(0, 4) == 0;
    const size_t n_tensors =
        in.ConsumeIntegralInRange<int>(0, 15) == 0
            ? (in.ConsumeBool() ? 0 : std::numeric_limits<size_t>::max())
            : in.ConsumeIntegralInRange<size_t>(1, 4);
    std::vector<size_t> sizes;
    for (size_t t = 0; t < std::min<size_t>(n_tensors, 4); ++t) sizes.push_back(tensor_size(in));
    const bool null_sizes = in.ConsumeIntegralInRange<int>(0, 15) == 0;
    const koala_dtype dtype =
        enum_value(in, KOALA_FLOAT32, KOALA_FLOAT64, KOALA_BFLOAT16, KOALA_FLOAT16);
    const koala_memory memory = in.ConsumeIntegralInRange<int>(0, 7) == 0
                                    ? enum_value(in, KOALA_DEVICE, static_cast<koala_memory>(7))
                                    : KOALA_HOST;
    const bool null_out = in.ConsumeIntegralInRange<int>(0, 15) == 0;

    // The shard: pieces of fewer global tensors, or hostile values.
    std::vector<size_t> global_index;
    koala_shard shard;
    std::memset(&shard, 0, sizeof shard);
    bool null_shard = false;
    if (sharded) {
        shard.struct_size = in.ConsumeIntegralInRange<int>(0, 9) == 0 ? 8 : sizeof shard;
        const size_t n = std::min<size_t>(n_tensors, 4);
        shard.n_global = in.ConsumeIntegralInRange<int>(0, 9) == 0
                             ? in.ConsumeIntegralInRange<size_t>(0, 6)
                             : std::max<size_t>(1, in.ConsumeIntegralInRange<size_t>(1, n + 1));
        uint64_t total = 0;
        for (size_t t = 0; t < n; ++t) {
            global_index.push_back(in.ConsumeIntegralInRange<int>(0, 9) == 0
                                       ? in.ConsumeIntegral<size_t>()
                                       : (shard.n_global ? t % shard.n_global : 0));
            total += sizes[t];
        }
        shard.global_index = in.ConsumeIntegralInRange<int>(0, 5) == 0 ? nullptr : global_index.data();
        shard.global_elements = in.ConsumeIntegralInRange<int>(0, 7) == 0
                                    ? in.ConsumeIntegral<uint64_t>()
                                    : total + (in.ConsumeIntegralInRange<int>(0, 7) == 0 ? 3 : 0);
        shard.allreduce = in.ConsumeIntegralInRange<int>(0, 5) == 0 ? nullptr : allreduce;
        null_shard = in.ConsumeIntegralInRange<int>(0, 15) == 0;
    }

    // n_tensors = SIZE_MAX must be rejected before sizes[] is read, so
    // handing it a 4-element array is fine (ASan would catch a read).
    static char sentinel;
    koala_optimizer *out = reinterpret_cast<koala_optimizer *>(&sentinel);
    const char *fn = sharded ? "koala_create_sharded" : "koala_create";
    const size_t *sizes_arg = null_sizes ? nullptr : sizes.data();
    const koala_status st =
        sharded ? koala_create_sharded(&c, n_tensors, sizes_arg, null_shard ? nullptr : &shard,
                                       dtype, memory, null_out ? nullptr : &out)
                : koala_create(&c, n_tensors, sizes_arg, dtype, memory, null_out ? nullptr : &out);
    if (st != KOALA_OK) {
        FUZZ_REQUIRE(st == KOALA_ERROR_INVALID_ARGUMENT || st == KOALA_ERROR_UNSUPPORTED ||
                         st == KOALA_ERROR_OUT_OF_MEMORY,
                     "create status %d", (int)st);
        // (Device memory without a usable GPU gets the plugin loader's
        // reason, which names no function.)
        FUZZ_REQUIRE(std::strncmp(koala_last_error(), fn, std::strlen(fn)) == 0 ||
                         (st == KOALA_ERROR_UNSUPPORTED && memory == KOALA_DEVICE &&
                          koala_last_error()[0] != '\0'),
                     "create failed without a message naming %s", fn);
        FUZZ_REQUIRE(out == reinterpret_cast<koala_optimizer *>(&sentinel), "*out written");
        return 0;
    }
    FUZZ_REQUIRE(!null_out && memory == KOALA_HOST && is_known_dtype(dtype) &&
                     (sharded ? !null_shard && n_tensors <= 4 : n_tensors >= 1 && n_tensors <= 4) &&
                     (!null_sizes || (sharded && n_tensors == 0)),
                 "create accepted bad arguments");
    if (trace())
        std::fprintf(stderr,
                     "%s method %d dtype %d sizes %zu: lr %g wd %g r %g alpha_r %g sigma %g "
                     "q %g sw %g sc %g sv %g a %g qw %g qv %g threads %d sr %d asym %d fused %d "
                     "caller %d\n",
                     fn, (int)method, (int)dtype, n_tensors, c.lr, c.weight_decay, c.r, c.alpha_r,
                     c.sigma, c.q, c.sw, c.sc, c.sv, c.a, c.qw, c.qv, c.threads,
                     c.stochastic_rounding, c.asymmetric, c.fused_predict, c.caller_state);
    Session s;
    s.opt = out;
    s.method = c.method;
    s.dtype = dtype;
    s.sizes.assign(sizes.begin(), sizes.begin() + std::min<size_t>(n_tensors, sizes.size()));
    s.n_global = sharded ? shard.n_global : n_tensors;
    s.caller_state = !old_struct && c.caller_state == 1;
    fill_tensors(in, s);
    run_calls(in, s);
    koala_destroy(s.opt);
    return 0;
}
