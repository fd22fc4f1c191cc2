"""A sampler (`--method`) is one entry of `model_search.SAMPLERS` in both folders."""

import json

import pytest
import torch

from conftest import TINY_201, read_history

pytestmark = pytest.mark.quick

SPACES = ["201-space", "DARTS-space"]
SEARCH = {
    "201-space": [*TINY_201, "--epochs", "2", "--benchmark", "none", "--max_steps_per_epoch", "2"],
    "DARTS-space": (
        "--dataset synthetic --layers 3 --init_channels 8 --batch_size 8 --stage_epochs 1 1 --stage_k 4 2 "
        "--warmup_epochs 0 --max_steps_per_epoch 2 --device cpu --workers 0 --image_size 16"
    ).split(),
}


def sparsemax(beta, tau, training):
    """The new sampler: sparsemax over the last dim, the Euclidean projection of beta onto the simplex."""
    z = beta.sort(dim=-1, descending=True).values
    ranks = torch.arange(1, beta.shape[-1] + 1, dtype=beta.dtype, device=beta.device)
    excess = z.cumsum(-1) - 1
    support = (z * ranks > excess).sum(-1, keepdim=True)  # >= 1: the largest entry is always in
    return torch.clamp(beta - excess.gather(-1, support - 1) / support, min=0)


def small_network(model_search, space, method="dirichlet", keep=3):
    """A tiny supernet with beta ~ N(0, 1) and `keep` of the ops kept per edge (None: all)."""
    torch.manual_seed(0)
    args = (8, 10, 3, 2) if space == "DARTS-space" else (4, 1, 10, 1)
    net = model_search.Network(*args, method=method)
    with torch.no_grad():
        for beta in net.arch_parameters():
            beta.normal_()
    if keep is not None:
        net.prune(keep)
    return net


def kept_beta(net, space):
    """beta over the kept ops, as the folder gathers it: 201 (6, n), DARTS (2, 14, n)."""
    if space == "DARTS-space":
        return torch.stack([net.beta_normal, net.beta_reduce]).gather(2, net.kept_index)
    return net.beta.gather(1, net.kept_index())


@pytest.mark.parametrize("space", SPACES)
def test_a_new_sampler_is_one_table_entry(load_space, monkeypatch, tmp_path, restore_logging, space):
    model_search, train_search = load_space(space, "model_search", "train_search")
    calls = []  # (training, weights) of every call of the new sampler

    def recording(beta, tau, training):
        w = sparsemax(beta, tau, training)
        calls.append((training, w.detach().clone()))
        return w

    monkeypatch.setitem(model_search.SAMPLERS, "sparsemax", recording)
    parser = train_search.get_parser()
    assert "sparsemax" in next(action.choices for action in parser._actions if action.dest == "method")

    mixes = []  # every cell mixes with the weights of the sampler's latest call (DARTS: its normal or reduce half)
    cell_forward = model_search.Cell.forward

    def recording_cell(self, *inputs):
        w = calls[-1][1]
        expected = w[int(self.reduction)] if space == "DARTS-space" else w
        mixes.append(torch.equal(inputs[-1].detach(), expected))
        return cell_forward(self, *inputs)

    monkeypatch.setattr(model_search.Cell, "forward", recording_cell)
    train_search.main([*SEARCH[space], "--method", "sparsemax", "--save", str(tmp_path / "run")])
    assert json.loads((tmp_path / "run" / "args.json").read_text())["method"] == "sparsemax"
    assert {training for training, _ in calls} == {True, False}, "training steps and the evaluation both sample"
    assert mixes and all(mixes), "the cells mix with the new sampler's weights"
    for _, w in calls:  # weights on the simplex
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert len(json.loads((tmp_path / "run" / "genotype.json").read_text())) > 0


@pytest.mark.parametrize("method", ["darts", "snas", "gdas"])
def test_darts_space_searches_with_each_baseline(load_space, monkeypatch, tmp_path, restore_logging, method):
    model_search, train_search = load_space("DARTS-space", "model_search", "train_search")
    sampler, calls = model_search.SAMPLERS[method], []  # (beta, tau, weights) of every training call

    def recording(beta, tau, training):
        w = sampler(beta, tau, training)
        if training:
            calls.append((beta.detach().clone(), tau, w.detach().clone()))
        return w

    monkeypatch.setitem(model_search.SAMPLERS, method, recording)
    flags = [*SEARCH["DARTS-space"], "--method", method, "--tau_max", "4", "--tau_min", "0.5"]
    train_search.main([*flags, "--save", str(tmp_path / "run")])
    # Two epochs: tau falls linearly from --tau_max (epoch 1) to --tau_min (the last epoch).
    taus = [tau for _, tau, _ in calls]
    assert taus == sorted(taus, reverse=True) and set(taus) == {4.0, 0.5}
    for beta, _, w in calls:
        if method == "gdas":  # one op per edge (straight-through)
            assert torch.equal(w, torch.nn.functional.one_hot(w.argmax(-1), w.shape[-1]).to(w.dtype))
        elif method == "darts":
            assert torch.equal(w, torch.softmax(beta, -1))
        else:  # snas: a relaxed sample on the simplex
            assert (w > 0).all() and not torch.equal(w, torch.softmax(beta, -1))
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "softmax(beta) normal: " in log and "softmax(beta) reduce: " in log and "concentration normal" not in log
    history = read_history(tmp_path / "run")
    assert len(history) == 2 and all("valid_acc" in record for record in history)


@pytest.mark.parametrize("space", SPACES)
def test_gumbel_tau_is_linear_and_a_method_not_in_the_table_is_refused(load_space, space):
    model_search = load_space(space, "model_search")
    with pytest.raises(ValueError, match="method must be one of"):
        small_network(model_search, space, method="uniform")
    assert [model_search.gumbel_tau(e, 5, 10.0, 2.0) for e in range(5)] == [10.0, 8.0, 6.0, 4.0, 2.0]
    assert model_search.gumbel_tau(0, 1, 10.0, 2.0) == 10.0  # a one-epoch search stays at tau_max


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("pruned", [False, True], ids=["all-ops", "pruned"])
def test_training_draws_from_the_dirichlet_and_evaluation_mixes_with_its_mean(load_space, space, pruned):
    model_search = load_space(space, "model_search")
    net = small_network(model_search, space, keep=3 if pruned else None)
    assert net.method == "dirichlet" and net.training
    c = torch.randn(kept_beta(net, space).shape, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(7)
    w = net.arch_weights()
    got = torch.autograd.grad((w * c).sum(), net.arch_parameters(), allow_unused=True)
    torch.manual_seed(7)
    reference = torch.distributions.Dirichlet(model_search.concentration(kept_beta(net, space))).rsample()
    want = torch.autograd.grad((reference * c).sum(), net.arch_parameters(), allow_unused=True)
    assert torch.equal(w, reference) and all(torch.equal(g, r) for g, r in zip(got, want))

    net.eval()
    beta = kept_beta(net, space).detach()
    alpha = model_search.concentration(beta)
    mean = alpha / alpha.sum(-1, keepdim=True)
    torch.testing.assert_close(model_search.SAMPLERS["dirichlet"](beta, 1.0, False), mean, rtol=1e-6, atol=0)
    rng = torch.get_rng_state()
    torch.testing.assert_close(net.arch_weights(), mean, rtol=1e-6, atol=0)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(net(x), net(x)), "two evaluation forwards are equal"
    assert torch.equal(torch.get_rng_state(), rng), "evaluation draws nothing"
