"""What the binding needs to know about one array: where its data lives,
its dtype, element count, device and layout.

Supported, in the order they are tried:
  * PyTorch tensors (CPU or CUDA): the data pointer, no copy;
  * NumPy arrays: passed as buffers (the SWIG typemap holds them during the call);
  * objects with __cuda_array_interface__ (CuPy, Numba, ...): device pointer;
  * objects with __array_interface__: host pointer;
  * objects with __dlpack__ / __dlpack_device__: pointer read from the DLPack capsule;
  * anything else with the buffer protocol (array.array, memoryview): host buffer.
No module here is imported unless an array of that kind is seen, so
`import koala` needs neither NumPy nor PyTorch.
"""
import ctypes
from dataclasses import dataclass

from .errors import InvalidArgument, Unsupported

FLOAT32 = "float32"
FLOAT64 = "float64"
_ITEMSIZE = {FLOAT32: 4, FLOAT64: 8}


@dataclass
class ArrayView:
    handle: object      # what goes into the C call: an int address or a buffer object
    dtype: str          # "float32", "float64" or something unsupported (for messages)
    size: int           # number of elements
    device: str         # "cpu" or "cuda:N"
    contiguous: bool
    writable: bool
    keepalive: object = None   # e.g. a DLPack capsule that owns the memory


