# Statuses other than KOALA_OK become a KoalaError carrying the library's
# message (which names the offending argument).

"""
    KoalaError(status, message)

A libkoala call failed. `status` is the `koala_status` value (e.g.
`Koala.KOALA_ERROR_INVALID_ARGUMENT`), `message` what `koala_last_error()`
said (argument and reason). On any error nothing was changed.
"""
struct KoalaError <: Exception
    status::Cint
    message::String
end

function Base.showerror(io::IO, e::KoalaError)
    print(io, "KoalaError: ", status_string(e.status), "\n  ", e.message)
end

"""The library's static description of a status."""
status_string(s::Integer) = unsafe_string(ccall(sym(:koala_status_string), Cstring, (Cint,), s))

"""This thread's last libkoala error message ("" if none)."""
last_error() = unsafe_string(ccall(sym(:koala_last_error), Cstring, ()))

# Turns a status into nothing or a thrown KoalaError (message read at once).
function check(status::Cint)
    status == KOALA_OK || throw(KoalaError(status, last_error()))
    return nothing
end

"""libkoala's version: MAJOR*10000 + MINOR*100 + PATCH."""
version() = Int(ccall(sym(:koala_version), Cuint, ()))

"""`true` when device (CUDA) optimizers can be created here."""
device_available() = ccall(sym(:koala_device_probe), Cint, ()) == KOALA_OK
