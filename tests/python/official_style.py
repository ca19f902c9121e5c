"""Test-only PyTorch re-implementations of KOALA-V / KOALA-M and KOALA++,
written the way the official code (Araachie/koala, koala.py; KOALA++'s
koalap.py) computes: torch.optim.Optimizer subclasses, a Python loop over
param groups and parameters, per-tensor torch norms and dot products, the
covariance shrink in the reference form (sigma - sigma^2 max rho;
P - P H P^T); KOALA++ with the explicit S_k = H.v + Q|H|^2 + R. Written from
ALGORITHM.md §3, §4 and §7, not copied.

Each group's "lr" scales that group's steps (as the official group["lr"]);
each group's "weight_decay" (default: the constructor's) is that group's
weight decay, the extension koala.torch documents. add_param_group works:
new tensors start with fresh state (KOALA-M's n counts them from then on).

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
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.sigma, self.q = float(sigma), float(q)
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
                wd = group["weight_decay"]
                h = p.grad + wd * p
                h2 = float(h.norm(p=2) ** 2)
                s = self.sigma * h2 + r
                block_loss = float(loss) + 0.5 * wd * float(p.norm(p=2) ** 2)
                p.add_(p.grad, alpha=-group["lr"] * block_loss * self.sigma / s)
                ratios.append(h2 / s)
        if ratios:
            self.sigma -= self.sigma ** 2 * max(ratios)


class OfficialStyleMomentum(torch.optim.Optimizer):
    def __init__(self, params, sw=0.1, sc=0.0, sv=0.1, a=0.9, qw=0.01, qv=0.01, r=None,
                 alpha_r=0.9, weight_decay=0.0, lr=1.0):
        self.total = 0
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.P = torch.tensor([[sw, sc], [sc, sv]], dtype=torch.float64)
        self.F = torch.tensor([[1.0, 1.0], [0.0, a]], dtype=torch.float64)
        self.qw, self.qv = _Ema(0.9, qw), qv
        self.r = r if r is not None else _Ema(alpha_r, 1.0)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self.state[p]["velocity"] = torch.zeros_like(p)
            self.state[p]["average"] = torch.zeros_like(p)
            self.total += p.numel()

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
                wd = group["weight_decay"]
                h = p.grad + wd * p
                h2 = float(h.norm(p=2) ** 2)
                s = h2 * float(self.P[0, 0]) + r
                block_loss = float(loss) + 0.5 * wd * float(p.norm(p=2) ** 2)
                k1 = float(self.P[0, 0]) / s * block_loss * group["lr"]
                k2 = float(self.P[1, 0]) / s * block_loss * group["lr"]
                p.sub_(k1 * h)
                st["velocity"].sub_(k2 * h)
                st["average"].mul_(0.9).add_(0.1 * p)
                ratios.append(h2 / s)
        if ratios:
            H = torch.tensor([[max(ratios), 0.0], [0.0, 0.0]], dtype=torch.float64)
            self.P = self.P - self.P @ H @ self.P.t()


class OfficialStylePlusPlus(torch.optim.Optimizer):
    """KOALA++ as koalap.py computes it (ALGORITHM.md §7.2-§7.3): per tensor,
    H = g + wd x (flattened), the row vector v = H P tracked with the
    symmetric (w_k on) or asymmetric (w_k = 0) minimum-norm closure, S_k from
    an explicit dot product, the step along (v + Q H) / S scaled by
    lr * (loss + wd/2 |x|^2). predict() does nothing."""

    def __init__(self, params, sigma=1.0, q=1.0, r=None, alpha_r=0.9, weight_decay=0.0, lr=1.0,
                 is_symmetric=True):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.sigma0, self.q, self.symmetric = float(sigma), float(q), is_symmetric
        self.r = r if r is not None else _Ema(alpha_r, 1.0)

    def predict(self):
        pass

    @torch.no_grad()
    def update(self, loss, loss_var):
        r = self.r.add(float(loss_var)) if isinstance(self.r, _Ema) else self.r
        Q = self.q
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or p.grad.norm(p=2) < 1e-9:
                    continue
                wd = group["weight_decay"]
                H = (p.grad + wd * p).reshape(-1).double()
                st = self.state[p]
                if "v" not in st:                       # first visit: P_0 = sigma0 I
                    v_prev, H_prev = self.sigma0 * H, H
                    s_prev = float(H_prev @ v_prev) + Q * float(H_prev @ H_prev) + r
                else:
                    v_prev, H_prev, s_prev = st["v"], st["H"], st["S"]
                hh_prev = float(H_prev @ H_prev)
                h_hprev = float(H @ H_prev)
                alpha = h_hprev / hh_prev
                lam = float(H @ (v_prev + Q * H_prev)) / s_prev
                w = 0.0
                if self.symmetric:
                    w = (float(H @ v_prev) * hh_prev - float(H_prev @ v_prev) * h_hprev) \
                        / hh_prev ** 2
                v = (alpha - lam) * v_prev + Q * (H - lam * H_prev) + w * H_prev
                s = float(H @ v) + Q * float(H @ H) + r
                block_loss = float(loss) + 0.5 * wd * float(p.norm(p=2) ** 2)
                step = group["lr"] * block_loss * (v + Q * H) / s
                p.sub_(step.reshape(p.shape).to(p.dtype))
                st["v"], st["H"], st["S"] = v, H, s
