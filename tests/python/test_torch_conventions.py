"""The torch conventions koala.torch follows beyond the official loop
(issue 15): memory layouts, dtype changes after creation, NotFinite recovery,
copies, mistakes it detects, half-precision models, torch.distributed.checkpoint
in one process and torch.compile (PyPI torch)."""
import copy
import io
import pickle
import warnings

import pytest

torch = pytest.importorskip("torch")
import koala  # noqa: E402
from koala.torch import KOALAPlusPlus, MomentumKOALA, VanillaKOALA  # noqa: E402
from official_style import OfficialStyleMomentum, OfficialStylePlusPlus  # noqa: E402

CLASSES = [VanillaKOALA, MomentumKOALA, KOALAPlusPlus]
TORCH2 = int(torch.__version__.split(".")[0]) >= 2


def conv_net(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 5)).to(dtype)


def conv_data(dtype=torch.float64, seed=1, batch=16):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(batch, 3, 8, 8, generator=g).to(dtype)
        yield x, (x.sum((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 0).long()


def step(model, opt, x, y):
    opt.predict()
    loss = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    opt.zero_grad()
    loss.mean().backward()
    opt.update(loss.mean(), (loss ** 2).mean())
    return float(loss.mean().detach())


def close(a_net, b_net, tol):
    for a, b in zip(a_net.parameters(), b_net.parameters()):
        assert float((a.double() - b.double()).abs().max()) <= tol * max(1.0, float(b.abs().max()))


# ---- memory layouts -------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_channels_last_is_accepted_and_equals_contiguous(cls):
    plain = conv_net()
    cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    assert not cl[0].weight.is_contiguous()
    a, b = cls(plain.parameters()), cls(cl.parameters())
    batches = conv_data()
    for _ in range(6):
        x, y = next(batches)
        step(plain, a, x, y)
        step(cl, b, x.to(memory_format=torch.channels_last), y)
    close(plain, cl, 1e-12)          # only the norms' summation order differs
    assert not cl[0].weight.is_contiguous()
    if cls is not VanillaKOALA:      # the state follows the parameter's element order
        st = b.state[cl[0].weight]
        assert all(t.stride() == cl[0].weight.stride() for t in st.values() if t.dim() == 4)


@pytest.mark.parametrize("cls", CLASSES)
def test_memory_format_change_after_creation_moves_the_state(cls):
    plain = conv_net()
    other = copy.deepcopy(plain)
    a, b = cls(plain.parameters()), cls(other.parameters())
    batches = conv_data()
    for k in range(6):
        if k == 3:
            other.to(memory_format=torch.channels_last)
        x, y = next(batches)
        step(plain, a, x, y)
        step(other, b, x, y)
    close(plain, other, 1e-12)


def test_non_dense_parameters_are_refused_with_the_fix():
    base = torch.ones(4, 4, dtype=torch.float64)
    p = torch.nn.Parameter(base[:, :2])            # every other pair: a view with gaps
    opt = VanillaKOALA([p])
    with pytest.raises(koala.InvalidArgument, match=r"not contiguous.*\.contiguous\(\)"):
        opt.predict()
        p.grad = torch.ones_like(p)
        opt.update(1.0, 1.0)


def test_gradient_in_another_order_is_paired_correctly():
    """p.grad set by hand in C order for a channels_last parameter: the same
    elements must be paired (koala.torch copies it into the parameter's order)."""
    torch.manual_seed(0)
    w = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    g = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    a = torch.nn.Parameter(w.clone())
    b = torch.nn.Parameter(w.clone().to(memory_format=torch.channels_last))
    oa, ob = MomentumKOALA([a]), MomentumKOALA([b])
    for opt, p in ((oa, a), (ob, b)):
        opt.predict()
        p.grad = g.clone()                          # C order for both
        opt.update(0.7, 0.6)
    torch.testing.assert_close(a, b, rtol=1e-13, atol=0)


# ---- dtype changes after creation ------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_model_double_after_creation_works(cls):
    net = conv_net(torch.float32)
    opt = cls(net.parameters(), weight_decay=5e-4)
    batches = conv_data(torch.float32)
    losses = [step(net, opt, *next(batches)) for _ in range(4)]
    net.double()
    x64 = conv_data(torch.float64, seed=7)
    losses += [step(net, opt, *next(x64)) for _ in range(8)]
    assert opt.koala_info()[0].steps == 12
    for st in opt.state.values():
        for k, t in st.items():
            assert t.dtype == torch.float64
    assert losses[-1] < losses[0]


def test_mixed_conversion_names_the_fix():
    net = conv_net(torch.float32)
    opt = MomentumKOALA(net.parameters())
    step(net, opt, *next(conv_data(torch.float32)))
    net[3].double()
    with pytest.raises(koala.InvalidArgument, match="convert the whole model alike"):
        opt.predict()


# ---- NotFinite recovery ---------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_not_finite_recovery_follows_the_usual_loop(cls):
    """The usual loop skips a batch whose update raised NotFinite; the next
    predict() does nothing (the optimizer is still predicted). The run equals
    one that never saw the bad batch but predicted only once for it."""
    a_net = conv_net()
    b_net = copy.deepcopy(a_net)
    a, b = cls(a_net.parameters()), cls(b_net.parameters())
    batches = [next(conv_data(seed=s)) for s in range(6)]
    for k, (x, y) in enumerate(batches):
        a.predict()
        loss = torch.nn.functional.cross_entropy(a_net(x), y, reduction="none")
        a.zero_grad()
        loss.mean().backward()
        try:
            a.update(loss.mean() * (float("nan") if k == 2 else 1.0), (loss ** 2).mean())
        except koala.NotFinite:
            continue
    for k, (x, y) in enumerate(batches):
        if k == 2:
            b.predict()                              # the prediction the bad batch saw
            continue
        if k == 3:                                  # ... is still in force
            loss = torch.nn.functional.cross_entropy(b_net(x), y, reduction="none")
            b.zero_grad()
            loss.mean().backward()
            b.update(loss.mean(), (loss ** 2).mean())
            continue
        step(b_net, b, x, y)
    close(a_net, b_net, 0)
    assert a.koala_info()[0].steps == 5


# ---- copies ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_continue_like_the_original(cls, how):
    net = conv_net()
    opt = cls(net.parameters(), weight_decay=5e-4)
    batches = conv_data()
    for _ in range(3):
        step(net, opt, *next(batches))
    if how == "deepcopy":
        net2, opt2 = copy.deepcopy((net, opt))
    else:
        net2, opt2 = pickle.loads(pickle.dumps((net, opt)))
    rest = [next(batches) for _ in range(4)]
    for x, y in rest:
        step(net, opt, x, y)
        step(net2, opt2, x, y)
    close(net, net2, 0)
    assert opt.koala_info() == opt2.koala_info()


def test_engine_handles_refuse_pickling_clearly():
    with pytest.raises(TypeError, match="state_dict"):
        pickle.dumps(koala.Optimizer("vanilla", [3]))


# ---- mistakes it detects -------------------------------------------------------------------
def test_unknown_keyword_is_named():
    net = conv_net()
    with pytest.raises(TypeError, match="'momentum'"):
        MomentumKOALA(net.parameters(), momentum=0.9)
    with pytest.raises(TypeError, match="'betas'"):
        KOALAPlusPlus(net.parameters(), betas=(0.9, 0.99))


def test_swapped_loss_and_loss_var_warn():
    net = conv_net()
    opt = VanillaKOALA(net.parameters())
    x, y = next(conv_data())
    opt.predict()
    loss = torch.nn.functional.cross_entropy(net(x), y, reduction="none") * 3   # mean > 1
    opt.zero_grad()
    loss.mean().backward()
    with pytest.warns(UserWarning, match="swapped"):
        opt.update((loss ** 2).mean(), loss.mean())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(net, opt, x, y)                      # the right order: no warning
        opt.predict()
        opt.zero_grad()
        l2 = torch.nn.functional.cross_entropy(net(x), y)
        l2.backward()
        opt.update(l2, 0.0)                       # KOALA++'s scripts pass 0: no warning


@pytest.mark.parametrize("cls", CLASSES)
def test_update_after_forgotten_backward_is_refused(cls):
    net = conv_net()
    opt = cls(net.parameters())
    x, y = next(conv_data())
    opt.predict()
    with pytest.raises(koala.BadState, match="no parameter has a gradient"):
        opt.update(1.0, 1.0)
    step(net, opt, x, y)                           # still predicted: this works
    opt.predict()
    net(x).sum()                                   # forward, no backward
    with pytest.raises(koala.BadState, match="forget loss.backward"):
        opt.update(1.0, 1.0)
    before = [p.clone() for p in net.parameters()]
    opt.zero_grad(set_to_none=False)
    loss = torch.nn.functional.cross_entropy(net(x), y, reduction="none")
    loss.mean().backward()
    opt.update(loss.mean(), (loss ** 2).mean())
    assert any(not torch.equal(a, b) for a, b in zip(net.parameters(), before))


# ---- half precision --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls,ref_cls", [(MomentumKOALA, OfficialStyleMomentum),
                                         (KOALAPlusPlus, OfficialStylePlusPlus)])
