"""Array kinds the pythonic layer accepts besides NumPy: PyTorch CPU tensors,
__array_interface__ objects, DLPack producers; CUDA arrays (PyTorch, CuPy)
where a GPU is usable, skipped otherwise."""
import numpy as np
import pytest

import koala
from reference import VanillaReference


def _one_step(make_array, to_numpy):
    p = [make_array(np.linspace(0.5, 1.5, 6)), make_array(np.linspace(-1, 1, 3))]
    g = [make_array(np.full(6, 0.3)), make_array(np.full(3, -0.2))]
    opt = koala.Optimizer("vanilla", p, weight_decay=5e-4)
    opt.predict()
    opt.update(0.8, 0.9, p, g)
    ref = VanillaReference(weight_decay=5e-4)
    q = [np.linspace(0.5, 1.5, 6), np.linspace(-1, 1, 3)]
    ref.predict()
    ref.update(0.8, 0.9, q, [np.full(6, 0.3), np.full(3, -0.2)])
    for a, b in zip(p, q):
        np.testing.assert_allclose(to_numpy(a), b, rtol=1e-14)


def test_torch_cpu_tensors():
    torch = pytest.importorskip("torch")
    _one_step(lambda a: torch.tensor(a), lambda t: t.numpy())


class _Interface:
    """A host array known only through __array_interface__."""

    def __init__(self, a):
        self.a = a
        self.__array_interface__ = a.__array_interface__


def test_array_interface_objects():
    _one_step(_Interface, lambda o: o.a)


class _DLPackOnly:
    """A host array known only through DLPack."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__()

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


@pytest.mark.skipif(not hasattr(np.ndarray, "__dlpack__"), reason="NumPy without DLPack")
def test_dlpack_objects():
    _one_step(_DLPackOnly, lambda o: o.a)


def test_plain_buffers():
    """array.array: only the buffer protocol (no NumPy involved in passing it)."""
    import array
    _one_step(lambda a: array.array("d", a.tolist()), lambda b: np.array(b))
    with pytest.raises(koala.InvalidArgument, match=r"params\[0\] has dtype buffer format 'i'"):
        opt = koala.Optimizer("vanilla", [2])
        opt.predict()
        opt.update(1.0, 1.0, [array.array("i", [1, 2])], [None])


def test_torch_non_dense_param_named_and_dense_orders_accepted():
    torch = pytest.importorskip("torch")
    opt = koala.Optimizer("vanilla", [8], dtype=torch.float32)
    opt.predict()
    with pytest.raises(koala.InvalidArgument, match=r"params\[0\] is not contiguous.*dense copy"):
        opt.update(1.0, 1.0, [torch.ones(4, 4)[:, :2]], [torch.ones(8)])
    with pytest.raises(koala.InvalidArgument, match=r"grads\[0\] has another element order"):
        opt.update(1.0, 1.0, [torch.ones(4, 2).t()], [torch.ones(2, 4)])
    w = torch.ones(4, 2).t()                       # dense, Fortran order: fine as a flat run
    opt.update(1.0, 1.0, [w], [torch.full((4, 2), 0.5).t()])
    assert float(w[0, 0]) < 1.0


def _gpu_or_skip():
    ok, why = koala.device_available()
    if not ok:
        pytest.skip(f"no usable GPU: {why}")


def test_torch_cuda_update_ptr_matches_host():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU for torch")
    _gpu_or_skip()
    host = [torch.linspace(0.5, 1.5, 6), torch.linspace(-1, 1, 3)]
    dev = [t.cuda() for t in host]
    g = [torch.full((6,), 0.3), torch.full((3,), -0.2)]
    a = koala.Optimizer("momentum", host)
    b = koala.Optimizer("momentum", dev)
    for opt, p, gg, loss in ((a, host, g, 0.8), (b, dev, [t.cuda() for t in g],
                                                  torch.tensor(0.8, device="cuda"))):
        opt.predict(p)
        opt.update(loss, loss * 0 + 0.9 if not isinstance(loss, float) else 0.9, p, gg)
    for x, y in zip(host, dev):
        torch.testing.assert_close(x, y.cpu())


def test_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    _gpu_or_skip()
    p = [cupy.linspace(0.5, 1.5, 6, dtype=cupy.float32)]
    opt = koala.Optimizer("vanilla", p)
    opt.predict()
    opt.update(0.8, 0.9, p, [cupy.full(6, 0.3, dtype=cupy.float32)])
    assert float(p[0][0]) < 0.5
