"""Drop-in replacements for the official KOALA classes (Araachie/koala,
koala.py: VanillaKOALA, MomentumKOALA) and for KOALA++ (Sumxiaa/KOALA_Plus_Plus,
koalap.py: KOALAPlusPlus):

    from koala.torch import MomentumKOALA        # instead of: from koala import MomentumKOALA
    opt = MomentumKOALA(model.parameters(), weight_decay=5e-4)
    opt.predict(); loss = crit(model(x), y); ...; opt.zero_grad(); loss.mean().backward()
    opt.update(loss.mean(), (loss ** 2).mean())

Same constructor keywords and defaults as the official classes, same
predict() / update(loss, loss_var) methods; the arithmetic runs in libkoala
(one libkoala optimizer, i.e. one filter, per (device, dtype) of the
parameters, over them in param-group order).

Param groups: each group's `lr` scales that group's tensors exactly as the
official code's group["lr"] does (libkoala's per-tensor lr multipliers), read
at every update, so schedulers (LambdaLR with one lambda per group, ...) work.
A group's `weight_decay` is that group's tensors' weight decay (an extension:
the official code has one optimizer-wide weight_decay, the constructor's,
which is every group's default). add_param_group works at any time.

State: state_dict()["state"][i] holds parameter i's buffers as tensors shaped
like it ({"velocity", "xbar"} for KOALA-M, {"v", "H_prev"} for KOALA++) and
the first parameter of each filter also holds "filter" (a float64 tensor: the
filter scalars and the call phase). libkoala works on these very tensors
(caller-owned state: nothing is copied per step), so torch.save and
torch.distributed.checkpoint save and load them, and a run continues bit for
bit.

Differences from the official code, by design (ALGORITHM.md §5):
  * filter scalars are float64 everywhere (the official rounds some to float32);
  * a step where every tensor is skipped keeps the prediction instead of crashing;
  * a NaN/Inf loss or gradient raises koala.NotFinite on CPU and changes nothing
    (a CUDA optimizer skips the step on the device and counts it in info()).
    The optimizer is then still predicted: the next predict() does nothing, so
    the usual loop `try: opt.update(...) except koala.NotFinite: continue` goes
    on with the next batch (or call update() again).

Many processes (torch.distributed initialised with more than one process):
  * data parallel (DDP, the official loop unchanged): update() averages loss
    and loss_var over the process group (one all_reduce of 2 numbers, on the
    loss's device: no host synchronisation on CUDA); average_loss=False turns
    it off, process_group= chooses the group;
  * sharded parameters (FSDP2's DTensors: their local shards; or
    sharding="pieces" for parameters that are this process's pieces, as
    FSDP1's use_orig_params=True gives; or sharding="partition", ZeRO style:
    every process passes all parameters, each updates its share and
    broadcasts it): one libkoala sharded optimizer whose partial sums go
    through torch.distributed.all_reduce, so every process computes the same
    filter as one process on the whole model.
"""
import functools
import math
import operator
import warnings
import weakref

import torch

from . import arrays
from .errors import BadState, InvalidArgument, Unsupported
from .optimizer import Optimizer as _Engine
from .optimizer import Shard

__all__ = ["VanillaKOALA", "MomentumKOALA", "KOALAPlusPlus"]

_HALF = (torch.float16, torch.bfloat16)
_SUPPORTED = (torch.float32, torch.float64) + _HALF
# Keywords of the filter itself: one value per optimizer, never per group.
_FILTER_KEYS = ("sigma", "q", "r", "alpha_r", "sw", "sc", "sv", "a", "qw", "qv",
                "is_symmetric", "threads", "stochastic_rounding", "seed")


@functools.lru_cache(maxsize=None)
def _dtensor_type():
    """torch's DTensor class, or None (looked up once: a failing import is not
    cached by Python and costs a search of sys.path on every call)."""
    try:
        from torch.distributed.tensor import DTensor
        return DTensor
    except ImportError:
        try:
            from torch.distributed._tensor import DTensor
            return DTensor
        except ImportError:
            return None


def _local(p):
    """The tensor of this process: a DTensor's local shard, else p itself."""
    dt = _dtensor_type()
    if dt is not None and isinstance(p, dt):
        return p.to_local()
    return p


# The per-step hot path reads tensor attributes with map() over these (one C
# call per tensor, no Python frame): about 50 ns a tensor each.
_DATA_PTR = torch.Tensor.data_ptr
_NUMEL = torch.Tensor.numel
_GET_DEVICE = torch.Tensor.get_device
_IS_CONTIGUOUS = torch.Tensor.is_contiguous
_STRIDE = torch.Tensor.stride
_GRAD = operator.attrgetter("grad")
_DTYPE = operator.attrgetter("dtype")
_VERSION = operator.attrgetter("_version")


