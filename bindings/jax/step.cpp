#include "step.h"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "optimizer_pool.h"
#include "step_spec.h"

namespace koala_jax {
namespace {

// Operand-to-result copies made because XLA did not alias them: the tests
// read it (koala_jax_operand_copies) to show that a step copies no state.
std::atomic<uint64_t> operand_copies{0};

size_t buffers_per_tensor(koala_method m) { return m == KOALA_VANILLA ? 0 : 2; }

ffi::DataType element_type(koala_dtype d) {
    switch (d) {
        case KOALA_FLOAT64: return ffi::DataType::F64;
        case KOALA_BFLOAT16: return ffi::DataType::BF16;
        case KOALA_FLOAT16: return ffi::DataType::F16;
        default: return ffi::DataType::F32;
    }
}

// KOALA-M / KOALA++ state: the parameter dtype, float32 for the 16-bit types.
ffi::DataType state_type(koala_dtype d) {
    return d == KOALA_FLOAT64 ? ffi::DataType::F64 : ffi::DataType::F32;
}

ffi::Error check_buffer(const ffi::AnyBuffer &b, ffi::DataType type, size_t count,
                        const std::string &name) {
    if (b.element_type() != type)
        return invalid(name + " has the wrong element type for this optimizer state");
    if (b.element_count() != count)
        return invalid(name + " has " + std::to_string(b.element_count()) +
                       " elements, the optimizer state expects " + std::to_string(count));
    return ffi::Error::Success();
}

// A block of `count` doubles: float64[count], or uint32[2 count] holding the
// same bytes (JAX without x64).
ffi::Error check_doubles(const ffi::AnyBuffer &b, size_t count, const std::string &name) {
    const bool f64 = b.element_type() == ffi::DataType::F64 && b.element_count() == count;
    const bool u32 = b.element_type() == ffi::DataType::U32 && b.element_count() == 2 * count;
    if (!f64 && !u32)
        return invalid(name + " must be float64[" + std::to_string(count) + "] or uint32[" +
                       std::to_string(2 * count) + "] (the same bytes); got " +
                       std::to_string(b.element_count()) +
                       " elements: the state belongs to another parameter tree or method");
    if (reinterpret_cast<uintptr_t>(b.untyped_data()) % alignof(double) != 0)
        return invalid(name + " is not 8-byte aligned");
    return ffi::Error::Success();
}

// Reads the operands and results of one call in their fixed order.
class Operands {
   public:
    Operands(ffi::RemainingArgs &args, ffi::RemainingRets &rets) : args_(args), rets_(rets) {}

    ffi::Error arg(std::optional<ffi::AnyBuffer> *out) {
        if (a_ >= args_.size())
            return invalid("got " + std::to_string(args_.size()) +
                           " operands, too few for this optimizer state");
        auto b = args_.get<ffi::AnyBuffer>(a_++);
        if (!b.has_value()) return invalid("bad operand buffer");
        out->emplace(*b);
        return ffi::Error::Success();
    }
    ffi::Error ret(std::optional<ffi::Result<ffi::AnyBuffer>> *out) {
        if (r_ >= rets_.size())
            return invalid("got " + std::to_string(rets_.size()) +
                           " results, too few for this optimizer state");
        auto b = rets_.get<ffi::AnyBuffer>(r_++);
        if (!b.has_value()) return invalid("bad result buffer");
        out->emplace(*b);
        return ffi::Error::Success();
    }
    ffi::Error done() const {
        if (a_ != args_.size() || r_ != rets_.size())
            return invalid("got " + std::to_string(args_.size()) + " operands and " +
                           std::to_string(rets_.size()) + " results, expected " +
                           std::to_string(a_) + " and " + std::to_string(r_));
        return ffi::Error::Success();
    }

