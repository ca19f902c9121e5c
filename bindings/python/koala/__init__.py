"""libkoala for Python: the KOALA Kalman-filter optimizers KOALA-V, KOALA-M
(AAAI 2022) and KOALA++ (NeurIPS 2025).

    import koala
    opt = koala.Optimizer("momentum", [w, b], weight_decay=5e-4)   # NumPy, torch, CuPy...
    opt.predict([w, b]); ...; opt.update(loss, loss_var, [w, b], [gw, gb])

    from koala.torch import MomentumKOALA          # drop-in for the official classes
    from koala.torch import KOALAPlusPlus          # ... and for koalap.py's KOALA++

koala.capi is the SWIG module: koala.h one to one. Importing this package
needs neither NumPy nor PyTorch nor JAX.
"""
from . import _loader

_loader.preload()
from . import capi  # noqa: E402  (after the preload)
from .errors import (BadState, CommunicationError, CudaError, InvalidArgument,  # noqa: E402
                     KoalaCommunicationError, KoalaError, NotFinite, OutOfMemory, Unsupported)
from .optimizer import CONFIG_FIELDS, Info, Optimizer, Shard  # noqa: E402

__all__ = ["Optimizer", "Info", "CONFIG_FIELDS", "KoalaError", "InvalidArgument", "OutOfMemory",
           "NotFinite", "Unsupported", "CudaError", "BadState", "CommunicationError",
           "KoalaCommunicationError", "Shard", "version", "__version__",
           "device_available", "capi"]


def version():
    """The loaded libkoala's version as a string "MAJOR.MINOR.PATCH"."""
    v = capi.koala_version()
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


__version__ = version()


def device_available():
    """(True, "") when CUDA optimizers can be created here, else (False, why)."""
    try:
        capi.koala_device_probe()
        return True, ""
    except KoalaError as e:
        return False, e.message


def library_path():
    """The file of the loaded libkoala.so (Linux; None where it cannot be told)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(None, 5)[-1].strip()
                if "/libkoala.so" in path:
                    return path
    except OSError:
        pass
    return None
