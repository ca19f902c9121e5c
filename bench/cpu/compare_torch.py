#!/usr/bin/python3
"""libkoala's CPU step against PyTorch on the CIFAR-10 ResNet-18 layout.

Run with Debian's Python, where python3-torch (1.13, CPU) lives:

    /usr/bin/python3 bench/cpu/compare_torch.py BUILD/libkoala.so [--steps N] [--threads T]

In one process, with T threads everywhere (default 2), it times per step:
  1. libkoala: koala_predict + koala_update through ctypes on the tensors'
     own memory (only koala.h is assumed: its structs are declared below);
  2. torch.optim.Adam, foreach implementation (fused is CUDA-only in 1.13);
  3. KOALA-V and KOALA-M written the way the authors' official PyTorch code
     (github.com/Araachie/koala, koala.py) does them: a Python loop over the
     parameter tensors with per-tensor torch ops and .norm() per layer, the
     KOALA-M covariance as float64 tensors;
  4. copy bandwidth (dst.copy_(src) of a same-size float32 tensor).
Steps of the contenders are interleaved (one step of each, repeated) so that
the load of a shared machine hits all of them alike; figures are medians.
Before timing, it checks that libkoala and the official-style code give the
same parameters and filter state after a few steps (float32 tolerance).
"""
import argparse
import ctypes
import math
import os
import statistics
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("library", help="path to libkoala.so (e.g. build/libkoala.so)")
parser.add_argument("--steps", type=int, default=20, help="timed steps per contender (20)")
parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
parser.add_argument("--threads", type=int, default=2, help="threads for torch and libkoala (2)")
parser.add_argument("--weight-decay", type=float, default=5e-4,
                    help="weight decay for every optimizer (5e-4, the reference train.py)")
args = parser.parse_args()

# libgomp reads OMP_NUM_THREADS once, when the first OpenMP library loads.
os.environ["OMP_NUM_THREADS"] = str(args.threads)
import torch  # noqa: E402

torch.set_num_threads(args.threads)


# ---- the layout -------------------------------------------------------------
def resnet18_cifar10_shapes():
    """Parameter shapes of the CIFAR-10 ResNet-18, in model.parameters() order
    (the same layout as bench/cpu/resnet18_layout.h)."""
    shapes = [(64, 3, 3, 3), (64,), (64,)]
    in_ch = 64
    for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            shapes += [(out_ch, in_ch, 3, 3), (out_ch,), (out_ch,),
                       (out_ch, out_ch, 3, 3), (out_ch,), (out_ch,)]
            if s != 1 or in_ch != out_ch:
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]
            in_ch = out_ch
    shapes += [(10, 512), (10,)]
    return shapes


SHAPES = resnet18_cifar10_shapes()
SIZES = [math.prod(s) for s in SHAPES]
N_PARAMS = sum(SIZES)
assert len(SHAPES) == 62 and N_PARAMS == 11173962, (len(SHAPES), N_PARAMS)


# ---- libkoala through ctypes, from koala.h ------------------------------------
KOALA_OK, KOALA_VANILLA, KOALA_MOMENTUM = 0, 1, 2
KOALA_HOST, KOALA_FLOAT32 = 1, 1


class KoalaConfig(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("method", ctypes.c_int)] + [
        (name, ctypes.c_double) for name in
        ("lr", "weight_decay", "r", "alpha_r", "sigma", "q", "sw", "sc", "sv", "a", "qw", "qv")]


class KoalaInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("steps", ctypes.c_uint64),
                ("skipped_steps", ctypes.c_uint64)] + [
        (name, ctypes.c_double) for name in ("sigma", "p00", "p01", "p11", "r", "qw")]


lib = ctypes.CDLL(os.path.abspath(args.library))
lib.koala_config_init.argtypes = [ctypes.POINTER(KoalaConfig), ctypes.c_int]
lib.koala_config_init.restype = None
lib.koala_create.argtypes = [ctypes.POINTER(KoalaConfig), ctypes.c_size_t,
                             ctypes.POINTER(ctypes.c_size_t), ctypes.c_int, ctypes.c_int,
                             ctypes.POINTER(ctypes.c_void_p)]
lib.koala_predict.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
lib.koala_update.argtypes = [ctypes.c_void_p, ctypes.c_double, ctypes.c_double,
                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
lib.koala_get_info.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(KoalaInfo)]
lib.koala_destroy.argtypes = [ctypes.c_void_p]
lib.koala_destroy.restype = None
lib.koala_last_error.restype = ctypes.c_char_p
for fn in ("koala_create", "koala_predict", "koala_update", "koala_get_info"):
    getattr(lib, fn).restype = ctypes.c_int