class _Bucket:
    """One libkoala optimizer: the parameters of one (device, dtype), in group
    order (`params`, their group indices), the ones this process updates
    (`mine`: indices into params) and the state tensors bound to it."""

    def __init__(self, key, params, groups):
        self.key = key
        self.params = params
        self.groups = groups
        self.group_ids = sorted(set(groups))
        self.mine = []
        self.engine = None
        self.phase = 0          # 0 updated (predict next), 1 predicted
        self.lrs = None         # the per-tensor lr / weight decay last given
        self.wds = None
        self.layouts = None     # (dtype, device, stride) of each local piece when bound
        self.last_grads = None  # _grad_marks of the gradients of the last update
        self.group_values = None  # the groups' (lr, weight_decay) behind lrs / wds
        # The per-step path of a bucket of plain tensors (no DTensor): its
        # parameters are their own local tensors (`locals`), checked once by
        # the engine and then known by their addresses (`ptrs`, None: check
        # them at the next call); `expect`: what a gradient must be like to
        # go to the library as it is (see _KOALABase._fast_grads).
        self.fast = False
        self.locals = []
        self.ptrs = None
        self.expect = None


class _KOALABase(torch.optim.Optimizer):
    _method = None
    _state_keys = ()

    def __init__(self, params, lr, weight_decay, filter_config, extra):
        self._ready = False
        self._buckets = []
        if "params" in filter_config:
            raise TypeError("params given twice")
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
            raise InvalidArgument(f"lr is {lr!r}; it must be a finite number >= 0")
        self._filter_config = dict(filter_config)
        self._process_group = extra.pop("process_group", None)
        self._average_loss = extra.pop("average_loss", None)
        self._sharding = extra.pop("sharding", None)
        if self._sharding not in (None, "pieces", "partition"):
            raise InvalidArgument(f"sharding is {self._sharding!r}; expected None (automatic: "
                                  "DTensor parameters are sharded), 'pieces' or 'partition'")
        if extra:
            name = type(self).__name__
            hints = {"momentum": " (KOALA has no momentum; MomentumKOALA's velocity decay is `a`)",
                     "betas": " (KOALA has no betas)", "eps": " (KOALA has no eps)"}
            bad = ", ".join(f"'{k}'{hints.get(k, '')}" for k in sorted(extra))
            raise TypeError(f"{name}() got unexpected keyword argument(s) {bad}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self._warned_swap = False
        self._build()
        self._ready = True

    # ---- many processes ------------------------------------------------------
    def _dist(self):
        """The process group to work with, or None for one process."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self._process_group
        return group if group is not None else dist.group.WORLD

    def _world(self):
        import torch.distributed as dist
        group = self._dist()
        return (1, 0) if group is None else (dist.get_world_size(group), dist.get_rank(group))

    def _sharding_mode(self):
        if self._sharding is not None:
            if self._dist() is None:
                raise InvalidArgument(f"sharding={self._sharding!r} needs torch.distributed to "
                                      "be initialised")
            return self._sharding
        dt = _dtensor_type()
        if dt is not None and any(isinstance(p, dt) for g in self.param_groups
                                  for p in g["params"]):
            return "pieces"
        return None

    # ---- layout ---------------------------------------------------------------
    def _check_group(self, group, index):
        for key in group:
            if key in _FILTER_KEYS:
                raise InvalidArgument(
                    f"param_groups[{index}] sets {key!r}: KOALA has one filter for all its "
                    "parameters, so it is a constructor keyword, not a group option")
        for key in ("lr", "weight_decay"):
            value = float(group[key])
            if not math.isfinite(value) or value < 0:
                raise InvalidArgument(f"param_groups[{index}]['{key}'] is {group[key]!r}; it "
                                      "must be a finite number >= 0")
        for p in group["params"]:
            local = _local(p)
            if local.is_sparse:
                raise Unsupported("sparse parameters are not supported by libkoala")
            if local.dtype not in _SUPPORTED:
                raise Unsupported(f"a parameter has dtype {local.dtype}; libkoala supports "
                                  "float32, float64, bfloat16 and float16")

    def _build(self, keep_state=True):
        """(Re)creates the libkoala optimizers for the current parameters, binding
        the state tensors in self.state (made fresh where missing)."""
        for i, group in enumerate(self.param_groups):
            self._check_group(group, i)
        old = {b.key: b for b in self._buckets}
        for b in self._buckets:
            if b.engine is not None:
                b.engine.close()
        mode = self._sharding_mode()
        buckets = {}
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                local = _local(p)
                key = (str(local.device), local.dtype)
                buckets.setdefault(key, ([], []))
                buckets[key][0].append(p)
                buckets[key][1].append(gi)
        self._buckets = []
        for key, (params, groups) in buckets.items():
            b = _Bucket(key, params, groups)
            prev = old.get(key)
            if prev is not None:
                b.phase = prev.phase
            self._make_engine(b, mode, keep_state)
            self._buckets.append(b)

    def _make_engine(self, b, mode, keep_state):
        world, rank = self._world() if mode else (1, 0)
        locals_ = [_local(p) for p in b.params]
        b.fast = all(t is p for t, p in zip(locals_, b.params))   # no DTensor
        if mode == "partition":
            owners = _partition([p.numel() for p in b.params], world)
            b.mine = [i for i, o in enumerate(owners) if o == rank]
            b.owners = owners
        else:
            b.mine = [i for i, t in enumerate(locals_) if t.numel() > 0]
            b.owners = None
        pieces = [locals_[i] for i in b.mine]
        b.locals = pieces if b.fast else []
        device = torch.device(b.key[0])
        config = dict(self._engine_config())
        if mode is None:
            if not pieces:
                b.engine = None
                return
            shard = None
        else:
            dt = _dtensor_type()
            if mode == "pieces" and not (dt is not None and
                                         any(isinstance(p, dt) for p in b.params)):
                # Plain tensors that are pieces (FSDP1): count them over the processes.
                total = torch.tensor([float(sum(t.numel() for t in locals_))], dtype=torch.float64,
                                     device=self._comm_device())
                self._all_reduce(total, device)
                global_elements = int(total.item())
            else:                  # DTensors know their global size; partition: whole tensors
                global_elements = sum(p.numel() for p in b.params)
            shard = Shard(n_global=len(b.params), global_elements=global_elements,
                          global_index=tuple(b.mine), allreduce=self._allreduce_fn(device))
        b.engine = _Engine(self._method, pieces if pieces else [], dtype=b.key[1],
                           device=_engine_device(device), shard=shard, caller_state=True,
                           **config)
        self._bind(b, keep_state)

    def _engine_config(self):
        config = {k: v for k, v in self._filter_config.items() if v is not None or k == "r"}
        config["lr"] = 1.0          # the groups' lr are per-tensor multipliers
        return config

    def _filter_key(self):
        return "filter" if self._sharding_mode() is None else f"filter_rank{self._world()[1]}"

    def _bind(self, b, keep_state):
        """Binds state tensors to b.engine: the existing ones of self.state
        (converted to the engine's dtype/device/element order where the
        parameters changed), fresh ones from koala_state_init otherwise."""
        per, sdtype, count = b.engine.state_layout()
        sdtype = getattr(torch, sdtype)
        device = torch.device(b.key[0])
        fkey = self._filter_key()
        first = self.state[b.params[0]]
        fresh_scalars = torch.zeros(count, dtype=torch.float64, device=device)
        fresh_buffers = [[torch.zeros_like(_local(b.params[i]), dtype=sdtype) for i in b.mine]
                         for _ in range(per)]
        b.engine.init_state([t for bufs in fresh_buffers for t in bufs], fresh_scalars)
        scalars = first.get(fkey) if keep_state else None
        if scalars is not None and scalars.numel() != count:
            if scalars.numel() < count:     # tensors were added: keep what is known
                fresh_scalars[:scalars.numel()] = scalars.to(device)
            scalars = None
        if scalars is None:
            scalars = fresh_scalars
        elif scalars.device != device or scalars.dtype != torch.float64:
            scalars = scalars.to(device=device, dtype=torch.float64)
        first[fkey] = scalars
        buffers = []
        for k in range(per):
            key = self._state_keys[k]
            row = []
            for j, i in enumerate(b.mine):
                p = b.params[i]
                local = _local(p)
                have = self.state[p].get(key) if keep_state else None
                if have is not None:
                    have_local = _local(have)
                    if have_local.shape != local.shape:
                        raise InvalidArgument(
                            f"the state {key!r} of a parameter has shape "
                            f"{tuple(have_local.shape)}, the parameter {tuple(local.shape)}")
                    if have_local.dtype != sdtype or have_local.device != local.device or \
                            have_local.stride() != local.stride():
                        # Same elements in the parameter's dtype, device and order.
                        new = torch.empty_like(local, dtype=sdtype)
                        new.copy_(have_local)
                        have = _like_param(p, new)
                        have_local = new
                    row.append(have_local)
                    self.state[p][key] = have
                else:
                    t = fresh_buffers[k][j]
                    row.append(t)
                    self.state[p][key] = _like_param(p, t)
            buffers.extend(row)
        b.engine.bind_state(buffers, scalars)
        b.scalars = scalars
        b.buffers = buffers
        b.layouts = [_layout(_local(b.params[i])) for i in b.mine]
        b.lrs = b.wds = None
        b.group_values = None
        b.ptrs = None

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if getattr(self, "_ready", False):
            self._build()

    def _sync_layout(self):
        """Rebuilds the libkoala optimizers when parameters changed dtype, device
        or element order since they were bound (model.double(), .to(...),
        .to(memory_format=...)): the state follows them."""
        for b in self._buckets:
            if b.ptrs is not None:
                # Checked before: unchanged while the addresses are (one
                # data_ptr() a tensor). A new dtype, device or memory format
                # (model.double(), .to(...), p.data = ...) means new memory,
                # so new addresses. Not noticed: a view of the same memory
                # put in place of the data (p.data = p.data.t()); gradients
                # in its new order are still paired right (_fast_grads sends
                # them through _grads), a hand-made C-order one is not.
                try:
                    if list(map(_DATA_PTR, b.locals)) == b.ptrs:
                        continue
                except RuntimeError:    # no storage (sparse): the checks below say so
                    pass
                b.ptrs = None           # check them again at the engine call
            locals_ = [_local(b.params[i]) for i in b.mine]
            same_key = all((str(t.device), t.dtype) == b.key for t in locals_)
            if same_key and [_layout(t) for t in locals_] == b.layouts:
                continue
            keys = {(str(_local(p).device), _local(p).dtype) for p in b.params}
            if len(keys) > 1:
                raise InvalidArgument(
                    "parameters that share one KOALA filter now have different dtypes or "
                    f"devices ({sorted(str(k) for k in keys)}); convert the whole model alike "
                    "(model.to(dtype)), or create the optimizer after converting it")
            self._build()
            return

    # ---- the step ---------------------------------------------------------------
    @torch.no_grad()
    def predict(self):
        """Before the forward pass (KOALA-M moves the parameters to x + v). After
        an update that raised (koala.NotFinite, or a mistake it reported) the
        optimizer is still predicted and this does nothing."""
        self._sync_layout()
        for b in self._buckets:
            if b.phase == 1:
                continue
            if b.engine is not None:
                with _on_device(b):
                    if b.fast:
                        b.engine._predict_handles(self._param_ptrs(b), stream=_stream(b))
                    else:
                        b.engine.predict(self._engine_params(b), stream=_stream(b))
            b.phase = 1
            if b.owners is not None and self._method == "momentum":
                self._broadcast(b)

    @torch.no_grad()
    def update(self, loss, loss_var):
        """After backward of the mean loss: loss = mean of the per-sample losses,
        loss_var = mean of their squares. Tensors (CPU or CUDA) or floats.
        Under torch.distributed with more than one process, both are averaged
        over the process group first (average_loss=False: not)."""
        self._sync_layout()
        loss, loss_var = self._check_losses(loss, loss_var)
        loss, loss_var = self._average(loss, loss_var)
        # Per bucket: the parameters' gradients as they are (for the marks),
        # and what goes to the library: their addresses where they can go as
        # they are (_fast_grads), else gradient tensors (converted where
        # needed by _grads; the engine checks them).
        grads_of = []
        for b in self._buckets:
            raw, gptrs = self._fast_grads(b) if b.fast else (self._raw_grads(b), None)
            grads_of.append((raw, gptrs, self._grads(b) if gptrs is None else None))
        self._check_backward([raw for raw, _, _ in grads_of])
        for b, (raw, gptrs, grads) in zip(self._buckets, grads_of):
            if b.phase == 0:
                raise BadState("update() without predict(): call predict() before the forward "
                               "pass of every iteration")
            self._push_group_values(b)
            if b.engine is not None:
                with _on_device(b):
                    loss_arg, var_arg = _loss_args(loss, loss_var, torch.device(b.key[0]))
                    if gptrs is not None:
                        b.engine._update_handles(loss_arg, var_arg, self._param_ptrs(b), gptrs,
                                                 stream=_stream(b))
                    else:
                        b.engine.update(loss_arg, var_arg, self._engine_params(b), grads,
                                        stream=_stream(b))
            b.phase = 0
            b.last_grads = _grad_marks(raw)
            if b.owners is not None:
                self._broadcast(b)
        # torch's lr schedulers check that the optimizer stepped before them:
        # update() is KOALA's step (torch < 2: _step_count, torch >= 2: _opt_called).
        self._step_count = getattr(self, "_step_count", 0) + 1
        self._opt_called = True

    def step(self, closure=None):
        raise NotImplementedError("KOALA has no step(): call predict() before the forward pass "
                                  "and update(loss_mean, loss_var) after backward (wrappers "
                                  "that call step(), such as ZeroRedundancyOptimizer, cannot "
                                  "drive KOALA: for ZeRO-style partitioning pass "
                                  "sharding='partition')")

    def _engine_params(self, b):
        return [_local(b.params[i]) for i in b.mine]

    def _param_ptrs(self, b):
        """The parameters' addresses for the library (a bucket of plain
        tensors): checked by the engine the first time and after they moved
        (its InvalidArgument names the problem), then reused while
        _sync_layout finds them at the same addresses."""
        if b.ptrs is None:
            params = b.locals
            ptrs, _, _ = b.engine._param_pointers(params)
            if not all(type(h) is int for h in ptrs):
                return ptrs             # not data_ptr()s: checked at every call
            contiguous = all(map(_IS_CONTIGUOUS, params))
            b.expect = (list(map(_NUMEL, params)), [b.key[1]] * len(params),
                        list(map(_GET_DEVICE, params)), contiguous,
                        None if contiguous else list(map(_STRIDE, params)))
            b.ptrs = ptrs
        return b.ptrs

    def _raw_grads(self, b):
        return [b.params[i].grad for i in b.mine]

    def _fast_grads(self, b):
        """(the gradients as they are, their addresses) when every gradient
        can go to the library as it is: dense, the parameter's element count,
        dtype, device and element order (C order, or the parameter's
        strides); addresses None otherwise (then _grads converts them and the
        engine checks them, naming what is wrong). No gradient: None. (torch
        gives a gradient the parameter's shape, dtype and device when it is
        set; these checks are for gradients that outlived a change of the
        parameter, p.data = ..., and cost about 30 ns a tensor each.)"""
        raw = list(map(_GRAD, b.locals))
        if b.engine is None or b.ptrs is None:
            return raw, None
        numels, dtypes, devices, contiguous, strides = b.expect
        have = raw
        try:
            try:
                ok = list(map(_NUMEL, raw)) == numels
            except TypeError:              # some have no gradient (None)
                index = [i for i, g in enumerate(raw) if g is not None]
                have = [raw[i] for i in index]
                numels = [numels[i] for i in index]
                dtypes, devices = dtypes[:len(index)], [devices[i] for i in index]
                if strides is not None:
                    strides = [strides[i] for i in index]
                ok = list(map(_NUMEL, have)) == numels
            ok = ok and list(map(_DTYPE, have)) == dtypes and \
                list(map(_GET_DEVICE, have)) == devices and \
                (all(map(_IS_CONTIGUOUS, have)) if contiguous else
                 list(map(_STRIDE, have)) == strides)
            if not ok:
                return raw, None
            ptrs = list(map(_DATA_PTR, have))   # a sparse gradient raises here
        except (TypeError, RuntimeError):
            return raw, None
        if have is not raw:
            full = [None] * len(raw)
            for i, p in zip(index, ptrs):
                full[i] = p
            ptrs = full
        return raw, ptrs

    def _grads(self, b):
        out = []
        for i in b.mine:
            p = b.params[i]
            g = p.grad
            if g is None:
                out.append(None)
                continue
            g = _local(g)
            if g.is_sparse:
                raise Unsupported(f"a parameter has a sparse gradient; libkoala needs dense "
                                  "gradients")
            local = _local(p)
            if g.dtype != local.dtype:
                g = g.to(local.dtype)
            if g.stride() != local.stride() or not arrays.view(g, "grad").contiguous:
                # The same elements in the parameter's memory order.
                g = torch.empty_like(local).copy_(g)
            out.append(g)
        return out

    def _check_backward(self, grads_of):
        """update() after a forgotten backward(): no gradient at all, or exactly
        the gradients (same tensors, unchanged) of the previous update.
        grads_of: each bucket's gradients as the parameters have them."""
        have = any(g is not None for grads in grads_of for g in grads)
        pieces = sum(len(b.mine) for b in self._buckets)
        if not have and pieces and self._sharding_mode() is None:
            raise BadState("update(): no parameter has a gradient; call loss.backward() between "
                           "predict() and update() (the optimizer is still predicted)")
        if have and all(b.last_grads is not None and _same_grads(b.last_grads, grads)
                        for b, grads in zip(self._buckets, grads_of)):
            raise BadState("update(): the gradients are unchanged since the last update(); did "
                           "you forget loss.backward()? (the optimizer is still predicted)")

    def _check_losses(self, loss, loss_var):
        for name, x in (("loss", loss), ("loss_var", loss_var)):
            if isinstance(x, torch.Tensor) and x.numel() != 1:
                raise InvalidArgument(f"{name} has {x.numel()} elements; pass the mean "
                                      "(a one-element tensor or a float)")
        host = [float(x) for x in (loss, loss_var)
                if not isinstance(x, torch.Tensor) or x.device.type == "cpu"]
        if len(host) == 2 and not self._warned_swap:
            l, v = host
            if math.isfinite(l) and math.isfinite(v) and v > 0 and v < l * l * (1 - 1e-6):
                self._warned_swap = True
                warnings.warn(f"update(loss={l:g}, loss_var={v:g}): loss_var = mean(l^2) is at "
                              "least loss^2 = mean(l)^2, so loss and loss_var look swapped; "
                              "the order is update(loss_mean, loss_var)", UserWarning,
                              stacklevel=3)
        return loss, loss_var

    def _average(self, loss, loss_var):
        group = self._dist()
        world = self._world()[0] if group is not None else 1
        if self._average_loss is False or world == 1:
            return loss, loss_var
        import torch.distributed as dist
        device = loss.device if isinstance(loss, torch.Tensor) else self._comm_device()
        pair = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=device).detach()
                            .reshape(()) for x in (loss, loss_var)])
        dist.all_reduce(pair, group=group)
        pair /= world
        return pair[0], pair[1]

    def _comm_device(self):
        import torch.distributed as dist
        return torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend(self._dist()) == "nccl" else torch.device("cpu")

    def _all_reduce(self, t, device):
        import torch.distributed as dist
        dist.all_reduce(t, group=self._dist())

    def _allreduce_fn(self, device):
        """The all-reduce callable of a sharded libkoala optimizer: the partial
        sums through torch.distributed.all_reduce, in place."""
        group_of = self._dist

        def allreduce(buf, count, stream):
            import torch.distributed as dist
            if isinstance(buf, int):        # device memory (on the caller's stream)
                t = torch.as_tensor(_CudaBuffer(buf, count, device), device=device)
            else:
                t = torch.frombuffer(buf, dtype=torch.float64)
            dist.all_reduce(t, group=group_of())
        return allreduce

    def _broadcast(self, b):
        """Partition mode: every parameter from the process that updated it."""
        import torch.distributed as dist
        group = self._dist()
        for p, owner in zip(b.params, b.owners):
            dist.broadcast(p.data, src=_global_rank(group, owner), group=group)

    def _push_group_values(self, b):
        groups = self.param_groups
        values = [(float(groups[g]["lr"]), float(groups[g]["weight_decay"]))
                  for g in b.group_ids]
        if values == b.group_values:
            return                  # the per-tensor values follow from these
        per_group = dict(zip(b.group_ids, values))
        lrs = [per_group[g][0] for g in b.groups]
        wds = [per_group[g][1] for g in b.groups]
        if b.engine is None:
            return
        if lrs != b.lrs:
            b.engine.set_tensor_lr(lrs)
            b.lrs = lrs
        if wds != b.wds:
            b.engine.set_tensor_weight_decay(wds)
            b.wds = wds
        b.group_values = values

    # ---- inspection and checkpoints ----------------------------------------------
    def koala_info(self):
        """The libkoala Info of each filter ((device, dtype) group), in layout order."""
        return [b.engine.info(stream=_stream(b)) for b in self._buckets if b.engine is not None]

    def posterior(self):
        """The posterior weights of the last update, one tensor per parameter (a
        copy): what evaluation between update() and predict() should see."""
        return [p.detach().clone() for g in self.param_groups for p in g["params"]]

    def state_dict(self):
        """torch's format: {"state": {i: {...}}, "param_groups": [...]}; the state
        tensors are the ones libkoala works on (like torch's own optimizers,
        they change as training goes on: torch.save them, or clone)."""
        return super().state_dict()

    def load_state_dict(self, state_dict):
        """Loads a state_dict of the same class and parameter layout, copying the
        values into the bound state tensors (no dtype conversion: bit for bit).
        Also reads libkoala 1.0 checkpoints of koala.torch (the "koala" bytes)."""
        state_dict = dict(state_dict)
        blobs = state_dict.pop("koala", None)
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or "state" not in state_dict:
            raise InvalidArgument("state_dict has no 'state' and 'param_groups' (was it saved "
                                  "by a koala.torch optimizer?)")
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(h["params"]) for g, h in zip(groups, self.param_groups)):
            raise InvalidArgument("state_dict's param_groups do not match this optimizer's "
                                  "(number of groups or of parameters per group)")
        params = [p for g in self.param_groups for p in g["params"]]
        ids = [i for g in groups for i in g["params"]]
        by_id = dict(zip(ids, params))
        state = state_dict["state"]
        if blobs is None:
            self._check_loaded_state(state, by_id)
        for g, saved in zip(self.param_groups, groups):
            for k, v in saved.items():
                if k != "params":
                    g[k] = v
        if blobs is not None:
            engines = [b for b in self._buckets if b.engine is not None]
            if not isinstance(blobs, list) or len(blobs) != len(engines):
                raise InvalidArgument("state_dict's libkoala 1.0 state does not match this "
                                      "optimizer's layout")
            for b, blob in zip(engines, blobs):
                with _on_device(b):
                    b.engine.load_state_dict(blob, stream=_stream(b))
        else:
            for i, values in state.items():
                p = by_id[i]
                for k, v in values.items():
                    dst = self.state[p][k]
                    if isinstance(dst, torch.Tensor) and dst.data_ptr() != \
                            getattr(v, "data_ptr", lambda: None)():
                        _local(dst).copy_(_local(v))
        for b in self._buckets:
            if b.engine is not None:
                b.phase = 1 if b.engine.info(stream=_stream(b)).phase else 0
            b.lrs = b.wds = None
            b.group_values = None
            b.last_grads = None

    def _check_loaded_state(self, state, by_id):
        fkey = self._filter_key()
        for i, values in state.items():
            if i not in by_id:
                raise InvalidArgument(f"state_dict's state has an entry {i!r} that is no "
                                      "parameter of this optimizer")
            p = by_id[i]
            for k, v in values.items():
                dst = self.state[p].get(k)
                if dst is None:
                    want = sorted(self.state[p]) or ["none"]
                    raise InvalidArgument(
                        f"state_dict's state[{i}] has {k!r}, which this {type(self).__name__} "
                        f"does not keep for that parameter (it keeps {', '.join(want)}): a state "
                        "of another class or layout")
                if not isinstance(v, torch.Tensor) or _local(v).shape != _local(dst).shape or \
                        _local(v).dtype != _local(dst).dtype:
                    raise InvalidArgument(
                        f"state_dict's state[{i}][{k!r}] is "
                        f"{getattr(v, 'dtype', type(v).__name__)} "
                        f"{tuple(getattr(v, 'shape', ()))}; this optimizer's is {_local(dst).dtype} "
                        f"{tuple(_local(dst).shape)}")
        for b in self._buckets:
            if b.engine is not None:
                key = next((i for i, p in by_id.items() if p is b.params[0]), None)
                if key not in state or fkey not in state[key]:
                    raise InvalidArgument(f"state_dict has no {fkey!r} for a filter of this "
                                          "optimizer (a state of another class or layout)")

    def __getstate__(self):
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups,
                "_filter_config": self._filter_config, "_process_group": None,
                "_average_loss": self._average_loss, "_sharding": self._sharding,
                "_phases": [(b.key, b.phase) for b in self._buckets]}

    def __setstate__(self, state):
        phases = dict(state.pop("_phases", []))
        super().__setstate__(state)
        self._buckets = []
        self._warned_swap = False
        self._build()
        for b in self._buckets:
            b.phase = phases.get(b.key, b.phase)
        self._ready = True


