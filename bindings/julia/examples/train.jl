# train.jl - logistic regression with KOALA from Julia: KOALA-V, KOALA-M and
# KOALA++ in turn, from the same start.
#
#   KOALA_LIB=/path/to/libkoala.so julia --startup-file=no bindings/julia/examples/train.jl
#
# 512 generated points in 8 dimensions labelled by a hidden linear rule (5%
# of the labels flipped); the model is w (8) and b (1), the loss the mean
# binary cross-entropy. Each iteration follows KOALA's calling contract:
# predict! -> per-sample losses -> loss = mean, loss_var = mean of squares ->
# gradient of the mean -> update!. Prints the loss per epoch; exits non-zero
# unless it fell with every method.
push!(LOAD_PATH, joinpath(@__DIR__, ".."))
using Koala
using Random

const N, D, BATCH = 512, 8, 64

function main()
    rng = MersenneTwister(2022)
    w_true = 2 .* rand(rng, D) .- 1
    X = 4 .* rand(rng, D, N) .- 2
    y = Float64.(X' * w_true .+ 0.3 .> 0)
    flip = rand(rng, N) .< 0.05
    y[flip] .= 1 .- y[flip]

    softplus(z) = max(z, 0) + log1p(exp(-abs(z)))
    full_loss(w, b) = sum(softplus.(X' * w .+ b[1]) .- y .* (X' * w .+ b[1])) / N
    accuracy(w, b) = sum((X' * w .+ b[1] .> 0) .== (y .> 0.5)) / N

    all_fell = true
    for (name, config) in (("KOALA-V", Config(:vanilla; sigma = 0.1, threads = 1)),
                           ("KOALA-M", Config(:momentum; threads = 1)),
                           ("KOALA++", Config(:plusplus; threads = 1)))
        w = zeros(D)
        b = zeros(1)
        params = [w, b]
        opt = Optimizer(config, params)

        first = full_loss(w, b)
        println(name, ":")
        println("epoch  0  loss $(round(first, digits = 5))  accuracy $(round(accuracy(w, b), digits = 3))")
        for epoch in 1:10
            for start in 1:BATCH:N
                predict!(opt, params)     # KOALA-M moves w, b to the prediction here
                idx = start:start+BATCH-1
                z = X[:, idx]' * w .+ b[1]
                l = softplus.(z) .- y[idx] .* z              # per-sample losses
                p = 1 ./ (1 .+ exp.(-z))
                gw = X[:, idx] * (p .- y[idx]) ./ BATCH      # gradient of the mean
                gb = [sum(p .- y[idx]) / BATCH]
                update!(opt, sum(l) / BATCH, sum(l .^ 2) / BATCH, params, [gw, gb])
            end
            println("epoch $(lpad(epoch, 2))  loss $(round(full_loss(w, b), digits = 5))  accuracy $(round(accuracy(w, b), digits = 3))")
        end
        last = full_loss(w, b)
        close(opt)
        if !(last < 0.7 * first)
            println("FAILED: $name: the loss did not fall ($first -> $last)")
            all_fell = false
        end
    end
    all_fell || exit(1)
end

main()