def check(status, what):
    if status != KOALA_OK:
        raise RuntimeError(f"{what}: status {status}: {lib.koala_last_error().decode()}")


class LibKoala:
    """One libkoala host optimizer over a list of float32 torch tensors."""

    def __init__(self, method, params, weight_decay, sigma=None):
        cfg = KoalaConfig()
        lib.koala_config_init(ctypes.byref(cfg), method)
        cfg.weight_decay = weight_decay
        if sigma is not None:
            cfg.sigma = sigma
        sizes = (ctypes.c_size_t * len(params))(*[p.numel() for p in params])
        self.handle = ctypes.c_void_p()
        check(lib.koala_create(ctypes.byref(cfg), len(params), sizes, KOALA_FLOAT32, KOALA_HOST,
                               ctypes.byref(self.handle)), "koala_create")
        # The pointer arrays are built once: the tensors never move.
        self.params = params
        self.param_ptrs = (ctypes.c_void_p * len(params))(*[p.data_ptr() for p in params])
        self.grad_ptrs = (ctypes.c_void_p * len(params))(*[p.grad.data_ptr() for p in params])

    def predict(self):
        check(lib.koala_predict(self.handle, self.param_ptrs, None), "koala_predict")

    def update(self, loss, loss_var):
        check(lib.koala_update(self.handle, loss, loss_var, self.param_ptrs, self.grad_ptrs, None),
              "koala_update")

    def info(self):
        out = KoalaInfo()
        out.struct_size = ctypes.sizeof(KoalaInfo)
        check(lib.koala_get_info(self.handle, None, ctypes.byref(out)), "koala_get_info")
        return out

    def __del__(self):
        lib.koala_destroy(self.handle)


# ---- KOALA the way the official PyTorch code computes it ---------------------------
# Our own code, mirroring the operations of Araachie/koala koala.py (VanillaKOALA,
# MomentumKOALA): per-tensor loops, .norm(p=2) per layer, the skip test as a
# tensor comparison, scalars as 0-dim tensors (float64 for KOALA-M's P).
class RunningAverage:
    """The reference's exponential average: avg <- alpha*avg + (1-alpha)*value."""

    def __init__(self, alpha, initial):
        self.alpha, self.avg = alpha, initial

    def update(self, value):
        self.avg = self.alpha * self.avg + (1 - self.alpha) * value


class OfficialStyleKoalaV:
    def __init__(self, params, sigma=1.0, q=1.0, weight_decay=0.0, lr=1.0):
        self.params, self.sigma, self.q, self.wd, self.lr = params, sigma, q, weight_decay, lr
        self.r = RunningAverage(0.9, 1.0)
        self.eps = 1e-9

    @torch.no_grad()
    def predict(self):
        self.sigma += self.q

    @torch.no_grad()
    def update(self, loss, loss_var):
        self.r.update(loss_var)
        r = self.r.avg
        ratios = []
        for p in self.params:
            if p.grad is None or p.grad.norm(p=2) < self.eps:
                continue
            h = p.grad + self.wd * p
            h_norm = h.norm(p=2)
            s = self.sigma * h_norm ** 2 + r
            block_loss = loss + 0.5 * self.wd * p.norm(p=2) ** 2
            scale = self.lr * block_loss * self.sigma / s
            p.data.add_(-scale * p.grad)
            ratios.append(h_norm ** 2 / s)
        self.sigma -= self.sigma ** 2 * torch.max(torch.stack(ratios))