class VanillaKOALA(_KOALABase):
    """KOALA-V (official defaults; the official train.py passes sigma=0.1, weight_decay=5e-4).

    Extensions (keywords the official class does not have): threads (libkoala's
    CPU threads), stochastic_rounding and seed (bfloat16/float16 parameters),
    average_loss, process_group, sharding (many processes: see the module)."""
    _method = "vanilla"

    def __init__(self, params, sigma: float = 1, q: float = 1, r: float = None,
                 alpha_r: float = 0.9, weight_decay: float = 0.0, lr: float = 1, *,
                 threads: int = None, stochastic_rounding: bool = False, seed: int = 0,
                 **kwargs):
        super().__init__(params, lr, weight_decay,
                         dict(sigma=sigma, q=q, r=r, alpha_r=alpha_r, threads=threads,
                              stochastic_rounding=stochastic_rounding, seed=seed), kwargs)


class MomentumKOALA(_KOALABase):
    """KOALA-M (official defaults; the official train.py passes weight_decay=5e-4).
    Extensions as VanillaKOALA's."""
    _method = "momentum"
    _state_keys = ("velocity", "xbar")

    def __init__(self, params, sw: float = 1e-1, sc: float = 0, sv: float = 1e-1, a: float = 0.9,
                 qw: float = 1e-2, qv: float = 1e-2, r: float = None, alpha_r: float = 0.9,
                 weight_decay: float = 0.0, lr: float = 1, *, threads: int = None,
                 stochastic_rounding: bool = False, seed: int = 0, **kwargs):
        super().__init__(params, lr, weight_decay,
                         dict(sw=sw, sc=sc, sv=sv, a=a, qw=qw, qv=qv, r=r, alpha_r=alpha_r,
                              threads=threads, stochastic_rounding=stochastic_rounding,
                              seed=seed), kwargs)


