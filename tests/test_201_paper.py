"""The DrNAS method on NAS-Bench-201 as 201-space/ carries it, one paper-defining fact per test."""

import json
import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from conftest import TINY_201, flat, image_batch, write_tiny_cifar
from loop_run import LoopRun

pytestmark = pytest.mark.quick

D = torch.distributions
BETA1, BETA2, ADAM_EPS = 0.5, 0.999, 1e-8


def _op_copy(ops, name, C, source):
    """A fresh `OPS[name]` of a search cell (BN without affine) holding the weights of `source`."""
    op = ops.OPS[name](C, C, 1, False).train()
    op.load_state_dict(source.state_dict())
    return op


def _kl_to_uniform(beta):
    """sum over edges of KL(Dir(elu(beta) + 1) || Dir(1)), written from torch.distributions."""
    alpha = F.elu(beta) + 1
    return D.kl_divergence(D.Dirichlet(alpha), D.Dirichlet(torch.ones_like(alpha))).sum()


def test_space_has_the_five_nas_bench_201_ops_on_six_edges_zero_identity_relu_conv_bn_and_avg_pool(load_space):
    gt, ops = load_space("201-space", "genotypes", "operations")
    assert gt.PRIMITIVES == ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
    assert gt.EDGES == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    torch.manual_seed(0)
    C = 4
    x = torch.randn(3, C, 8, 8)
    assert torch.equal(ops.OPS["none"](C, C, 1, False)(x), torch.zeros_like(x))
    assert torch.equal(ops.OPS["skip_connect"](C, C, 1, False)(x), x)
    for name, kernel in (("nor_conv_1x1", 1), ("nor_conv_3x3", 3)):
        op = ops.OPS[name](C, C, 1, False).train()
        conv = op.op[1]
        assert conv.weight.shape == (C, C, kernel, kernel) and conv.bias is None
        want = F.batch_norm(F.conv2d(F.relu(x), conv.weight, padding=kernel // 2), None, None, training=True)
        torch.testing.assert_close(op(x), want, rtol=1e-5, atol=1e-5)
    pool = ops.OPS["avg_pool_3x3"](C, C, 1, False)
    torch.testing.assert_close(pool(x), F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("net", ["search", "eval"])
def test_network_is_stem_then_three_stages_of_n_cells_at_c_2c_4c_joined_by_residual_reductions(load_space, net):
    ms, model_mod, gt, ops = load_space("201-space", "model_search", "model", "genotypes", "operations")
    torch.manual_seed(0)
    C, N, classes = 4, 2, 7
    if net == "search":
        model, cell_type = ms.Network(C, N, classes, k=1), ms.Cell
    else:
        model, cell_type = model_mod.Network(C, N, gt.DrNAS, classes), model_mod.InferCell
    stem_conv, stem_bn = model.stem
    assert isinstance(stem_conv, nn.Conv2d) and stem_conv.bias is None
    assert (stem_conv.in_channels, stem_conv.out_channels, stem_conv.kernel_size) == (3, C, (3, 3))
    assert stem_conv.stride == (1, 1) and stem_conv.padding == (1, 1)
    assert isinstance(stem_bn, nn.BatchNorm2d) and stem_bn.num_features == C
    layers = list(model.cells)
    kinds = [
        "cell" if isinstance(m, cell_type) else "block" if isinstance(m, ops.ResNetBasicBlock) else m for m in layers
    ]
    assert kinds == ["cell"] * N + ["block"] + ["cell"] * N + ["block"] + ["cell"] * N
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for m in layers]
    x = torch.randn(2, 3, 16, 16)
    logits = model.train()(x)
    for h in hooks:
        h.remove()
    assert shapes == [(2, C, 16, 16)] * N + [(2, 2 * C, 8, 8)] * (N + 1) + [(2, 4 * C, 4, 4)] * (N + 1)
    bn, relu = model.lastact
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 4 * C and isinstance(relu, nn.ReLU)
    assert isinstance(model.global_pooling, nn.AdaptiveAvgPool2d) and model.global_pooling.output_size in (1, (1, 1))
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (4 * C, classes)
    assert logits.shape == (2, classes)


def test_residual_reduction_block_is_two_relu_conv3x3_bn_stride_2_then_1_plus_pooled_conv1x1_shortcut(load_space):
    ops = load_space("201-space", "operations")
    torch.manual_seed(0)
    block, x = ops.ResNetBasicBlock(4, 8).train(), torch.randn(2, 4, 8, 8)

    def rcb(op, inp, stride):
        conv, bn = op.op[1], op.op[2]
        out = F.conv2d(F.relu(inp), conv.weight, stride=stride, padding=1)
        return F.batch_norm(out, None, None, bn.weight, bn.bias, training=True)

    shortcut = block.downsample[1]
    assert block.conv_a.op[1].weight.shape == (8, 4, 3, 3) and block.conv_b.op[1].weight.shape == (8, 8, 3, 3)
    assert shortcut.weight.shape == (8, 4, 1, 1) and shortcut.bias is None
    want = F.conv2d(F.avg_pool2d(x, 2, 2), shortcut.weight) + rcb(block.conv_b, rcb(block.conv_a, x, 2), 1)
    torch.testing.assert_close(block(x), want, rtol=1e-5, atol=1e-5)


def test_search_cell_node_i_is_the_sum_of_mixed_ops_on_every_earlier_node_each_linear_in_its_weights(load_space):
    ms, gt, ops = load_space("201-space", "model_search", "genotypes", "operations")
    torch.manual_seed(0)
    cell = ms.Cell(4, 1, [range(5)] * 6).train()
    x, w = torch.randn(2, 4, 8, 8), torch.rand(6, 5)
    got, nodes = cell(x, w), [x]
    for i in range(1, 4):
        node = 0
        for e, (to, j) in enumerate(gt.EDGES):
            if to == i:
                node = node + sum(w[e, o] * op(nodes[j]) for o, op in enumerate(cell.edges[e].ops))
        nodes.append(node)
    torch.testing.assert_close(got, nodes[3], rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    C = 6
    mixed, x = ms.MixedOp(C, 1, 1, range(5)).train(), torch.randn(4, C, 8, 8)
    outs = [_op_copy(ops, name, C, mixed.ops[o])(x) for o, name in enumerate(gt.PRIMITIVES)]
    for o, name in enumerate(gt.PRIMITIVES):  # no op bypasses its weight
        torch.testing.assert_close(mixed(x, F.relu(x), torch.eye(5)[o]), outs[o], rtol=1e-5, atol=1e-5, msg=name)
    for _ in range(3):
        w = (torch.rand(5) * 2 + 0.1).requires_grad_(True)  # not on the simplex: linearity, not averaging
        got = mixed(x, F.relu(x), w)
        torch.testing.assert_close(got, sum(w_o * out for w_o, out in zip(w.detach(), outs)), rtol=1e-5, atol=1e-5)
        g = torch.randn_like(got)
        (dw,) = torch.autograd.grad((got * g).sum(), w)
        torch.testing.assert_close(dw, torch.stack([(out * g).sum() for out in outs]), rtol=1e-4, atol=1e-4)


def test_beta_is_1e_3_times_standard_normal_and_the_weights_one_rsample_of_dir_elu_beta_plus_one_for_all_cells(
    load_space, monkeypatch
):
    ms, betas = load_space("201-space", "model_search"), []
    for seed in range(20):
        torch.manual_seed(seed)
        model = ms.Network(4, 1, 10, k=1)
        assert model.beta.shape == (6, 5) and model.arch_parameters() == [model.beta]
        assert all(p is not model.beta for p in model.weights())
        betas.append(model.beta.detach().flatten())
    sample = torch.cat(betas) / 1e-3  # 600 draws, should be N(0, 1)
    assert abs(sample.mean()) < 0.2 and 0.85 < sample.std() < 1.15
    assert 0.6 < (sample.abs() < 1).float().mean() < 0.76  # 68 % within one standard deviation
    # One reparameterised draw per forward, batch (6 edges, 5 ops), alpha = elu(beta) + 1, fed to every cell.
    torch.manual_seed(0)
    model = ms.Network(4, 2, 10, k=1, method="dirichlet").train()
    with torch.no_grad():
        model.beta.copy_(torch.randn(6, 5))
    draws, fed = [], []
    real = D.Dirichlet.rsample

    def recording(self, sample_shape=()):
        sample = real(self, sample_shape)
        draws.append((self.concentration.detach().clone(), sample))
        return sample

    monkeypatch.setattr(D.Dirichlet, "rsample", recording)
    for cell in model.search_cells():
        cell.register_forward_pre_hook(lambda m, inputs: fed.append(inputs[1]))
    model(image_batch(2)[0])
    assert len(draws) == 1, "all edges (and all cells) use one Dirichlet draw"
    alpha, sample = draws[0]
    assert alpha.shape == (6, 5)
    torch.testing.assert_close(alpha, F.elu(model.beta.detach()) + 1)
    assert len(fed) == 6 and all(torch.equal(w, sample) for w in fed)
    assert fed[0].requires_grad, "the pathwise gradient reaches beta through the sample"


@pytest.mark.parametrize("k", [2, 4])
def test_partial_channel_mixed_op_bypasses_last_channels_and_shuffles_in_k_groups(load_space, k):
    ms, ops, gt = load_space("201-space", "model_search", "operations", "genotypes")
    torch.manual_seed(0)
    C = 8
    q = C // k
    mixed, x = ms.MixedOp(C, 1, k, range(5)).train(), torch.randn(3, C, 6, 6)
    # Zero mixing weights: only the bypassed channels, after C/k zeros, then shuffled.
    got, want = mixed(x, F.relu(x), torch.zeros(5)), torch.empty_like(x)
    for o in range(C):
        j = (o % k) * q + o // k  # the channel before the shuffle
        want[:, o] = 0.0 if j < q else x[:, j]
    assert torch.equal(got, want)
    w = torch.rand(5) + 0.1  # any weights: the first C/k channels carry the mixed ops of those channels only
    part = x[:, :q]
    mixed_part = sum(w[o] * _op_copy(ops, name, q, mixed.ops[o])(part) for o, name in enumerate(gt.PRIMITIVES))
    y = torch.cat([mixed_part, x[:, q:]], dim=1)  # shuffled: output channel o = i*k + g is channel g*(C/k) + i of y
    want = torch.stack([y[:, (o % k) * q + o // k] for o in range(C)], dim=1)
    torch.testing.assert_close(mixed(x, F.relu(x), w), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reg_type", ["l2", "kl"])
def test_the_regulariser_adds_reg_scale_times_its_term_and_the_architect_step_is_adam_with_l2_decay_for_l2_only(
    load_space, reg_type
):
    ts, ms, arch = load_space("201-space", "train_search", "model_search", "architect")
    torch.manual_seed(0)
    model = ms.Network(4, 1, 10, k=1, method="darts").double().train()
    with torch.no_grad():
        model.beta.copy_(torch.randn(6, 5, dtype=torch.float64))
    (got,) = arch.regularizer_grads(model, reg_type, 0.3)
    term = 0.5 * model.beta.pow(2).sum() if reg_type == "l2" else _kl_to_uniform(model.beta)
    (want,) = torch.autograd.grad(0.3 * term, [model.beta])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if reg_type == "l2":
        torch.testing.assert_close(got, 0.3 * model.beta.detach(), rtol=1e-12, atol=0)
    # The architect step: two steps with different gradients equal hand-written Adam (betas 0.5, 0.999, eps 1e-8,
    # lr arch_learning_rate), whose L2 decay is reg_scale for l2 and 0 for kl.
    with torch.no_grad():
        model.beta.copy_(0.5 * torch.randn(6, 5, dtype=torch.float64))
    lr, reg = 0.01, 0.05
    args = ts.get_parser().parse_args(f"--reg_type {reg_type} --reg_scale {reg} --arch_learning_rate {lr}".split())
    architect, w_opt = arch.Architect(model, args), torch.optim.SGD(model.weights(), 0.025)
    beta = model.beta.detach().clone()
    m, v = torch.zeros_like(beta), torch.zeros_like(beta)
    grads = []
    for t in (1, 2):
        xt, yt = image_batch(4, seed=10 + t, dtype=torch.float64)
        xv, yv = image_batch(4, seed=t, dtype=torch.float64)
        with arch.batch_stats_only(model):
            loss = F.cross_entropy(model(xv), yv)
            if reg_type == "kl":
                loss = loss + reg * _kl_to_uniform(model.beta)
            (g,) = torch.autograd.grad(loss, [model.beta])
        grads.append(g)
        g = g + (reg if reg_type == "l2" else 0.0) * beta  # Adam's (coupled) L2 weight decay
        m, v = BETA1 * m + (1 - BETA1) * g, BETA2 * v + (1 - BETA2) * g * g
        beta = beta - lr * (m / (1 - BETA1**t)) / ((v / (1 - BETA2**t)).sqrt() + ADAM_EPS)
        architect.step(xt, yt, xv, yv, 0.025, w_opt)
        torch.testing.assert_close(model.beta.detach(), beta, rtol=1e-10, atol=1e-13, msg=f"step {t}")
    assert (grads[0] - grads[1]).norm() > 0.05 * grads[0].norm(), "the two steps see different gradients"


def test_unrolled_step_virtual_sgd_step_then_weights_perturbed_by_norm_0_01_along_v_around_w(load_space):
    ts, ms, arch = load_space("201-space", "train_search", "model_search", "architect")
    torch.manual_seed(0)
    model = ms.Network(4, 1, 10, k=1, method="darts").double().train()
    args = ts.get_parser().parse_args(["--unrolled", "--arch_learning_rate", "0.01"])  # momentum 0.9, wd 3e-4
    architect = arch.Architect(model, args)
    weights, lr = model.weights(), 0.1
    w_opt = torch.optim.SGD(weights, lr, momentum=0.9, weight_decay=3e-4)
    bufs = [0.1 * torch.randn_like(p) for p in weights]
    for p, b in zip(weights, bufs):
        w_opt.state[p]["momentum_buffer"] = b.clone()
    xt, yt = image_batch(4, seed=1, dtype=torch.float64)
    xv, yv = image_batch(4, seed=2, dtype=torch.float64)
    w0 = [p.detach().clone() for p in weights]
    with arch.batch_stats_only(model):
        g_train = torch.autograd.grad(F.cross_entropy(model(xt), yt), weights)
    w_virtual = [w - lr * (g + 0.9 * b + 3e-4 * w) for w, g, b in zip(w0, g_train, bufs)]
    shadow = ms.Network(4, 1, 10, k=1, method="darts").double().train()
    shadow.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p, w in zip(shadow.weights(), w_virtual):
            p.copy_(w)
    with arch.batch_stats_only(shadow):
        v = torch.autograd.grad(F.cross_entropy(shadow(xv), yv), shadow.weights())

    seen = []
    handle = model.register_forward_pre_hook(lambda m, inputs: seen.append(flat(m.weights()).clone()))
    architect.step(xt, yt, xv, yv, lr, w_opt)
    handle.remove()

    assert len(seen) == 4, "forwards: L_train(w), L_val(w'), L_train(w + eps v), L_train(w - eps v)"
    torch.testing.assert_close(seen[0], flat(w0), rtol=0, atol=0)
    torch.testing.assert_close(seen[1], flat(w_virtual), rtol=1e-10, atol=1e-12)
    plus, minus = seen[2], seen[3]
    assert (plus - minus).norm().item() == pytest.approx(0.02, rel=1e-9)
    torch.testing.assert_close((plus + minus) / 2, flat(w0), rtol=0, atol=1e-12)
    v = flat(v)
    torch.testing.assert_close(plus - minus, 0.02 * v / v.norm(), rtol=1e-8, atol=1e-12)
    for p, w in zip(weights, w0):
        assert torch.equal(p, w), "the weights are restored after the step"


def test_weight_optimizer_is_sgd_momentum_0_9_weight_decay_3e_4_lr_0_025_and_clips_the_weights_only(load_space):
    ts, ms, arch = load_space("201-space", "train_search", "model_search", "architect")
    torch.manual_seed(0)
    model, args = ms.Network(4, 1, 10, k=1), ts.get_parser().parse_args([])
    opt, weights = ts.sgd(model, args, args.learning_rate), model.weights()
    assert [id(p) for g in opt.param_groups for p in g["params"]] == [id(p) for p in weights]
    w, buf = [p.detach().clone() for p in weights], None
    for _ in range(2):
        grads = [torch.randn_like(p) for p in weights]
        for p, g in zip(weights, grads):
            p.grad = g.clone()
        opt.step()
        d = [g + 3e-4 * wi for g, wi in zip(grads, w)]
        buf = d if buf is None else [0.9 * b + di for b, di in zip(buf, d)]
        w = [wi - 0.025 * b for wi, b in zip(w, buf)]
        torch.testing.assert_close(flat(weights), flat(w), rtol=1e-6, atol=1e-7)
    # search_step: ||clipped weight gradient|| = grad_clip (beta excluded); beta gets no gradient, never moves.
    model.train()
    architect = arch.Architect(model, args)
    opt = torch.optim.SGD(weights, lr=1.0, momentum=0.0, weight_decay=0.0)
    beta0, clip = model.beta.detach().clone(), 1e-3

    def displacement(grad_clip, seed):
        before = flat(weights)
        ts.search_step(model, architect, opt, weights, image_batch(4, seed=seed), None, 0.025, grad_clip)
        return (flat(weights) - before).norm().item()

    assert displacement(1e6, 0) > 100 * clip, "the true gradient is far above the clip"
    assert displacement(clip, 1) == pytest.approx(clip, rel=1e-5)
    assert model.beta.grad is None and torch.equal(model.beta, beta0)
    planted = torch.full_like(model.beta, 1e3)  # A gradient already on beta neither enters the clipped norm nor changes
    model.beta.grad = planted.clone()
    assert displacement(clip, 2) == pytest.approx(clip, rel=1e-5)
    assert torch.equal(model.beta.grad, planted) and torch.equal(model.beta, beta0)


def _search_task(ts, ms, arch, st, argv, n=16, portion=0.75, batch=4, k=1):
    """The pieces `search.search` takes, on n random 8x8 images; the streams draw batches as the scripts' do."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 8, 8), torch.randint(10, (n,)))
    progressive = "--stage_epochs" in argv
    argv = ["--train_portion", str(portion), "--batch_size", str(batch), "--init_channels", "4", *argv]
    args = ts.get_parser(progressive=progressive).parse_args(argv)
    model = ms.Network(4, 1, 10, k=k).train()
    train_part, valid_part = ts.split_search_data(data, args.train_portion)
    streams = {"train": st.Stream(train_part, args.batch_size, seed=0)}
    streams["valid"] = st.Stream(valid_part, args.batch_size, seed=1)
    task = SimpleNamespace(search=ts.search, model=model, architect=arch.Architect(model, args), streams=streams)
    task.optimizer, task.args = ts.sgd(model, args, args.learning_rate), args
    return data, task


def _epoch(task, epoch, steps=None):
    """Epoch `epoch` of the search loop (`search.search`), evaluated on no images; returns its LoopRun."""
    run = LoopRun(only=[epoch], steps=steps)
    task.search(run, task.model, task.architect, task.optimizer, task.streams, [], task.args)
    return run


def test_weights_train_on_the_train_portion_beta_on_the_rest_once_per_batch_and_not_in_warm_up_epochs(load_space):
    ts, ms, arch, st = load_space("201-space", "train_search", "model_search", "architect", "runkit.streams")
    data, task = _search_task(ts, ms, arch, st, ["--epochs", "1"])
    train_part, valid_part = ts.split_search_data(data, 0.75)
    assert list(train_part.indices) == list(range(12)) and list(valid_part.indices) == list(range(12, 16))
    train_rows, valid_rows = data.tensors[0][:12], data.tensors[0][12:]
    events, real_step, inside = [], task.architect.step, [False]

    def arch_step(x_train, y_train, x_valid, y_valid, lr, opt):
        events.append(("arch", x_train, x_valid))
        inside[0] = True
        try:
            return real_step(x_train, y_train, x_valid, y_valid, lr, opt)
        finally:
            inside[0] = False

    task.architect.step = arch_step
    task.model.register_forward_pre_hook(lambda m, inputs: None if inside[0] else events.append(("weights", inputs[0])))
    _epoch(task, 0)
    assert [e[0] for e in events] == ["arch", "weights"] * 3, "each iteration: architecture step, then weight step"
    for _, *batches in events:  # (x_train, x_valid) of an architecture step, x_train of a weight step
        for batch, rows in zip(batches, (train_rows, valid_rows)):
            assert all(any(torch.equal(r, p) for p in rows) for r in batch)
    # A warm-up epoch leaves beta and its Adam state; other epochs take one architecture step per batch.
    argv = ["--stage_epochs", "2", "2", "--warmup_epochs", "1", "--stage_k", "2", "1", "--stage_keep", "5", "5"]
    _, task = _search_task(ts, ms, arch, st, argv, k=2)
    model, architect, valid_stream = task.model, task.architect, task.streams["valid"]
    beta0, w0 = model.beta.detach().clone(), flat(model.weights())
    _epoch(task, 0)
    assert torch.equal(model.beta, beta0) and not architect.optimizer.state
    assert valid_stream.position() == [0, 0], "no architecture batch is drawn"
    assert not torch.equal(flat(model.weights()), w0)
    _epoch(task, 1)
    assert int(architect.optimizer.state[model.beta]["step"]) == len(task.streams["train"]) == 3
    beta1 = model.beta.detach().clone()
    state1 = {k: v.clone() for k, v in architect.optimizer.state[model.beta].items()}
    run = _epoch(task, 2)  # stage 2's warm-up, after the switch
    assert run.records[-1]["stage"] == 1 and model.k == 1 and torch.equal(model.beta, beta1)
    for key, value in architect.optimizer.state[model.beta].items():
        assert torch.equal(value, state1[key]), key


def test_warm_up_epochs_lead_each_stage_gumbel_tau_falls_from_10_to_1_the_lr_is_one_cosine_over_all_stages(load_space):
    stages_py = load_space("201-space", "runkit.run_flags")
    stages = [stages_py.Stage(4, 4, 5, 2), stages_py.Stage(3, 2, 3, 2)]
    assert [stages_py.stage_at(stages, e) for e in range(7)] == [
        (0, False), (0, False), (0, True), (0, True), (1, False), (1, False), (1, True)
    ]  # fmt: skip
    assert all(stages_py.stage_at([stages_py.Stage(5, 1, 5, 0)], e) == (0, True) for e in range(5))
    ts, ms, arch = load_space("201-space", "train_search", "model_search", "architect")
    # gumbel_tau (snas, gdas) falls linearly: 10 at the first epoch, 1 at the last.
    args = ts.get_parser().parse_args([])
    assert [ts.gumbel_tau(e, 10, args.tau_max, args.tau_min) for e in range(10)] == pytest.approx(range(10, 0, -1))
    assert [ts.gumbel_tau(e, 4, args.tau_max, args.tau_min) for e in range(4)] == pytest.approx([10.0, 7.0, 4.0, 1.0])
    # The learning rate: one cosine from lr to lr_min over all epochs of all stages.
    torch.manual_seed(0)
    args = ts.get_parser(progressive=True).parse_args("--init_channels 8 --stage_epochs 3 4 --warmup_epochs 1".split())
    assert ts.get_stages(args) == [ts.Stage(3, 4, 5, 1), ts.Stage(4, 2, 3, 1)]
    total, model = 7, ms.Network(8, 1, 10, k=4)
    streams = {"train": [None], "valid": [None]}  # no steps are taken
    run = LoopRun(steps=0)
    ts.search(run, model, arch.Architect(model, args), ts.sgd(model, args, 0.025), streams, [], args)
    for epoch, (record, saved) in enumerate(zip(run.records, run.saved)):  # the stage switches at epoch 3
        assert record["stage"] == (epoch >= 3) and saved["k"] == (4 if epoch < 3 else 2)
        want = 0.001 + (0.025 - 0.001) * (1 + math.cos(math.pi * epoch / total)) / 2
        assert record["lr"] == pytest.approx(want, rel=1e-9), epoch
        assert all(g["lr"] == pytest.approx(want, rel=1e-9) for g in saved["optimizer"]["param_groups"]), epoch
    assert len(run.records) == total


def test_stage_switch_keeps_the_top_keep_ops_by_beta_and_widens_to_the_next_k(load_space):
    ts, ms, gt = load_space("201-space", "train_search", "model_search", "genotypes")
    torch.manual_seed(0)
    args = ts.get_parser(progressive=True).parse_args(["--init_channels", "8"])
    model = ms.Network(8, 1, 10, k=4)
    with torch.no_grad():
        model.beta.copy_(torch.randn(6, 5))
    top3 = [sorted(torch.topk(model.beta[e].detach(), 3).indices.tolist()) for e in range(6)]
    assert ts.get_stages(args)[1] == ts.Stage(50, 2, 3, 10)
    ts.enter_stage(model, ts.sgd(model, args, args.learning_rate), 1, args)
    assert model.kept == top3 and model.k == 2
    for cell in model.search_cells():
        for e, edge in enumerate(cell.edges):
            assert edge.k == 2 and edge.kept == top3[e] and len(edge.ops) == 3
            for op in edge.ops:
                if hasattr(op, "op"):
                    assert op.op[1].weight.shape[:2] == (edge.C // 2, edge.C // 2)


# The settings both 201 searches share (DrNAS's NAS-Bench-201 experiments).
SEARCH_SETTINGS = dict(
    batch_size=64, learning_rate=0.025, learning_rate_min=0.001, arch_learning_rate=3e-4, init_channels=16,
    layers=5, train_portion=0.5, seed=2, momentum=0.9, weight_decay=3e-4, grad_clip=5.0, reg_type="l2",
    reg_scale=1e-3, method="dirichlet", unrolled=False,
)  # fmt: skip


def test_search_defaults_are_the_papers_settings_one_stage_or_two_progressive_100_samples_per_epoch(load_space):
    ts, search, tsp = load_space("201-space", "train_search", "train_search", "train_search_progressive")
    args = ts.get_parser().parse_args([])
    want = {**SEARCH_SETTINGS, "epochs": 100, "k": 1, "tau_max": 10.0, "tau_min": 1.0, "dataset": "cifar10"}
    assert {key: getattr(args, key) for key in want} == want and args.trajectory_samples == 100
    assert search.get_stages(args) == [search.Stage(100, 1, 5, 0)], "one stage: all epochs, k, all 5 ops, no warm-up"
    args = tsp.get_parser().parse_args([])
    want = {**SEARCH_SETTINGS, "stage_epochs": [50, 50], "stage_k": [4, 2], "stage_keep": [5, 3], "warmup_epochs": 10}
    assert {key: getattr(args, key) for key in want} == want and args.trajectory_samples == 100
    assert search.get_stages(args) == [search.Stage(50, 4, 5, 10), search.Stage(50, 2, 3, 10)]


def test_search_data_is_random_crop_padding_size_over_8_flip_and_the_datasets_normalisation(load_space, tmp_path):
    datasets = load_space("201-space", "datasets")
    import torchvision.transforms as T

    write_tiny_cifar(tmp_path), write_tiny_cifar(tmp_path, "cifar100")
    folder = tmp_path / "in16"
    folder.mkdir()
    batch = pickle.dumps({"data": np.random.default_rng(0).integers(0, 256, (2, 768), np.uint8), "labels": [1, 2]})
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        (folder / name).write_bytes(batch)
    in16 = (folder, 16, 2, [x / 255 for x in (122.68, 116.66, 104.01)], [x / 255 for x in (63.22, 61.26, 65.09)])
    expected = {
        "cifar10": (tmp_path, 32, 4, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        "cifar100": (tmp_path, 32, 4, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        "imagenet16-120": in16,
    }
    for name, (root, size, padding, mean, std) in expected.items():
        train, test, _ = datasets.get_datasets(name, root)  # the search's call: augmented training set
        crop, flip, to_tensor, norm = train.transform.transforms
        assert isinstance(crop, T.RandomCrop) and tuple(crop.size) == (size, size) and crop.padding == padding
        assert crop.fill == 0 and crop.padding_mode == "constant"
        assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
        assert isinstance(to_tensor, T.ToTensor) and isinstance(norm, T.Normalize)
        assert list(norm.mean) == pytest.approx(list(mean)) and list(norm.std) == pytest.approx(list(std))
        test_ops = test.transform.transforms
        assert [type(t) for t in test_ops] == [T.ToTensor, T.Normalize], "test images are not augmented"
        assert list(test_ops[1].mean) == pytest.approx(list(mean)) and list(test_ops[1].std) == pytest.approx(list(std))


def test_found_cell_trains_with_nas_bench_201_protocol_nesterov_sgd_cosine_to_0_as_its_resnet_does(
    load_space, tmp_path, restore_logging, nb201_table
):
    train = load_space("201-space", "train")
    args = train.get_parser().parse_args([])
    want = {
        "init_channels": 16, "layers": 5, "epochs": 200, "batch_size": 256, "learning_rate": 0.1, "momentum": 0.9,
        "weight_decay": 5e-4, "arch": "DrNAS", "dataset": "cifar10",
    }  # fmt: skip
    assert {key: getattr(args, key) for key in want} == want
    run = tmp_path / "run"
    argv = [*TINY_201, "--batch_size", "128", "--report_freq", "100", "--arch", "ResNet", "--epochs", "2"]
    train.main([*argv, "--save", str(run)])
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)["task"]
    (group,) = ckpt["optimizer"]["param_groups"]
    assert group["nesterov"] is True and group["momentum"] == 0.9 and group["dampening"] == 0
    assert group["weight_decay"] == 5e-4
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.05])
    # ResNet: node1 = conv3x3(x), node2 = conv3x3(node1), output = x + node2 (NAS-Bench-201's reference cell).
    genotypes, benchmark = load_space("201-space", "genotypes", "benchmark")
    assert str(genotypes.ResNet) == ("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|")
    accs = benchmark.load_benchmark(nb201_table).query(str(genotypes.ResNet))
    assert accs["cifar10"] > 93.5 and accs["cifar100"] > 70.0  # a working residual block, not a cut graph