class OfficialStyleKoalaM:
    def __init__(self, params, sw=0.1, sc=0.0, sv=0.1, a=0.9, qw=0.01, qv=0.01,
                 weight_decay=0.0, lr=1.0):
        self.params, self.wd, self.lr, self.qv = params, weight_decay, lr, qv
        self.eps = 1e-9
        self.v = {p: torch.zeros_like(p) for p in params}
        self.xbar = {p: torch.zeros_like(p) for p in params}
        self.n = sum(torch.prod(torch.Tensor(list(p.size()))) for p in params)
        self.P = torch.Tensor([[sw, sc], [sc, sv]]).to(torch.double)
        self.qw = RunningAverage(0.9, qw)
        self.F = torch.Tensor([[1, 1], [0, a]]).to(torch.double)
        self.R = RunningAverage(0.9, 1.0)

    @torch.no_grad()
    def predict(self):
        dists = []
        for p in self.params:
            dists.append((self.xbar[p] - p).norm(p=2))
            # x <- F00 x + F01 v ; v <- F11 v + F10 x, as full tensor ops
            p.mul_(self.F[0, 0])
            p.add_(self.v[p] * self.F[0, 1])
            self.v[p].mul_(self.F[1, 1])
            self.v[p].add_(p * self.F[1, 0])
        self.qw.update(torch.stack(dists).norm(p=2) / self.n)
        Q = torch.diag(torch.Tensor([self.qw.avg, self.qv])).to(torch.double)
        self.P = torch.matmul(torch.matmul(self.F, self.P), self.F.t())
        self.P.add_(Q)

    @torch.no_grad()
    def update(self, loss, loss_var):
        self.R.update(loss_var)
        r = self.R.avg
        ratios = []
        for p in self.params:
            if p.grad is None or p.grad.norm(p=2) < self.eps:
                continue
            h = p.grad + self.wd * p
            h_norm = h.norm(p=2)
            S = h_norm ** 2 * self.P[0, 0] + r
            block_loss = loss + 0.5 * self.wd * p.norm(p=2) ** 2
            k1 = self.P[0, 0] / S * block_loss * self.lr
            k2 = self.P[1, 0] / S * block_loss * self.lr
            p.sub_(k1 * h)
            self.v[p].sub_(k2 * h)
            self.xbar[p].mul_(0.9)
            self.xbar[p].add_(0.1 * p)
            ratios.append(h_norm ** 2 / S)
        h_max = torch.max(torch.stack(ratios))
        HHS = torch.Tensor([[h_max, 0], [0, 0]]).to(torch.double)
        self.P = self.P - torch.matmul(torch.matmul(self.P, HHS), self.P.t())


