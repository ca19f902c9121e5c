"""koala.Optimizer: one libkoala optimizer over a fixed list of arrays.

    opt = koala.Optimizer("momentum", params, weight_decay=5e-4)
    for batch in data:
        opt.predict(params)                      # before the forward pass
        losses = per_sample_losses(params, batch)
        grads = gradient_of_mean(losses)
        opt.update(losses.mean(), (losses ** 2).mean(), params, grads)

Arrays are checked here (count, dtype, element count, device, density,
element order, writability) before every call, so a mistake raises
InvalidArgument naming the argument instead of letting the library read or
write out of bounds.

Beyond the one-call step (koala.h "Since 1.1"):
  * shard=Shard(...): this process's pieces of a model spread over processes,
    with an all-reduce callable (koala_create_sharded);
  * update_begin / update_end: the two-phase update (sum the buffer yourself);
  * caller_state=True: the state lives in arrays you own (state_layout,
    init_state, bind_state);
  * set_tensor_lr / set_tensor_weight_decay: per-tensor lr multipliers and
    weight decay; posterior(): the posterior weights (fused_predict).
"""
import math
import sys
from dataclasses import dataclass

from . import arrays, capi
from .errors import InvalidArgument, Unsupported

_METHODS = {"vanilla": capi.KOALA_VANILLA, "koala-v": capi.KOALA_VANILLA, "v": capi.KOALA_VANILLA,
            "momentum": capi.KOALA_MOMENTUM, "koala-m": capi.KOALA_MOMENTUM,
            "m": capi.KOALA_MOMENTUM,
            "plusplus": capi.KOALA_PLUSPLUS, "koala++": capi.KOALA_PLUSPLUS,
            "koalapp": capi.KOALA_PLUSPLUS, "pp": capi.KOALA_PLUSPLUS}
METHOD_NAMES = {capi.KOALA_VANILLA: "vanilla", capi.KOALA_MOMENTUM: "momentum",
                capi.KOALA_PLUSPLUS: "plusplus"}
_DTYPES = {arrays.FLOAT32: capi.KOALA_FLOAT32, arrays.FLOAT64: capi.KOALA_FLOAT64,
           arrays.BFLOAT16: capi.KOALA_BFLOAT16, arrays.FLOAT16: capi.KOALA_FLOAT16}
DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
# koala_config's fields a caller may set (koala.h documents each one): the
# float ones, then the integer ones of 1.1. caller_state is the keyword of
# the same name.
FLOAT_FIELDS = ("lr", "weight_decay", "r", "alpha_r", "sigma", "q",
                "sw", "sc", "sv", "a", "qw", "qv")
INT_FIELDS = ("threads", "stochastic_rounding", "seed", "asymmetric", "fused_predict")
CONFIG_FIELDS = FLOAT_FIELDS + INT_FIELDS


@dataclass(frozen=True)
class Info:
    """koala_get_info: steps done, steps the device skipped, the filter scalars,
    the lr in use, the CPU threads and the call phase (0 updated, 1 predicted,
    2 update begun)."""
    steps: int
    skipped_steps: int
    sigma: float
    p00: float
    p01: float
    p11: float
    r: float
    qw: float
    lr: float = 1.0
    threads: int = 0
    phase: int = 0


@dataclass(frozen=True)
class Shard:
    """How this process's tensors sit in the whole model (koala_shard).

    n_global:        tensors of the whole model, the same on every process
    global_index:    for each local tensor, the global tensor it is a piece of
                     (None: local tensor i is global tensor i)
    global_elements: elements of the whole model
    allreduce:       allreduce(buf, count, stream) summing the `count` float64
                     values of `buf` (a memoryview; an int address on a device)
                     in place over the processes, returning None or 0; None if
                     only update_begin / update_end are used. An exception or
                     non-zero return becomes koala.CommunicationError."""
    n_global: int
    global_elements: int
    global_index: tuple = None
    allreduce: object = None


def _method_value(method):
    if isinstance(method, str):
        key = method.lower()
        if key not in _METHODS:
            raise InvalidArgument(f"method is {method!r}; expected 'vanilla', 'momentum' or "
                                  "'plusplus'")
        return _METHODS[key]
    if method in METHOD_NAMES:
        return int(method)
    raise InvalidArgument(f"method is {method!r}; expected 'vanilla', 'momentum' or 'plusplus'")


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