def test_half_precision_first_steps_round_the_float32_step(dtype, cls, ref_cls):
    """A 16-bit model: the step is the float32 step on the 16-bit values,
    rounded to the 16-bit type (nearest-even): within one 16-bit ulp of the
    official-style float32 step, for two steps."""
    torch.manual_seed(3)
    w16 = torch.nn.Parameter(torch.randn(64, dtype=torch.float32).to(dtype))
    w32 = torch.nn.Parameter(w16.detach().float())
    ours, ref = cls([w16]), ref_cls([w32])
    for k in range(2):
        g = torch.randn(64).to(dtype)
        ours.predict()
        ref.predict()
        w16.grad = g.clone()
        w32.grad = g.float()
        ours.update(0.8, 0.9)
        ref.update(0.8, 0.9)
        ulp = torch.finfo(dtype).eps * w32.detach().abs().clamp_min(torch.finfo(dtype).tiny)
        assert bool(((w16.float() - w32.detach()).abs() <= ulp * 1.01).all()), k
        w32.data.copy_(w16.detach().float())      # follow the rounded values
    assert ours.state[w16][cls._state_keys[0]].dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", CLASSES)
def test_half_precision_model_trains(dtype, cls):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 3)).to(dtype)
    try:
        net(torch.zeros(1, 3, 8, 8, dtype=dtype))
    except RuntimeError as e:               # Debian's torch 1.13: no float16 matmul on the CPU
        pytest.skip(f"this torch cannot run a {dtype} model on the CPU: {e}")
    opt = cls(net.parameters(), weight_decay=5e-4)
    batches = conv_data(dtype, batch=32)
    losses = [step(net, opt, *next(batches)) for _ in range(30)]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert all(p.dtype == dtype for p in net.parameters())


