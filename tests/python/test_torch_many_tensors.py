"""koala.torch on many small tensors (issue 16): the per-step path that reuses
the parameters' checked addresses gives exactly what koala.Optimizer gives
when driven directly with the same configuration, per-tensor lr and weight
decay; and the cases that must leave that path (parameters moved, gradients
that cannot go to the library as they are) still do what they did."""
import pytest

torch = pytest.importorskip("torch")
import koala  # noqa: E402
from koala.torch import KOALAPlusPlus, MomentumKOALA, VanillaKOALA  # noqa: E402

N_TENSORS = 500
# The filter keywords of each class, given explicitly to both sides.
CONFIGS = {
    VanillaKOALA: ("vanilla", dict(sigma=0.5, q=0.2, r=None, alpha_r=0.9)),
    MomentumKOALA: ("momentum", dict(sw=0.1, sc=0.0, sv=0.1, a=0.9, qw=1e-2, qv=1e-2, r=None,
                                     alpha_r=0.9)),
    KOALAPlusPlus: ("plusplus", dict(sigma=1.0, q=0.5, r=None, alpha_r=0.9)),
}
CLASSES = list(CONFIGS)


def small_params(seed=0):
    """500 small float32 tensors, every third one 2-D."""
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*((4, 16) if i % 3 == 0 else (64,)), generator=g))
            for i in range(N_TENSORS)]


def engine_twin(cls, params, lrs, wds):
    """koala.Optimizer as koala.torch drives it: lr 1 with per-tensor multipliers."""
    method, cfg = CONFIGS[cls]
    engine = koala.Optimizer(method, params, lr=1.0, **cfg)
    engine.set_tensor_lr(lrs)
    engine.set_tensor_weight_decay(wds)
    return engine


@pytest.mark.parametrize("cls", CLASSES)
def test_many_small_tensors_two_groups_equal_the_engine_exactly(cls):
    ours = small_params()
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    half = N_TENSORS // 2
    opt = cls([{"params": ours[:half]},
               {"params": ours[half:], "lr": 0.5, "weight_decay": 1e-3}],
              weight_decay=5e-4, **CONFIGS[cls][1])
    lrs = [1.0] * half + [0.5] * (N_TENSORS - half)
    wds = [5e-4] * half + [1e-3] * (N_TENSORS - half)
    engine = engine_twin(cls, theirs, lrs, wds)
    g = torch.Generator().manual_seed(1)
    unused = set(range(0, N_TENSORS, 11))          # never get a gradient
    for k in range(8):
        if k == 5:                                 # a scheduler's change of one group's lr
            opt.param_groups[1]["lr"] = 0.25
            engine.set_tensor_lr([1.0] * half + [0.25] * (N_TENSORS - half))
        opt.predict()
        engine.predict(theirs)
        grads = [None if i in unused else torch.randn(p.shape, generator=g) * 1e-2
                 for i, p in enumerate(ours)]
        for p, q, gr in zip(ours, theirs, grads):
            if k % 2 and gr is not None and p.grad is not None:
                p.grad.copy_(gr)                   # zero_grad(set_to_none=False): in place
            else:
                p.grad = None if gr is None else gr.clone()
            q.grad = None if gr is None else gr.clone()
        loss, loss_var = 0.7 + 0.01 * k, 0.6 + 0.02 * k
        opt.update(torch.tensor(loss, dtype=torch.float64),
                   torch.tensor(loss_var, dtype=torch.float64))
        engine.update(loss, loss_var, theirs, [q.grad for q in theirs])
        for i, (p, q) in enumerate(zip(ours, theirs)):
            assert torch.equal(p, q), f"step {k}, tensor {i}"
    assert opt.koala_info() == [engine.info()]
    assert opt.koala_info()[0].steps == 8


@pytest.mark.parametrize("cls", CLASSES)
def test_moved_parameters_are_followed(cls):
    """p.data = a copy (same dtype and layout, new memory; the old is freed):
    the optimizer updates the new memory, as the engine given the tensors."""
    ours = small_params()[:40]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = cls(ours, **CONFIGS[cls][1])
    engine = engine_twin(cls, theirs, [1.0] * len(ours), [0.0] * len(ours))
    g = torch.Generator().manual_seed(2)
    for k in range(5):
        if k in (2, 3):
            for p in ours[::3]:
                p.data = p.data.clone()
        opt.predict()
        engine.predict(theirs)
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.update(0.8, 0.7)
        engine.update(0.8, 0.7, theirs, [q.grad for q in theirs])
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q), k


@pytest.mark.parametrize("cls", CLASSES)
def test_gradients_that_cannot_go_as_they_are_are_converted(cls):
    """Expanded (stride 0), column-major and float64 gradients of float32 C-order
    parameters: converted to the parameter's dtype and order, as before, so
    the run equals one with plain gradients of the same values."""
    def run(odd):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(4, 4)) for _ in range(6)]
        opt = cls(ps, **CONFIGS[cls][1])
        for k in range(3):
            opt.predict()
            for i, p in enumerate(ps):
                if i == 0:                          # constant: an expanded one can hold it
                    g = torch.full((4, 4), 0.1 + k)
                else:
                    g = torch.arange(16.).reshape(4, 4) * 0.01 + 0.1 * i + k
                if not odd:
                    p.grad = g
                elif i == 0:                        # expanded: stride 0
                    p.grad = torch.full((1, 1), float(g[0, 0])).expand(4, 4)
                elif i % 2:                         # column-major
                    p.grad = g.t().contiguous().t()
                else:                               # float64 (the .grad setter refuses one)
                    p.grad = g.clone()
                    p.grad.data = g.double()
            opt.update(0.8, 0.7)
        return [p.detach().clone() for p in ps]
    plain, odd = run(False), run(True)
    for a, b in zip(plain, odd):
        assert torch.equal(a, b)


def test_a_gradient_that_goes_away_is_no_error():
    """A parameter with a gradient at one update and none at the next (unused in
    that forward pass, zero_grad(set_to_none=True)) is skipped that step."""
    a, b = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(4))
    opt = MomentumKOALA([a, b])
    opt.predict()
    a.grad, b.grad = torch.randn(4), torch.randn(4)
    opt.update(0.7, 0.6)
    opt.predict()
    a.grad, b.grad = None, torch.randn(4)
    opt.update(0.7, 0.6)
    assert opt.koala_info()[0].steps == 2


def test_sparse_gradient_is_refused():
    p = torch.nn.Parameter(torch.zeros(8))
    opt = VanillaKOALA([p])
    opt.predict()
    p.grad = torch.sparse_coo_tensor([[1, 5]], [1.0, 2.0], (8,))
    with pytest.raises(koala.Unsupported, match="sparse gradient"):
        opt.update(0.7, 0.6)
