# Optimizer: owns a koala_optimizer handle (freed by a finalizer or close).

"""
    Optimizer(config, sizes; dtype = Float32, memory = :host)
    Optimizer(config, params::Vector{<:Vector{T}})   # host, T = Float16/Float32/Float64

A KOALA optimizer over a fixed list of tensors with `sizes[i]` elements.
Each iteration is [`predict!`](@ref) (before the forward pass) then
[`update!`](@ref) (after the backward pass). One optimizer must be used by
one task/thread at a time.
"""
mutable struct Optimizer
    handle::Ptr{Cvoid}
    sizes::Vector{Int}
    dtype::DataType
    memory::Symbol

    function Optimizer(config::Config, sizes::AbstractVector{<:Integer};
                       dtype::Type = Float32, memory::Symbol = :host)
        csizes = Csize_t.(sizes)
        out = Ref{Ptr{Cvoid}}(C_NULL)
        # an empty `sizes` still passes a valid pointer: the C side says "n_tensors is 0"
        GC.@preserve csizes check(ccall(sym(:koala_create), Cint,
            (Ref{ConfigC}, Csize_t, Ptr{Csize_t}, Cint, Cint, Ptr{Ptr{Cvoid}}),
            config.c, length(csizes), isempty(csizes) ? Ptr{Csize_t}(1) : pointer(csizes),
            dtype_code(dtype), memory_code(memory), out))
        opt = new(out[], Int.(sizes), dtype, memory)
        finalizer(close, opt)
        return opt
    end
end

Optimizer(config::Config, params::AbstractVector{<:DenseVector{T}}) where {T<:HostFloat} =
    Optimizer(config, length.(params); dtype = T, memory = :host)

"""Releases the optimizer now (the finalizer does it otherwise)."""
function Base.close(opt::Optimizer)
    if opt.handle != C_NULL
        ccall(sym(:koala_destroy), Cvoid, (Ptr{Cvoid},), opt.handle)
        opt.handle = C_NULL
    end
    return nothing
end

function live_handle(opt::Optimizer, what)
    opt.handle == C_NULL && throw(KoalaError(KOALA_ERROR_INVALID_ARGUMENT, "$what: the optimizer was closed"))
    return opt.handle
end

invalid(msg) = throw(KoalaError(KOALA_ERROR_INVALID_ARGUMENT, msg))

# Host arrays must match the layout: count, element type, lengths.
function check_host(opt::Optimizer, what, name, arrays, ::Type{T}) where {T}
    opt.memory === :host ||
        invalid("$what: this optimizer works on device memory; pass pointers (Vector{Ptr{Cvoid}})")
    T === opt.dtype || invalid("$what: $name holds $T arrays; the optimizer was created for $(opt.dtype)")
    length(arrays) == length(opt.sizes) ||
        invalid("$what: $name has $(length(arrays)) tensors; the optimizer was created for $(length(opt.sizes))")
    for (i, a) in enumerate(arrays)
        a === nothing && continue
        length(a) == opt.sizes[i] ||
            invalid("$what: $name[$i] has $(length(a)) elements; the layout says $(opt.sizes[i])")
    end
end

function check_count(opt::Optimizer, what, name, n)
    n == length(opt.sizes) ||
        invalid("$what: $name has $n pointers; the optimizer was created for $(length(opt.sizes))")
end

array_pointer(a::Nothing) = C_NULL
array_pointer(a::DenseArray) = Ptr{Cvoid}(pointer(a))

"""
    predict!(opt, params)                      # host: Vector of Vector{Float16/Float32/Float64}
    predict!(opt, ptrs::Vector{Ptr{Cvoid}}; stream = C_NULL)   # device (or any) pointers

The time update, before the forward pass. KOALA-M moves the parameters to
the prediction x + v here; KOALA-V does not touch them.
"""
function predict!(opt::Optimizer, params::AbstractVector{<:DenseArray{T}}) where {T<:HostFloat}
    check_host(opt, "predict!", "params", params, T)
    ptrs = Ptr{Cvoid}[array_pointer(p) for p in params]
    GC.@preserve params ptrs predict!(opt, ptrs)
end

