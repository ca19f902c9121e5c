# Tests of the Julia package Koala (bindings/julia), run by `meson test`
# (suite 'julia') through run_julia.sh. Environment:
#   KOALA_LIB               full path of the libkoala.so under test
#   KOALA_JULIA_REFERENCE   the C helper (reference.c) printing what the C ABI computes
# Prints a plain "N passed, N failed" line at the end and exits non-zero on failure.
push!(LOAD_PATH, joinpath(@__DIR__, "..", "..", "bindings", "julia"))
using Koala
using Test

const REFERENCE = get(ENV, "KOALA_JULIA_REFERENCE", "")

# Keep in step with reference.c.
const SIZES = [5, 3, 4]
param0(t, i) = (((i * 5 + t * 3) % 9) - 4.0) / 8.0          # 0-based t, i as in C
grad(k, t, i) = (((i * 7 + t * 2 + k * 3) % 11) - 5.0) / 64.0
loss_of(k) = 1.0 / (k + 1)
loss_var_of(k) = 1.5 / ((k + 1) * (k + 1))

function reference_run(method, T, steps)
    out = read(`$REFERENCE run $method $(T === Float64 ? "f64" : "f32") $steps`, String)
    params = Vector{T}[]
    info = Float64[]
    for line in split(chomp(out), '\n')
        words = split(line)
        if words[1] == "param"
            push!(params, parse.(T, words[3:end]))
        else
            info = parse.(Float64, words[2:end])
        end
    end
    return params, info
end

function julia_run(method, T, steps)
    x = [T[param0(t, i) for i in 0:n-1] for (t, n) in zip(0:2, SIZES)]
    opt = Optimizer(Config(method), x)
    for k in 0:steps-1
        g = [T[grad(k, t, i) for i in 0:n-1] for (t, n) in zip(0:2, SIZES)]
        predict!(opt, x)
        update!(opt, loss_of(k), loss_var_of(k), x, g)
    end
    inf = Koala.info(opt)
    close(opt)
    return x, inf
end

