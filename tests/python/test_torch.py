"""koala.torch.VanillaKOALA / MomentumKOALA / KOALAPlusPlus against the
test-only official-style PyTorch re-implementations (official_style.py), on a
small network with real forward/backward, step by step in float64; plus the
parts of the torch.optim.Optimizer contract the official training loop uses.
(test_torch_conventions.py has the rest of the torch conventions.)"""
import copy
import inspect
import io

import pytest

torch = pytest.importorskip("torch")
import koala  # noqa: E402
from koala.torch import KOALAPlusPlus, MomentumKOALA, VanillaKOALA  # noqa: E402
from official_style import (OfficialStyleMomentum, OfficialStylePlusPlus,  # noqa: E402
                            OfficialStyleVanilla)

CLASSES = [VanillaKOALA, MomentumKOALA, KOALAPlusPlus]
REFERENCE = {VanillaKOALA: OfficialStyleVanilla, MomentumKOALA: OfficialStyleMomentum,
             KOALAPlusPlus: OfficialStylePlusPlus}


class Net(torch.nn.Module):
    """An MLP plus one parameter the forward pass never uses (grad stays None)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(),
                                        torch.nn.Linear(16, 5))
        self.unused = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.body(x)


def make_net(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return Net().to(dtype)


def data(dtype=torch.float64, seed=1, batch=32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(20, 5, generator=g, dtype=dtype)
    while True:
        x = torch.randn(batch, 20, generator=g, dtype=dtype)
        yield x, (x @ w).argmax(1)


def train_step(model, opt, x, y, lr):
    """One iteration of the official training loop (training_funcs.train)."""
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    opt.predict()
    loss = criterion(model(x), y)
    loss_mean = loss.mean()
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad()
    loss_mean.backward()
    loss_var = torch.mean(torch.pow(loss, 2))
    opt.update(loss_mean, loss_var)
    return float(loss_mean.detach())


PAIRS = [(VanillaKOALA, OfficialStyleVanilla, dict(sigma=0.1, weight_decay=5e-4)),
         (VanillaKOALA, OfficialStyleVanilla, dict(r=0.3)),
         (MomentumKOALA, OfficialStyleMomentum, dict(weight_decay=5e-4)),
         (MomentumKOALA, OfficialStyleMomentum, dict(r=0.3, a=0.8)),
         (KOALAPlusPlus, OfficialStylePlusPlus, dict()),
         (KOALAPlusPlus, OfficialStylePlusPlus, dict(sigma=0.1, q=0.1, weight_decay=5e-4)),
         (KOALAPlusPlus, OfficialStylePlusPlus, dict(r=0.3, is_symmetric=False))]


@pytest.mark.parametrize("ours_cls,ref_cls,config", PAIRS)
def test_matches_official_style(ours_cls, ref_cls, config):
    ours_net = make_net()
    ref_net = copy.deepcopy(ours_net)
    ours = ours_cls(ours_net.parameters(), **config)
    ref = ref_cls(ref_net.parameters(), **config)
    batches = data()
    first = last = None
    for step in range(60):
        lr = 1.0 if step < 40 else 0.2
        x, y = next(batches)
        l_ours = train_step(ours_net, ours, x, y, lr)
        l_ref = train_step(ref_net, ref, x, y, lr)
        first = l_ours if first is None else first
        last = l_ours
        assert l_ours == pytest.approx(l_ref, rel=1e-9, abs=1e-12)
        for a, b in zip(ours_net.parameters(), ref_net.parameters()):
            diff = float((a - b).abs().max())
            assert diff <= 1e-9 * max(1.0, float(b.abs().max())), f"step {step}: {diff:.3g}"
    assert last < first                       # it trained
    assert torch.equal(ours_net.unused, torch.ones(3, dtype=torch.float64))


def test_constructor_signatures_match_official():
    def defaults(cls):
        # The official positional-or-keyword arguments; libkoala's extensions
        # (threads, stochastic_rounding, seed) are keyword-only.
        sig = inspect.signature(cls.__init__)
        return {k: p.default for k, p in sig.parameters.items()
                if p.default is not inspect.Parameter.empty
                and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}
    assert defaults(VanillaKOALA) == dict(sigma=1, q=1, r=None, alpha_r=0.9, weight_decay=0.0,
                                          lr=1)
    assert defaults(MomentumKOALA) == dict(sw=1e-1, sc=0, sv=1e-1, a=0.9, qw=1e-2, qv=1e-2,
                                           r=None, alpha_r=0.9, weight_decay=0.0, lr=1)
    assert defaults(KOALAPlusPlus) == dict(sigma=1, q=1, r=None, alpha_r=0.9, weight_decay=0,
                                           lr=1, is_symmetric=True)


@pytest.mark.parametrize("cls", CLASSES)
def test_float32_network_trains(cls):
    net = make_net(torch.float32)
    opt = cls(net.parameters(), weight_decay=5e-4)
    batches = data(torch.float32)
    losses = [train_step(net, opt, *next(batches), 1.0) for _ in range(60)]
    assert sum(losses[-10:]) < sum(losses[:10])
    assert isinstance(opt.koala_info()[0], koala.Info)
    assert opt.koala_info()[0].steps == 60


@pytest.mark.parametrize("cls", CLASSES)
def test_float_losses_accepted(cls):
    """update() takes Python floats as well as tensors: same result."""
    a_net = make_net()
    b_net = copy.deepcopy(a_net)
    a, b = cls(a_net.parameters()), cls(b_net.parameters())
    x, y = next(data())
    crit = torch.nn.CrossEntropyLoss(reduction="none")
    for net, opt, as_float in ((a_net, a, False), (b_net, b, True)):
        opt.predict()
        loss = crit(net(x), y)
        opt.zero_grad()
        loss.mean().backward()
        lm, lv = loss.mean(), (loss ** 2).mean()
        opt.update(float(lm) if as_float else lm, float(lv) if as_float else lv)
    for p, q in zip(a_net.parameters(), b_net.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls", CLASSES)
def test_state_dict_round_trip_continues_bit_for_bit(cls):
    net = make_net()
    opt = cls(net.parameters(), weight_decay=5e-4)
    batches = data()
    for _ in range(10):
        train_step(net, opt, *next(batches), 1.0)
    blob = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, blob)
    rest = [next(batches) for _ in range(10)]
    for x, y in rest:
        train_step(net, opt, x, y, 0.5)

    blob.seek(0)
    saved = torch.load(blob)
    net2 = make_net(seed=123)                   # different weights until loaded
    net2.load_state_dict(saved["model"])
    opt2 = cls(net2.parameters(), lr=0.7)       # different lr until loaded
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["lr"] == 1.0
    for x, y in rest:
        train_step(net2, opt2, x, y, 0.5)
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
    assert opt.koala_info() == opt2.koala_info()


def test_load_state_dict_rejects_foreign_state():
    net = make_net()
    opt = VanillaKOALA(net.parameters())
    sgd_state = torch.optim.SGD(net.parameters(), lr=0.1).state_dict()
    with pytest.raises(koala.InvalidArgument, match="no 'filter'"):
        opt.load_state_dict(sgd_state)
    m_state = MomentumKOALA(net.parameters()).state_dict()
    with pytest.raises(koala.InvalidArgument, match=r"state\[0\]"):
        opt.load_state_dict(m_state)
    with pytest.raises(koala.InvalidArgument, match="param_groups"):
        opt.load_state_dict(VanillaKOALA(net.body.parameters()).state_dict())


@pytest.mark.parametrize("cls", CLASSES)
def test_state_dict_is_keyed_like_torch(cls):
    """state[i] holds parameter i's buffers, shaped like it; the first holds the
    float64 filter scalars; they are the tensors libkoala works on."""
    net = make_net(torch.float32)
    opt = cls(net.parameters())
    train_step(net, opt, *next(data(torch.float32)), 1.0)
    sd = opt.state_dict()
    params = list(net.parameters())
    keys = {VanillaKOALA: set(), MomentumKOALA: {"velocity", "xbar"},
            KOALAPlusPlus: {"v", "H_prev"}}[cls]
    assert set(sd["state"][0]) == keys | {"filter"}
    assert sd["state"][0]["filter"].dtype == torch.float64
    for i, p in enumerate(params):
        st = sd["state"].get(i, {})
        assert set(st) - {"filter"} == keys
        for k in keys:
            assert st[k].shape == p.shape and st[k].dtype == torch.float32
    if keys:
        biggest = max(range(len(params)), key=lambda i: params[i].numel())
        buf = sd["state"][biggest][sorted(keys)[0]]
        before = buf.clone()
        train_step(net, opt, *next(data(torch.float32, seed=5)), 1.0)
        assert not torch.equal(buf, before)       # zero copies: the live buffer moved


def test_step_explains_the_two_calls():
    opt = VanillaKOALA(make_net().parameters())
    with pytest.raises(NotImplementedError, match="predict"):
        opt.step()


def _grouped(cls, net, **config):
    return cls([{"params": net.body[0].parameters(), "lr": 0.5},
                {"params": net.body[2].parameters(), "weight_decay": 1e-3},
                {"params": [net.unused]}], **config)


@pytest.mark.parametrize("cls", CLASSES)
def test_param_groups_lr_and_weight_decay_match_official(cls):
    """Groups with their own lr (given at construction, then driven by LambdaLR
    with one lambda per group) and weight_decay follow the official-style
    optimizer, whose group["lr"] scales the group's layers."""
    ours_net = make_net()
    ref_net = copy.deepcopy(ours_net)
    ours = _grouped(cls, ours_net, weight_decay=5e-4)
    ref = _grouped(REFERENCE[cls], ref_net, weight_decay=5e-4)
    assert [g["lr"] for g in ours.param_groups] == [0.5, 1, 1]
    assert [g["weight_decay"] for g in ours.param_groups] == [5e-4, 1e-3, 5e-4]
    lambdas = [lambda e: 0.9 ** e, lambda e: 1.0 / (1 + e), lambda e: 1.0]
    s_ours = torch.optim.lr_scheduler.LambdaLR(ours, lambdas)
    s_ref = torch.optim.lr_scheduler.LambdaLR(ref, lambdas)
    crit = torch.nn.CrossEntropyLoss(reduction="none")
    batches = data()
    for step in range(12):
        x, y = next(batches)
        for net, opt in ((ours_net, ours), (ref_net, ref)):
            opt.predict()
            loss = crit(net(x), y)
            opt.zero_grad()
            loss.mean().backward()
            opt.update(loss.mean(), (loss ** 2).mean())
        s_ours.step()
        s_ref.step()
        for a, b in zip(ours_net.parameters(), ref_net.parameters()):
            assert float((a - b).abs().max()) <= 1e-9 * max(1.0, float(b.abs().max())), step
    assert [g["lr"] for g in ours.param_groups] == pytest.approx([0.5 * 0.9 ** 12, 1 / 13, 1])