class KOALAPlusPlus(_KOALABase):
    """KOALA++ (koalap.py's keywords and defaults: sigma is P0 = sigma I, q the
    process noise Q, is_symmetric=False the asymmetric variant). Its predict()
    does nothing, but call it as for the other classes: one loop serves all.
    Extensions as VanillaKOALA's."""
    _method = "plusplus"
    _state_keys = ("v", "H_prev")

    def __init__(self, params, sigma: float = 1, q: float = 1, r: float = None,
                 alpha_r: float = 0.9, weight_decay: float = 0, lr: float = 1,
                 is_symmetric: bool = True, *, threads: int = None,
                 stochastic_rounding: bool = False, seed: int = 0, **kwargs):
        super().__init__(params, lr, weight_decay,
                         dict(sigma=sigma, q=q, r=r, alpha_r=alpha_r,
                              asymmetric=0 if is_symmetric else 1, threads=threads,
                              stochastic_rounding=stochastic_rounding, seed=seed), kwargs)


# ---- helpers ------------------------------------------------------------------
def _engine_device(device):
    return "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"


def _layout(t):
    return (t.dtype, str(t.device), tuple(t.stride()) if not t.is_contiguous() else None)


def _like_param(p, local):
    """State tensor for parameter p: a DTensor like p when p is one."""
    dt = _dtensor_type()
    if dt is not None and isinstance(p, dt):
        return dt.from_local(local, p.device_mesh, p.placements, run_check=False,
                             shape=p.shape, stride=p.stride())
    return local


