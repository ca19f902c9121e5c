"""The pythonic layer's CUDA dispatch without a GPU: koala.capi is replaced by
a recorder, device arrays are fakes (__cuda_array_interface__, never
dereferenced), and the test checks which C call the layer makes with which
addresses: device scalars go to koala_update_ptr (no host sync), floats to
koala_update, and mismatched device scalars are refused before any call."""
import types

import pytest

import koala
from koala import capi, optimizer


class FakeDeviceArray:
    def __init__(self, n, address, typestr="<f4", device_id=0):
        self.__cuda_array_interface__ = dict(shape=(n,), typestr=typestr, strides=None,
                                             data=(address, False), version=3)
        self.device = types.SimpleNamespace(id=device_id)


@pytest.fixture
def recorder(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(**{k: getattr(capi, k) for k in dir(capi)
                                    if k.startswith("KOALA_")})
    fake.koala_config = capi.koala_config
    fake.koala_config_init = capi.koala_config_init

    def record(name, result=None):
        def call(*args):
            calls.append((name,) + args)
            return result
        return call

    for name in ("koala_predict", "koala_update", "koala_update_ptr", "koala_set_lr",
                 "koala_destroy", "koala_update_begin", "koala_update_end",
                 "koala_update_end_ptr", "koala_bind_state", "koala_state_init"):
        setattr(fake, name, record(name))
    fake.koala_create = record("koala_create", result="HANDLE")
    fake.koala_create_sharded = record("koala_create_sharded", result="HANDLE")
    fake.koala_sums_size = record("koala_sums_size", result=10)
    fake.koala_state_layout = record("koala_state_layout",
                                     result=(2, capi.KOALA_FLOAT32, 20))
    monkeypatch.setattr(optimizer, "capi", fake)
    return calls


def test_device_optimizer_uses_update_ptr(recorder):
    params = [FakeDeviceArray(4, 0x1000), FakeDeviceArray(2, 0x2000)]
    grads = [FakeDeviceArray(4, 0x3000), None]
    opt = koala.Optimizer("momentum", params, weight_decay=5e-4)
    assert (opt.device, opt.dtype) == ("cuda:0", "float32")
    create = recorder[-1]
    assert create[0] == "koala_create" and create[2] == [4, 2]
    assert create[3] == capi.KOALA_FLOAT32 and create[4] == capi.KOALA_DEVICE
    opt.predict(params, stream=0xABC)
    assert recorder[-1] == ("koala_predict", "HANDLE", [0x1000, 0x2000], 0xABC)
    loss, loss_var = FakeDeviceArray(1, 0x4000), FakeDeviceArray(1, 0x5000)
    opt.update(loss, loss_var, params, grads, stream=0xABC)
    assert recorder[-1] == ("koala_update_ptr", "HANDLE", 0x4000, 0x5000, capi.KOALA_FLOAT32,
                            [0x1000, 0x2000], [0x3000, None], 0xABC)
    opt.update(0.5, 0.25, params, grads)
    assert recorder[-1] == ("koala_update", "HANDLE", 0.5, 0.25, [0x1000, 0x2000],
                            [0x3000, None], None)


def test_device_scalars_must_match(recorder):
    params = [FakeDeviceArray(4, 0x1000)]
    opt = koala.Optimizer("vanilla", params)
    n = len(recorder)
    with pytest.raises(koala.InvalidArgument, match="loss and loss_var"):
        opt.update(FakeDeviceArray(1, 0x4000), FakeDeviceArray(1, 0x5000, "<f8"), params,
                   [None])
    with pytest.raises(koala.InvalidArgument, match="loss and loss_var"):
        opt.update(FakeDeviceArray(1, 0x4000), 0.3, params, [None])
    assert len(recorder) == n                     # nothing reached the library


def test_device_arrays_on_another_gpu_are_named(recorder):
    opt = koala.Optimizer("vanilla", [FakeDeviceArray(4, 0x1000)])
    with pytest.raises(koala.InvalidArgument, match=r"params\[0\] is on cuda:1"):
        opt.update(1.0, 1.0, [FakeDeviceArray(4, 0x1000, device_id=1)], [None])


def test_device_by_sizes(recorder):
    opt = koala.Optimizer("vanilla", [8, 3], dtype="float64", device="cuda")
    assert recorder[-1][3:] == (capi.KOALA_FLOAT64, capi.KOALA_DEVICE)
    assert opt.device == "cuda:0"
    with pytest.raises(koala.InvalidArgument, match=r"params\[0\] is on cpu"):
        import numpy as np
        opt.update(1.0, 1.0, [np.ones(8), np.ones(3)], [None, None])


def test_device_two_phase_uses_update_end_ptr(recorder):
    params = [FakeDeviceArray(4, 0x1000)]
    grads = [FakeDeviceArray(4, 0x3000)]
    sums = FakeDeviceArray(10, 0x6000, "<f8")
    opt = koala.Optimizer("plusplus", params)
    opt.update_begin(params, grads, sums, stream=0xABC)
    assert recorder[-1] == ("koala_update_begin", "HANDLE", [0x1000], [0x3000], 0x6000, 0xABC)
    loss, loss_var = FakeDeviceArray(1, 0x4000, "<f8"), FakeDeviceArray(1, 0x5000, "<f8")
    opt.update_end(loss, loss_var, params, grads, sums, stream=0xABC)
    assert recorder[-1] == ("koala_update_end_ptr", "HANDLE", 0x4000, 0x5000, capi.KOALA_FLOAT64,
                            [0x1000], [0x3000], 0x6000, 0xABC)
    with pytest.raises(koala.InvalidArgument, match="sums must be"):
        opt.update_begin(params, grads, FakeDeviceArray(9, 0x6000, "<f8"))


def test_device_caller_state_binds_device_addresses(recorder):
    params = [FakeDeviceArray(4, 0x1000)]
    opt = koala.Optimizer("momentum", params, caller_state=True)
    assert recorder[-1][0] == "koala_create" and recorder[-1][1].caller_state == 1
    bufs = [FakeDeviceArray(4, 0x7000), FakeDeviceArray(4, 0x8000)]
    scalars = FakeDeviceArray(20, 0x9000, "<f8")
    opt.bind_state(bufs, scalars)
    assert recorder[-1] == ("koala_bind_state", "HANDLE", [0x7000, 0x8000], 0x9000)
    with pytest.raises(koala.InvalidArgument, match=r"buffers\[1\] is on cpu"):
        import numpy as np
        opt.bind_state([bufs[0], np.zeros(4, np.float32)], scalars)


def test_device_sharded_create_passes_the_callable(recorder):
    def allreduce(buf, count, stream):
        pass
    opt = koala.Optimizer("vanilla", [FakeDeviceArray(4, 0x1000)],
                          shard=koala.Shard(n_global=3, global_elements=12, global_index=(2,),
                                            allreduce=allreduce))
    call = recorder[-1]
    assert call[0] == "koala_create_sharded" and call[2:7] == ([4], 3, [2], 12, allreduce)
    assert call[8] == capi.KOALA_DEVICE and opt.n_global == 3


def test_device_calls_default_to_the_frameworks_current_stream(recorder, monkeypatch):
    """stream=None on a device optimizer is torch's current stream of the
    optimizer's device (not the legacy default stream, which does not wait for
    work torch queued on a side stream); an explicit stream is kept, and host
    optimizers pass NULL."""
    asked = []

    class FakeStream:
        def __init__(self, index):
            asked.append(index)
            self.cuda_stream = 0x5000 + index

    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(
        is_initialized=lambda: True, current_stream=FakeStream))
    monkeypatch.setitem(__import__("sys").modules, "torch", fake_torch)
    params = [FakeDeviceArray(4, 0x1000, device_id=1)]
    opt = koala.Optimizer("momentum", params, device="cuda:1")
    opt.predict(params)
    assert recorder[-1] == ("koala_predict", "HANDLE", [0x1000], 0x5001)
    assert asked == [1]
    opt.update(0.5, 0.3, params, [FakeDeviceArray(4, 0x3000, device_id=1)])
    assert recorder[-1][-1] == 0x5001
    opt.predict(params, stream=0xABC)
    assert recorder[-1][-1] == 0xABC
    monkeypatch.setattr(optimizer, "capi", capi)
    host = koala.Optimizer("vanilla", [4])
    assert host._stream(None) is None
