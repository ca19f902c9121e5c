// XLA FFI handlers that run libkoala inside jax.jit: CPU handlers (host
// optimizers) and GPU handlers (device optimizers on XLA's CUDA stream).
//
// The optimizer state is a JAX array: a libkoala checkpoint (uint8[N],
// koala_state_save's bytes). Each call is pure from XLA's point of view:
//
//     checkpoint in -> koala_state_load -> koala_predict / koala_update_ptr
//                   -> koala_state_save -> checkpoint out
//
// Parameters and the checkpoint are aliased input->output
// (input_output_aliases in koala/jax.py), so with donation XLA updates them in
// place; without donation XLA copies the inputs into the outputs first.
// The arithmetic is all libkoala's; this file only maps buffers to pointers
// and statuses to FFI errors.
//
// Buffers (n = number of parameter tensors, from the "sizes" attribute):
//   predict: args  = ckpt, params[n]                 (n = 0 for KOALA-V:
//            rets  = ckpt, params[n]                  it never reads them)
//   update:  args  = ckpt, loss, loss_var, lr, params[n], grads[n]
//            rets  = ckpt, params[n]
// Attributes: method (koala_method), dtype (koala_dtype), sizes (i64[]).
// `lr` is a float32/float64 scalar; NaN keeps the checkpoint's lr.
//
// GPU: libkoala reads and writes checkpoints in host memory, so the GPU
// handlers stage the blob through host memory and wait for the stream
// twice per call (load, save); predict/update themselves are libkoala's
// stream-ordered device kernels on XLA's stream.

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "koala.h"
#include "memory.h"
#include "optimizer_pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// The handler symbols are the library's only exports (it is built with
// hidden visibility); koala/jax.py takes their addresses with ctypes.
extern "C" {
__attribute__((visibility("default"))) XLA_FFI_Error *KoalaJaxPredictCpu(XLA_FFI_CallFrame *);
__attribute__((visibility("default"))) XLA_FFI_Error *KoalaJaxUpdateCpu(XLA_FFI_CallFrame *);
__attribute__((visibility("default"))) XLA_FFI_Error *KoalaJaxPredictGpu(XLA_FFI_CallFrame *);
__attribute__((visibility("default"))) XLA_FFI_Error *KoalaJaxUpdateGpu(XLA_FFI_CallFrame *);
}

namespace koala_jax {
namespace {

ffi::Error koala_error(const char *what, koala_status s) {
    std::string msg = std::string("koala.jax ") + what + ": " + koala_status_string(s) + ": " +
                      koala_last_error();
    ffi::ErrorCode code = ffi::ErrorCode::kInternal;
    switch (s) {
        case KOALA_ERROR_INVALID_ARGUMENT: code = ffi::ErrorCode::kInvalidArgument; break;
        case KOALA_ERROR_NOT_FINITE: code = ffi::ErrorCode::kOutOfRange; break;
        case KOALA_ERROR_BAD_STATE: code = ffi::ErrorCode::kFailedPrecondition; break;
        case KOALA_ERROR_OUT_OF_MEMORY: code = ffi::ErrorCode::kResourceExhausted; break;
        case KOALA_ERROR_UNSUPPORTED: code = ffi::ErrorCode::kUnimplemented; break;
        default: break;
    }
    return ffi::Error(code, msg);
}

ffi::Error invalid(const std::string &msg) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "koala.jax: " + msg);
}

// Reads the layout attributes and checks them against libkoala's enums.
ffi::Error parse_layout(int64_t method, int64_t dtype, ffi::Span<const int64_t> sizes,
                        Layout *out) {
    if (method != KOALA_VANILLA && method != KOALA_MOMENTUM)
        return invalid("attribute 'method' = " + std::to_string(method) + " is not a koala_method");
    if (dtype != KOALA_FLOAT32 && dtype != KOALA_FLOAT64)
        return invalid("attribute 'dtype' = " + std::to_string(dtype) + " is not a koala_dtype");
    out->method = static_cast<koala_method>(method);
    out->dtype = static_cast<koala_dtype>(dtype);
    out->sizes.clear();
    for (int64_t s : sizes) {
        if (s <= 0) return invalid("attribute 'sizes' holds a non-positive size");
        out->sizes.push_back(static_cast<size_t>(s));
    }
    return ffi::Error::Success();
}

