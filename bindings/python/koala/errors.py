"""The exceptions of libkoala's Python binding.

Every libkoala status other than KOALA_OK becomes one KoalaError subclass;
the exception carries the status (`.status`, an int equal to the C enum) and
the library's own message (koala_last_error(), which names the argument and
the reason). The pythonic layer raises the same classes for what it checks
before calling the library (wrong dtype, size, device, contiguity).

This module must not import the compiled extension: the SWIG wrapper imports
it (by name, `koala.errors`) to raise these classes.
"""

# The C enum koala_status (koala.h); repeated here so that this module stays
# importable on its own. tests/python/test_errors.py checks them against the
# compiled module.
OK = 0
ERROR_INVALID_ARGUMENT = 1
ERROR_OUT_OF_MEMORY = 2
ERROR_NOT_FINITE = 3
ERROR_UNSUPPORTED = 4
ERROR_CUDA = 5
ERROR_BAD_STATE = 6
ERROR_COMMUNICATION = 7


class KoalaError(RuntimeError):
    """A libkoala call failed. `.status` is the koala_status value, `.message`
    the library's explanation."""

    status = None

    def __init__(self, message, status=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidArgument(KoalaError, ValueError):
    """KOALA_ERROR_INVALID_ARGUMENT: a NULL, out-of-range or inconsistent argument
    (also raised by the Python layer for wrong dtype, size, device or layout)."""

    status = ERROR_INVALID_ARGUMENT


class OutOfMemory(KoalaError, MemoryError):
    """KOALA_ERROR_OUT_OF_MEMORY: a host or device allocation failed."""

    status = ERROR_OUT_OF_MEMORY


class NotFinite(KoalaError, ArithmeticError):
    """KOALA_ERROR_NOT_FINITE: loss, loss_var or a gradient norm is NaN/Inf;
    nothing was changed and the optimizer is still predicted."""

    status = ERROR_NOT_FINITE


class Unsupported(KoalaError, NotImplementedError):
    """KOALA_ERROR_UNSUPPORTED: e.g. device memory without the CUDA plugin or a GPU,
    or an array type / dtype this binding cannot pass to the library."""

    status = ERROR_UNSUPPORTED


class CudaError(KoalaError):
    """KOALA_ERROR_CUDA: a CUDA runtime call failed."""

    status = ERROR_CUDA


class BadState(KoalaError):
    """KOALA_ERROR_BAD_STATE: a corrupt or mismatched checkpoint, or predict/update
    called out of order."""

    status = ERROR_BAD_STATE


class CommunicationError(KoalaError):
    """KOALA_ERROR_COMMUNICATION: the all-reduce callback of a sharded optimizer
    failed (returned non-zero or raised: that exception is the __cause__);
    nothing was changed."""

    status = ERROR_COMMUNICATION


# The name the issue tracker and other bindings use.
KoalaCommunicationError = CommunicationError

_BY_STATUS = {cls.status: cls for cls in
              (InvalidArgument, OutOfMemory, NotFinite, Unsupported, CudaError, BadState,
               CommunicationError)}


def from_status(status, message):
    """The exception instance for a failed call (used by the SWIG wrapper)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        return KoalaError(f"{message} (unknown koala_status {status})", status)
    return cls(message)