def make_config(method, config):
    """A koala_config for `method` with the given fields changed (r=None: online R)."""
    unknown = sorted(set(config) - set(CONFIG_FIELDS))
    if unknown:
        raise TypeError(f"unknown config field(s) {', '.join(unknown)}; "
                        f"known: {', '.join(CONFIG_FIELDS)}")
    cfg = capi.koala_config()
    capi.koala_config_init(cfg, method)
    for key, value in config.items():
        if key == "r" and value is None:
            value = math.nan          # online estimate of R
        try:
            if key in INT_FIELDS:
                if isinstance(value, bool):
                    value = int(value)
                if not isinstance(value, int) and not (isinstance(value, float)
                                                       and value.is_integer()):
                    raise TypeError
                value = int(value)
                if value < 0 or (key != "seed" and value > 2 ** 31 - 1) or value >= 2 ** 64:
                    raise InvalidArgument(f"config field {key} is {value}; expected an int "
                                          ">= 0" + ("" if key == "seed" else " that fits an int"))
            else:
                value = float(value)
            setattr(cfg, key, value)
        except (TypeError, ValueError, OverflowError) as e:
            kind = "an int" if key in INT_FIELDS else "a number"
            raise InvalidArgument(f"config field {key} is {value!r}; expected {kind}") from e
    return cfg