ffi::DataType ffi_dtype(koala_dtype d) {
    return d == KOALA_FLOAT64 ? ffi::DataType::F64 : ffi::DataType::F32;
}

// Checks that buffer `b` (named for the error message) holds `count`
// elements of `type`.
ffi::Error check_buffer(const ffi::AnyBuffer &b, ffi::DataType type, size_t count,
                        const std::string &name) {
    if (b.element_type() != type)
        return invalid(name + " has the wrong element type for this optimizer");
    if (b.element_count() != count)
        return invalid(name + " has " + std::to_string(b.element_count()) +
                       " elements, the optimizer's layout expects " + std::to_string(count));
    return ffi::Error::Success();
}

ffi::Error memory_error(const std::string &what, const std::string &why) {
    return ffi::Error(ffi::ErrorCode::kInternal, "koala.jax " + what + ": " + why);
}

// The parameter outputs are aliased to the inputs, so normally this is a
// no-op; should XLA ever hand distinct buffers, start from the input values.
ffi::Error output_params(const Memory &mem, const ffi::AnyBuffer &in,
                         ffi::Result<ffi::AnyBuffer> &out, void **ptr) {
    if (out->untyped_data() != in.untyped_data()) {
        std::string e = mem.copy(out->untyped_data(), in.untyped_data(), in.size_bytes());
        if (!e.empty()) return memory_error("copying parameters", e);
    }
    *ptr = out->untyped_data();
    return ffi::Error::Success();
}

// Loads the checkpoint into a pooled optimizer of `layout`, runs `step`,
// saves the checkpoint. Gives the optimizer back to the pool in every case.
template <typename Step>
ffi::Error with_optimizer(const Memory &mem, const Layout &layout, const ffi::AnyBuffer &ckpt_in,
                          ffi::Result<ffi::AnyBuffer> &ckpt_out, Step step) {
    std::string error;
    OptimizerPtr opt = checkout(layout, &error);
    if (!opt) return invalid("cannot create an optimizer for this layout: " + error);

    ffi::Error result = [&]() -> ffi::Error {
        size_t need = 0;
        koala_status s = koala_state_size(opt.get(), &need);
        if (s != KOALA_OK) return koala_error("state size", s);
        if (ckpt_in.element_type() != ffi::DataType::U8 || ckpt_in.element_count() != need ||
            ckpt_out->element_count() != need)
            return invalid("the state's checkpoint has " + std::to_string(ckpt_in.size_bytes()) +
                           " bytes, this parameter layout needs " + std::to_string(need) +
                           ": the state belongs to another parameter tree or method");
        // Host: libkoala reads/writes XLA's buffers directly. Device: through
        // a host copy (checkpoints live in host memory for every kind).
        thread_local std::vector<unsigned char> staging;
        const void *load_from = ckpt_in.untyped_data();
        void *save_to = ckpt_out->untyped_data();
        if (!mem.host()) {
            staging.resize(need);
            std::string err = mem.to_host(staging.data(), ckpt_in.untyped_data(), need);
            if (!err.empty()) return memory_error("reading the state", err);
            load_from = save_to = staging.data();
        }
        s = koala_state_load(opt.get(), load_from, need, mem.stream);
        if (s != KOALA_OK) return koala_error("loading the state", s);
        ffi::Error e = step(opt.get());
        if (e.failure()) return e;
        s = koala_state_save(opt.get(), save_to, need, mem.stream);
        if (s != KOALA_OK) return koala_error("saving the state", s);
        if (!mem.host()) {
            std::string err = mem.from_host(ckpt_out->untyped_data(), staging.data(), need);
            if (!err.empty()) return memory_error("writing the state", err);
        }
        return ffi::Error::Success();
    }();
    give_back(layout, std::move(opt));
    return result;
}

