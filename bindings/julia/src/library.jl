# Where libkoala.so is, and its function pointers.
#
# `ccall((:name, lib), ...)` needs `lib` fixed when the code is compiled;
# the library path here is decided when the package is loaded (environment
# variables), so the functions are looked up with dlsym once and called
# through their pointers.

const LIB_HANDLE = Ref{Ptr{Cvoid}}(C_NULL)
const LIB_PATH = Ref{String}("")
const SYMBOLS = Dict{Symbol,Ptr{Cvoid}}()

"""
    library_candidates()

The paths tried, in order: `ENV["KOALA_LIB"]`; `libkoala.so.1` under
`lib/`, `lib/<multiarch>/`, `lib64/` of `ENV["KOALA_PREFIX"]` (default
`/usr/local`); the bare soname for the system loader.
"""
function library_candidates()
    lib = get(ENV, "KOALA_LIB", "")
    !isempty(lib) && return [lib]   # an explicit path is used or fails loudly
    prefix = get(ENV, "KOALA_PREFIX", "/usr/local")
    dirs = [joinpath(prefix, "lib"), joinpath(prefix, "lib", "$(Sys.ARCH)-linux-gnu"),
            joinpath(prefix, "lib64")]
    paths = [joinpath(d, "libkoala.so.1") for d in dirs]
    return [filter(isfile, paths); "libkoala.so.1"]
end

function __init__()
    errors = String[]
    for path in library_candidates()
        h = Libdl.dlopen_e(path)
        if h != C_NULL
            LIB_HANDLE[] = h
            LIB_PATH[] = path
            return
        end
        push!(errors, path)
    end
    @warn "Koala: libkoala not found (tried $(join(errors, ", "))); set KOALA_LIB to the full path of libkoala.so"
end

"""The path of the loaded libkoala."""
library_path() = LIB_PATH[]

function sym(name::Symbol)
    get!(SYMBOLS, name) do
        LIB_HANDLE[] == C_NULL &&
            error("Koala: libkoala is not loaded; set KOALA_LIB to the full path of libkoala.so")
        Libdl.dlsym(LIB_HANDLE[], name)
    end
end
