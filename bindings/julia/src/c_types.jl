# The C ABI's enums and structs, with koala.h's values and layouts.
# (Julia lays out immutable isbits structs as C does; the tests compare
# sizes and offsets with the C compiler's.)

# koala_status
const KOALA_OK = Cint(0)
const KOALA_ERROR_INVALID_ARGUMENT = Cint(1)
const KOALA_ERROR_OUT_OF_MEMORY = Cint(2)
const KOALA_ERROR_NOT_FINITE = Cint(3)
const KOALA_ERROR_UNSUPPORTED = Cint(4)
const KOALA_ERROR_CUDA = Cint(5)
const KOALA_ERROR_BAD_STATE = Cint(6)
const KOALA_ERROR_COMMUNICATION = Cint(7)   # since 1.1: a sharded optimizer's all-reduce failed
# koala_method
const KOALA_VANILLA = Cint(1)
const KOALA_MOMENTUM = Cint(2)
const KOALA_PLUSPLUS = Cint(3)              # since 1.1: KOALA++ (symmetric koalap.py)
# koala_memory
const KOALA_HOST = Cint(1)
const KOALA_DEVICE = Cint(2)
# koala_dtype
const KOALA_FLOAT32 = Cint(1)
const KOALA_FLOAT64 = Cint(2)
const KOALA_BFLOAT16 = Cint(3)              # since 1.1 (pointer methods only)
const KOALA_FLOAT16 = Cint(4)               # since 1.1; Julia's Float16 arrays work directly

const KOALA_VERSION_NUMBER = 10100   # keep in step with koala.h

# The element types of host arrays. Float16 (since 1.1): the library's
# element math runs in float32 and rounds results to nearest-even (or
# stochastically: Config(...; stochastic_rounding = 1)).
const HostFloat = Union{Float16,Float32,Float64}

dtype_code(::Type{Float32}) = KOALA_FLOAT32
dtype_code(::Type{Float64}) = KOALA_FLOAT64
dtype_code(::Type{Float16}) = KOALA_FLOAT16

method_code(m::Symbol) = m === :vanilla ? KOALA_VANILLA :
                         m === :momentum ? KOALA_MOMENTUM :
                         m === :plusplus ? KOALA_PLUSPLUS :
                         throw(ArgumentError("method must be :vanilla, :momentum or :plusplus, got :$m"))

memory_code(m::Symbol) = m === :host ? KOALA_HOST :
                         m === :device ? KOALA_DEVICE :
                         throw(ArgumentError("memory must be :host or :device, got :$m"))

"""`koala_config` exactly as in koala.h (fields in this order)."""
struct ConfigC
    struct_size::Csize_t
    method::Cint
    lr::Cdouble
    weight_decay::Cdouble
    r::Cdouble
    alpha_r::Cdouble
    sigma::Cdouble
    q::Cdouble
    sw::Cdouble
    sc::Cdouble
    sv::Cdouble
    a::Cdouble
    qw::Cdouble
    qv::Cdouble
    # since 1.1 (0 = the default behaviour)
    threads::Cint              # host: CPU threads; 0 = KOALA_NUM_THREADS or all usable CPUs
    stochastic_rounding::Cint  # bfloat16/float16: 1 = stochastic rounding
    seed::UInt64               # seed of the stochastic rounding
    asymmetric::Cint           # :plusplus: 1 = the asymmetric variant (w_k = 0)
    fused_predict::Cint        # :momentum: 1 = update also applies the next prediction
    caller_state::Cint         # 1 = caller-owned state (not offered by this package)
end

"""`koala_info` exactly as in koala.h: what an optimizer reports about itself."""
struct Info
    struct_size::Csize_t
    steps::UInt64          # completed updates
    skipped_steps::UInt64  # device optimizers: updates skipped on the device (non-finite)
    sigma::Cdouble         # KOALA-V: current sigma
    p00::Cdouble           # KOALA-M: current 2x2 covariance
    p01::Cdouble
    p11::Cdouble
    r::Cdouble             # current measurement noise R
    qw::Cdouble            # KOALA-M: current q_w
    # since 1.1
    lr::Cdouble            # the current target multiplier
    threads::Cint          # host: CPU threads the passes run on
    phase::Cint            # 0 updated (predict next), 1 predicted, 2 update_begin done
end

# An Info to be filled by koala_get_info: every field zero but struct_size.
Info(struct_size::Integer) = Info(struct_size, ntuple(_ -> 0, fieldcount(Info) - 1)...)
