"""The DrNAS method on the NAS-Bench-201 supernet."""

import types

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from conftest import image_batch

pytestmark = pytest.mark.quick

D = torch.distributions


def _args(**kw):
    base = dict(momentum=0.9, weight_decay=3e-4, unrolled=False, reg_type="l2", reg_scale=1e-3, arch_learning_rate=3e-4)
    return types.SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("method, k", [("dirichlet", 1), ("dirichlet", 2), ("darts", 1), ("snas", 1), ("gdas", 1)])
def test_arch_weights_of_each_method_and_pruned_ops_get_no_weight(load_space, method, k):
    ms = load_space("201-space", "model_search")
    torch.manual_seed(0)
    model = ms.Network(C=4, N=1, num_classes=10, k=k, method=method)
    w = model.arch_weights()
    if method in ("dirichlet", "snas"):
        assert w.shape == (6, 5) and (w >= 0).all()
        torch.testing.assert_close(w.sum(1), torch.ones(6), atol=1e-5, rtol=0)
    if method == "dirichlet":
        ((w * torch.arange(1.0, 6.0)).sum() + (w**2).sum()).backward()
        assert not torch.equal(model.arch_weights(), model.arch_weights())
    elif method == "darts":
        with torch.no_grad():
            model.beta.copy_(torch.randn(6, 5))
        torch.testing.assert_close(model.arch_weights(), F.softmax(model.beta, -1))
        torch.testing.assert_close(model.arch_weights(), model.arch_weights(), rtol=0, atol=0)
    elif method == "gdas":
        model.tau = 1.0
        w = model.arch_weights()
        torch.testing.assert_close(w, F.one_hot(w.argmax(1), 5).float(), atol=1e-6, rtol=0)
        x, y = image_batch(4)
        F.cross_entropy(model(x), y).backward()
    if method in ("dirichlet", "gdas"):
        grad = model.beta.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        model.beta.copy_(torch.randn(6, 5))
    model.prune(2)
    for e, ops in enumerate(model.kept):
        assert len(ops) == 2 and ops == sorted(ops)
        assert set(ops) == set(torch.topk(model.beta[e].detach(), 2).indices.tolist())
    for _ in range(3):
        w = model.arch_weights()
        assert w.shape == (6, 2) and (w >= 0).all()
        torch.testing.assert_close(w.sum(1), torch.ones(6), atol=1e-5, rtol=0)
    if method == "darts":  # softmax over the kept ops' beta, column c for op kept[e][c]
        torch.testing.assert_close(w, F.softmax(model.beta.detach().gather(1, torch.tensor(model.kept)), -1))


def _pathwise_grad(alpha, f, seed, concentration=lambda a: a):
    """d/d alpha of the mean of f over 20000 reparameterised draws of Dir(concentration(alpha))."""
    torch.manual_seed(seed)
    alpha = alpha.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(D.Dirichlet(concentration(alpha)).rsample((20000,))).mean(), alpha)
    return g


def test_pathwise_gradient_of_linear_expectation_second_moment_and_through_concentration_wrt_beta(load_space):
    alpha = torch.tensor([0.7, 1.3, 2.0, 0.9, 3.1], dtype=torch.float64)  # E[c . w] = (alpha . c) / alpha0
    c = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0], dtype=torch.float64)
    mc = _pathwise_grad(alpha, lambda w: (w * c).sum(-1), seed=0)
    torch.testing.assert_close(mc, c / alpha.sum() - (alpha @ c) / alpha.sum() ** 2, atol=0.01, rtol=0.05)

    def closed(alpha):  # E[w_0^2] = a_0 (a_0 + 1) / (A (A + 1)); compared with central differences of it
        a0, A = alpha[0], alpha.sum()
        return a0 * (a0 + 1) / (A * (A + 1))

    alpha, h = torch.tensor([1.5, 0.8, 1.1, 2.0, 0.6], dtype=torch.float64), 1e-5
    mc = _pathwise_grad(alpha, lambda w: w[:, 0] ** 2, seed=1)
    fd = torch.stack([(closed(alpha + h * e) - closed(alpha - h * e)) / (2 * h) for e in torch.eye(5).double()])
    torch.testing.assert_close(mc, fd, atol=0.004, rtol=0.05)
    ms = load_space("201-space", "model_search")
    beta = torch.tensor([0.3, -0.4, 0.1, 0.8, -1.2], dtype=torch.float64)
    c = torch.tensor([2.0, 0.0, -1.0, 1.0, 0.5], dtype=torch.float64)
    mc = _pathwise_grad(beta, lambda w: (w * c).sum(-1), seed=2, concentration=ms.concentration)
    b = beta.clone().requires_grad_(True)
    alpha = F.elu(b) + 1
    (exact,) = torch.autograd.grad((alpha @ c) / alpha.sum(), b)
    torch.testing.assert_close(mc, exact, atol=0.01, rtol=0.05)