# ---- helpers ----------------------------------------------------------------------
def make_params(seed, grad_scale=1e-3):
    """Fresh float32 parameters with fixed .grad tensors (same seed, same values)."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in SHAPES:
        p = (torch.rand(shape, generator=gen) - 0.5) * 0.2
        p.grad = (torch.rand(shape, generator=gen) - 0.5) * 2 * grad_scale
        params.append(p)
    return params


def losses(step):
    """A plausible (loss, loss_var) sequence: positive, slowly decreasing."""
    loss = 2.3 * 0.97 ** step
    return loss, loss * loss * 1.3


def verify_against_official_style(steps=5):
    """libkoala and the official-style torch code, same start and gradients,
    must agree to float32 rounding after `steps` steps."""
    ok = True
    for name in ("KOALA-V", "KOALA-M"):
        a, b = make_params(7), make_params(7)
        if name == "KOALA-V":
            ours = LibKoala(KOALA_VANILLA, a, args.weight_decay, sigma=0.1)
            ref = OfficialStyleKoalaV(b, sigma=0.1, weight_decay=args.weight_decay)
        else:
            ours = LibKoala(KOALA_MOMENTUM, a, args.weight_decay)
            ref = OfficialStyleKoalaM(b, weight_decay=args.weight_decay)
        gen = torch.Generator().manual_seed(99)
        for step in range(steps):
            ours.predict()
            ref.predict()
            for pa, pb in zip(a, b):  # new gradients each step, identical in both
                g = (torch.rand(pa.shape, generator=gen) - 0.5) * 2e-2
                pa.grad.copy_(g)
                pb.grad.copy_(g)
            loss, loss_var = losses(step)
            ours.update(loss, loss_var)
            ref.update(torch.tensor(loss, dtype=torch.float32),
                       torch.tensor(loss_var, dtype=torch.float32))
        worst = max(((pa - pb).norm() / pb.norm()).item() for pa, pb in zip(a, b))
        info = ours.info()
        if name == "KOALA-V":
            ref_cov = float(ref.sigma)
            cov_err = abs(info.sigma - ref_cov) / abs(ref_cov)
        else:
            ref_cov = ref.P.numpy()
            cov_err = max(abs(info.p00 - ref_cov[0, 0]) / abs(ref_cov[0, 0]),
                          abs(info.p11 - ref_cov[1, 1]) / abs(ref_cov[1, 1]))
        # The reference forms sigma - sigma^2 * max(rho) with max(rho) rounded to
        # float32, which cancels when R << S (large gradient norms): its covariance
        # carries float32 error amplified by S/R, hence the looser bound there.
        passed = worst < 1e-5 and cov_err < 1e-3
        ok &= passed
        print(f"  {name}: {steps} steps, worst per-tensor relative difference of the parameters "
              f"{worst:.2e}, of the covariance {cov_err:.2e} (libkoala {info.sigma if name == 'KOALA-V' else info.p00:.6g}): {'OK' if passed else 'MISMATCH'}")
    return ok


def copy_bandwidth(reps=20):
    src = torch.rand(N_PARAMS)
    dst = torch.empty_like(src)
    times = []
    for r in range(reps + 2):
        t0 = time.perf_counter()
        dst.copy_(src)
        if r >= 2:
            times.append(time.perf_counter() - t0)
    return 2 * 4 * N_PARAMS / statistics.median(times) / 1e9


# ---- main -------------------------------------------------------------------------
def main():
    print(f"torch {torch.__version__}, threads: torch {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    print(f"layout: CIFAR-10 ResNet-18, {len(SHAPES)} tensors, {N_PARAMS} float32 parameters; "
          f"weight decay {args.weight_decay}")
    print("\ncorrectness: libkoala vs the official-style torch code")
    if not verify_against_official_style():
        print("compare_torch: libkoala and the official-style code disagree", file=sys.stderr)
        return 1

    print("\nsetting up contenders ...", flush=True)
    wd = args.weight_decay
    contenders = {}  # name -> (step function)
    pv = make_params(1)
    kv = LibKoala(KOALA_VANILLA, pv, wd, sigma=0.1)
    contenders["libkoala KOALA-V"] = lambda s: (kv.predict(), kv.update(*losses(s)))
    pm = make_params(2)
    km = LibKoala(KOALA_MOMENTUM, pm, wd)
    contenders["libkoala KOALA-M"] = lambda s: (km.predict(), km.update(*losses(s)))
    pa = make_params(3)
    adam = torch.optim.Adam(pa, lr=1e-3, weight_decay=wd, foreach=True)
    contenders["torch Adam (foreach)"] = lambda s: adam.step()
    pov = make_params(4)
    ov = OfficialStyleKoalaV(pov, sigma=0.1, weight_decay=wd)

    def official_step(opt, s):
        loss, loss_var = losses(s)
        opt.predict()
        opt.update(torch.tensor(loss), torch.tensor(loss_var))

    contenders["official-style KOALA-V"] = lambda s: official_step(ov, s)
    pom = make_params(5)
    om = OfficialStyleKoalaM(pom, weight_decay=wd)
    contenders["official-style KOALA-M"] = lambda s: official_step(om, s)

    times = {name: [] for name in contenders}
    total = args.warmup + args.steps
    for s in range(total):
        for name, step in contenders.items():
            t0 = time.perf_counter()
            step(s)
            if s >= args.warmup:
                times[name].append(1e3 * (time.perf_counter() - t0))
        print(f"\r  step {s + 1}/{total}", end="", flush=True)
    print()
    copy_gbps = copy_bandwidth()
    ms = {name: statistics.median(t) for name, t in times.items()}

    bytes_v = (20 if wd else 16) * N_PARAMS
    bytes_m = (56 if wd else 52) * N_PARAMS
    moved = {"libkoala KOALA-V": bytes_v, "libkoala KOALA-M": bytes_m,
             "official-style KOALA-V": bytes_v, "official-style KOALA-M": bytes_m,
             "torch Adam (foreach)": 28 * N_PARAMS}
    print(f"\ncopy bandwidth (tensor.copy_, read + write): {copy_gbps:.1f} GB/s")
    print(f"\n| contender | ms/step (median of {args.steps}) | min ms | GB/s (algorithmic bytes) |")
    print("|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {ms[name]:.2f} | {min(t):.2f} | {moved[name] / (ms[name] * 1e-3) / 1e9:.1f} |")
    print("\nspeed-ups (median ms ratio):")
    print(f"  libkoala KOALA-V vs official-style KOALA-V: "
          f"{ms['official-style KOALA-V'] / ms['libkoala KOALA-V']:.2f}x")
    print(f"  libkoala KOALA-M vs official-style KOALA-M: "
          f"{ms['official-style KOALA-M'] / ms['libkoala KOALA-M']:.2f}x")
    print(f"  libkoala KOALA-V vs torch Adam (foreach)   : "
          f"{ms['torch Adam (foreach)'] / ms['libkoala KOALA-V']:.2f}x")
    print(f"  libkoala KOALA-M vs torch Adam (foreach)   : "
          f"{ms['torch Adam (foreach)'] / ms['libkoala KOALA-M']:.2f}x")
    print(f"  libkoala KOALA-V vs copy floor ({bytes_v // N_PARAMS} B/param at copy bandwidth): "
          f"{ms['libkoala KOALA-V'] / (1e3 * bytes_v / (copy_gbps * 1e9)):.2f}x the floor")
    print(f"  libkoala KOALA-M vs copy floor ({bytes_m // N_PARAMS} B/param at copy bandwidth): "
          f"{ms['libkoala KOALA-M'] / (1e3 * bytes_m / (copy_gbps * 1e9)):.2f}x the floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
