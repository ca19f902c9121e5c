# Hyper-parameters: koala_config_init's reference defaults plus keywords.

"""
    Config(method = :vanilla; lr, weight_decay, r, alpha_r, sigma, q, sw, sc, sv, a, qw, qv)

The reference defaults for `method` (`:vanilla` or `:momentum`, from
`koala_config_init`) with the given fields changed. `r = NaN` (default)
selects the online estimate of the measurement noise. Values are checked by
the library when an [`Optimizer`](@ref) is created.
"""
struct Config
    c::ConfigC
end

function Config(method::Symbol = :vanilla; kwargs...)
    ref = Ref{ConfigC}()
    ccall(sym(:koala_config_init), Cvoid, (Ref{ConfigC}, Cint), ref, method_code(method))
    names = fieldnames(ConfigC)
    for k in keys(kwargs)
        (k in names && k != :struct_size && k != :method) ||
            throw(ArgumentError("Config: unknown field $k (fields: $(join(names[3:end], ", ")))"))
    end
    values = [get(kwargs, n, getfield(ref[], n)) for n in names]
    return Config(ConfigC(values...))
end

Base.getproperty(c::Config, n::Symbol) = n === :c ? getfield(c, :c) : getfield(getfield(c, :c), n)
Base.propertynames(::Config) = fieldnames(ConfigC)
