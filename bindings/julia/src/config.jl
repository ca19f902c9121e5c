# Hyper-parameters: koala_config_init's reference defaults plus keywords.

"""
    Config(method = :vanilla; lr, weight_decay, r, alpha_r, sigma, q, sw, sc, sv, a, qw, qv,
           threads, stochastic_rounding, seed, asymmetric, fused_predict)

The reference defaults for `method` (`:vanilla`, `:momentum` or `:plusplus`,
from `koala_config_init_sized` with this package's struct size, so the 1.1
fields are honoured) with the given fields changed. `r = NaN` (default)
selects the online estimate of the measurement noise. KOALA++ (`:plusplus`)
uses `sigma` (P0 = sigma I), `q`, `r`, `alpha_r`, `weight_decay`, `lr`.
`threads` sets the CPU threads of a host optimizer (0: the environment
variable `KOALA_NUM_THREADS`, else every CPU this process may use). Values
are checked by the library when an [`Optimizer`](@ref) is created.
"""
struct Config
    c::ConfigC
end

function Config(method::Symbol = :vanilla; kwargs...)
    ref = Ref{ConfigC}()
    ccall(sym(:koala_config_init_sized), Cvoid, (Ref{ConfigC}, Cint, Csize_t), ref,
          method_code(method), sizeof(ConfigC))
    names = fieldnames(ConfigC)
    for k in keys(kwargs)
        (k in names && k != :struct_size && k != :method && k != :caller_state) ||
            throw(ArgumentError("Config: unknown field $k (fields: $(join(names[3:end], ", ")))"))
    end
    values = [get(kwargs, n, getfield(ref[], n)) for n in names]
    return Config(ConfigC(values...))
end

Base.getproperty(c::Config, n::Symbol) = n === :c ? getfield(c, :c) : getfield(getfield(c, :c), n)
Base.propertynames(::Config) = fieldnames(ConfigC)
