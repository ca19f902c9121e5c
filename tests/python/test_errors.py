"""Every error path of the pythonic layer (and the statuses the library
reports through it): the right exception class, .status, a message naming
the argument, and nothing changed."""
import numpy as np
import pytest

import koala
from koala import capi, errors


def params32():
    return [np.ones(5, np.float32), np.ones(3, np.float32)]


def grads32():
    return [np.full(5, 0.1, np.float32), np.full(3, 0.2, np.float32)]


def test_status_values_match_the_header():
    assert errors.OK == capi.KOALA_OK
    assert errors.ERROR_INVALID_ARGUMENT == capi.KOALA_ERROR_INVALID_ARGUMENT
    assert errors.ERROR_OUT_OF_MEMORY == capi.KOALA_ERROR_OUT_OF_MEMORY
    assert errors.ERROR_NOT_FINITE == capi.KOALA_ERROR_NOT_FINITE
    assert errors.ERROR_UNSUPPORTED == capi.KOALA_ERROR_UNSUPPORTED
    assert errors.ERROR_CUDA == capi.KOALA_ERROR_CUDA
    assert errors.ERROR_BAD_STATE == capi.KOALA_ERROR_BAD_STATE
    assert errors.ERROR_COMMUNICATION == capi.KOALA_ERROR_COMMUNICATION


def test_hierarchy():
    for cls in (koala.InvalidArgument, koala.OutOfMemory, koala.NotFinite, koala.Unsupported,
                koala.CudaError, koala.BadState, koala.CommunicationError):
        assert issubclass(cls, koala.KoalaError)
    e = errors.from_status(capi.KOALA_ERROR_CUDA, "boom")
    assert isinstance(e, koala.CudaError) and e.status == capi.KOALA_ERROR_CUDA
    assert e.message == "boom"
    e = errors.from_status(capi.KOALA_ERROR_COMMUNICATION, "lost")
    assert isinstance(e, koala.KoalaCommunicationError) and e.status == 7
    e = errors.from_status(99, "odd")
    assert type(e) is koala.KoalaError and e.status == 99
    e = errors.from_status(capi.KOALA_ERROR_OUT_OF_MEMORY, "oom")
    assert isinstance(e, MemoryError) and e.status == capi.KOALA_ERROR_OUT_OF_MEMORY


# ---- construction --------------------------------------------------------------
@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(method="adam", tensors=[4]), koala.InvalidArgument, "method"),
    (dict(tensors=[4], config=dict(threads=-1)), koala.InvalidArgument, "threads"),
    (dict(tensors=[4], config=dict(threads=1.5)), koala.InvalidArgument, "threads"),
    (dict(tensors=[4], config=dict(seed=-3)), koala.InvalidArgument, "seed"),
    (dict(method=7, tensors=[4]), koala.InvalidArgument, "method"),
    (dict(tensors=[]), koala.InvalidArgument, "empty"),
    (dict(tensors=[3, 0]), koala.InvalidArgument, r"tensors_or_sizes\[1\]"),
    (dict(tensors=[3, -2]), koala.InvalidArgument, r"tensors_or_sizes\[1\]"),
    (dict(tensors=[3, 2.5]), koala.InvalidArgument, r"tensors_or_sizes\[1\]"),
    (dict(tensors=[np.ones(3, np.float32), np.ones(2)]), koala.InvalidArgument,
     r"tensors_or_sizes\[1\] has dtype float64"),
    (dict(tensors=[np.ones(3, np.int32)]), koala.Unsupported, "int32"),
    (dict(tensors=[np.ones(3, np.int16)]), koala.Unsupported, "int16"),
    (dict(tensors=[np.ones(3, np.uint16)]), koala.Unsupported, "explicit dtype"),
    (dict(tensors=[4], dtype="int8"), koala.Unsupported, "int8"),
    (dict(tensors=[4], device="tpu"), koala.InvalidArgument, "device"),
    (dict(tensors=["abc"]), koala.Unsupported, r"tensors_or_sizes\[0\]"),
    (dict(tensors=[4], config=dict(lr=-1)), koala.InvalidArgument, "cfg->lr"),
    (dict(tensors=[4], config=dict(alpha_r=1.0)), koala.InvalidArgument, "alpha_r"),
    (dict(tensors=[4], config=dict(sigma=float("nan"))), koala.InvalidArgument, "sigma"),
    (dict(tensors=[4], config=dict(r=-0.5)), koala.InvalidArgument, "cfg->r"),
    (dict(tensors=[4], config=dict(r="x")), koala.InvalidArgument, "r"),
    (dict(method="momentum", tensors=[4], config=dict(sc=1.0)), koala.InvalidArgument, "sc"),
    (dict(method="momentum", tensors=[4], config=dict(a=1.0)), koala.InvalidArgument, "cfg->a"),
    (dict(tensors=[4], device="cuda"), koala.Unsupported, "device memory unavailable"),
])
def test_bad_construction(kwargs, exc, words):
    if kwargs.get("device") == "cuda" and koala.device_available()[0]:
        pytest.skip("a GPU is usable here")
    with pytest.raises(exc, match=words) as info:
        koala.Optimizer(kwargs.get("method", "vanilla"), kwargs["tensors"],
                        dtype=kwargs.get("dtype"), device=kwargs.get("device"),
                        **kwargs.get("config", {}))
    assert info.value.status == exc.status


