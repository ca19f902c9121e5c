"""What the binding needs to know about one array: where its data lives,
its dtype, element count, device and layout.

Layout: the library sees a tensor as a flat run of elements. Any dense
tensor (its elements fill one block of memory without gaps or overlaps, in
any stride order: C order, Fortran order, torch's channels_last) is such a
run; the element math and the norms do not depend on the order. What must
hold is that a parameter, its gradient and its state buffers use the SAME
order, so that element k of each is the same element: `order` records it
(None for C order) and Optimizer compares it. Views with gaps, overlaps or
negative strides are not dense and are refused.

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
BFLOAT16 = "bfloat16"
FLOAT16 = "float16"
_ITEMSIZE = {FLOAT32: 4, FLOAT64: 8, BFLOAT16: 2, FLOAT16: 2}
# Dtypes of 16-bit raw storage: accepted for a bfloat16/float16 optimizer when
# the caller says the dtype explicitly (NumPy has no bfloat16 of its own).
RAW16 = ("uint16", "int16", "buffer format 'H'", "buffer format 'h'")


@dataclass
class ArrayView:
    handle: object      # what goes into the C call: an int address or a buffer object
    dtype: str          # "float32", "float64" or something unsupported (for messages)
    size: int           # number of elements
    device: str         # "cpu" or "cuda:N"
    contiguous: bool    # dense (see the module doc), so usable as a flat array
    writable: bool
    keepalive: object = None   # e.g. a DLPack capsule that owns the memory
    order: object = None       # None: C order; else the dims' (size, stride) pairs


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
               "f8": FLOAT64, "<f8": FLOAT64, "double": FLOAT64,
               "f2": FLOAT16, "<f2": FLOAT16, "half": FLOAT16, "bf16": BFLOAT16}
    return aliases.get(text, text)


def _typestr_dtype(typestr):
    return {"<f4": FLOAT32, "=f4": FLOAT32, "|f4": FLOAT32,
            "<f8": FLOAT64, "=f8": FLOAT64, "|f8": FLOAT64,
            "<f2": FLOAT16, "=f2": FLOAT16, "<u2": "uint16"}.get(typestr, typestr)


def _c_contiguous(shape, strides, itemsize):
    if strides is None:
        return True
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim != 1 and stride != expected:
            return False
        expected *= dim
    return True


def dense_order(shape, strides, unit=1):
    """(dense, order) of an array with these shape and strides (in units of
    `unit`): dense when its elements fill one block without gaps or overlaps
    in some stride order (all strides positive); order None for C order,
    else the (size, stride) pairs of its dims of size > 1."""
    if strides is None or _c_contiguous(shape, strides, unit):
        return True, None
    dims = [(int(n), int(s)) for n, s in zip(shape, strides) if int(n) != 1]
    if any(n == 0 for n, _ in dims):
        return True, None
    expected = unit
    for n, s in sorted(dims, key=lambda d: d[1]):
        if s != expected:
            return False, None
        expected *= n
    return True, tuple(dims)


def _prod(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _is_torch(x):
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _is_numpy(x):
    return type(x).__module__ == "numpy" and hasattr(x, "flags")


_TORCH_DTYPE_NAMES = {}     # torch dtype -> dtype_name(dtype), filled as they are seen


def _torch_dtype_name(dtype):
    name = _TORCH_DTYPE_NAMES.get(dtype)
    if name is None:
        name = _TORCH_DTYPE_NAMES[dtype] = dtype_name(dtype)
    return name


def _from_torch(x):
    if x.is_sparse or x.layout != _torch_strided(x):
        return ArrayView(handle=0, dtype=_torch_dtype_name(x.dtype), size=x.numel(),
                         device="cpu", contiguous=False, writable=False)
    dev = x.device
    device = "cpu" if dev.type == "cpu" else f"{dev.type}:{dev.index if dev.index is not None else 0}"
    if x.is_contiguous():
        dense, order = True, None
    else:
        dense, order = dense_order(x.shape, x.stride())
    return ArrayView(handle=x.data_ptr(), dtype=_torch_dtype_name(x.dtype), size=x.numel(),
                     device=device, contiguous=dense, writable=True, order=order)


_STRIDED = []


def _torch_strided(x):
    if not _STRIDED:
        import torch
        _STRIDED.append(torch.strided)
    return _STRIDED[0]


def _from_numpy(x):
    native = x.dtype.byteorder in ("=", "|") or x.dtype.isnative
    dtype = dtype_name(x.dtype) if native else f"{x.dtype} (non-native byte order)"
    c_order = bool(x.flags.c_contiguous)
    if c_order:
        dense, order = True, None
    elif all(st > 0 and st % x.itemsize == 0 for st in x.strides):
        dense, order = dense_order(x.shape, [st // x.itemsize for st in x.strides])
    else:
        dense, order = False, None
    # C-order arrays of the buffer protocol's float types go in as buffers
    # (held by the typemap during the call); the rest (bfloat16 of ml_dtypes,
    # which has no buffer format; dense arrays in another order) as addresses,
    # kept alive by `keepalive` for the call.
    as_buffer = c_order and dtype in (FLOAT32, FLOAT64, FLOAT16)
    handle = x if as_buffer or not dense else int(x.ctypes.data)
    return ArrayView(handle=handle, dtype=dtype, size=int(x.size), device="cpu",
                     contiguous=dense, writable=bool(x.flags.writeable),
                     keepalive=None if as_buffer else x, order=order)


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
_DL_BFLOAT = 4


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
    dtype = {16: FLOAT16, 32: FLOAT32, 64: FLOAT64}.get(bits) \
        if t.dtype.code == _DL_FLOAT and t.dtype.lanes == 1 else None
    if t.dtype.code == _DL_BFLOAT and bits == 16 and t.dtype.lanes == 1:
        dtype = BFLOAT16
    dtype = dtype or f"dlpack(code={t.dtype.code}, bits={bits}, lanes={t.dtype.lanes})"
    itemsize = max(bits // 8, 1)
    if dev_type in (_DL_CPU, _DL_CUDA_HOST):
        device = "cpu"
    elif dev_type in (_DL_CUDA, _DL_CUDA_MANAGED):
        device = f"cuda:{dev_id}"
    else:
        device = f"dlpack-device-{dev_type}:{dev_id}"
    dense, order = dense_order(shape, strides)
    return ArrayView(handle=(t.data or 0) + t.byte_offset, dtype=dtype, size=_prod(shape),
                     device=device, contiguous=dense, writable=True, keepalive=capsule,
                     order=order)


def _from_buffer(x):
    m = memoryview(x)
    fmt = m.format.lstrip("<=@")
    dtype = {("f", 4): FLOAT32, ("d", 8): FLOAT64, ("e", 2): FLOAT16}.get(
        (fmt, m.itemsize), f"buffer format {m.format!r}")
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
                      "__array_interface__ or DLPack, or a float32/float64/float16 buffer")


def dtype_matches(have, want):
    """An array of dtype `have` can be passed as `want`: the same dtype, or
    16-bit raw storage (uint16 bits) for bfloat16/float16."""
    return have == want or (want in (BFLOAT16, FLOAT16) and have in RAW16)


def check(v, name, dtype, size, device, writable):
    """Raises InvalidArgument (naming `name`) unless `v` matches the optimizer."""
    if not dtype_matches(v.dtype, dtype):
        raise InvalidArgument(f"{name} has dtype {v.dtype}; this optimizer works on {dtype}")
    if v.device != device:
        raise InvalidArgument(f"{name} is on {v.device}; this optimizer works on {device} memory")
    if v.size != size:
        raise InvalidArgument(f"{name} has {v.size} elements; the optimizer was created with "
                              f"{size} for this tensor")
    if not v.contiguous:
        raise InvalidArgument(f"{name} is not contiguous: a view with gaps, overlaps or negative "
                              "strides (a slice, a transpose of a slice, an expand). Dense arrays "
                              "in any stride order (channels_last, Fortran order) are fine; pass "
                              "a dense copy (.contiguous() / numpy.ascontiguousarray) and copy "
                              "the result back")
    if writable and not v.writable:
        raise InvalidArgument(f"{name} is read-only; parameters are updated in place")