function predict!(opt::Optimizer, params::AbstractVector{<:Ptr}; stream::Ptr = C_NULL)
    check_count(opt, "predict!", "params", length(params))
    ptrs = convert(Vector{Ptr{Cvoid}}, params)
    check(ccall(sym(:koala_predict), Cint, (Ptr{Cvoid}, Ptr{Ptr{Cvoid}}, Ptr{Cvoid}),
                live_handle(opt, "predict!"), ptrs, stream))
end

"""
    update!(opt, loss, loss_var, params, grads)
    update!(opt, loss, loss_var, ptrs::Vector{Ptr{Cvoid}}, grad_ptrs::Vector{Ptr{Cvoid}}; stream = C_NULL)
    update!(opt, loss_ptr::Ptr, loss_var_ptr::Ptr, loss_dtype, ptrs, grad_ptrs; stream = C_NULL)

The measurement update, after the backward pass: `loss` is the mean
minibatch loss, `loss_var` the mean of the squared per-sample losses,
`grads[i]` the gradient of `loss` with respect to `params[i]` (or `nothing`
/ `C_NULL`: no gradient for that tensor this step). The last form reads
`loss` and `loss_var` from memory of the optimizer's kind (device memory for
a device optimizer) as scalars of `loss_dtype` (`Float32`/`Float64`).
"""
function update!(opt::Optimizer, loss::Real, loss_var::Real,
                 params::AbstractVector{<:DenseArray{T}}, grads::AbstractVector) where {T<:HostFloat}
    check_host(opt, "update!", "params", params, T)
    for g in grads
        g === nothing || g isa DenseArray{T} ||
            invalid("update!: grads must hold $T arrays or nothing, got $(typeof(g))")
    end
    check_host(opt, "update!", "grads", grads, T)
    pptrs = Ptr{Cvoid}[array_pointer(p) for p in params]
    gptrs = Ptr{Cvoid}[array_pointer(g) for g in grads]
    GC.@preserve params grads pptrs gptrs update!(opt, loss, loss_var, pptrs, gptrs)
end

function update!(opt::Optimizer, loss::Real, loss_var::Real,
                 params::AbstractVector{<:Ptr}, grads::AbstractVector{<:Ptr}; stream::Ptr = C_NULL)
    check_count(opt, "update!", "params", length(params))
    check_count(opt, "update!", "grads", length(grads))
    pptrs = convert(Vector{Ptr{Cvoid}}, params)
    gptrs = convert(Vector{Ptr{Cvoid}}, grads)
    check(ccall(sym(:koala_update), Cint,
                (Ptr{Cvoid}, Cdouble, Cdouble, Ptr{Ptr{Cvoid}}, Ptr{Ptr{Cvoid}}, Ptr{Cvoid}),
                live_handle(opt, "update!"), loss, loss_var, pptrs, gptrs, stream))
end

function update!(opt::Optimizer, loss::Ptr, loss_var::Ptr, loss_dtype::Type,
                 params::AbstractVector{<:Ptr}, grads::AbstractVector{<:Ptr}; stream::Ptr = C_NULL)
    check_count(opt, "update!", "params", length(params))
    check_count(opt, "update!", "grads", length(grads))
    pptrs = convert(Vector{Ptr{Cvoid}}, params)
    gptrs = convert(Vector{Ptr{Cvoid}}, grads)
    check(ccall(sym(:koala_update_ptr), Cint,
                (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Cint, Ptr{Ptr{Cvoid}}, Ptr{Ptr{Cvoid}}, Ptr{Cvoid}),
                live_handle(opt, "update!"), loss, loss_var, dtype_code(loss_dtype), pptrs, gptrs, stream))
end

"""
    info(opt; stream = C_NULL) -> Koala.Info

The filter's scalars and counters (`steps`, `skipped_steps`, `sigma`,
`p00`, `p01`, `p11`, `r`, `qw`; since 1.1 `lr`, `threads`, `phase`).
Device optimizers wait for `stream`.
"""
function info(opt::Optimizer; stream::Ptr = C_NULL)
    ref = Ref(Info(sizeof(Info)))
    check(ccall(sym(:koala_get_info), Cint, (Ptr{Cvoid}, Ptr{Cvoid}, Ref{Info}),
                live_handle(opt, "info"), stream, ref))
    return ref[]
end

"""Sets the target multiplier used by the following updates (finite, >= 0)."""
set_lr!(opt::Optimizer, lr::Real) =
    check(ccall(sym(:koala_set_lr), Cint, (Ptr{Cvoid}, Cdouble), live_handle(opt, "set_lr!"), lr))