def test_stochastic_rounding_is_seeded():
    def run(seed):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(256).to(torch.bfloat16))
        opt = VanillaKOALA([w], stochastic_rounding=True, seed=seed)
        for _ in range(3):
            opt.predict()
            w.grad = torch.full_like(w, 1e-3)
            opt.update(0.5, 0.3)
        return w.detach().clone()
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


# ---- distributed checkpoint in one process --------------------------------------------------
@pytest.mark.skipif(not TORCH2, reason="torch.distributed.checkpoint needs torch >= 2")
@pytest.mark.parametrize("cls", CLASSES)
def test_distributed_checkpoint_round_trip_one_process(cls, tmp_path):
    import torch.distributed.checkpoint as dcp
    net = conv_net()
    opt = cls(net.parameters(), weight_decay=5e-4)
    batches = conv_data()
    for _ in range(4):
        step(net, opt, *next(batches))
    dcp.save({"model": net.state_dict(), "optim": opt.state_dict()}, checkpoint_id=str(tmp_path))
    rest = [next(batches) for _ in range(4)]
    for x, y in rest:
        step(net, opt, x, y)
    net2 = conv_net(seed=9)
    opt2 = cls(net2.parameters(), lr=0.3)
    sd = {"model": net2.state_dict(), "optim": opt2.state_dict()}
    dcp.load(sd, checkpoint_id=str(tmp_path))
    net2.load_state_dict(sd["model"])
    opt2.load_state_dict(sd["optim"])
    for x, y in rest:
        step(net2, opt2, x, y)
    close(net, net2, 0)
    assert opt.koala_info() == opt2.koala_info()


def test_torch_save_of_a_mid_step_checkpoint_keeps_the_phase():
    net = conv_net()
    opt = MomentumKOALA(net.parameters())
    step(net, opt, *next(conv_data()))
    opt.predict()
    blob = io.BytesIO()
    torch.save(opt.state_dict(), blob)
    blob.seek(0)
    opt2 = MomentumKOALA(copy.deepcopy(net).parameters())
    opt2.load_state_dict(torch.load(blob))
    assert opt2.koala_info()[0].phase == 1


# ---- torch.compile ----------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile needs torch >= 2")
def test_torch_compile_model_in_the_loop():
    eager = conv_net(torch.float32)
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net)
    a, b = KOALAPlusPlus(eager.parameters()), KOALAPlusPlus(compiled_net.parameters())
    batches = conv_data(torch.float32)
    for _ in range(4):
        x, y = next(batches)
        step(eager, a, x, y)
        step(compiled, b, x, y)
    close(eager, compiled_net, 1e-4)


def test_step_names_the_calling_contract_and_the_zero_alternative():
    """KOALA has no step(): the error says what to call instead, and what to use
    where a wrapper (ZeroRedundancyOptimizer) would call step()."""
    from koala.torch import MomentumKOALA
    p = torch.nn.Parameter(torch.zeros(3))
    opt = MomentumKOALA([p])
    with pytest.raises(NotImplementedError, match=r"predict\(\).*update\(.*sharding='partition'"):
        opt.step()