def _grad_marks(grads):
    """Which gradient tensor each parameter had (None: none), and its version:
    weak references, so that a freed gradient (zero_grad(set_to_none=True))
    is never taken for the same one."""
    try:
        return list(map(weakref.ref, grads)), list(map(_VERSION, grads))
    except TypeError:               # some are None
        return ([None if g is None else weakref.ref(g) for g in grads],
                [None if g is None else g._version for g in grads])


def _same_grads(marks, grads):
    """The parameters have exactly the gradients of `marks` (same tensors,
    same versions, None where it had None)."""
    refs, versions = marks
    if len(refs) != len(grads):
        return False
    for ref, version, g in zip(refs, versions, grads):
        if ref is None:
            if g is not None:
                return False
        elif g is None or ref() is not g or g._version != version:
            return False
    return True


def _partition(sizes, world):
    """ZeRO-style owners: each tensor to the process with the fewest elements so
    far, largest tensors first (the same on every process)."""
    load = [0] * world
    owners = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owners[i] = r
        load[r] += sizes[i]
    return owners


def _global_rank(group, rank):
    import torch.distributed as dist
    if group is None or group is dist.group.WORLD:
        return rank
    return dist.get_global_rank(group, rank) if hasattr(dist, "get_global_rank") else \
        dist.distributed_c10d._get_global_rank(group, rank)


class _CudaBuffer:
    """`count` float64 values at a device address, for torch.as_tensor."""

    def __init__(self, address, count, device):
        self.__cuda_array_interface__ = dict(shape=(count,), typestr="<f8", strides=None,
                                             data=(address, False), version=3)


class _on_device:
    """Makes a CUDA bucket's device current (libkoala uses the current device)."""

    def __init__(self, b):
        device = torch.device(b.key[0])
        self._ctx = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def _stream(b):
    """The current CUDA stream of the bucket's device as an address (None on the CPU)."""
    device = torch.device(b.key[0])
    if device.type != "cuda":
        return None
    return torch.cuda.current_stream(device).cuda_stream


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

