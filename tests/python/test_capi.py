"""The SWIG layer (koala.capi) on its own: the typemaps convert and check,
statuses become exceptions with the library's message."""
import math

import numpy as np
import pytest

import koala
from koala import capi


def make(method=capi.KOALA_VANILLA, sizes=(4, 2), dtype=capi.KOALA_FLOAT64):
    cfg = capi.koala_config()
    capi.koala_config_init(cfg, method)
    return capi.koala_create(cfg, list(sizes), dtype, capi.KOALA_HOST)


def test_config_defaults_are_the_official_ones():
    cfg = capi.koala_config()
    capi.koala_config_init(cfg, capi.KOALA_MOMENTUM)
    assert (cfg.lr, cfg.weight_decay, cfg.alpha_r, cfg.sigma, cfg.q) == (1.0, 0.0, 0.9, 1.0, 1.0)
    assert (cfg.sw, cfg.sc, cfg.sv, cfg.a, cfg.qw, cfg.qv) == (0.1, 0.0, 0.1, 0.9, 0.01, 0.01)
    assert math.isnan(cfg.r)


def test_version_and_strings():
    assert capi.koala_version() == capi.KOALA_VERSION_NUMBER
    assert koala.__version__ == "%d.%d.%d" % (capi.KOALA_VERSION_MAJOR, capi.KOALA_VERSION_MINOR,
                                              capi.KOALA_VERSION_PATCH)
    assert capi.koala_status_string(capi.KOALA_ERROR_NOT_FINITE).startswith(
        "KOALA_ERROR_NOT_FINITE")


def test_status_becomes_exception_with_last_error():
    cfg = capi.koala_config()
    capi.koala_config_init(cfg, capi.KOALA_VANILLA)
    with pytest.raises(koala.InvalidArgument, match="sizes\\[1\\] is 0") as info:
        capi.koala_create(cfg, [3, 0], capi.KOALA_FLOAT32, capi.KOALA_HOST)
    assert info.value.status == capi.KOALA_ERROR_INVALID_ARGUMENT
    assert capi.koala_last_error() == info.value.message


def test_addresses_and_buffers_both_work():
    h = make()
    capi.koala_predict(h, None, None)
    a, b = np.ones(4), np.ones(2)
    ga, gb = np.full(4, 0.5), np.full(2, 0.5)
    # a as an address, b as a buffer; a NULL grad for nothing
    capi.koala_update(h, 1.0, 1.0, [a.ctypes.data, b], [ga, gb.ctypes.data], None)
    assert np.all(a < 1) and np.all(b < 1)
    info = capi.koala_get_info(h, None)
    assert info["steps"] == 1 and set(info) == {"steps", "skipped_steps", "sigma", "p00", "p01",
                                                "p11", "r", "qw", "lr", "threads", "phase"}
    capi.koala_destroy(h)


def test_update_ptr_reads_host_scalars():
    h1, h2 = make(), make()
    p1, p2 = [np.ones(4), np.ones(2)], [np.ones(4), np.ones(2)]
    g = [np.full(4, 0.5), np.full(2, 0.25)]
    for h in (h1, h2):
        capi.koala_predict(h, None, None)
    capi.koala_update(h1, 0.7, 0.6, p1, g, None)
    capi.koala_update_ptr(h2, np.array([0.7]), np.array([0.6]), capi.KOALA_FLOAT64, p2, g, None)
    for x, y in zip(p1, p2):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(TypeError, match="loss"):
        capi.koala_update_ptr(h2, "0.7", np.array([0.6]), capi.KOALA_FLOAT64, p2, g, None)


@pytest.mark.parametrize("params,exc,words", [
    (5, TypeError, "params must be a sequence"),
    ([np.ones(4, np.int64), np.ones(2)], TypeError, r"params\[0\] has format"),
    ([np.ones(8)[::2], np.ones(2)], ValueError, r"params\[0\] must be a C-contiguous"),
    ([np.ones(4), np.ones(2, np.float32)], TypeError, r"params\[1\] has itemsize 4"),
    ([np.ones(4), np.ones(2, np.int16)], TypeError, r"params\[1\] has itemsize 2"),
    ([np.ones(4), "x"], TypeError, r"params\[1\] is a str"),
    ([np.ones(4), None], TypeError, r"params\[1\] is None"),
    ([np.ones(4), -1], OverflowError, ""),
])
def test_pointer_array_typemap_checks(params, exc, words):
    h = make(capi.KOALA_MOMENTUM)
    with pytest.raises(exc, match=words):
        capi.koala_predict(h, params, None)
    capi.koala_destroy(h)


def test_read_only_buffer_refused_for_params_only():
    h = make(capi.KOALA_VANILLA)
    ro = np.ones(4)
    ro.flags.writeable = False
    capi.koala_predict(h, None, None)
    with pytest.raises(ValueError, match="writable"):
        capi.koala_update(h, 1.0, 1.0, [ro, np.ones(2)], [None, None], None)
    capi.koala_update(h, 1.0, 1.0, [np.ones(4), np.ones(2)], [ro, None], None)
    capi.koala_destroy(h)


def test_checkpoint_typemaps():
    h = make()
    n = capi.koala_state_size(h)
    buf = bytearray(n)
    capi.koala_state_save(h, buf, None)
    with pytest.raises(TypeError, match="writable"):
        capi.koala_state_save(h, bytes(n), None)
    with pytest.raises(koala.InvalidArgument, match="too small|size"):
        capi.koala_state_save(h, bytearray(n - 1), None)
    capi.koala_state_load(h, bytes(buf), None)
    capi.koala_state_load(h, buf, None)
    capi.koala_destroy(h)


def test_sizes_typemap():
    cfg = capi.koala_config()
    capi.koala_config_init(cfg, capi.KOALA_VANILLA)
    with pytest.raises(ValueError, match=r"sizes\[1\]"):
        capi.koala_create(cfg, [3, -1], capi.KOALA_FLOAT32, capi.KOALA_HOST)
    with pytest.raises(TypeError):
        capi.koala_create(cfg, 3, capi.KOALA_FLOAT32, capi.KOALA_HOST)
    with pytest.raises(koala.InvalidArgument, match="n_tensors is 0"):
        capi.koala_create(cfg, [], capi.KOALA_FLOAT32, capi.KOALA_HOST)


def test_device_probe_reports_why():
    try:
        capi.koala_device_probe()
    except koala.KoalaError as e:
        assert e.status in (capi.KOALA_ERROR_UNSUPPORTED, capi.KOALA_ERROR_CUDA)
        assert e.message


def test_python_m_koala_reports_itself():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "koala"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith(f"libkoala {koala.__version__}")
    assert "CUDA plugin: " in out and "GPU usable:  " in out
    gpu, why = koala.device_available()
    assert ("GPU usable:  yes" in out) == gpu
    if not gpu:
        assert why in out


def test_shadowing_koala_py_gets_a_hint(tmp_path):
    """Inside the official repository its koala.py shadows the package: the
    start-up hook (libkoala-shadow-hint.pth) turns "'koala' is not a package"
    into a hint naming the file; the official module itself still imports."""
    import os
    import subprocess
    import sys
    (tmp_path / "koala.py").write_text("class MomentumKOALA:\n    pass\n")
    site_dir = os.path.dirname(os.path.dirname(os.path.abspath(koala.__file__)))
    code = ("import site, sys; site.addsitedir(sys.argv[1])\n"
            "from koala import MomentumKOALA\n"
            "try:\n    from koala.torch import MomentumKOALA\n"
            "except ModuleNotFoundError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code, site_dir], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "koala.py" in out and "shadows" in out and str(tmp_path) in out, out
