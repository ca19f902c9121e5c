"""
    Koala

Julia interface to libkoala, the KOALA Kalman-filter optimizers (KOALA-V and
KOALA-M of AAAI 2022, KOALA++ of NeurIPS 2025: methods `:vanilla`,
`:momentum`, `:plusplus`),
calling its C ABI with `ccall` (SWIG has no Julia target; `ccall` needs no
glue code). All arithmetic happens in the C++ library; this package converts
arrays to pointers and statuses to [`KoalaError`](@ref).

The library is found through the environment variable `KOALA_LIB` (the full
path of `libkoala.so`), else under the install prefix `KOALA_PREFIX`
(default `/usr/local`), else by the system loader (`libkoala.so.1`).

Threads: one optimizer must be used by one task/thread at a time; distinct
optimizers may be used from distinct threads at once. A host optimizer runs
its passes on `Config(...; threads = n)` CPU threads of the library's own
pool (0: `KOALA_NUM_THREADS`, else every CPU the process may use); the
workers sleep between calls, so Julia's own threads are not disturbed.
"""
module Koala

using Libdl

export Config, Optimizer, KoalaError, predict!, update!, info, set_lr!,
       state_save, state_load!, KoalaRule,
       set_tensor_lr!, set_tensor_weight_decay!, posterior!

include("library.jl")     # finding libkoala.so, symbol lookup
include("c_types.jl")     # enums, koala_config / koala_info layouts
include("errors.jl")      # KoalaError, status checks
include("config.jl")      # Config(method; keywords...)
include("optimizer.jl")   # Optimizer, predict!, update!, info, checkpoint
include("rule.jl")        # an Optimisers.jl-shaped init/apply! rule

end # module
