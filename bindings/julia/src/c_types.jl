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
# koala_method
const KOALA_VANILLA = Cint(1)
const KOALA_MOMENTUM = Cint(2)
# koala_memory
const KOALA_HOST = Cint(1)
const KOALA_DEVICE = Cint(2)
# koala_dtype
const KOALA_FLOAT32 = Cint(1)
const KOALA_FLOAT64 = Cint(2)

const KOALA_VERSION_NUMBER = 10000   # keep in step with koala.h

dtype_code(::Type{Float32}) = KOALA_FLOAT32
dtype_code(::Type{Float64}) = KOALA_FLOAT64

method_code(m::Symbol) = m === :vanilla ? KOALA_VANILLA :
                         m === :momentum ? KOALA_MOMENTUM :
                         throw(ArgumentError("method must be :vanilla or :momentum, got :$m"))

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
end