@pytest.mark.parametrize("cls", CLASSES)
def test_add_param_group_matches_official(cls):
    ours_net = make_net()
    ref_net = copy.deepcopy(ours_net)
    ours, ref = cls(ours_net.body[0].parameters()), REFERENCE[cls](ref_net.body[0].parameters())
    batches = data()
    for step in range(8):
        if step == 3:
            for net, opt in ((ours_net, ours), (ref_net, ref)):
                opt.add_param_group({"params": net.body[2].parameters(), "lr": 0.7})
        x, y = next(batches)
        train_step_keep_lr(ours_net, ours, x, y)
        train_step_keep_lr(ref_net, ref, x, y)
        for a, b in zip(ours_net.parameters(), ref_net.parameters()):
            assert float((a - b).abs().max()) <= 1e-9 * max(1.0, float(b.abs().max())), step
    assert not torch.equal(ours_net.body[2].bias, make_net().body[2].bias)


def train_step_keep_lr(model, opt, x, y):
    opt.predict()
    loss = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    opt.zero_grad()
    loss.mean().backward()
    opt.update(loss.mean(), (loss ** 2).mean())


def test_filter_keywords_are_not_group_options():
    net = make_net()
    with pytest.raises(koala.InvalidArgument, match=r"param_groups\[1\] sets 'sigma'"):
        VanillaKOALA([{"params": net.body[0].parameters()},
                      {"params": net.body[2].parameters(), "sigma": 0.1}])