class Optimizer:
    """A libkoala optimizer (KOALA-V, KOALA-M or KOALA++) over a fixed list of tensors.

    method:            "vanilla" (KOALA-V), "momentum" (KOALA-M) or "plusplus" (KOALA++)
    tensors_or_sizes:  the parameter arrays (their dtype and device are taken),
                       or a list of element counts (then give dtype, device)
    dtype:             "float32", "float64", "bfloat16", "float16" (or numpy /
                       torch / ml_dtypes dtypes). With an explicit bfloat16 or
                       float16, 16-bit raw storage (uint16 arrays, 'H' buffers)
                       holding the bits is accepted too.
    device:            "cpu" or "cuda[:N]" (CUDA: the optimizer lives on the
                       current CUDA device; the arrays must be there)
    shard:             a Shard: this process's pieces of a sharded model
    caller_state:      True: the state lives in arrays you own: allocate them
                       after state_layout(), fill them with init_state(), and
                       bind_state() them before the first predict
    **config:          koala_config fields: lr, weight_decay, r (None = online),
                       alpha_r, sigma, q (vanilla, plusplus), sw, sc, sv, a, qw,
                       qv (momentum), threads, stochastic_rounding, seed,
                       asymmetric (plusplus), fused_predict (momentum)
    """

    def __init__(self, method, tensors_or_sizes, dtype=None, device=None, shard=None,
                 caller_state=False, **config):
        self._handle = None
        self.method = _method_value(method)
        cfg = make_config(self.method, config)
        items = list(tensors_or_sizes)
        if not items and shard is None:
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
                if not arrays.dtype_matches(v.dtype, want_dtype):
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
            hint = (" (16-bit raw storage needs an explicit dtype='bfloat16' or 'float16')"
                    if want_dtype in arrays.RAW16 else "")
            raise Unsupported(f"dtype is {want_dtype}; libkoala supports float32, float64, "
                              f"bfloat16 and float16{hint}")
        self.sizes = tuple(sizes)
        self.dtype = want_dtype
        self.device = want_device
        self.shard = shard
        self.caller_state = bool(caller_state)
        cfg.caller_state = 1 if caller_state else 0
        memory = capi.KOALA_HOST if want_device == "cpu" else capi.KOALA_DEVICE
        if shard is None:
            self._handle = capi.koala_create(cfg, list(self.sizes), _DTYPES[want_dtype], memory)
            self.n_global = len(self.sizes)
        else:
            if not isinstance(shard, Shard):
                raise InvalidArgument(f"shard is a {type(shard).__name__}; expected koala.Shard")
            index = None if shard.global_index is None else [int(i) for i in shard.global_index]
            self._handle = capi.koala_create_sharded(
                cfg, list(self.sizes), int(shard.n_global), index, int(shard.global_elements),
                shard.allreduce, _DTYPES[want_dtype], memory)
            self.n_global = int(shard.n_global)

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

    def __reduce__(self):
        raise TypeError("koala.Optimizer holds a native handle and cannot be pickled or copied; "
                        "save state_dict() and load it into a new Optimizer")

    def _live(self):
        if self._handle is None:
            raise InvalidArgument("this optimizer was closed")
        return self._handle

    def _stream(self, stream):
        """The CUDA stream of a call. None on a device optimizer means the
        current stream of the framework that made the arrays (torch, else
        CuPy), so that the backward pass queued there comes first; the legacy
        default stream (NULL) only where neither is in use. Host: None."""
        if stream is not None or self.device == "cpu":
            return stream
        index = int(self.device.partition(":")[2] or 0)
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            return torch.cuda.current_stream(index).cuda_stream
        cupy = sys.modules.get("cupy")
        if cupy is not None:
            with cupy.cuda.Device(index):
                return cupy.cuda.get_current_stream().ptr
        return None

    # ---- arrays -----------------------------------------------------------
    def _pointers(self, tensors, name, writable, allow_none, dtype=None, like=None):
        """Handles for the C call, the objects to keep alive during it, and the
        views (for the element-order check). `like`: views whose element order
        each array must share (the parameters)."""
        tensors = list(tensors)
        if len(tensors) != len(self.sizes):
            raise InvalidArgument(f"{name} has {len(tensors)} tensors; the optimizer was "
                                  f"created with {len(self.sizes)}")
        handles, keep, views = [], [], []
        for i, t in enumerate(tensors):
            if t is None:
                if not allow_none:
                    raise InvalidArgument(f"{name}[{i}] is None")
                handles.append(None)
                views.append(None)
                continue
            v = arrays.view(t, f"{name}[{i}]")
            arrays.check(v, f"{name}[{i}]", dtype or self.dtype, self.sizes[i], self.device,
                         writable)
            if like is not None and like[i] is not None and v.order != like[i].order:
                raise InvalidArgument(
                    f"{name}[{i}] has another element order than params[{i}] (strides "
                    f"{_order_text(v.order)} against {_order_text(like[i].order)}): element k "
                    "of both must be the same element; make them alike (e.g. "
                    "torch.empty_like(param).copy_(grad))")
            handles.append(v.handle)
            keep.append(v.keepalive if v.keepalive is not None else t)
            views.append(v)
        return handles, keep, views

    def _param_pointers(self, params):
        return self._pointers(params, "params", writable=True, allow_none=False)

    # ---- the step ---------------------------------------------------------
    def predict(self, params=None, stream=None):
        """Before the forward pass. KOALA-M moves params to x + v (params required);
        KOALA-V adds q to sigma; KOALA++ does nothing (params may be None)."""
        handle = self._live()
        if params is None:
            if self.method == capi.KOALA_MOMENTUM and self.sizes:
                raise InvalidArgument("params is None; KOALA-M's predict moves the parameters")
            capi.koala_predict(handle, None, self._stream(stream))
            return
        ptrs, keep, _ = self._param_pointers(params)
        capi.koala_predict(handle, ptrs, self._stream(stream))
        del keep

    def update(self, loss, loss_var, params, grads, stream=None):
        """After the backward pass: loss = mean minibatch loss, loss_var = mean of the
        squared per-sample losses, grads[i] = gradient of loss (None: no gradient).

        loss / loss_var may be floats, or one-element arrays or tensors. For a
        CUDA optimizer, device scalars (float32 or float64, both of one dtype)
        are read on the device (koala_update_ptr): no host synchronisation."""
        handle = self._live()
        p, keep_p, pv = self._param_pointers(params)
        g, keep_g, _ = self._pointers(grads, "grads", writable=False, allow_none=True, like=pv)
        dev = self._device_loss(loss, loss_var)
        if dev is not None:
            capi.koala_update_ptr(handle, dev[0].handle, dev[1].handle, _DTYPES[dev[0].dtype],
                                  p, g, self._stream(stream))
        else:
            capi.koala_update(handle, _scalar(loss, "loss"), _scalar(loss_var, "loss_var"), p, g,
                              self._stream(stream))
        del keep_p, keep_g

    # ---- the step on checked addresses (koala.torch's hot path) ---------------
    # The caller has checked the arrays behind these handles the way
    # _pointers does (dtype, element count, device, density, element order)
    # and keeps them alive during the call; the library still refuses NULL
    # params, misaligned addresses and a wrong phase with its own error.
    def _predict_handles(self, params, stream=None):
        capi.koala_predict(self._live(), params, self._stream(stream))

    def _update_handles(self, loss, loss_var, params, grads, stream=None):
        handle = self._live()
        dev = self._device_loss(loss, loss_var)
        if dev is not None:
            capi.koala_update_ptr(handle, dev[0].handle, dev[1].handle, _DTYPES[dev[0].dtype],
                                  params, grads, self._stream(stream))
        else:
            capi.koala_update(handle, _scalar(loss, "loss"), _scalar(loss_var, "loss_var"),
                              params, grads, self._stream(stream))

    def _device_loss(self, loss, loss_var):
        """(loss view, loss_var view) when both are device scalars of one float
        dtype on this optimizer's device; None for host values."""
        if self.device == "cpu":
            return None
        dl, dv = _device_scalar(loss, self.device), _device_scalar(loss_var, self.device)
        if dl is None and dv is None:
            return None
        if dl is None or dv is None or dl.dtype != dv.dtype or \
                dl.dtype not in (arrays.FLOAT32, arrays.FLOAT64):
            raise InvalidArgument(
                "loss and loss_var on the device must both be one-element float32 or "
                f"float64 arrays of one dtype on {self.device}; got "
                f"{dl.dtype if dl else type(loss).__name__} and "
                f"{dv.dtype if dv else type(loss_var).__name__}")
        return dl, dv

    # ---- the two-phase update ---------------------------------------------
    def sums_size(self):
        """Doubles of the partial-sums buffer of update_begin / update_end."""
        return capi.koala_sums_size(self._live())

    def update_begin(self, params, grads, sums, stream=None):
        """Phase 1: this process's partial sums into `sums` (sums_size() float64
        values: a NumPy array, a float64 tensor, ...). Sum it over the processes,
        then call update_end with the same params and grads."""
        handle = self._live()
        p, keep_p, pv = self._param_pointers(params)
        g, keep_g, _ = self._pointers(grads, "grads", writable=False, allow_none=True, like=pv)
        s, keep_s = self._sums(sums, writable=True)
        capi.koala_update_begin(handle, p, g, s, self._stream(stream))
        del keep_p, keep_g, keep_s

    def update_end(self, loss, loss_var, params, grads, sums, stream=None):
        """Phase 2: finishes the update from the summed buffer."""
        handle = self._live()
        p, keep_p, pv = self._param_pointers(params)
        g, keep_g, _ = self._pointers(grads, "grads", writable=False, allow_none=True, like=pv)
        s, keep_s = self._sums(sums, writable=False)
        dev = self._device_loss(loss, loss_var)
        if dev is not None:
            capi.koala_update_end_ptr(handle, dev[0].handle, dev[1].handle,
                                      _DTYPES[dev[0].dtype], p, g, s, self._stream(stream))
        else:
            capi.koala_update_end(handle, _scalar(loss, "loss"), _scalar(loss_var, "loss_var"),
                                  p, g, s, self._stream(stream))
        del keep_p, keep_g, keep_s

    def _sums(self, sums, writable):
        return self._float64_block(sums, "sums", self.sums_size(), writable)

    def _float64_block(self, x, name, count, writable):
        v = arrays.view(x, name)
        if v.dtype != arrays.FLOAT64 or v.device != self.device or v.size < count or \
                not v.contiguous or v.order is not None:
            raise InvalidArgument(f"{name} must be a C-contiguous float64 array of at least "
                                  f"{count} values on {self.device}; got {v.size} of {v.dtype} "
                                  f"on {v.device}")
        if writable and not v.writable:
            raise InvalidArgument(f"{name} is read-only")
        return v.handle, (x, v.keepalive)

    # ---- caller-owned state -------------------------------------------------
    def state_layout(self):
        """(buffers_per_tensor, state_dtype, scalar_count): buffers_per_tensor
        arrays per tensor (sizes[i] elements of state_dtype each: the parameter
        dtype, float32 for the 16-bit ones) and scalar_count float64 filter
        scalars."""
        per, dtype, count = capi.koala_state_layout(self._live())
        return per, DTYPE_NAMES[dtype], count

    def _state_pointers(self, buffers, scalars):
        per, dtype, count = self.state_layout()
        buffers = list(buffers)
        n = len(self.sizes)
        if len(buffers) != per * n:
            raise InvalidArgument(f"buffers has {len(buffers)} arrays; this optimizer needs "
                                  f"{per} per tensor ({per * n}: buffer b of tensor i at "
                                  "b * n_tensors + i)")
        handles, keep = [], []
        for k, b in enumerate(buffers):
            v = arrays.view(b, f"buffers[{k}]")
            arrays.check(v, f"buffers[{k}]", dtype, self.sizes[k % n], self.device, True)
            handles.append(v.handle)
            keep.append(v.keepalive if v.keepalive is not None else b)
        s, keep_s = self._float64_block(scalars, "scalars", count, True)
        return handles, s, (keep, keep_s)

    def init_state(self, buffers, scalars, stream=None):
        """Writes the initial state (zero buffers, the config's scalars) into
        caller arrays (caller_state=True)."""
        b, s, keep = self._state_pointers(buffers, scalars)
        capi.koala_state_init(self._live(), b, s, self._stream(stream))
        del keep

    def bind_state(self, buffers, scalars):
        """Makes the following calls use the state in `buffers` / `scalars`
        (caller_state=True). The arrays are used in place, not copied: keep
        them (the module keeps buffer objects alive; for int addresses and
        tensors passed by address, you must). Rebind when they move."""
        b, s, keep = self._state_pointers(buffers, scalars)
        capi.koala_bind_state(self._live(), b, s)
        self._bound = keep     # tensors passed by address stay alive while bound

    # ---- inspection and control ---------------------------------------------
    def set_lr(self, lr):
        """The target multiplier for the following updates (finite, >= 0)."""
        capi.koala_set_lr(self._live(), _scalar(lr, "lr"))

    def set_tensor_lr(self, scales, stream=None):
        """Per-tensor lr multipliers (one per global tensor; None: all 1): tensor
        i steps with lr * scales[i]."""
        capi.koala_set_tensor_lr(self._live(), None if scales is None else
                                 [_scalar(x, f"scales[{i}]") for i, x in enumerate(scales)],
                                 self._stream(stream))

    def set_tensor_weight_decay(self, weight_decays, stream=None):
        """Per-tensor weight decay (one per global tensor; None: the config's)."""
        capi.koala_set_tensor_weight_decay(
            self._live(), None if weight_decays is None else
            [_scalar(x, f"weight_decays[{i}]") for i, x in enumerate(weight_decays)], self._stream(stream))

    def posterior(self, params, out, stream=None):
        """Writes the posterior weights of the last update into `out` (arrays like
        params): with fused_predict the parameters hold the next prediction."""
        p, keep_p, pv = self._param_pointers(params)
        o, keep_o, _ = self._pointers(out, "out", writable=True, allow_none=False, like=pv)
        capi.koala_posterior(self._live(), p, o, self._stream(stream))
        del keep_p, keep_o

    def info(self, stream=None):
        """An Info (steps, skipped_steps, sigma, p00, p01, p11, r, qw, lr, threads,
        phase). A CUDA optimizer waits for `stream` first."""
        return Info(**capi.koala_get_info(self._live(), self._stream(stream)))

    # ---- checkpoint ---------------------------------------------------------
    def state_dict(self, stream=None):
        """The checkpoint: libkoala's versioned, checksummed bytes."""
        handle = self._live()
        buf = bytearray(capi.koala_state_size(handle))
        capi.koala_state_save(handle, buf, self._stream(stream))
        return bytes(buf)

    def load_state_dict(self, state, stream=None):
        """Restores a checkpoint of state_dict() (same method, dtype and sizes)."""
        if not isinstance(state, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"state must be the bytes of state_dict(); got "
                                  f"{type(state).__name__}")
        capi.koala_state_load(self._live(), bytes(state), self._stream(stream))

    def __repr__(self):
        return (f"koala.Optimizer({METHOD_NAMES[self.method]!r}, {len(self.sizes)} tensors, "
                f"{sum(self.sizes)} elements, {self.dtype}, {self.device}"
                f"{', sharded' if self.shard is not None else ''})")


def _order_text(order):
    return "C order" if order is None else str(tuple(s for _, s in order))


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
