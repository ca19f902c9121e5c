# An Optimisers.jl-shaped interface: `state = init(rule, params)`, then per
# iteration `prepare!(rule, state, params)` before the forward pass and
# `apply!(rule, state, params, grads; loss, loss_var)` after backward.
#
# It is NOT a drop-in Optimisers.jl rule: KOALA needs the loss (and the mean
# squared per-sample loss), a call before the forward pass, and one filter
# over ALL tensors (its covariance is shared), while Optimisers.jl's
# `apply!(rule, state, x, dx)` sees one array and returns a step. The names
# follow Optimisers.jl so that the training loop reads the same; the update
# is applied in place. Optimisers.jl and Flux are not available where this
# package is tested (no Julia registry), so the Flux example in
# doc/readme/julia.md is untested.

"""
    KoalaRule(method = :vanilla; config keywords...)

Hyper-parameters for [`init`](@ref); keywords as for [`Config`](@ref).
"""
struct KoalaRule
    config::Config
end
KoalaRule(method::Symbol = :vanilla; kwargs...) = KoalaRule(Config(method; kwargs...))

"""`init(rule, params)`: the optimizer state (an [`Optimizer`](@ref)) for `params`."""
init(rule::KoalaRule, params::AbstractVector{<:DenseArray{T}}) where {T<:HostFloat} =
    Optimizer(rule.config, length.(params); dtype = T, memory = :host)

"""`prepare!(rule, state, params)`: before the forward pass (KOALA's predict)."""
prepare!(::KoalaRule, state::Optimizer, params) = (predict!(state, params); state)

"""
`apply!(rule, state, params, grads; loss, loss_var)`: after the backward
pass; updates `params` in place and returns `(state, params)`.
"""
function apply!(::KoalaRule, state::Optimizer, params, grads; loss::Real, loss_var::Real)
    update!(state, loss, loss_var, params, grads)
    return state, params
end
