"""Drop-in replacements for the official KOALA classes (Araachie/koala, koala.py):

    from koala.torch import MomentumKOALA        # instead of: from koala import MomentumKOALA
    opt = MomentumKOALA(model.parameters(), weight_decay=5e-4)
    opt.predict(); loss = crit(model(x), y); ...; opt.zero_grad(); loss.mean().backward()
    opt.update(loss.mean(), (loss ** 2).mean())

Same constructor keywords and defaults as the official classes, same
predict() / update(loss, loss_var) methods; the arithmetic runs in libkoala
(one libkoala optimizer per (device, dtype) over all parameters, in
param-group order). The param groups' `lr` is read at every update as the
target multiplier (schedulers that set group["lr"] work unchanged).

Differences from the official code, by design (ALGORITHM.md §5):
  * filter scalars are float64 everywhere (the official rounds some to float32);
  * a step where every tensor is skipped keeps the prediction instead of crashing;
  * a NaN/Inf loss or gradient raises koala.NotFinite on CPU and changes nothing
    (a CUDA optimizer skips the step on the device and counts it in info()).
"""
import torch

from .errors import InvalidArgument, Unsupported
from .optimizer import Optimizer as _Engine

__all__ = ["VanillaKOALA", "MomentumKOALA"]


class _KOALABase(torch.optim.Optimizer):
    _method = None

    def __init__(self, params, lr, engine_config, **kwargs):
        # Like the official classes: extra keywords become param-group defaults,
        # and every group starts with the given lr.
        self._engines_ready = False
        defaults = dict(kwargs)
        defaults["lr"] = lr
        super().__init__(params, defaults)
        for group in self.param_groups:
            group["lr"] = lr
        self._config = dict(engine_config)
        self._build_engines()
        self._engines_ready = True

    # ---- layout -----------------------------------------------------------
    def _build_engines(self):
        """One libkoala optimizer per (device, dtype), over its params in group order."""
        buckets = {}
        for group_index, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.is_sparse:
                    raise Unsupported("sparse parameters are not supported by libkoala")
                if p.dtype not in (torch.float32, torch.float64):
                    raise Unsupported(f"a parameter has dtype {p.dtype}; libkoala supports "
                                      "float32 and float64 (keep fp32 master weights)")
                key = (str(p.device), p.dtype)
                buckets.setdefault(key, []).append((p, group_index))
        self._buckets = []
        for (device, dtype), entries in buckets.items():
            params = [p for p, _ in entries]
            with _on_device(params[0].device):
                engine = _Engine(self._method, params, **self._config)
            # Group indices, not the group dicts: load_state_dict replaces the dicts.
            self._buckets.append((engine, params, sorted({g for _, g in entries})))

    def add_param_group(self, param_group):
        if getattr(self, "_engines_ready", False):
            raise Unsupported("libkoala fixes the tensor layout at construction: create the "
                              "optimizer with every parameter group")
        super().add_param_group(param_group)

    # ---- the step ---------------------------------------------------------
    @torch.no_grad()
    def predict(self):
        """Before the forward pass (KOALA-M moves the parameters to x + v)."""
        for engine, params, _ in self._buckets:
            with _on_device(params[0].device):
                engine.predict(params, stream=_stream(params[0]))

    @torch.no_grad()
    def update(self, loss, loss_var):
        """After backward of the mean loss: loss = mean of the per-sample losses,
        loss_var = mean of their squares. Tensors (CPU or CUDA) or floats."""
        for engine, params, group_indices in self._buckets:
            lrs = {self.param_groups[g]["lr"] for g in group_indices}
            if len(lrs) > 1:
                raise Unsupported(f"param groups with different lr ({sorted(lrs)}) on one "
                                  "device/dtype: libkoala applies one lr per optimizer")
            lr = lrs.pop()
            device = params[0].device
            with _on_device(device):
                engine.set_lr(lr)
                grads = [_grad_of(p, i) for i, p in enumerate(params)]
                loss_arg, var_arg = _loss_args(loss, loss_var, device)
                engine.update(loss_arg, var_arg, params, grads, stream=_stream(params[0]))
        # torch's lr schedulers count optimizer steps to warn about call order;
        # update() is KOALA's step.
        if hasattr(self, "_step_count"):
            self._step_count += 1

    def step(self, closure=None):
        raise NotImplementedError("KOALA has no step(): call predict() before the forward pass "
                                  "and update(loss_mean, loss_var) after backward")

    # ---- inspection and checkpoints ----------------------------------------
    def koala_info(self):
        """The libkoala Info of each (device, dtype) optimizer, in layout order."""
        return [engine.info(stream=_stream(params[0])) for engine, params, _ in self._buckets]

    def state_dict(self):
        sd = super().state_dict()
        sd["koala"] = [engine.state_dict(stream=_stream(params[0]))
                       for engine, params, _ in self._buckets]
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        blobs = state_dict.pop("koala", None)
        if blobs is None or len(blobs) != len(self._buckets):
            raise InvalidArgument("state_dict has no libkoala state for this optimizer's "
                                  "layout (was it saved by the same koala.torch class?)")
        super().load_state_dict(state_dict)
        for (engine, params, _), blob in zip(self._buckets, blobs):
            with _on_device(params[0].device):
                engine.load_state_dict(blob, stream=_stream(params[0]))


