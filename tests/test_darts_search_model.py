"""DARTS-space supernet and architect."""

import argparse

import pytest
import torch

from conftest import forbid_host_reads, image_batch

pytestmark = pytest.mark.quick

# Tiny supernet: C=4, 3 cells (normal, reduce, reduce), 16x16 inputs.
C, LAYERS, SIZE = 4, 3, 16


def arch_args(**kw):
    base = dict(unrolled=False, reg_type="l2", reg_scale=1e-3, momentum=0.9, weight_decay=3e-4, arch_learning_rate=0.1)
    return argparse.Namespace(**{**base, **kw})


def batch(seed=0):
    return image_batch(2, SIZE, seed)


def test_arch_parameters_dirichlet_draw_and_every_weight_gets_a_gradient(load_space):
    model_search = load_space("DARTS-space", "model_search")
    torch.manual_seed(0)
    net = model_search.Network(C, 10, LAYERS, k=2)
    state = net.state_dict()
    assert state["beta_normal"].shape == (14, 7) and state["beta_reduce"].shape == (14, 7)
    arch = {id(p) for p in net.arch_parameters()}
    assert not any(id(p) in arch for p in net.weights()) and len(net.weights()) + 2 == len(list(net.parameters()))
    assert net.beta_normal.abs().max() < 0.01  # 1e-3 * N(0, 1)
    mix = net.arch_weights()  # Dirichlet samples on the simplex
    assert mix.shape == (2, 14, 7) and (mix > 0).all()
    torch.testing.assert_close(mix.sum(-1), torch.ones(2, 14))
    mix.sum().backward()
    assert net.beta_normal.grad is not None  # reparameterised: gradients reach beta
    net.eval()
    torch.testing.assert_close(net.arch_weights().sum(-1), torch.ones(2, 14))
    net.train().zero_grad(set_to_none=True)
    x, y = batch()
    out = net(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_prune_keeps_count_and_the_pass_never_runs_pruned_ops_nor_reads_host_values(load_space):
    model_search = load_space("DARTS-space", "model_search")
    torch.manual_seed(0)
    net = model_search.Network(C, 10, LAYERS, k=2)
    before = {id(op): op for cell in net.cells for edge in cell.edges for op in edge.ops}
    net.prune(3)
    kept_ops = {id(op) for cell in net.cells for edge in cell.edges for op in edge.ops}
    for cell in net.cells:
        kept = net.kept[14:] if cell.reduction else net.kept[:14]
        beta = (net.beta_reduce if cell.reduction else net.beta_normal).detach()
        for e, edge in enumerate(cell.edges):
            assert len(edge.ops) == len(edge.kept) == 3 and edge.kept == kept[e]
            assert set(kept[e]) == set(beta[e].topk(3).indices.tolist())  # top ops by beta
    pruned = [op for key, op in before.items() if key not in kept_ops]
    assert len(pruned) == len(net.cells) * 14 * 4

    def explode(*args):
        raise AssertionError("a pruned op was evaluated")

    for op in pruned:
        op.forward = explode
    x, y = batch()
    with forbid_host_reads():
        (torch.nn.functional.cross_entropy(net(x), y) + net.kl_regularizer()).backward()
    assert net.beta_reduce.grad is not None and net.arch_weights().shape == (2, 14, 3)
    # Built directly with masks, a network never even constructs the pruned ops.
    rebuilt = model_search.Network(C, 10, LAYERS, k=2, kept=net.kept)
    assert sum(len(e.ops) for cell in rebuilt.cells for e in cell.edges) == len(net.cells) * 14 * 3
    assert rebuilt.state_dict().keys() == net.state_dict().keys()


def test_genotype_two_strongest_edges_best_kept_op(load_space):
    model_search, genotypes = load_space("DARTS-space", "model_search", "genotypes")
    P, net = genotypes.PRIMITIVES, model_search.Network(C, 10, LAYERS, k=2)
    with torch.no_grad():
        net.beta_normal.zero_()
        net.beta_reduce.zero_()
        # Node 1 (edges 2, 3, 4): edges 2 and 4 are strong, edge 3 weak.
        net.beta_normal[2, P.index("sep_conv_5x5")] = 3.0
        net.beta_normal[4, P.index("dil_conv_3x3")] = 2.0
        net.beta_normal[3, P.index("max_pool_3x3")] = 0.5
    net.prune(4)
    with torch.no_grad():  # a pruned op with a huge beta must not be chosen
        pruned = next(i for i in range(7) if i not in net.kept[2])
        net.beta_normal[2, pruned] = 10.0
    g = net.genotype()
    assert len(g.normal) == len(g.reduce) == 8 and g.normal_concat == [2, 3, 4, 5]
    assert sorted(g.normal[2:4], key=lambda e: e[1]) == [("sep_conv_5x5", 0), ("dil_conv_3x3", 2)]
    for node in range(4):
        inputs = [j for _, j in g.normal[2 * node : 2 * node + 2]]
        assert len(set(inputs)) == 2 and all(j < node + 2 for j in inputs)
    assert all(op in P for op, _ in g.normal + g.reduce)
    genotypes.genotype_from_dict(genotypes.genotype_to_dict(g))  # valid for train.py


@pytest.mark.parametrize("reg_type", ["l2", "kl"])
def test_architect_step_changes_only_arch_params(load_space, reg_type):
    model_search, architect = load_space("DARTS-space", "model_search", "architect")
    torch.manual_seed(0)
    net = model_search.Network(C, 10, LAYERS, k=2)
    arch = architect.Architect(net, arch_args(reg_type=reg_type))
    sgd, before = torch.optim.SGD(net.weights(), 0.1, momentum=0.9), {k: v.clone() for k, v in net.state_dict().items()}
    (x, y), (xv, yv) = batch(seed=1), batch(seed=2)
    arch.step(x, y, xv, yv, 0.1, sgd)
    after = net.state_dict()
    assert not torch.equal(before["beta_normal"], after["beta_normal"])
    for name, p in net.named_parameters():  # and no weight gradient was computed
        assert name.startswith("beta") or (torch.equal(before[name], after[name]) and p.grad is None), name


def test_unrolled_after_pruning_and_widening(load_space):
    model_search, architect = load_space("DARTS-space", "model_search", "architect")
    torch.manual_seed(0)
    net = model_search.Network(C, 10, LAYERS, k=2)
    net.prune(3)
    net.widen(1, torch.Generator().manual_seed(0))
    sgd = torch.optim.SGD(net.weights(), 0.05, momentum=0.9, weight_decay=3e-4)
    (x, y), (xv, yv) = batch(seed=1), batch(seed=2)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    sgd.step()  # momentum buffers exist, as mid-search
    sgd.zero_grad(set_to_none=True)
    arch = architect.Architect(net, arch_args(unrolled=True))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    arch.step(x, y, xv, yv, 0.05, sgd)
    after = net.state_dict()
    for name, value in before.items():
        if name.startswith("beta"):
            assert not torch.equal(value, after[name]) and torch.isfinite(after[name]).all()
        else:  # weights and BatchNorm statistics are back where they were
            assert torch.equal(value, after[name]), name


def test_parameter_counts_match_paper_and_a_k_that_does_not_divide_is_refused(load_space):
    model_search, utils = load_space("DARTS-space", "model_search", "runkit.utils")
    with pytest.raises(utils.UserError, match="valid values: 1, 2, 4, 8"):
        model_search.Network(16, 10, 8, k=6)
    count = lambda net: sum(p.numel() for p in net.weights())  # noqa: E731
    assert count(model_search.Network(16, 10, 8, k=4)) == 299_578
    net = model_search.Network(36, 10, 20, k=6)
    assert count(net) == 2_221_750  # stage 1
    net.widen(4, torch.Generator().manual_seed(0))
    assert count(net) == 2_986_462  # the paper's code counts all 7 ops after widening to k=4
    net.prune(4)  # ours drops the pruned ops: between 1.8M and 2.97M by the ops kept
    assert 1_816_174 <= count(net) <= 2_973_502