   private:
    ffi::RemainingArgs &args_;
    ffi::RemainingRets &rets_;
    size_t a_ = 0, r_ = 0;
};

// The pointer an in-place operand is worked on at: its result buffer, which
// XLA aliases to the operand (input_output_aliases). Should it ever hand two
// buffers, start the result from the operand's values.
ffi::Error in_place(const Memory &mem, const ffi::AnyBuffer &in, ffi::Result<ffi::AnyBuffer> &out,
                    void **ptr) {
    if (out->untyped_data() != in.untyped_data()) {
        operand_copies.fetch_add(1, std::memory_order_relaxed);
        std::string e = mem.copy(out->untyped_data(), in.untyped_data(), in.size_bytes());
        if (!e.empty()) return internal_error("copying an operand to its result: " + e);
    }
    *ptr = out->untyped_data();
    return ffi::Error::Success();
}

// Entries of `all` (n per buffer, `per` buffers) for the local tensors `which`.
template <class P>
std::vector<P> pick(const std::vector<P> &all, size_t n, size_t per,
                    const std::vector<size_t> &which) {
    std::vector<P> out;
    if (all.empty()) return out;  // the call passes none (predict of KOALA-V/KOALA++)
    out.reserve(per * which.size());
    for (size_t b = 0; b < per; ++b)
        for (size_t i : which) out.push_back(all[b * n + i]);
    return out;
}

// libkoala takes pointer tables; an empty one must still be non-NULL.
template <class P>
P *table(std::vector<P> &v) {
    static P none[1] = {nullptr};
    return v.empty() ? none : v.data();
}

const char *step_name(StepKind kind) {
    switch (kind) {
        case StepKind::kPredict: return "predict";
        case StepKind::kUpdate: return "update";
        case StepKind::kBegin: return "update_begin";
        default: return "update_end";
    }
}

}  // namespace

uint64_t operand_copy_count() { return operand_copies.load(std::memory_order_relaxed); }

ffi::Error run_step(StepKind kind, const Memory &mem,
                    ffi::RemainingArgs args, ffi::RemainingRets rets,
                    const ffi::Dictionary &attrs) {
    const std::string what = step_name(kind);
    StepSpec spec;
    if (ffi::Error e = parse_spec(attrs, &spec); e.failure()) return e;
    const koala_method method = spec.cfg.method;
    if (kind == StepKind::kUpdate && spec.sharded())
        return invalid("a sharded state updates in two phases (update_begin, update_end)");
    DeviceSplit split;
    if (ffi::Error e = split_for_device(spec, mem.kind, mem.device, &split); e.failure())
        return e;

    const size_t n = spec.n(), B = buffers_per_tensor(method);
    const bool predict = kind == StepKind::kPredict;
    const bool reads_params = !predict || method == KOALA_MOMENTUM;
    const bool has_loss = kind == StepKind::kUpdate || kind == StepKind::kEnd;
    // Buffers are always bound (koala_bind_state wants them all) but only
    // written where the method changes them.
    const bool writes_params = reads_params && kind != StepKind::kBegin;
    const size_t n_params = reads_params ? n : 0, n_buffers = B * n;

    std::string error;
    PooledOptimizer own(split.own, &error);
    if (!own) return invalid("cannot create an optimizer for this state: " + error);
    size_t n_scalars = 0, n_sums = 0;
    koala_status s = koala_state_layout(own.get(), nullptr, nullptr, &n_scalars);
    if (s == KOALA_OK) s = koala_sums_size(own.get(), &n_sums);
    if (s != KOALA_OK) return koala_error(what, s);

    // ---- operands ----
    Operands io(args, rets);
    using Buffer = std::optional<ffi::AnyBuffer>;
    Buffer scalars_in, loss, loss_var, sums_in;
    std::vector<Buffer> params_in(n_params), grads(predict ? 0 : n), buffers_in(n_buffers);
    ffi::Error e = io.arg(&scalars_in);
    if (e.success()) e = check_doubles(*scalars_in, n_scalars, "the scalar block");
    if (e.success() && has_loss) e = io.arg(&loss);
    if (e.success() && has_loss) e = io.arg(&loss_var);
    for (size_t i = 0; e.success() && i < n_params; ++i) {
        e = io.arg(&params_in[i]);
        if (e.success())
            e = check_buffer(*params_in[i], element_type(spec.dtype), spec.sizes[i],
                             "parameter " + std::to_string(i));
    }
    for (size_t i = 0; e.success() && i < grads.size(); ++i) {
        e = io.arg(&grads[i]);
        if (e.success())
            e = check_buffer(*grads[i], element_type(spec.dtype), spec.sizes[i],
                             "gradient " + std::to_string(i));
    }
    for (size_t k = 0; e.success() && k < n_buffers; ++k) {
        e = io.arg(&buffers_in[k]);
        if (e.success())
            e = check_buffer(*buffers_in[k], state_type(spec.dtype), spec.sizes[k % n],
                             "state buffer " + std::to_string(k / n) + " of tensor " +
                                 std::to_string(k % n));
    }
    if (e.success() && kind == StepKind::kEnd) e = io.arg(&sums_in);
    if (e.success() && kind == StepKind::kEnd) e = check_doubles(*sums_in, n_sums, "sums");
    koala_dtype loss_dtype = KOALA_FLOAT32;
    if (e.success() && has_loss) {
        const ffi::DataType t = loss->element_type();
        if ((t != ffi::DataType::F32 && t != ffi::DataType::F64) || loss->element_count() != 1 ||
            loss_var->element_type() != t || loss_var->element_count() != 1)
            e = invalid("loss and loss_var must be float32 or float64 scalars of one dtype");
        loss_dtype = t == ffi::DataType::F64 ? KOALA_FLOAT64 : KOALA_FLOAT32;
    }
    if (e.failure()) return e;

    // ---- results ----
    std::optional<ffi::Result<ffi::AnyBuffer>> scalars_out, sums_out;
    std::vector<std::optional<ffi::Result<ffi::AnyBuffer>>> params_out(writes_params ? n_params : 0),
        buffers_out(writes_params ? n_buffers : 0);  // KOALA++'s predict only reads them
    e = io.ret(&scalars_out);
    for (size_t i = 0; e.success() && i < params_out.size(); ++i) e = io.ret(&params_out[i]);
    for (size_t k = 0; e.success() && k < buffers_out.size(); ++k) e = io.ret(&buffers_out[k]);
    if (e.success() && kind == StepKind::kBegin) e = io.ret(&sums_out);
    if (e.success() && kind == StepKind::kBegin) e = check_doubles(**sums_out, n_sums, "sums");
    // A sharded state's predict (KOALA-M) and update_end carry one more
    // result, scratch memory for a copy of the scalar block (the mirror's).
    std::optional<ffi::Result<ffi::AnyBuffer>> scratch_out;
    const bool has_scratch = spec.sharded() && (kind == StepKind::kEnd ||
                                                (predict && method == KOALA_MOMENTUM));
    if (e.success() && has_scratch) e = io.ret(&scratch_out);
    if (e.success() && has_scratch) e = check_doubles(**scratch_out, n_scalars, "scratch");
    if (e.success()) e = io.done();
    if (e.failure()) return e;

    // The lr multiplier is written by koala/jax.py from a traced value;
    // libkoala takes it as given, so check it where it can be read for free.
    if (mem.host()) {
        const double lr_scale = static_cast<const double *>(scalars_in->untyped_data())[KOALA_SCALAR_LR_SCALE];
        if (!std::isfinite(lr_scale) || lr_scale < 0)
            return invalid("lr is " + std::to_string(lr_scale) + "; it must be finite and >= 0");
    }

    // ---- pointers (results, worked on in place) ----
    void *scalars_ptr = nullptr;
    if (e = in_place(mem, *scalars_in, *scalars_out, &scalars_ptr); e.failure()) return e;
    double *scalars = static_cast<double *>(scalars_ptr);
    std::vector<void *> params(n_params), buffers(n_buffers);
    std::vector<const void *> grad_ptrs(grads.size());
    for (size_t i = 0; i < n_params; ++i) {
        if (!writes_params) params[i] = params_in[i]->untyped_data();
        else if (e = in_place(mem, *params_in[i], *params_out[i], &params[i]); e.failure()) return e;
    }
    for (size_t k = 0; k < n_buffers; ++k) {
        if (!writes_params) buffers[k] = buffers_in[k]->untyped_data();
        else if (e = in_place(mem, *buffers_in[k], *buffers_out[k], &buffers[k]); e.failure())
            return e;
    }
    for (size_t i = 0; i < grads.size(); ++i) grad_ptrs[i] = grads[i]->untyped_data();
    const double *sums_summed =
        kind == StepKind::kEnd ? static_cast<const double *>(sums_in->untyped_data()) : nullptr;
    double *sums_partial =
        kind == StepKind::kBegin ? static_cast<double *>((*sums_out)->untyped_data()) : nullptr;

    // ---- the mirror: replicated pieces, on a scratch copy of the scalars ----
    const bool run_mirror = !split.mirror_tensors.empty() &&
                            (kind == StepKind::kEnd || (predict && method == KOALA_MOMENTUM));
    if (run_mirror) {
        PooledOptimizer mirror(split.mirror, &error);
        if (!mirror) return invalid("cannot create an optimizer for this state: " + error);
        double *copy = static_cast<double *>((*scratch_out)->untyped_data());
        if (std::string err = mem.copy(copy, scalars, n_scalars * sizeof(double)); !err.empty())
            return internal_error("copying the scalar block: " + err);
        std::vector<void *> m_params = pick(params, n, 1, split.mirror_tensors);
        std::vector<const void *> m_grads = pick(grad_ptrs, n, 1, split.mirror_tensors);
        std::vector<void *> m_buffers = pick(buffers, n, B, split.mirror_tensors);
        s = koala_bind_state(mirror.get(), table(m_buffers), copy);
        if (s == KOALA_OK && predict) s = koala_predict(mirror.get(), table(m_params), mem.stream);
        if (s == KOALA_OK && !predict)
            s = koala_update_end_ptr(mirror.get(), loss->untyped_data(), loss_var->untyped_data(),
                                     loss_dtype, table(m_params), table(m_grads), sums_summed,
                                     mem.stream);
        if (s != KOALA_OK) return koala_error(what + " (replicated pieces)", s);
    }

    // ---- this device's own pieces, on the real scalar block ----
    std::vector<void *> o_params = pick(params, n, 1, split.own_tensors);
    std::vector<const void *> o_grads = pick(grad_ptrs, n, 1, split.own_tensors);
    std::vector<void *> o_buffers = pick(buffers, n, B, split.own_tensors);
    s = koala_bind_state(own.get(), table(o_buffers), scalars);
    if (s == KOALA_OK) {
        switch (kind) {
            case StepKind::kPredict:
                s = koala_predict(own.get(), reads_params ? table(o_params) : nullptr, mem.stream);
                break;
            case StepKind::kUpdate:
                s = koala_update_ptr(own.get(), loss->untyped_data(), loss_var->untyped_data(),
                                     loss_dtype, table(o_params), table(o_grads), mem.stream);
                break;
            case StepKind::kBegin:
                s = koala_update_begin(own.get(), table(o_params), table(o_grads), sums_partial,
                                       mem.stream);
                break;
            case StepKind::kEnd:
                s = koala_update_end_ptr(own.get(), loss->untyped_data(), loss_var->untyped_data(),
                                         loss_dtype, table(o_params), table(o_grads), sums_summed,
                                         mem.stream);
                break;
        }
    }
    return s == KOALA_OK ? ffi::Error::Success() : koala_error(what, s);
}

}  // namespace koala_jax
