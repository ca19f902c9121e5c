"""koala.Optimizer: one libkoala optimizer over a fixed list of arrays.

    opt = koala.Optimizer("momentum", params, weight_decay=5e-4)
    for batch in data:
        opt.predict(params)                      # before the forward pass
        losses = per_sample_losses(params, batch)
        grads = gradient_of_mean(losses)
        opt.update(losses.mean(), (losses ** 2).mean(), params, grads)

Arrays are checked here (count, dtype, element count, device, contiguity,
writability) before every call, so a mistake raises InvalidArgument naming
the argument instead of letting the library read or write out of bounds.
"""
import math
from dataclasses import dataclass

from . import arrays, capi
from .errors import InvalidArgument, Unsupported

_METHODS = {"vanilla": capi.KOALA_VANILLA, "koala-v": capi.KOALA_VANILLA, "v": capi.KOALA_VANILLA,
            "momentum": capi.KOALA_MOMENTUM, "koala-m": capi.KOALA_MOMENTUM,
            "m": capi.KOALA_MOMENTUM}
_DTYPES = {arrays.FLOAT32: capi.KOALA_FLOAT32, arrays.FLOAT64: capi.KOALA_FLOAT64}
# koala_config's fields a caller may set (koala.h documents each one).
CONFIG_FIELDS = ("lr", "weight_decay", "r", "alpha_r", "sigma", "q",
                 "sw", "sc", "sv", "a", "qw", "qv")


@dataclass(frozen=True)
class Info:
    """koala_get_info: steps done, steps the device skipped, the filter scalars."""
    steps: int
    skipped_steps: int
    sigma: float
    p00: float
    p01: float
    p11: float
    r: float
    qw: float


def _method_value(method):
    if isinstance(method, str):
        key = method.lower()
        if key not in _METHODS:
            raise InvalidArgument(f"method is {method!r}; expected 'vanilla' or 'momentum'")
        return _METHODS[key]
    if method in (capi.KOALA_VANILLA, capi.KOALA_MOMENTUM):
        return int(method)
    raise InvalidArgument(f"method is {method!r}; expected 'vanilla' or 'momentum'")


def _device_name(device):
    if device is None:
        return None
    text = str(device).lower()
    if text in ("cpu", "host"):
        return "cpu"
    if text in ("cuda", "gpu", "device"):
        return "cuda:0"
    if text.startswith("cuda:"):
        return text
    raise InvalidArgument(f"device is {device!r}; expected 'cpu' or 'cuda[:N]'")


def _scalar(x, name):
    """A Python float from a float, int or a one-element array/tensor (host)."""
    if isinstance(x, (int, float)):
        return float(x)
    try:
        return float(x)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{name} must be a number or a one-element array; got "
                              f"{type(x).__name__}") from e