def dtype_name(dtype):
    """Normalises "float32", numpy.float32, numpy.dtype('f4'), torch.float32... to
    "float32"/"float64"; other dtypes come back as their own name."""
    if dtype is None:
        return None
    text = str(dtype)
    for prefix in ("torch.", "<class 'numpy.", "dtype('"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = text.rstrip("')>")
    aliases = {"f4": FLOAT32, "<f4": FLOAT32, "float": FLOAT32, "single": FLOAT32,
               "f8": FLOAT64, "<f8": FLOAT64, "double": FLOAT64}
    return aliases.get(text, text)


def _typestr_dtype(typestr):
    return {"<f4": FLOAT32, "=f4": FLOAT32, "|f4": FLOAT32,
            "<f8": FLOAT64, "=f8": FLOAT64, "|f8": FLOAT64}.get(typestr, typestr)


def _c_contiguous(shape, strides, itemsize):
    if strides is None:
        return True
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim != 1 and stride != expected:
            return False
        expected *= dim
    return True


def _prod(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _is_torch(x):
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _is_numpy(x):
    return type(x).__module__ == "numpy" and hasattr(x, "flags")


def _from_torch(x):
    if x.is_sparse:
        return ArrayView(handle=0, dtype=dtype_name(x.dtype), size=x.numel(), device="cpu",
                         contiguous=False, writable=False)
    dev = x.device
    device = "cpu" if dev.type == "cpu" else f"{dev.type}:{dev.index if dev.index is not None else 0}"
    return ArrayView(handle=x.data_ptr(), dtype=dtype_name(x.dtype), size=x.numel(),
                     device=device, contiguous=x.is_contiguous(),
                     writable=True)


def _from_numpy(x):
    native = x.dtype.byteorder in ("=", "|") or x.dtype.isnative
    dtype = dtype_name(x.dtype) if native else f"{x.dtype} (non-native byte order)"
    return ArrayView(handle=x, dtype=dtype, size=int(x.size), device="cpu",
                     contiguous=bool(x.flags.c_contiguous), writable=bool(x.flags.writeable))


def _from_interface(x, iface, device):
    ptr, readonly = iface["data"]
    dtype = _typestr_dtype(iface["typestr"])
    itemsize = _ITEMSIZE.get(dtype, int(iface["typestr"][2:] or 0))
    shape = tuple(iface["shape"])
    return ArrayView(handle=int(ptr or 0), dtype=dtype,
                     size=_prod(shape), device=device,
                     contiguous=_c_contiguous(shape, iface.get("strides"), itemsize),
                     writable=not readonly)


# ---- DLPack ---------------------------------------------------------------
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 13
_DL_FLOAT = 2


def _from_dlpack(x):
    dev_type, dev_id = x.__dlpack_device__()
    capsule = x.__dlpack__()
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    # DLManagedTensor starts with its DLTensor. The capsule is not consumed:
    # its destructor releases the tensor when `keepalive` goes away.
    t = _DLTensor.from_address(get(capsule, b"dltensor"))
    shape = [t.shape[i] for i in range(t.ndim)]
    strides = None if not t.strides else [t.strides[i] for i in range(t.ndim)]
    bits = t.dtype.bits
    dtype = {32: FLOAT32, 64: FLOAT64}.get(bits) if t.dtype.code == _DL_FLOAT and t.dtype.lanes == 1 \
        else None
    dtype = dtype or f"dlpack(code={t.dtype.code}, bits={bits}, lanes={t.dtype.lanes})"
    itemsize = max(bits // 8, 1)
    if dev_type in (_DL_CPU, _DL_CUDA_HOST):
        device = "cpu"
    elif dev_type in (_DL_CUDA, _DL_CUDA_MANAGED):
        device = f"cuda:{dev_id}"
    else:
        device = f"dlpack-device-{dev_type}:{dev_id}"
    return ArrayView(handle=(t.data or 0) + t.byte_offset, dtype=dtype, size=_prod(shape),
                     device=device, contiguous=_c_contiguous(shape, [s * itemsize for s in strides]
                                                             if strides else None, itemsize),
                     writable=True, keepalive=capsule)


def _from_buffer(x):
    m = memoryview(x)
    fmt = m.format.lstrip("<=@")
    dtype = {("f", 4): FLOAT32, ("d", 8): FLOAT64}.get((fmt, m.itemsize),
                                                      f"buffer format {m.format!r}")
    return ArrayView(handle=x, dtype=dtype, size=m.nbytes // max(m.itemsize, 1), device="cpu",
                     contiguous=m.c_contiguous, writable=not m.readonly)


def view(x, name):
    """The ArrayView of `x`; raises Unsupported naming `name` for other objects."""
    if _is_torch(x):
        return _from_torch(x)
    if _is_numpy(x):
        return _from_numpy(x)
    if hasattr(x, "__cuda_array_interface__"):
        v = _from_interface(x, x.__cuda_array_interface__, "cuda:0")
        dev = getattr(x, "device", None)
        if dev is not None and hasattr(dev, "id"):
            v.device = f"cuda:{dev.id}"
        return v
    if hasattr(x, "__array_interface__"):
        return _from_interface(x, x.__array_interface__, "cpu")
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        return _from_dlpack(x)
    try:
        return _from_buffer(x)       # array.array, memoryview, ...: the buffer protocol
    except TypeError:
        pass
    raise Unsupported(f"{name} is a {type(x).__module__}.{type(x).__qualname__}; expected a "
                      "NumPy array, a PyTorch tensor, an array with __cuda_array_interface__, "
                      "__array_interface__ or DLPack, or a float32/float64 buffer")


def check(v, name, dtype, size, device, writable):
    """Raises InvalidArgument (naming `name`) unless `v` matches the optimizer."""
    if v.dtype != dtype:
        raise InvalidArgument(f"{name} has dtype {v.dtype}; this optimizer works on {dtype}")
    if v.device != device:
        raise InvalidArgument(f"{name} is on {v.device}; this optimizer works on {device} memory")
    if v.size != size:
        raise InvalidArgument(f"{name} has {v.size} elements; the optimizer was created with "
                              f"{size} for this tensor")
    if not v.contiguous:
        raise InvalidArgument(f"{name} is not contiguous; pass a C-contiguous array "
                              "(e.g. .contiguous() / numpy.ascontiguousarray)")
    if writable and not v.writable:
        raise InvalidArgument(f"{name} is read-only; parameters are updated in place")