ffi::Error predict(const Memory &mem, int device, ffi::RemainingArgs args,
                   ffi::RemainingRets rets, int64_t method, int64_t dtype,
                   ffi::Span<const int64_t> sizes) {
    Layout layout;
    if (ffi::Error e = parse_layout(method, dtype, sizes, &layout); e.failure()) return e;
    layout.memory = mem.kind;
    layout.device = device;
    // KOALA-V's predict only touches sigma: no parameter buffers are passed.
    const size_t n = layout.method == KOALA_MOMENTUM ? layout.sizes.size() : 0;
    if (args.size() != 1 + n || rets.size() != 1 + n)
        return invalid("predict got " + std::to_string(args.size()) + " inputs and " +
                       std::to_string(rets.size()) + " outputs, expected " +
                       std::to_string(1 + n) + " of each");

    auto ckpt_in = args.get<ffi::AnyBuffer>(0);
    auto ckpt_out = rets.get<ffi::AnyBuffer>(0);
    if (!ckpt_in.has_value() || !ckpt_out.has_value()) return invalid("bad checkpoint buffer");

    std::vector<void *> params(n);
    for (size_t i = 0; i < n; ++i) {
        auto in = args.get<ffi::AnyBuffer>(1 + i);
        auto out = rets.get<ffi::AnyBuffer>(1 + i);
        if (!in.has_value() || !out.has_value()) return invalid("bad parameter buffer");
        std::string name = "parameter " + std::to_string(i);
        if (ffi::Error e = check_buffer(*in, ffi_dtype(layout.dtype), layout.sizes[i], name);
            e.failure())
            return e;
        if (ffi::Error e = output_params(mem, *in, *out, &params[i]); e.failure()) return e;
    }
    return with_optimizer(mem, layout, *ckpt_in, *ckpt_out, [&](koala_optimizer *opt) {
        koala_status s = koala_predict(opt, n ? params.data() : nullptr, mem.stream);
        return s == KOALA_OK ? ffi::Error::Success() : koala_error("predict", s);
    });
}

ffi::Error update(const Memory &mem, int device, ffi::RemainingArgs args,
                  ffi::RemainingRets rets, int64_t method, int64_t dtype,
                  ffi::Span<const int64_t> sizes) {
    Layout layout;
    if (ffi::Error e = parse_layout(method, dtype, sizes, &layout); e.failure()) return e;
    layout.memory = mem.kind;
    layout.device = device;
    const size_t n = layout.sizes.size();
    if (args.size() != 4 + 2 * n || rets.size() != 1 + n)
        return invalid("update got " + std::to_string(args.size()) + " inputs and " +
                       std::to_string(rets.size()) + " outputs, expected " +
                       std::to_string(4 + 2 * n) + " and " + std::to_string(1 + n));

    auto ckpt_in = args.get<ffi::AnyBuffer>(0);
    auto loss = args.get<ffi::AnyBuffer>(1);
    auto loss_var = args.get<ffi::AnyBuffer>(2);
    auto lr = args.get<ffi::AnyBuffer>(3);
    auto ckpt_out = rets.get<ffi::AnyBuffer>(0);
    if (!ckpt_in.has_value() || !loss.has_value() || !loss_var.has_value() || !lr.has_value() ||
        !ckpt_out.has_value())
        return invalid("bad scalar or checkpoint buffer");

    // loss and loss_var share one float dtype (koala/jax.py casts them); lr
    // has its own (float64 whenever JAX has it, so schedules lose nothing).
    const ffi::DataType scalar_type = loss->element_type();
    if (scalar_type != ffi::DataType::F32 && scalar_type != ffi::DataType::F64)
        return invalid("loss must be float32 or float64");
    if (loss_var->element_type() != scalar_type || loss->element_count() != 1 ||
        loss_var->element_count() != 1)
        return invalid("loss and loss_var must be scalars of one float dtype");
    const bool lr_f64 = lr->element_type() == ffi::DataType::F64;
    if ((!lr_f64 && lr->element_type() != ffi::DataType::F32) || lr->element_count() != 1)
        return invalid("lr must be a float32 or float64 scalar");
    const koala_dtype loss_dtype =
        scalar_type == ffi::DataType::F64 ? KOALA_FLOAT64 : KOALA_FLOAT32;
    // lr is needed on the host (koala_set_lr); loss and loss_var stay where
    // they are (koala_update_ptr reads them from the optimizer's memory).
    double new_lr = 0;
    float new_lr_f32 = 0;
    if (std::string err = mem.to_host(lr_f64 ? static_cast<void *>(&new_lr) : &new_lr_f32,
                                      lr->untyped_data(), lr_f64 ? 8 : 4);
        !err.empty())
        return memory_error("reading lr", err);
    if (!lr_f64) new_lr = new_lr_f32;

    std::vector<const void *> grads(n);
    for (size_t i = 0; i < n; ++i) {
        auto p_in = args.get<ffi::AnyBuffer>(4 + i);
        auto g = args.get<ffi::AnyBuffer>(4 + n + i);
        auto p_out = rets.get<ffi::AnyBuffer>(1 + i);
        if (!p_in.has_value() || !g.has_value() || !p_out.has_value())
            return invalid("bad parameter or gradient buffer");
        const ffi::DataType t = ffi_dtype(layout.dtype);
        const std::string idx = std::to_string(i);
        if (ffi::Error e = check_buffer(*p_in, t, layout.sizes[i], "parameter " + idx); e.failure())
            return e;
        if (ffi::Error e = check_buffer(*g, t, layout.sizes[i], "gradient " + idx); e.failure())
            return e;
        grads[i] = g->untyped_data();
    }
    return with_optimizer(mem, layout, *ckpt_in, *ckpt_out, [&](koala_optimizer *opt) {
        if (!std::isnan(new_lr)) {
            koala_status s = koala_set_lr(opt, new_lr);
            if (s != KOALA_OK) return koala_error("setting lr", s);
        }
        // Copy inputs to outputs only now that every check has passed.
        std::vector<void *> out(n);
        for (size_t i = 0; i < n; ++i) {
            auto p_in = args.get<ffi::AnyBuffer>(4 + i);
            auto p_out = rets.get<ffi::AnyBuffer>(1 + i);
            if (ffi::Error e = output_params(mem, *p_in, *p_out, &out[i]); e.failure()) return e;
        }
        koala_status s = koala_update_ptr(opt, loss->untyped_data(), loss_var->untyped_data(),
                                          loss_dtype, out.data(), grads.data(), mem.stream);
        return s == KOALA_OK ? ffi::Error::Success() : koala_error("update", s);
    });
}

