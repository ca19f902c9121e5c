// One libkoala call inside an XLA program: the four steps koala/jax.py
// emits as FFI custom calls, on the state the caller (JAX) owns.
//
// Every call checks out pooled optimizers created with
// koala_config::caller_state = 1, binds them to XLA's buffers with
// koala_bind_state (state arrays are operands aliased to results, so with
// donation they are updated in place and nothing of the state is copied),
// and runs the C API on them:
//
//   kind     operands                                        results
//   predict  scalars [, params[n]] [, buffers[B n]]          scalars [, params, buffers]
//   update   scalars, loss, loss_var, params[n], grads[n],   scalars, params, buffers
//            buffers[B n]
//   begin    scalars, params[n], grads[n], buffers[B n]      scalars, sums
//   end      scalars, loss, loss_var, params[n], grads[n],   scalars, params, buffers
//            buffers[B n], sums
//
// In predict, params travel for KOALA-M only (the one method whose predict
// moves them) and buffers are read-only operands for KOALA++ (bound, not
// changed). B = 2 buffers per tensor for KOALA-M (velocity, xbar) and
// KOALA++ (v, H_prev), buffer-major as koala_bind_state takes them; 0 for
// KOALA-V. `scalars` is the scalar block (koala_state_layout's scalar_count
// doubles), as float64, or as uint32 pairs holding the same bytes when JAX
// runs without x64. `sums` (koala_sums_size doubles, the same two types) is
// begin's partial sums and, summed over the mesh by lax.psum, end's input.
// A sharded state's predict (KOALA-M) and update_end have one more result,
// `scratch` (the scalar block's type and size), which the replicated pieces'
// optimizer runs on (step_spec.h, DeviceSplit); its value is thrown away.
// loss and loss_var are float32 or float64 scalars read where they are
// (koala_update_ptr / koala_update_end_ptr), so the GPU handler needs no
// copy to the host.
#pragma once

#include "ffi_status.h"
#include "memory.h"

namespace koala_jax {

enum class StepKind { kPredict, kUpdate, kBegin, kEnd };

ffi::Error run_step(StepKind kind, const Memory &mem, ffi::RemainingArgs args, ffi::RemainingRets rets,
                    const ffi::Dictionary &attrs);

// Copies of an operand into its result made so far (XLA did not alias
// them); 0 when every step ran in place.
uint64_t operand_copy_count();

}  // namespace koala_jax