class Optimizer:
    """A libkoala optimizer (KOALA-V or KOALA-M) over a fixed list of tensors.

    method:            "vanilla" (KOALA-V) or "momentum" (KOALA-M)
    tensors_or_sizes:  the parameter arrays (their dtype and device are taken),
                       or a list of element counts (then give dtype, device)
    dtype:             "float32" / "float64" (or numpy / torch dtypes)
    device:            "cpu" or "cuda[:N]" (CUDA: the optimizer lives on the
                       current CUDA device; the arrays must be there)
    **config:          koala_config fields: lr, weight_decay, r (None = online),
                       alpha_r, sigma, q (vanilla), sw, sc, sv, a, qw, qv (momentum)
    """

    def __init__(self, method, tensors_or_sizes, dtype=None, device=None, **config):
        self._handle = None
        unknown = sorted(set(config) - set(CONFIG_FIELDS))
        if unknown:
            raise TypeError(f"unknown config field(s) {', '.join(unknown)}; "
                            f"known: {', '.join(CONFIG_FIELDS)}")
        self.method = _method_value(method)
        items = list(tensors_or_sizes)
        if not items:
            raise InvalidArgument("tensors_or_sizes is empty; give at least one tensor")
        want_dtype = arrays.dtype_name(dtype)
        want_device = _device_name(device)
        if all(isinstance(t, (int, float)) for t in items):      # element counts
            sizes = items
            want_dtype = want_dtype or arrays.FLOAT32
            want_device = want_device or "cpu"
        else:
            views = [arrays.view(t, f"tensors_or_sizes[{i}]") for i, t in enumerate(items)]
            want_dtype = want_dtype or views[0].dtype
            want_device = want_device or views[0].device
            for i, v in enumerate(views):
                if v.dtype != want_dtype:
                    raise InvalidArgument(f"tensors_or_sizes[{i}] has dtype {v.dtype}; expected "
                                          f"{want_dtype} like the others")
                if v.device != want_device:
                    raise InvalidArgument(f"tensors_or_sizes[{i}] is on {v.device}; expected "
                                          f"{want_device} like the others (mixed devices)")
            sizes = [v.size for v in views]
        for i, n in enumerate(sizes):
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise InvalidArgument(f"tensors_or_sizes[{i}] is {n!r}; a size must be an int > 0")
        if want_dtype not in _DTYPES:
            raise Unsupported(f"dtype is {want_dtype}; libkoala supports float32 and float64 "
                              "(keep fp32 master weights for fp16/bf16 models)")
        self.sizes = tuple(sizes)
        self.dtype = want_dtype
        self.device = want_device
        memory = capi.KOALA_HOST if want_device == "cpu" else capi.KOALA_DEVICE

        cfg = capi.koala_config()
        capi.koala_config_init(cfg, self.method)
        for key, value in config.items():
            if key == "r" and value is None:
                value = math.nan          # online estimate of R
            try:
                setattr(cfg, key, float(value))
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"config field {key} is {value!r}; expected a number") from e
        self._handle = capi.koala_create(cfg, list(self.sizes), _DTYPES[want_dtype], memory)

    # ---- lifetime ---------------------------------------------------------
    def close(self):
        """Releases the library optimizer now (also done when garbage-collected)."""
        if self._handle is not None:
            capi.koala_destroy(self._handle)
            self._handle = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may be gone
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _live(self):
        if self._handle is None:
            raise InvalidArgument("this optimizer was closed")
        return self._handle

    # ---- arrays -----------------------------------------------------------
    def _pointers(self, tensors, name, writable, allow_none):
        tensors = list(tensors)
        if len(tensors) != len(self.sizes):
            raise InvalidArgument(f"{name} has {len(tensors)} tensors; the optimizer was "
                                  f"created with {len(self.sizes)}")
        handles, keep = [], []
        for i, t in enumerate(tensors):
            if t is None:
                if not allow_none:
                    raise InvalidArgument(f"{name}[{i}] is None")
                handles.append(None)
                continue
            v = arrays.view(t, f"{name}[{i}]")
            arrays.check(v, f"{name}[{i}]", self.dtype, self.sizes[i], self.device, writable)
            handles.append(v.handle)
            keep.append(v.keepalive)
        return handles, keep

    # ---- the step ---------------------------------------------------------
    def predict(self, params=None, stream=None):
        """Before the forward pass. KOALA-M moves params to x + v (params required)."""
        handle = self._live()
        if params is None:
            if self.method == capi.KOALA_MOMENTUM:
                raise InvalidArgument("params is None; KOALA-M's predict moves the parameters")
            capi.koala_predict(handle, None, stream)
            return
        ptrs, keep = self._pointers(params, "params", writable=True, allow_none=False)
        capi.koala_predict(handle, ptrs, stream)
        del keep

    def update(self, loss, loss_var, params, grads, stream=None):
        """After the backward pass: loss = mean minibatch loss, loss_var = mean of the
        squared per-sample losses, grads[i] = gradient of loss (None: no gradient).

        loss / loss_var may be floats, or one-element arrays or tensors. For a
        CUDA optimizer, device scalars (float32 or float64, both of one dtype)
        are read on the device (koala_update_ptr): no host synchronisation."""
        handle = self._live()
        p, keep_p = self._pointers(params, "params", writable=True, allow_none=False)
        g, keep_g = self._pointers(grads, "grads", writable=False, allow_none=True)
        if self.device != "cpu":
            dl, dv = _device_scalar(loss, self.device), _device_scalar(loss_var, self.device)
            if dl is not None or dv is not None:
                if dl is None or dv is None or dl.dtype != dv.dtype or dl.dtype not in _DTYPES:
                    raise InvalidArgument(
                        "loss and loss_var on the device must both be one-element float32 or "
                        f"float64 arrays of one dtype on {self.device}; got "
                        f"{dl.dtype if dl else type(loss).__name__} and "
                        f"{dv.dtype if dv else type(loss_var).__name__}")
                capi.koala_update_ptr(handle, dl.handle, dv.handle, _DTYPES[dl.dtype], p, g,
                                      stream)
                del keep_p, keep_g
                return
        capi.koala_update(handle, _scalar(loss, "loss"), _scalar(loss_var, "loss_var"), p, g,
                          stream)
        del keep_p, keep_g

    # ---- inspection and control ---------------------------------------------
    def set_lr(self, lr):
        """The target multiplier for the following updates (finite, >= 0)."""
        capi.koala_set_lr(self._live(), _scalar(lr, "lr"))

    def info(self, stream=None):
        """An Info (steps, skipped_steps, sigma, p00, p01, p11, r, qw).
        A CUDA optimizer waits for `stream` first."""
        return Info(**capi.koala_get_info(self._live(), stream))

    # ---- checkpoint ---------------------------------------------------------
    def state_dict(self, stream=None):
        """The checkpoint: libkoala's versioned, checksummed bytes."""
        handle = self._live()
        buf = bytearray(capi.koala_state_size(handle))
        capi.koala_state_save(handle, buf, stream)
        return bytes(buf)

    def load_state_dict(self, state, stream=None):
        """Restores a checkpoint of state_dict() (same method, dtype and sizes)."""
        if not isinstance(state, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"state must be the bytes of state_dict(); got "
                                  f"{type(state).__name__}")
        capi.koala_state_load(self._live(), bytes(state), stream)

    def __repr__(self):
        name = "vanilla" if self.method == capi.KOALA_VANILLA else "momentum"
        return (f"koala.Optimizer({name!r}, {len(self.sizes)} tensors, "
                f"{sum(self.sizes)} elements, {self.dtype}, {self.device})")


def _device_scalar(x, device):
    """The ArrayView of a one-element device array on `device`, else None."""
    if isinstance(x, (int, float)):
        return None
    try:
        v = arrays.view(x, "loss")
    except Unsupported:
        return None
    if v.device != device or v.size != 1:
        return None
    return v