@pytest.mark.parametrize("method", ["dirichlet", "darts"])
@pytest.mark.parametrize("k", [1, 2])
def test_architect_step_moves_only_beta_and_leaves_bn_buffers_the_weight_step_only_weights(load_space, method, k):
    ms, arch = load_space("201-space", "model_search", "architect")
    torch.manual_seed(0)
    model = ms.Network(C=4, N=1, num_classes=10, k=k, method=method).train()
    architect = arch.Architect(model, _args(arch_learning_rate=0.01))
    w_opt = torch.optim.SGD(model.weights(), 0.1, momentum=0.9)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    architect.step(*image_batch(4), *image_batch(4, seed=1), 0.1, w_opt)
    assert not torch.equal(model.beta, before["beta"])
    for name, p in model.named_parameters():
        if name != "beta":
            assert torch.equal(p, before[name]) and p.grad is None, name
    assert model.beta.grad is None  # the architect cleans up after itself
    assert [n for n, b in model.named_buffers() if not torch.equal(b, buffers[n])] == []
    # The weight step, as search.search_step takes it: every weight moves, beta neither gets a gradient nor moves.
    weights = model.weights()
    opt, beta0 = torch.optim.SGD(weights, 0.1, momentum=0.9, weight_decay=3e-4), model.beta.detach().clone()
    before = [w.detach().clone() for w in weights]
    opt.zero_grad(set_to_none=True)
    x, y = image_batch(4)
    F.cross_entropy(model(x), y).backward(inputs=weights)
    torch.nn.utils.clip_grad_norm_(weights, 5.0)
    opt.step()
    assert model.beta.grad is None and torch.equal(model.beta, beta0)
    moved = [not torch.equal(w, b) for w, b in zip(weights, before)]
    assert all(moved), f"{moved.count(False)} weights did not move"


def _kl_reference(beta, kept):
    total = 0.0
    for e, ops in enumerate(kept):
        alpha = F.elu(beta[e, ops]) + 1
        total = total + D.kl_divergence(D.Dirichlet(alpha), D.Dirichlet(torch.ones_like(alpha)))
    return total


def test_kl_regularizer_matches_torch_distributions(load_space):
    ms = load_space("201-space", "model_search")
    torch.manual_seed(0)
    model = ms.Network(C=4, N=1, num_classes=10, k=1)
    with torch.no_grad():
        model.beta.copy_(torch.randn(6, 5))
    beta = model.beta.detach().clone()
    torch.testing.assert_close(model.kl_regularizer(), _kl_reference(beta, [list(range(5))] * 6))
    assert model.kl_regularizer() > 0
    with torch.no_grad():
        model.beta.zero_()  # alpha = 1: the uniform prior itself
        torch.testing.assert_close(model.kl_regularizer(), torch.tensor(0.0), atol=1e-5, rtol=0)
        model.beta.copy_(beta)
    model.prune(3)
    kept = [sorted(torch.topk(beta[e], 3).indices.tolist()) for e in range(6)]
    assert model.kept == kept
    kl = model.kl_regularizer()
    torch.testing.assert_close(kl, _kl_reference(beta, kept))
    kl.backward()
    assert torch.isfinite(model.beta.grad).all()  # pruned entries get no gradient from the prior
    mask = torch.ones(6, 5, dtype=torch.bool)
    for e, ops in enumerate(kept):
        mask[e, ops] = False
    assert (model.beta.grad[mask] == 0).all()


