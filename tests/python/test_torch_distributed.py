"""koala.torch with 2 processes (gloo on 127.0.0.1), launched as two
dist_worker.py processes with a free port and a time limit (stragglers are
killed): data parallel under DDP with the official loop unchanged (loss and
loss_var averaged over the group), ZeRO-style partitioning, FSDP2 (DTensor
shards, rank 1 holding an empty shard) and torch.distributed.checkpoint, for
KOALA-V, KOALA-M and KOALA++. Every rank must end identical, and equal to one
process on the whole batches within 1e-10 (float64) / 1e-4 (float32);
without the loss averaging the ranks drift apart (the check can fail)."""
import os
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 240


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, KOALA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "dist_worker.py"), str(r), "2",
                               port, str(work / "out"), str(work)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT)
            logs.append(out.decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log[-4000:]}"
    return [torch.load(str(work / f"out.{r}.pt")) for r in range(2)]


def _cases(results, prefix):
    names = sorted(k for k in results[1] if k.startswith(prefix))
    assert names, f"no {prefix} case ran"
    return names


def _rel(a, b):
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("prefix", ["ddp/", "partition/", "fsdp2/"])
def test_ranks_identical_and_equal_to_one_process(results, prefix):
    if prefix == "fsdp2/" and int(torch.__version__.split(".")[0]) < 2:
        pytest.skip("FSDP2 needs torch >= 2")
    for case in _cases(results, prefix):
        mine, other = results[0][case], results[1][case]
        for a, b in zip(mine, other):
            assert torch.equal(a, b), f"{case}: ranks differ"
        tol = 1e-10 if case.endswith("float64") else 1e-4
        worst = max(_rel(a, b) for a, b in zip(mine, results[0][case + "/reference"]))
        assert worst <= tol, f"{case}: {worst:.3g} from one process on the whole batches"


def test_without_loss_averaging_the_ranks_drift(results):
    for case in _cases(results, "noaverage/"):
        mine, other = results[0][case], results[1][case]
        assert any(_rel(a, b) > 1e-6 for a, b in zip(mine, other)), case


@pytest.mark.parametrize("prefix", ["dcp-ddp/", "dcp-fsdp2/"])
def test_distributed_checkpoint_continues_bit_for_bit(results, prefix):
    if int(torch.__version__.split(".")[0]) < 2:
        pytest.skip("torch.distributed.checkpoint needs torch >= 2")
    for case in _cases(results, prefix):
        run = results[0][case]
        n = len(run) // 2
        for a, b in zip(run[:n], run[n:]):
            assert torch.equal(a, b), f"{case}: the loaded run differs"
        for a, b in zip(run, results[1][case]):
            assert torch.equal(a, b), f"{case}: ranks differ"
