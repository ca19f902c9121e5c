"""Test-only PyTorch re-implementations of KOALA-V / KOALA-M, written the way
the official code (Araachie/koala, koala.py) computes: torch.optim.Optimizer
subclasses, a Python loop over param groups and parameters, per-tensor torch
norms, the covariance shrink in the reference form (sigma - sigma^2 max rho;
P - P H P^T). Written from ALGORITHM.md §3-§4, not copied.

Unlike the official code, every filter scalar is kept in float64 (the
official code rounds q_w and the max rho to float32 on the way into its 2x2
matrices); libkoala keeps them in float64 by design (ALGORITHM.md D11), and
with float64 parameters this makes the comparison exact to rounding.
"""
import torch


class _Ema:
    def __init__(self, alpha, start):
        self.alpha, self.value = alpha, start

    def add(self, x):
        self.value = self.alpha * self.value + (1 - self.alpha) * x
        return self.value


class OfficialStyleVanilla(torch.optim.Optimizer):
    def __init__(self, params, sigma=1.0, q=1.0, r=None, alpha_r=0.9, weight_decay=0.0, lr=1.0):
        super().__init__(params, dict(lr=lr))
        self.sigma, self.q, self.wd = float(sigma), float(q), weight_decay
        self.r = r if r is not None else _Ema(alpha_r, 1.0)

    @torch.no_grad()
    def predict(self):
        self.sigma += self.q

    @torch.no_grad()
    def update(self, loss, loss_var):
        r = self.r.add(float(loss_var)) if isinstance(self.r, _Ema) else self.r
        ratios = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or p.grad.norm(p=2) < 1e-9:
                    continue
                h = p.grad + self.wd * p
                h2 = float(h.norm(p=2) ** 2)
                s = self.sigma * h2 + r
                block_loss = float(loss) + 0.5 * self.wd * float(p.norm(p=2) ** 2)
                p.add_(p.grad, alpha=-group["lr"] * block_loss * self.sigma / s)
                ratios.append(h2 / s)
        self.sigma -= self.sigma ** 2 * max(ratios)


class OfficialStyleMomentum(torch.optim.Optimizer):
    def __init__(self, params, sw=0.1, sc=0.0, sv=0.1, a=0.9, qw=0.01, qv=0.01, r=None,
                 alpha_r=0.9, weight_decay=0.0, lr=1.0):
        super().__init__(params, dict(lr=lr))
        self.wd = weight_decay
        self.total = 0
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["velocity"] = torch.zeros_like(p)
                self.state[p]["average"] = torch.zeros_like(p)
                self.total += p.numel()
        self.P = torch.tensor([[sw, sc], [sc, sv]], dtype=torch.float64)
        self.F = torch.tensor([[1.0, 1.0], [0.0, a]], dtype=torch.float64)
        self.qw, self.qv = _Ema(0.9, qw), qv
        self.r = r if r is not None else _Ema(alpha_r, 1.0)

    @torch.no_grad()
    def predict(self):
        dists = []
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                dists.append((st["average"] - p).norm(p=2).double())
                p.add_(st["velocity"] * self.F[0, 1].item())
                st["velocity"].mul_(self.F[1, 1].item())
        self.qw.add(float(torch.stack(dists).norm(p=2)) / self.total)
        Q = torch.diag(torch.tensor([self.qw.value, self.qv], dtype=torch.float64))
        self.P = self.F @ self.P @ self.F.t() + Q

    @torch.no_grad()
    def update(self, loss, loss_var):
        r = self.r.add(float(loss_var)) if isinstance(self.r, _Ema) else self.r
        ratios = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or p.grad.norm(p=2) < 1e-9:
                    continue
                st = self.state[p]
                h = p.grad + self.wd * p
                h2 = float(h.norm(p=2) ** 2)
                s = h2 * float(self.P[0, 0]) + r
                block_loss = float(loss) + 0.5 * self.wd * float(p.norm(p=2) ** 2)
                k1 = float(self.P[0, 0]) / s * block_loss * group["lr"]
                k2 = float(self.P[1, 0]) / s * block_loss * group["lr"]
                p.sub_(k1 * h)
                st["velocity"].sub_(k2 * h)
                st["average"].mul_(0.9).add_(0.1 * p)
                ratios.append(h2 / s)
        H = torch.tensor([[max(ratios), 0.0], [0.0, 0.0]], dtype=torch.float64)
        self.P = self.P - self.P @ H @ self.P.t()
