"""An independent float64 NumPy reference of KOALA-V and KOALA-M, written from
ALGORITHM.md §3 and §4 (the official code's behaviour), in the official
code's covariance forms:
    KOALA-V:  sigma <- sigma - sigma^2 * max_i rho_i
    KOALA-M:  P     <- P - max_i rho_i * P[:,0] P[:,0]^T
(libkoala uses the algebraically equal forms sigma * min_i R/S_i; the two
agree to rounding.) Parameters are float64 NumPy arrays updated in place;
a gradient of None means "no gradient" (the tensor is skipped), as does a
raw gradient norm below 1e-9.

Departure from the official code that libkoala documents (ALGORITHM.md §5
D14): when every tensor is skipped, nothing changes but R and the covariance
keeps its prediction (the official code crashes there).
"""
import numpy as np

SKIP_NORM = 1e-9


class _R:
    """The measurement noise: fixed r, or the EMA of loss_var starting at 1."""

    def __init__(self, r, alpha_r):
        self.fixed = r is not None
        self.value = float(r) if self.fixed else 1.0
        self.alpha_r = alpha_r

    def update(self, loss_var):
        if not self.fixed:
            self.value = self.alpha_r * self.value + (1.0 - self.alpha_r) * loss_var
        return self.value


def _active(g):
    return g is not None and np.linalg.norm(g) >= SKIP_NORM


class VanillaReference:
    def __init__(self, sigma=1.0, q=1.0, r=None, alpha_r=0.9, weight_decay=0.0, lr=1.0):
        self.sigma, self.q, self.wd, self.lr = float(sigma), float(q), float(weight_decay), lr
        self.r = _R(r, alpha_r)

    def predict(self, params=None):
        self.sigma += self.q

    def update(self, loss, loss_var, params, grads):
        r = self.r.update(loss_var)
        rhos = []
        for x, g in zip(params, grads):
            if not _active(g):
                continue
            h = g + self.wd * x
            a = float(h @ h)
            s = self.sigma * a + r
            block_loss = loss + 0.5 * self.wd * float(x @ x)
            x -= self.lr * block_loss * self.sigma / s * g      # the RAW gradient
            rhos.append(a / s)
        if rhos:
            self.sigma -= self.sigma ** 2 * max(rhos)


class MomentumReference:
    def __init__(self, sizes, sw=0.1, sc=0.0, sv=0.1, a=0.9, qw=0.01, qv=0.01, r=None,
                 alpha_r=0.9, weight_decay=0.0, lr=1.0):
        self.P = np.array([[sw, sc], [sc, sv]], dtype=np.float64)
        self.F = np.array([[1.0, 1.0], [0.0, a]])
        self.a, self.qw, self.qv = a, float(qw), float(qv)
        self.wd, self.lr = float(weight_decay), lr
        self.r = _R(r, alpha_r)
        self.n = float(sum(sizes))                         # every tensor counts, grad or not
        self.v = [np.zeros(n) for n in sizes]              # velocities
        self.xbar = [np.zeros(n) for n in sizes]           # slow EMA of the weights

    def predict(self, params):
        d2 = sum(float((xb - x) @ (xb - x)) for xb, x in zip(self.xbar, params))
        for x, v in zip(params, self.v):
            x += v
            v *= self.a
        self.qw = 0.9 * self.qw + 0.1 * (np.sqrt(d2) / self.n)
        self.P = self.F @ self.P @ self.F.T + np.diag([self.qw, self.qv])

    def update(self, loss, loss_var, params, grads):
        r = self.r.update(loss_var)
        p00, p10 = self.P[0, 0], self.P[1, 0]
        rhos = []
        for x, v, xb, g in zip(params, self.v, self.xbar, grads):
            if not _active(g):
                continue
            h = g + self.wd * x
            a = float(h @ h)
            s = a * p00 + r
            block_loss = loss + 0.5 * self.wd * float(x @ x)
            k1 = p00 / s * block_loss * self.lr
            k2 = p10 / s * block_loss * self.lr
            x -= k1 * h                                      # the REGULARISED gradient
            v -= k2 * h
            xb *= 0.9
            xb += 0.1 * x
            rhos.append(a / s)
        if rhos:
            hh = np.array([[max(rhos), 0.0], [0.0, 0.0]])
            self.P = self.P - self.P @ hh @ self.P.T