def test_unknown_config_field_is_a_type_error():
    with pytest.raises(TypeError, match="momentum"):
        koala.Optimizer("vanilla", [4], momentum=0.9)


def test_mixed_devices_named():
    torch = pytest.importorskip("torch")
    with pytest.raises(koala.InvalidArgument, match=r"tensors_or_sizes\[1\] is on cuda:0"):
        koala.Optimizer("vanilla", [np.ones(3, np.float32), _FakeCuda(3)])
    del torch


class _FakeCuda:
    """A device array as CuPy presents it (never dereferenced by these tests)."""

    def __init__(self, n, typestr="<f4", strides=None, readonly=False):
        self.__cuda_array_interface__ = dict(shape=(n,), typestr=typestr, strides=strides,
                                             data=(0x1000, readonly), version=3)


# ---- the step ---------------------------------------------------------------------
def _opt(method="momentum"):
    p = params32()
    return koala.Optimizer(method, p), p


def _assert_unchanged(opt, p, info_before):
    for a in p:
        assert np.all(a == 1.0)
    assert opt.info() == info_before


@pytest.mark.parametrize("bad_params,words", [
    (lambda: [np.ones(5, np.float32)], "params has 1 tensors"),
    (lambda: [np.ones(5, np.float32), np.ones(4, np.float32)], r"params\[1\] has 4 elements"),
    (lambda: [np.ones(5, np.float32), np.ones(3)], r"params\[1\] has dtype float64"),
    (lambda: [np.ones(10, np.float32)[::2], np.ones(3, np.float32)], r"params\[0\] is not contig"),
    (lambda: [np.ones((5, 2), np.float32)[:, ::-1][:, 0], np.ones(3, np.float32)],
     r"params\[0\] is not contig"),
    (lambda: [np.ones(5, np.float32), _readonly(3)], r"params\[1\] is read-only"),
    (lambda: [np.ones(5, np.float32), None], r"params\[1\] is None"),
    (lambda: [np.ones(5, np.float32), _FakeCuda(3)], r"params\[1\] is on cuda:0"),
    (lambda: [np.ones(5, np.float32), [1.0, 2.0, 3.0]], r"params\[1\] is a builtins.list"),
    (lambda: [np.ones(5, np.float32), np.ones(3, np.float32).byteswap().view(">f4")],
     r"params\[1\] has dtype"),
])
def test_bad_params_in_predict(bad_params, words):
    opt, p = _opt()
    before = opt.info()
    with pytest.raises((koala.InvalidArgument, koala.Unsupported), match=words):
        opt.predict(bad_params())
    _assert_unchanged(opt, p, before)


def test_momentum_predict_needs_params():
    opt, p = _opt()
    with pytest.raises(koala.InvalidArgument, match="params is None"):
        opt.predict()


@pytest.mark.parametrize("bad_grads,words", [
    (lambda: [np.ones(5, np.float32)], "grads has 1 tensors"),
    (lambda: [np.ones(5, np.float32), np.ones(2, np.float32)], r"grads\[1\] has 2 elements"),
    (lambda: [np.ones(5), None], r"grads\[0\] has dtype float64"),
    (lambda: [np.ones((5, 2), np.float32)[:, 0], None], r"grads\[0\] is not contiguous"),
])
def test_bad_grads_in_update(bad_grads, words):
    opt, p = _opt()
    opt.predict(p)
    predicted = [a.copy() for a in p]
    before = opt.info()
    with pytest.raises(koala.InvalidArgument, match=words):
        opt.update(1.0, 1.0, p, bad_grads())
    for a, b in zip(p, predicted):
        np.testing.assert_array_equal(a, b)
    assert opt.info() == before
    opt.update(1.0, 1.0, p, grads32())            # still predicted: the real call works