function run_tests()
@testset "Koala.jl" begin
    @testset "library and layout" begin
        @test Koala.version() == Koala.KOALA_VERSION_NUMBER
        @test isfile(Koala.library_path())
        lines = split(read(`$REFERENCE layout`, String), '\n')
        cfg = parse.(Int, split(lines[1])[2:end])
        @test sizeof(Koala.ConfigC) == cfg[1]
        @test [fieldoffset(Koala.ConfigC, i) for i in 1:fieldcount(Koala.ConfigC)] == cfg[2:end]
        inf = parse.(Int, split(lines[2])[2:end])
        @test sizeof(Koala.Info) == inf[1]
        @test [fieldoffset(Koala.Info, i) for i in 1:fieldcount(Koala.Info)] == inf[2:end]
    end

    @testset "config defaults (koala.h)" begin
        c = Config(:momentum)
        @test c.method == Koala.KOALA_MOMENTUM && c.struct_size == sizeof(Koala.ConfigC)
        @test (c.lr, c.weight_decay, c.alpha_r, c.sigma, c.q) == (1.0, 0.0, 0.9, 1.0, 1.0)
        @test (c.sw, c.sc, c.sv, c.a, c.qw, c.qv) == (0.1, 0.0, 0.1, 0.9, 0.01, 0.01)
        @test isnan(c.r)
        @test (c.threads, c.stochastic_rounding, c.seed, c.asymmetric, c.fused_predict, c.caller_state) ==
              (0, 0, 0, 0, 0, 0)
        p = Config(:plusplus)
        @test p.method == Koala.KOALA_PLUSPLUS
        @test (p.sigma, p.q, p.alpha_r, p.lr, p.weight_decay) == (1.0, 1.0, 0.9, 1.0, 0.0) && isnan(p.r)
        @test Config(:momentum; fused_predict = 1, threads = 2).fused_predict == 1
        @test_throws ArgumentError Config(:vanilla; caller_state = 1)
        @test Config(:vanilla; sigma = 0.1, lr = 0.5).sigma == 0.1
        @test_throws ArgumentError Config(:vanilla; sigmaa = 0.1)
        @test_throws ArgumentError Config(:adam)
    end

    @testset "1.1 config fields are honoured (sized init)" begin
        for n in (1, 3)
            opt = Optimizer(Config(:vanilla; threads = n), [8])
            inf = Koala.info(opt)
            @test (inf.threads, inf.phase, inf.lr) == (n, 0, 1.0)
            close(opt)
        end
        err = try Optimizer(Config(:vanilla; threads = -1), [8]); nothing catch e; e end
        @test err isa KoalaError && occursin("threads", err.message)
    end

    @testset "same numbers as the C ABI: $method $T" for method in (:momentum, :vanilla, :plusplus),
                                                           T in (Float32, Float64)
        ref_x, ref_info = reference_run(method, T, 3)
        x, inf = julia_run(method, T, 3)
        @test x == ref_x            # bit for bit: the binding does no arithmetic
        @test [inf.sigma, inf.p00, inf.p01, inf.p11, inf.r, inf.qw] == ref_info[2:end]
        @test inf.steps == ref_info[1] == 3
        @test x[1] != T[param0(0, i) for i in 0:4]   # the parameters did move
    end

    @testset "one KOALA-V step against ALGORITHM.md §3.3 (float64)" begin
        sigma, q, lr, wd = 0.5, 0.25, 0.7, 0.01
        loss, loss_var = 0.8, 0.9
        x0 = [[-0.4, -0.1, 0.2, 0.5], [0.25, -1.5, 0.75], [2.0, -2.0]]
        g = [[-0.1, 0.2, -0.3, 0.4], [0.02, 0.5, -0.3], nothing]
        sig_hat = sigma + q
        r = 0.9 * 1.0 + 0.1 * loss_var
        expected = deepcopy(x0)
        ratios = Float64[]
        for t in 1:2
            s = sig_hat * sum((g[t] .+ wd .* x0[t]) .^ 2) + r
            c = lr * (loss + wd / 2 * sum(x0[t] .^ 2)) * sig_hat / s
            expected[t] = x0[t] .- c .* g[t]
            push!(ratios, r / s)
        end
        x = deepcopy(x0)
        opt = Optimizer(Config(:vanilla; sigma = sigma, q = q, lr = lr, weight_decay = wd), x)
        predict!(opt, x)
        @test Koala.info(opt).sigma ≈ sig_hat
        update!(opt, loss, loss_var, x, g)
        @test all(isapprox.(x[1], expected[1]; rtol = 1e-14)) && all(isapprox.(x[2], expected[2]; rtol = 1e-14))
        @test x[3] == x0[3]          # no gradient: left alone
        inf = Koala.info(opt)
        @test isapprox(inf.sigma, sig_hat * minimum(ratios); rtol = 1e-13)
        @test isapprox(inf.r, r; rtol = 1e-15)
    end

    @testset "three KOALA++ steps against ALGORITHM.md §7.2-7.3 (float64)" begin
        # tensor 2 has no gradient in step 1 (its first visit is step 2); w_k
        # is 0 in the step after a first visit, so step 3 is the first where
        # the symmetric term counts
        sigma0, q, lr, wd = 0.5, 0.3, 0.8, 0.02
        losses = [(0.8, 0.9), (0.6, 0.5), (0.7, 0.6)]
        x = [[-0.4, -0.1, 0.2, 0.5], [0.25, -1.5, 0.75]]
        e = deepcopy(x)
        gr(k, t, i) = 0.1 * sin(1.3i + 0.7t + 2.1k)
        opt = Optimizer(Config(:plusplus; sigma = sigma0, q = q, lr = lr, weight_decay = wd), x)
        r = 1.0
        state = Any[nothing, nothing]        # (v, H, S) per tensor
        w_term = 0.0
        for k in 1:3
            g = [[gr(k, t, i) for i in 1:length(x[t])] for t in 1:2]
            present = [true, k > 1]
            predict!(opt, x)
            update!(opt, losses[k][1], losses[k][2], x, [present[t] ? g[t] : nothing for t in 1:2])
            r = 0.9r + 0.1losses[k][2]
            for t in 1:2
                present[t] || continue
                H = g[t] .+ wd .* e[t]
                L = losses[k][1] + wd / 2 * sum(e[t] .^ 2)
                if state[t] === nothing
                    v0 = sigma0 .* H
                    state[t] = (v0, H, sum(H .* v0) + q * sum(H .^ 2) + r)
                end
                vp, Hp, Sp = state[t]
                hh, hp2 = sum(H .* Hp), sum(Hp .^ 2)
                alpha = hh / hp2
                lambda = sum(H .* (vp .+ q .* Hp)) / Sp
                w = (sum(H .* vp) * hp2 - sum(Hp .* vp) * hh) / hp2^2
                v = (alpha - lambda) .* vp .+ q .* (H .- lambda .* Hp) .+ w .* Hp
                S = sum(H .* v) + q * sum(H .^ 2) + r
                e[t] = e[t] .- lr * L .* (v .+ q .* H) ./ S
                k == 3 && (w_term = max(w_term, abs(w) * sqrt(hp2) / sqrt(sum(v .^ 2))))
                state[t] = (v, H, S)
            end
            @test all(isapprox.(x[1], e[1]; rtol = 1e-13)) && all(isapprox.(x[2], e[2]; rtol = 1e-13))
            k == 1 && @test x[2] == [0.25, -1.5, 0.75]
        end
        @test w_term > 1e-3
        @test Koala.info(opt).steps == 3 && isapprox(Koala.info(opt).r, r; rtol = 1e-15)
    end

    @testset "per-tensor lr and weight decay (KOALA-V: tensor i depends on its own)" begin
        function vstep(cfg; scale = nothing, wd = nothing)
            x = [[-0.4, -0.1, 0.2, 0.5], [0.25, -1.5, 0.75]]
            g = [[-0.1, 0.2, -0.3, 0.4], [0.02, 0.5, -0.3]]
            opt = Optimizer(cfg, x)
            set_tensor_lr!(opt, scale); set_tensor_weight_decay!(opt, wd)
            predict!(opt, x); update!(opt, 0.8, 0.9, x, g)
            return x
        end
        a = vstep(Config(:vanilla); scale = [0.5, 0.25])
        @test isapprox(a[1], vstep(Config(:vanilla; lr = 0.5))[1]; rtol = 1e-15)
        @test isapprox(a[2], vstep(Config(:vanilla; lr = 0.25))[2]; rtol = 1e-15)
        a = vstep(Config(:vanilla); wd = [0.05, 0.0])
        @test isapprox(a[1], vstep(Config(:vanilla; weight_decay = 0.05))[1]; rtol = 1e-15)
        @test a[2] == vstep(Config(:vanilla))[2] && a[1] != vstep(Config(:vanilla))[1]
        opt = Optimizer(Config(:vanilla), [4, 3]; dtype = Float64)
        err = try set_tensor_lr!(opt, [1.0]); nothing catch e; e end
        @test err isa KoalaError && occursin("scale has 1 values", err.message)
        err = try set_tensor_lr!(opt, [1.0, -2.0]); nothing catch e; e end
        @test err isa KoalaError && occursin("scale", err.message)
        err = try set_tensor_weight_decay!(opt, [1.0, NaN]); nothing catch e; e end
        @test err isa KoalaError && occursin("weight_decay", err.message)
    end

    @testset "posterior! of a fused KOALA-M" begin
        x = [Float32[1, 2, 3], Float32[-1, 0.5]]
        y = deepcopy(x)
        out = deepcopy(x)
        plain = Optimizer(Config(:momentum), x)
        fused = Optimizer(Config(:momentum; fused_predict = 1), y)
        for k in 1:3
            g = [Float32[0.1, -0.2, 0.3] ./ k, Float32[0.05, 0.05] .* k]
            predict!(plain, x)
            err = try posterior!(out, plain, x); nothing catch e; e end
            @test err isa KoalaError && err.status == Koala.KOALA_ERROR_BAD_STATE
            update!(plain, 1.0 / k, 1.2 / k^2, x, g)
            predict!(fused, y); update!(fused, 1.0 / k, 1.2 / k^2, y, g)
            posterior!(out, fused, y)
            @test all(isapprox.(out[1], x[1]; rtol = 1e-6)) && all(isapprox.(out[2], x[2]; rtol = 1e-6))
        end
        @test y != x
    end

    @testset "Float16 arrays (since 1.1): the float32 step rounded to Float16" begin
        x16 = [Float16[0.5, -1.0, 0.25, 2.0]]
        g16 = [Float16[0.125, 0.25, -0.5, 0.0625]]
        x32 = [Float32.(x16[1])]
        g32 = [Float32.(g16[1])]
        o16 = Optimizer(Config(:vanilla), x16)
        o32 = Optimizer(Config(:vanilla), x32)
        predict!(o16, x16); update!(o16, 0.7, 0.6, x16, g16)
        predict!(o32, x32); update!(o32, 0.7, 0.6, x32, g32)
        @test x16[1] == Float16.(x32[1]) && x16[1] != Float16[0.5, -1.0, 0.25, 2.0]
    end

    @testset "checkpoint round trip" begin
        x = [Float32[1, 2, 3], Float32[-1, 0.5]]
        g = [Float32[0.1, -0.2, 0.3], Float32[0.05, 0.05]]
        opt = Optimizer(Config(:momentum), x)
        predict!(opt, x); update!(opt, 1.0, 1.2, x, g)
        bytes = state_save(opt)
        saved = deepcopy(x)
        predict!(opt, x); update!(opt, 0.5, 0.4, x, g)
        after = deepcopy(x)
        fresh = Optimizer(Config(:momentum), saved)
        state_load!(fresh, bytes)
        predict!(fresh, saved); update!(fresh, 0.5, 0.4, saved, g)
        @test saved == after
        @test Koala.info(fresh) == Koala.info(opt)
        bad = copy(bytes); bad[length(bad) ÷ 2] ⊻= 0xff
        err = try state_load!(opt, bad); nothing catch e; e end
        @test err isa KoalaError && err.status == Koala.KOALA_ERROR_BAD_STATE
    end

    @testset "errors: status, message, nothing changed" begin
        err = try Optimizer(Config(:vanilla; alpha_r = 1.5), [4]); nothing catch e; e end
        @test err isa KoalaError && err.status == Koala.KOALA_ERROR_INVALID_ARGUMENT
        @test occursin("alpha_r", err.message)
        @test occursin("KOALA_ERROR_INVALID_ARGUMENT", sprint(showerror, err))

        x = [Float32[1, 2, 3]]
        g = [Float32[0.5, 0.5, 0.5]]
        opt = Optimizer(Config(:vanilla), x)
        err = try update!(opt, 1.0, 1.0, x, g); nothing catch e; e end
        @test err isa KoalaError && err.status == Koala.KOALA_ERROR_BAD_STATE
        predict!(opt, x)
        before = Koala.info(opt)
        err = try update!(opt, NaN, 1.0, x, g); nothing catch e; e end
        @test err isa KoalaError && err.status == Koala.KOALA_ERROR_NOT_FINITE
        @test x == [Float32[1, 2, 3]] && Koala.info(opt) == before
        err = try update!(opt, 1.0, 1.0, [Float32[1, 2]], g); nothing catch e; e end
        @test err isa KoalaError && occursin("params[1] has 2 elements", err.message)
        err = try update!(opt, 1.0, 1.0, [[1.0, 2.0, 3.0]], [[0.1, 0.1, 0.1]]); nothing catch e; e end
        @test err isa KoalaError && occursin("Float64", err.message)
        err = try set_lr!(opt, -1); nothing catch e; e end
        @test err isa KoalaError && occursin("lr", err.message)
        update!(opt, 1.0, 1.0, x, [nothing])     # no gradient at all: only R moves
        @test x == [Float32[1, 2, 3]] && Koala.info(opt).steps == 1
        close(opt)
        err = try predict!(opt, x); nothing catch e; e end
        @test err isa KoalaError && occursin("closed", err.message)
    end

    @testset "pointer methods (the device path's shape) on host memory" begin
        x = [Float64[1, -1]]
        g = [Float64[0.5, 0.25]]
        loss, loss_var = Ref(0.5), Ref(0.5)
        opt = Optimizer(Config(:vanilla), [2]; dtype = Float64)
        GC.@preserve x g loss loss_var begin
            predict!(opt, [Ptr{Cvoid}(pointer(x[1]))])
            update!(opt, Base.unsafe_convert(Ptr{Float64}, loss), Base.unsafe_convert(Ptr{Float64}, loss_var),
                    Float64, [Ptr{Cvoid}(pointer(x[1]))], [Ptr{Cvoid}(pointer(g[1]))])
        end
        @test Koala.info(opt).steps == 1 && x[1][1] < 1 && x[1][2] < -1
        if !Koala.device_available()
            err = try Optimizer(Config(), [4]; memory = :device); nothing catch e; e end
            @test err isa KoalaError && err.status in (Koala.KOALA_ERROR_UNSUPPORTED, Koala.KOALA_ERROR_CUDA)
        end
    end

    @testset "Optimisers.jl-shaped rule" begin
        rule = KoalaRule(:momentum)
        x = [Float32[1, 2], Float32[3]]
        state = Koala.init(rule, x)
        Koala.prepare!(rule, state, x)
        state, x = Koala.apply!(rule, state, x, [Float32[0.1, 0.1], Float32[0.2]]; loss = 1.0, loss_var = 1.0)
        @test Koala.info(state).steps == 1
    end
end
end

passed, failed = try
    ts = run_tests()
    c = Test.get_test_counts(ts)
    (c[1] + c[5], c[2] + c[3] + c[6] + c[7])
catch e
    e isa Test.TestSetException || rethrow()
    (e.pass, e.fail + e.error)
end
println("$passed passed, $failed failed")
exit(failed == 0 && passed > 0 ? 0 : 1)