ffi::Error predict_cpu(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t method,
                       int64_t dtype, ffi::Span<const int64_t> sizes) {
    return predict(Memory{KOALA_HOST, nullptr}, 0, args, rets, method, dtype, sizes);
}
ffi::Error update_cpu(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t method,
                      int64_t dtype, ffi::Span<const int64_t> sizes) {
    return update(Memory{KOALA_HOST, nullptr}, 0, args, rets, method, dtype, sizes);
}
ffi::Error predict_gpu(void *stream, int32_t device, ffi::RemainingArgs args,
                       ffi::RemainingRets rets, int64_t method, int64_t dtype,
                       ffi::Span<const int64_t> sizes) {
    return predict(Memory{KOALA_DEVICE, stream}, device, args, rets, method, dtype, sizes);
}
ffi::Error update_gpu(void *stream, int32_t device, ffi::RemainingArgs args,
                      ffi::RemainingRets rets, int64_t method, int64_t dtype,
                      ffi::Span<const int64_t> sizes) {
    return update(Memory{KOALA_DEVICE, stream}, device, args, rets, method, dtype, sizes);
}

}  // namespace
}  // namespace koala_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(KoalaJaxPredictCpu, koala_jax::predict_cpu,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("method")
                                  .Attr<int64_t>("dtype")
                                  .Attr<ffi::Span<const int64_t>>("sizes"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(KoalaJaxUpdateCpu, koala_jax::update_cpu,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("method")
                                  .Attr<int64_t>("dtype")
                                  .Attr<ffi::Span<const int64_t>>("sizes"));

// The GPU handlers also take XLA's CUDA stream and device ordinal. They need
// no CUDA headers or libraries at build time (the stream is an opaque
// pointer; copies go through the driver, loaded at run time).
XLA_FFI_DEFINE_HANDLER_SYMBOL(KoalaJaxPredictGpu, koala_jax::predict_gpu,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<void *>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("method")
                                  .Attr<int64_t>("dtype")
                                  .Attr<ffi::Span<const int64_t>>("sizes"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(KoalaJaxUpdateGpu, koala_jax::update_gpu,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<void *>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("method")
                                  .Attr<int64_t>("dtype")
                                  .Attr<ffi::Span<const int64_t>>("sizes"));
