// The CPU handlers: host optimizers on XLA's host buffers. The handler
// symbols are the library's only exports (it is built with hidden
// visibility); koala/jax.py takes their addresses with ctypes.
#include "step.h"

namespace ffi = xla::ffi;
using koala_jax::StepKind;

namespace {

template <StepKind kind>
ffi::Error cpu_step(int32_t device, ffi::RemainingArgs args,
                    ffi::RemainingRets rets, ffi::Dictionary attrs) {
    return koala_jax::run_step(kind, koala_jax::Memory{KOALA_HOST, nullptr, device},
                               args, rets, attrs);
}

}  // namespace

extern "C" {
__attribute__((visibility("default"))) XLA_FFI_Error *KoalaJaxPredictCpu(XLA_FFI_CallFrame *);
__attribute__((visibility("default"))) XLA_FFI_Error *KoalaJaxUpdateCpu(XLA_FFI_CallFrame *);
__attribute__((visibility("default"))) XLA_FFI_Error *KoalaJaxUpdateBeginCpu(XLA_FFI_CallFrame *);
__attribute__((visibility("default"))) XLA_FFI_Error *KoalaJaxUpdateEndCpu(XLA_FFI_CallFrame *);
// For the tests: operand-to-result copies made so far (step.h).
__attribute__((visibility("default"))) uint64_t koala_jax_operand_copies(void) {
    return koala_jax::operand_copy_count();
}
}

#define KOALA_JAX_CPU_HANDLER(symbol, kind)                                          \
    XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, cpu_step<kind>,                            \
                                  ffi::Ffi::Bind()                                   \
                                      .Ctx<ffi::DeviceOrdinal>()                     \
                                      .RemainingArgs()                               \
                                      .RemainingRets()                               \
                                      .Attrs<ffi::Dictionary>())

KOALA_JAX_CPU_HANDLER(KoalaJaxPredictCpu, StepKind::kPredict);
KOALA_JAX_CPU_HANDLER(KoalaJaxUpdateCpu, StepKind::kUpdate);
KOALA_JAX_CPU_HANDLER(KoalaJaxUpdateBeginCpu, StepKind::kBegin);
KOALA_JAX_CPU_HANDLER(KoalaJaxUpdateEndCpu, StepKind::kEnd);