@pytest.mark.parametrize("momentum_state, reg_type", [(False, "l2"), (True, "kl")])
def test_unrolled_gradient_matches_finite_differences(load_space, monkeypatch, momentum_state, reg_type):
    """Architect._unrolled_grads + reg grad = finite differences of L_val(w - lr (g + wd w + m buf)) + reg."""
    monkeypatch.setattr(torch.nn.ReLU, "forward", lambda self, x: F.softplus(x))
    monkeypatch.setattr(torch.nn.functional, "relu", F.softplus)  # the search cells' shared ReLU
    ms, arch = load_space("201-space", "model_search", "architect")
    torch.manual_seed(0)
    model = ms.Network(C=4, N=1, num_classes=10, k=1, method="darts").double()
    with torch.no_grad():
        model.beta.copy_(0.5 * torch.randn(6, 5, dtype=torch.float64))
    model.train()
    lr, wd, mom, reg = 0.5, 3e-4, 0.9, 0.1
    args = _args(unrolled=True, weight_decay=wd, momentum=mom, reg_type=reg_type, reg_scale=reg)
    architect, w_opt = arch.Architect(model, args), torch.optim.SGD(model.weights(), lr, momentum=mom, weight_decay=wd)
    names, bufs = [n for n, _ in model.named_parameters() if n != "beta"], {}
    if momentum_state:
        for n, p in zip(names, model.weights()):
            bufs[n] = 0.1 * torch.randn_like(p)
            w_opt.state[p]["momentum_buffer"] = bufs[n]
    xt, yt = image_batch(4, seed=3, dtype=torch.float64)
    xv, yv = image_batch(4, seed=4, dtype=torch.float64)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters() if n != "beta"}
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def call(params, beta, x):
        return functional_call(model, {**params, "beta": beta, **{n: b.clone() for n, b in buffers.items()}}, x)

    def objective(beta, create_graph=False):
        w = {n: t.clone().requires_grad_(True) for n, t in w0.items()}
        lt = F.cross_entropy(call(w, beta, xt), yt)
        g = torch.autograd.grad(lt, [w[n] for n in names], create_graph=create_graph)
        w1 = {n: w[n] - lr * (gi + wd * w[n] + (mom * bufs[n] if n in bufs else 0)) for n, gi in zip(names, g)}
        loss = F.cross_entropy(call(w1, beta, xv), yv)
        term = _kl_reference(beta, [list(range(5))] * 6) if reg_type == "kl" else 0.5 * beta.pow(2).sum()
        return loss + reg * term

    beta0 = model.beta.detach().clone()
    with arch.batch_stats_only(model):  # as Architect.step runs it
        got = architect._unrolled_grads(xt, yt, xv, yv, lr, w_opt)[0]
    got = got + arch.regularizer_grads(model, reg_type, reg)[0]
    for n, p in model.named_parameters():  # the model is left as it was
        if n != "beta":
            assert torch.equal(p, w0[n]), n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert torch.equal(model.beta, beta0)
    h = 1e-5  # central differences of the exact one-step objective over every entry of beta
    steps = h * torch.eye(beta0.numel(), dtype=torch.float64).view(-1, *beta0.shape)
    fd = torch.stack([(objective(beta0 + e) - objective(beta0 - e)).detach() / (2 * h) for e in steps]).view_as(beta0)
    b = beta0.clone().requires_grad_(True)  # ... agree with its gradient by double backward (the reference is right)
    (exact,) = torch.autograd.grad(objective(b, create_graph=True), b)
    torch.testing.assert_close(exact, fd, atol=1e-6, rtol=1e-4)
    # ... and the second-order term matters here, so the check has teeth.
    first = torch.autograd.grad(objective(b), b)[0]
    assert (first - fd).norm() > 0.2 * fd.norm()
    rel, cos = (got - fd).norm() / fd.norm(), F.cosine_similarity(got.flatten(), fd.flatten(), dim=0)
    assert rel < 0.02 and cos > 0.999, (rel.item(), cos.item())


def test_unrolled_hvp_uses_one_dirichlet_draw_for_both_differences(load_space, monkeypatch):
    ms, arch = load_space("201-space", "model_search", "architect")
    torch.manual_seed(0)
    model = ms.Network(C=4, N=1, num_classes=10, k=1, method="dirichlet").train()
    used, original = [], ms.Network.forward

    def recording(self, x, mix=None):
        if mix is None:
            mix = self.arch_weights()
        used.append(mix.detach().clone())
        return original(self, x, mix)

    monkeypatch.setattr(ms.Network, "forward", recording)
    architect = arch.Architect(model, _args(unrolled=True))
    architect._unrolled_grads(*image_batch(4), *image_batch(4, seed=1), 0.025, torch.optim.SGD(model.weights(), 0.025))
    assert len(used) == 4  # L_train(w), L_val(w'), then the + and - evaluations of the HVP
    assert torch.equal(used[0], used[2]) and torch.equal(used[2], used[3]), "all L_train terms share one draw"
    assert not torch.equal(used[1], used[2]), "L_val has its own draw"