def test_read_only_grads_are_fine():
    opt, p = _opt()
    opt.predict(p)
    g = grads32()
    for a in g:
        a.flags.writeable = False
    opt.update(1.0, 1.0, p, g)
    assert opt.info().steps == 1


@pytest.mark.parametrize("loss,loss_var,exc,words", [
    (float("nan"), 1.0, koala.NotFinite, "not finite"),
    (1.0, float("inf"), koala.NotFinite, "not finite"),
    (1.0, -1.0, koala.InvalidArgument, "loss_var"),
    ("one", 1.0, koala.InvalidArgument, "loss must be a number"),
    (1.0, np.ones(3), koala.InvalidArgument, "loss_var must be a number"),
])
def test_bad_losses(loss, loss_var, exc, words):
    opt, p = _opt()
    opt.predict(p)
    predicted = [a.copy() for a in p]
    before = opt.info()
    with pytest.raises(exc, match=words) as info:
        opt.update(loss, loss_var, p, grads32())
    assert info.value.status == exc.status
    for a, b in zip(p, predicted):
        np.testing.assert_array_equal(a, b)
    assert opt.info() == before


def test_non_finite_gradient():
    opt, p = _opt("vanilla")
    opt.predict()
    g = grads32()
    g[1][0] = np.inf
    with pytest.raises(koala.NotFinite):
        opt.update(1.0, 1.0, p, g)
    _assert_unchanged(opt, p, opt.info())


def test_order_of_calls():
    opt, p = _opt()
    with pytest.raises(koala.BadState, match="without a koala_predict"):
        opt.update(1.0, 1.0, p, grads32())
    opt.predict(p)
    with pytest.raises(koala.BadState, match="twice"):
        opt.predict(p)


def test_stream_must_be_none_on_host():
    opt, p = _opt("vanilla")
    with pytest.raises(koala.InvalidArgument, match="stream must be NULL"):
        opt.predict(None, stream=1234)
    with pytest.raises(TypeError, match="stream"):
        opt.predict(None, stream="s")


def test_set_lr():
    opt, _ = _opt()
    opt.set_lr(0.2)
    with pytest.raises(koala.InvalidArgument, match="lr"):
        opt.set_lr(-1.0)
    with pytest.raises(koala.InvalidArgument, match="lr"):
        opt.set_lr(float("nan"))
    with pytest.raises(koala.InvalidArgument, match="lr must be a number"):
        opt.set_lr("fast")


def test_checkpoint_errors():
    opt, p = _opt()
    state = opt.state_dict()
    with pytest.raises(koala.InvalidArgument, match="bytes"):
        opt.load_state_dict("not bytes")
    with pytest.raises(koala.BadState, match="corrupt|truncated"):
        opt.load_state_dict(state[:-1])
    broken = bytearray(state)
    broken[40] ^= 0xFF
    with pytest.raises(koala.BadState):
        opt.load_state_dict(bytes(broken))
    other = koala.Optimizer("momentum", [5, 4])
    with pytest.raises(koala.BadState):
        opt.load_state_dict(other.state_dict())
    vanilla = koala.Optimizer("vanilla", [5, 3])
    with pytest.raises(koala.BadState):
        opt.load_state_dict(vanilla.state_dict())
    f64 = koala.Optimizer("momentum", [5, 3], dtype="float64")
    with pytest.raises(koala.BadState):
        opt.load_state_dict(f64.state_dict())


def test_closed_optimizer():
    opt, p = _opt()
    opt.close()
    opt.close()                                    # twice is fine
    with pytest.raises(koala.InvalidArgument, match="closed"):
        opt.predict(p)
    with koala.Optimizer("vanilla", [3]) as o:
        o.predict()
    with pytest.raises(koala.InvalidArgument, match="closed"):
        o.info()


def _readonly(n):
    a = np.ones(n, np.float32)
    a.flags.writeable = False
    return a