"""The checkpoint as bytes (versioned, checksummed; the config is included)."""
function state_save(opt::Optimizer)
    h = live_handle(opt, "state_save")
    n = Ref{Csize_t}(0)
    check(ccall(sym(:koala_state_size), Cint, (Ptr{Cvoid}, Ref{Csize_t}), h, n))
    buf = Vector{UInt8}(undef, n[])
    check(ccall(sym(:koala_state_save), Cint, (Ptr{Cvoid}, Ptr{UInt8}, Csize_t, Ptr{Cvoid}),
                h, buf, length(buf), C_NULL))
    return buf
end

"""
Restores a checkpoint from [`state_save`](@ref) of an optimizer with the same
method, dtype and sizes; the run continues bit for bit. Corrupt or
mismatched bytes throw `KoalaError` with `KOALA_ERROR_BAD_STATE` and change
nothing.
"""
state_load!(opt::Optimizer, bytes::Vector{UInt8}) =
    check(ccall(sym(:koala_state_load), Cint, (Ptr{Cvoid}, Ptr{UInt8}, Csize_t, Ptr{Cvoid}),
                live_handle(opt, "state_load!"), bytes, length(bytes), C_NULL))

# ---- since 1.1 --------------------------------------------------------------

function per_tensor_values(opt::Optimizer, what, name, values)
    values === nothing && return nothing
    length(values) == length(opt.sizes) ||
        invalid("$what: $name has $(length(values)) values; the optimizer has $(length(opt.sizes)) tensors")
    return convert(Vector{Cdouble}, values)
end

"""
    set_tensor_lr!(opt, scale)      # one value per tensor, or `nothing`

Per-tensor lr multipliers: tensor `i` steps with target multiplier
`lr * scale[i]` (finite, >= 0). `nothing` restores 1 for every tensor.
"""
function set_tensor_lr!(opt::Optimizer, scale)
    v = per_tensor_values(opt, "set_tensor_lr!", "scale", scale)
    check(ccall(sym(:koala_set_tensor_lr), Cint, (Ptr{Cvoid}, Ptr{Cdouble}, Ptr{Cvoid}),
                live_handle(opt, "set_tensor_lr!"), v === nothing ? C_NULL : v, C_NULL))
end

"""
    set_tensor_weight_decay!(opt, weight_decay)   # one value per tensor, or `nothing`

Per-tensor weight decay (finite, >= 0) wherever the config's `weight_decay`
would enter; `nothing` restores the config's value for every tensor.
"""
function set_tensor_weight_decay!(opt::Optimizer, weight_decay)
    v = per_tensor_values(opt, "set_tensor_weight_decay!", "weight_decay", weight_decay)
    check(ccall(sym(:koala_set_tensor_weight_decay), Cint, (Ptr{Cvoid}, Ptr{Cdouble}, Ptr{Cvoid}),
                live_handle(opt, "set_tensor_weight_decay!"), v === nothing ? C_NULL : v, C_NULL))
end

"""
    posterior!(out, opt, params)

Writes the posterior weights of the last update into `out` (arrays shaped
like `params`, distinct from them). With `fused_predict = 1` (KOALA-M) the
parameters already hold the next prediction and this takes it off again
(to rounding); otherwise it copies `params`. Not between `predict!` and
`update!` of KOALA-M (`KOALA_ERROR_BAD_STATE`).
"""
function posterior!(out::AbstractVector{<:DenseArray{T}}, opt::Optimizer,
                    params::AbstractVector{<:DenseArray{T}}) where {T<:HostFloat}
    check_host(opt, "posterior!", "params", params, T)
    check_host(opt, "posterior!", "out", out, T)
    pptrs = Ptr{Cvoid}[array_pointer(p) for p in params]
    optrs = Ptr{Cvoid}[array_pointer(o) for o in out]
    GC.@preserve params out pptrs optrs check(ccall(sym(:koala_posterior), Cint,
        (Ptr{Cvoid}, Ptr{Ptr{Cvoid}}, Ptr{Ptr{Cvoid}}, Ptr{Cvoid}),
        live_handle(opt, "posterior!"), pptrs, optrs, C_NULL))
    return out
end