def test_mixed_dtypes_get_one_engine_each():
    a = torch.nn.Parameter(torch.ones(4))
    b = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = VanillaKOALA([a, b])
    assert len(opt.koala_info()) == 2


@pytest.mark.parametrize("cls", CLASSES)
def test_nan_loss_raises_not_finite_and_changes_nothing(cls):
    net = make_net()
    opt = cls(net.parameters())
    x, y = next(data())
    opt.predict()
    loss = torch.nn.functional.cross_entropy(net(x), y, reduction="none")
    opt.zero_grad()
    loss.mean().backward()
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(koala.NotFinite):
        opt.update(float("nan"), 1.0)
    for p, q in zip(net.parameters(), before):
        assert torch.equal(p, q)
    opt.update(loss.mean(), (loss ** 2).mean())     # still predicted: a retry works


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("cls", CLASSES)
def test_cuda_matches_cpu(cls):
    ok, why = koala.device_available()
    if not ok:
        pytest.skip(why)
    cpu_net = make_net(torch.float32)
    gpu_net = copy.deepcopy(cpu_net).cuda()
    a, b = cls(cpu_net.parameters(), weight_decay=5e-4), cls(gpu_net.parameters(),
                                                               weight_decay=5e-4)
    batches = data(torch.float32)
    for _ in range(20):
        x, y = next(batches)
        train_step(cpu_net, a, x, y, 1.0)
        train_step(gpu_net, b, x.cuda(), y.cuda(), 1.0)
    for p, q in zip(cpu_net.parameters(), gpu_net.parameters()):
        torch.testing.assert_close(p, q.cpu(), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("error")
def test_torch_lr_scheduler_drives_the_multiplier():
    """A torch scheduler writes group["lr"]; update() reads it as the multiplier."""
    a_net = make_net()
    b_net = copy.deepcopy(a_net)
    ours = MomentumKOALA(a_net.parameters(), weight_decay=5e-4)
    ref = OfficialStyleMomentum(b_net.parameters(), weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(ours, milestones=[3], gamma=0.2)
    crit = torch.nn.CrossEntropyLoss(reduction="none")
    batches = data()
    for step in range(6):
        x, y = next(batches)
        for net, opt in ((a_net, ours), (b_net, ref)):
            opt.predict()
            loss = crit(net(x), y)
            opt.zero_grad()
            loss.mean().backward()
            if opt is ref:
                ref.param_groups[0]["lr"] = 1.0 if step < 3 else 0.2
            opt.update(loss.mean(), (loss ** 2).mean())
        sched.step()
        for p, q in zip(a_net.parameters(), b_net.parameters()):
            assert float((p - q).abs().max()) <= 1e-9
    assert ours.param_groups[0]["lr"] == pytest.approx(0.2)
