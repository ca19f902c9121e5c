"""One process of the 2-process torch.distributed tests (test_torch_distributed.py):

    python dist_worker.py RANK WORLD PORT OUT_PREFIX CHECKPOINT_DIR

gloo on 127.0.0.1. Every case trains the same small network for STEPS steps
with the official loop, each process on its half of every batch, and records
the final parameters (whole tensors) in OUT_PREFIX.RANK.pt; rank 0 also
records the one-process run on the whole batches ("<case>/reference"), made
here with average_loss=False. The test compares them.
"""
import copy
import os
import sys

import torch
import torch.distributed as dist

import koala
from koala.torch import KOALAPlusPlus, MomentumKOALA, VanillaKOALA

STEPS = 12
BATCH = 32
CLASSES = {"V": VanillaKOALA, "M": MomentumKOALA, "PP": KOALAPlusPlus}
TORCH2 = int(torch.__version__.split(".")[0]) >= 2


class Net(torch.nn.Module):
    """An MLP whose `scale` (1 element) gets an empty shard on rank 1 under FSDP."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(20, 16)
        self.fc2 = torch.nn.Linear(16, 5)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x))) * self.scale


def make_net(dtype):
    torch.manual_seed(0)
    return Net().to(dtype)


def batches(dtype):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(20, 5, generator=g, dtype=torch.float64)
    for _ in range(STEPS):
        x = torch.randn(BATCH, 20, generator=g, dtype=torch.float64)
        yield x.to(dtype), (x @ w).argmax(1)


def train(model, opt, rank, world, dtype, steps=None, start=0):
    crit = torch.nn.CrossEntropyLoss(reduction="none")
    half = BATCH // world
    for k, (x, y) in enumerate(batches(dtype)):
        if k < start or (steps is not None and k >= start + steps):
            continue
        x, y = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
        opt.predict()
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.mean().backward()
        opt.update(loss.mean(), torch.mean(loss ** 2))


def full(params):
    out = []
    for p in params:
        p = p.detach()
        out.append(p.full_tensor() if hasattr(p, "full_tensor") else p.clone())
    return out


def config(cls):
    return dict(weight_decay=5e-4, threads=1) if cls is not VanillaKOALA else \
        dict(sigma=0.1, weight_decay=5e-4, threads=1)


def reference(cls, dtype):
    net = make_net(dtype)
    opt = cls(net.parameters(), average_loss=False, **config(cls))
    train(net, opt, 0, 1, dtype)
    return full(net.parameters())


def ddp_case(cls, dtype, sharding=None, average_loss=None):
    from torch.nn.parallel import DistributedDataParallel as DDP
    net = make_net(dtype)
    model = DDP(net)
    opt = cls(model.parameters(), sharding=sharding, average_loss=average_loss, **config(cls))
    train(model, opt, dist.get_rank(), dist.get_world_size(), dtype)
    return full(net.parameters())


def fsdp2_case(cls, dtype):
    from torch.distributed.fsdp import fully_shard
    net = make_net(dtype)
    fully_shard(net.fc1)
    fully_shard(net.fc2)
    fully_shard(net)
    opt = cls(net.parameters(), **config(cls))
    assert any(p.to_local().numel() == 0 for p in net.parameters()) == (dist.get_rank() == 1)
    train(net, opt, dist.get_rank(), dist.get_world_size(), dtype)
    return full(net.parameters())


def dcp_case(cls, dtype, path, fsdp2):
    """Save after 5 steps, go on to the end; load into a fresh run, go on the
    same way: the two ends must be equal bit for bit."""
    import torch.distributed.checkpoint as dcp
    rank, world = dist.get_rank(), dist.get_world_size()

    def build():
        net = make_net(dtype)
        if fsdp2:
            from torch.distributed.fsdp import fully_shard
            fully_shard(net.fc1)
            fully_shard(net.fc2)
            fully_shard(net)
            return net, net
        from torch.nn.parallel import DistributedDataParallel as DDP
        return net, DDP(net)

    net, model = build()
    opt = cls(model.parameters(), **config(cls))
    train(model, opt, rank, world, dtype, steps=5)
    dcp.save({"model": net.state_dict(), "optim": opt.state_dict()}, checkpoint_id=path)
    train(model, opt, rank, world, dtype, start=5)
    first = full(net.parameters())
    net2, model2 = build()
    opt2 = cls(model2.parameters(), lr=0.1, **config(cls))
    sd = {"model": net2.state_dict(), "optim": opt2.state_dict()}
    dcp.load(sd, checkpoint_id=path)
    net2.load_state_dict(sd["model"])
    opt2.load_state_dict(sd["optim"])
    train(model2, opt2, rank, world, dtype, start=5)
    return first + full(net2.parameters())


def main():
    rank, world, port, out, ckpt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], \
        sys.argv[4], sys.argv[5]
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    cases = []
    for name, cls in CLASSES.items():
        for dtype in (torch.float64, torch.float32):
            cases.append((f"ddp/{name}/{str(dtype)[6:]}", lambda c=cls, d=dtype: ddp_case(c, d)))
        cases.append((f"noaverage/{name}/float64",
                      lambda c=cls: ddp_case(c, torch.float64, average_loss=False)))
        cases.append((f"partition/{name}/float64",
                      lambda c=cls: ddp_case(c, torch.float64, "partition")))
        if TORCH2:
            cases.append((f"fsdp2/{name}/float64", lambda c=cls: fsdp2_case(c, torch.float64)))
            cases.append((f"dcp-ddp/{name}/float64", lambda c=cls, n=name: dcp_case(
                c, torch.float64, os.path.join(ckpt, f"ddp-{n}"), False)))
            cases.append((f"dcp-fsdp2/{name}/float64", lambda c=cls, n=name: dcp_case(
                c, torch.float64, os.path.join(ckpt, f"fsdp2-{n}"), True)))
    for case, run in cases:
        try:
            results[case] = run()
        except Exception:                  # the peer would wait forever: end both now
            import traceback
            traceback.print_exc()
            print(f"dist_worker: case {case} failed", flush=True)
            os._exit(1)
        dist.barrier()
        if rank == 0 and not case.startswith("dcp"):
            _, name, dtype = case.split("/")
            results[case + "/reference"] = reference(CLASSES[name], getattr(torch, dtype))
    torch.save(results, f"{out}.{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