class VanillaKOALA(_KOALABase):
    """KOALA-V (official defaults; the official train.py passes sigma=0.1, weight_decay=5e-4)."""
    _method = "vanilla"

    def __init__(self, params, sigma: float = 1, q: float = 1, r: float = None,
                 alpha_r: float = 0.9, weight_decay: float = 0.0, lr: float = 1, **kwargs):
        super().__init__(params, lr, dict(sigma=sigma, q=q, r=r, alpha_r=alpha_r,
                                          weight_decay=weight_decay, lr=lr), **kwargs)


class MomentumKOALA(_KOALABase):
    """KOALA-M (official defaults; the official train.py passes weight_decay=5e-4)."""
    _method = "momentum"

    def __init__(self, params, sw: float = 1e-1, sc: float = 0, sv: float = 1e-1, a: float = 0.9,
                 qw: float = 1e-2, qv: float = 1e-2, r: float = None, alpha_r: float = 0.9,
                 weight_decay: float = 0.0, lr: float = 1, **kwargs):
        super().__init__(params, lr, dict(sw=sw, sc=sc, sv=sv, a=a, qw=qw, qv=qv, r=r,
                                          alpha_r=alpha_r, weight_decay=weight_decay, lr=lr),
                         **kwargs)


# ---- helpers ------------------------------------------------------------------
class _on_device:
    """Makes a CUDA tensor's device current (libkoala uses the current device)."""

    def __init__(self, device):
        self._ctx = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def _stream(p):
    """The current CUDA stream of p's device as an address (None on the CPU)."""
    if p.device.type != "cuda":
        return None
    return torch.cuda.current_stream(p.device).cuda_stream


def _grad_of(p, i):
    g = p.grad
    if g is None:
        return None
    if g.is_sparse:
        raise Unsupported(f"parameter {i} has a sparse gradient; libkoala needs dense gradients")
    return g if g.is_contiguous() else g.contiguous()


def _loss_args(loss, loss_var, device):
    """loss / loss_var as the engine takes them: floats for a CPU optimizer;
    for a CUDA optimizer, device tensors of one float dtype when the caller
    gave device tensors (read on the device, no sync), else floats."""
    if device.type == "cuda" and (isinstance(loss, torch.Tensor) and loss.is_cuda):
        dtype = loss.dtype if loss.dtype in (torch.float32, torch.float64) else torch.float32
        out = []
        for x in (loss, loss_var):
            x = torch.as_tensor(x).detach()
            out.append(x.to(device=device, dtype=dtype).reshape(1).contiguous())
        return out[0], out[1]
    return _host_float(loss, "loss"), _host_float(loss_var, "loss_var")


def _host_float(x, name):
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise InvalidArgument(f"{name} has {x.numel()} elements; pass the mean "
                                  "(a one-element tensor or a float)")
        return float(x.detach().item())
    return float(x)
