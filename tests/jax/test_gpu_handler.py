"""The GPU handlers cannot move state through the host: the handler library
has no way to make a host<->device copy or to wait for a stream. What it
can reach of the CUDA driver is one stream-ordered device-to-device copy
(cuda_driver.cpp). Checked on the built library, so that a handler that
starts staging state through the host (as the checkpoint-based 1.0
handlers did, with cuMemcpyDtoHAsync / cuMemcpyHtoDAsync and
cuStreamSynchronize twice per call) fails here.

What this does not cover, for want of a GPU here: the device path of
libkoala itself (the CUDA plugin's koala_bind_state, koala_predict,
koala_update_ptr, koala_update_begin / koala_update_end_ptr), whose
contract (koala.h) is stream order without host synchronisation."""
import os
import re

import pytest

from conftest import kj

FORBIDDEN = [
    # driver API: host<->device copies and host waits
    "cuMemcpyDtoH", "cuMemcpyHtoD", "cuMemcpy_v2", "cuMemcpyAsync", "cuMemcpy2D", "cuMemcpy3D",
    "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize", "cuStreamQuery",
    "cuMemHostAlloc", "cuMemAllocHost",
    # runtime API (not linked, but a `dlsym` of it would show the name)
    "cudaMemcpy", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
]


def library_strings():
    path = kj.handler_library()._name
    with open(path, "rb") as f:
        data = f.read()
    return {m.decode() for m in re.findall(rb"[A-Za-z_][A-Za-z0-9_]{3,}", data)}


def test_gpu_handlers_are_exported():
    names = library_strings()
    for stem in ("Predict", "Update", "UpdateBegin", "UpdateEnd"):
        assert f"KoalaJax{stem}Gpu" in names


def test_handler_library_cannot_copy_through_the_host():
    names = library_strings()
    found = sorted(n for n in names for f in FORBIDDEN if n.startswith(f))
    assert not found, f"libkoala_jax.so names host-copy / host-wait CUDA calls: {found}"
    # The one driver call it takes: a stream-ordered device-to-device copy.
    assert "cuMemcpyDtoDAsync_v2" in names
