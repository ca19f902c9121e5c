// The GPU handlers: device optimizers (KOALA_DEVICE, libkoala's CUDA
// plugin) on XLA's device buffers and XLA's CUDA stream.
//
// Nothing of the state passes through the host and the host never waits:
// the state arrays are bound in place (koala_bind_state takes device
// pointers), loss and loss_var are read on the device (koala_update_ptr,
// koala_update_end_ptr), the lr multiplier is written into the scalar block
// by the XLA program itself, and the only copy this binding can make is a
// stream-ordered device-to-device one (the scalar block's scratch copy for
// replicated pieces of a sharded state; an operand into its result should
// XLA not alias them). They need no CUDA headers or libraries at build time:
// the stream is an opaque pointer and the copy goes through the driver,
// loaded at run time (cuda_driver.h).
#include "step.h"

namespace ffi = xla::ffi;
using koala_jax::StepKind;

namespace {

template <StepKind kind>
ffi::Error gpu_step(void *stream, int32_t device,                     ffi::RemainingArgs args, ffi::RemainingRets rets, ffi::Dictionary attrs) {
    return koala_jax::run_step(kind, koala_jax::Memory{KOALA_DEVICE, stream, device},
                               args, rets, attrs);
}

}  // namespace

extern "C" {
__attribute__((visibility("default"))) XLA_FFI_Error *KoalaJaxPredictGpu(XLA_FFI_CallFrame *);
__attribute__((visibility("default"))) XLA_FFI_Error *KoalaJaxUpdateGpu(XLA_FFI_CallFrame *);
__attribute__((visibility("default"))) XLA_FFI_Error *KoalaJaxUpdateBeginGpu(XLA_FFI_CallFrame *);
__attribute__((visibility("default"))) XLA_FFI_Error *KoalaJaxUpdateEndGpu(XLA_FFI_CallFrame *);
}

#define KOALA_JAX_GPU_HANDLER(symbol, kind)                                          \
    XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, gpu_step<kind>,                            \
                                  ffi::Ffi::Bind()                                   \
                                      .Ctx<ffi::PlatformStream<void *>>()            \
                                      .Ctx<ffi::DeviceOrdinal>()                     \
                                      .RemainingArgs()                               \
                                      .RemainingRets()                               \
                                      .Attrs<ffi::Dictionary>())

KOALA_JAX_GPU_HANDLER(KoalaJaxPredictGpu, StepKind::kPredict);
KOALA_JAX_GPU_HANDLER(KoalaJaxUpdateGpu, StepKind::kUpdate);
KOALA_JAX_GPU_HANDLER(KoalaJaxUpdateBeginGpu, StepKind::kBegin);
KOALA_JAX_GPU_HANDLER(KoalaJaxUpdateEndGpu, StepKind::kEnd);
