"""The DrNAS method in the DARTS space, as a specification."""

import argparse
import functools
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from conftest import flat, image_batch, write_tiny_cifar
from loop_run import LoopRun

pytestmark = pytest.mark.quick

SPACE = "DARTS-space"
# Tiny supernet: C=4, 3 cells (normal, reduce, reduce), 16x16 inputs, 10 classes.
C, LAYERS, SIZE = 4, 3, 16
CONV_OPS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


batch = functools.partial(image_batch, size=SIZE)


def arch_args(**kw):
    base = dict(unrolled=False, reg_type="l2", reg_scale=1e-3, momentum=0.9, weight_decay=3e-4, arch_learning_rate=6e-4)
    return argparse.Namespace(**{**base, **kw})


def concentration_by_hand(beta):
    """alpha = elu(beta) + 1, written out: beta + 1 above 0, exp(beta) below."""
    return torch.where(beta > 0, beta + 1, torch.exp(beta))


def kl_to_uniform_dirichlet(beta):
    """Sum over edges of KL(Dir(alpha) || Dir(1, ..., 1)), closed form."""
    a = concentration_by_hand(beta)
    a0 = a.sum(-1)
    kl = torch.lgamma(a0) - torch.lgamma(a).sum(-1) - math.lgamma(a.shape[-1])
    return (kl + ((a - 1) * (torch.digamma(a) - torch.digamma(a0)[..., None])).sum(-1)).sum()


def shuffle_by_hand(t, groups):
    """ShuffleNet channel shuffle by index arithmetic: out[:, j * groups + g] = t[:, g * (C / groups) + j]."""
    per, out = t.shape[1] // groups, torch.empty_like(t)
    for g in range(groups):
        for j in range(per):
            out[:, j * groups + g] = t[:, g * per + j]
    return out


def test_seven_ops_beta_1e_3_normal_14_by_7_cells_4_nodes_14_edges_stride_2_from_reduction_inputs_stem_3c(load_space):
    model_search, genotypes = load_space(SPACE, "model_search", "genotypes")
    ops = "max_pool_3x3 avg_pool_3x3 skip_connect sep_conv_3x3 sep_conv_5x5 dil_conv_3x3 dil_conv_5x5"
    assert genotypes.PRIMITIVES == ops.split()
    torch.manual_seed(0)
    net = model_search.Network(C, 10, LAYERS, k=2)
    assert net.beta_normal.shape == net.beta_reduce.shape == (14, 7)
    assert not torch.equal(net.beta_normal, net.beta_reduce)
    values = torch.cat([net.beta_normal.detach().flatten(), net.beta_reduce.detach().flatten()])  # 196 draws
    assert 0.8e-3 < float(values.std()) < 1.2e-3  # scale 1e-3
    assert abs(float(values.mean())) < 3e-4  # centred (a uniform [0, 1e-3) draw has mean 5e-4)
    assert (values < 0).sum() > 60 and (values.abs() > 2e-3).sum() > 0  # both signs, Gaussian tails
    # The cells: 4 nodes on 14 edges, stride 2 from a reduction cell's inputs, the nodes concatenated.
    for layers in (5, 6):
        torch.manual_seed(0)
        net, reductions = model_search.Network(C, 10, layers, k=1), (layers // 3, 2 * layers // 3)
        assert [cell.reduction for cell in net.cells] == [i in reductions for i in range(layers)]
    # The CIFAR stem: one 3x3 conv to 3C channels at full resolution.
    assert net.stem0[0].out_channels == 3 * C and net.stem0[0].stride == (1, 1)
    inputs, outputs = {}, {}
    for i, cell in enumerate(net.cells):
        cell.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args))
        cell.register_forward_hook(lambda m, args, out, i=i: outputs.__setitem__(i, out))
    x, _ = batch(size=24)
    mix = net.arch_weights()  # (2, 14, 7)
    with torch.no_grad():
        net(x, mix)
        stem = net.stem0(x)
        assert stem.shape[1] == 3 * C
        channels, size = C, 24
        for i, cell in enumerate(net.cells):
            s0, s1, weights = inputs[i]
            # Inputs: the outputs of the two previous cells (the stem for the first ones).
            torch.testing.assert_close(s0, outputs[i - 2] if i >= 2 else stem)
            torch.testing.assert_close(s1, outputs[i - 1] if i >= 1 else stem)
            assert torch.equal(weights, mix[1] if cell.reduction else mix[0])
            channels, size = (2 * channels, size // 2) if cell.reduction else (channels, size)
            assert len(cell.edges) == 14
            states, e = [cell.preprocess0(s0), cell.preprocess1(s1)], 0
            for node in range(4):
                terms = []
                for j in range(2 + node):
                    edge = cell.edges[e]
                    assert edge.stride == (2 if cell.reduction and j < 2 else 1)
                    out = edge(states[j], F.relu(states[j]), weights[e])
                    assert out.shape == (2, channels, size, size)
                    terms.append(out)
                    e += 1
                states.append(sum(terms))
            torch.testing.assert_close(outputs[i], torch.cat(states[2:], dim=1), atol=1e-5, rtol=1e-5)
            assert outputs[i].shape[1] == 4 * channels


def test_mixing_weights_are_dirichlet_elu_beta_plus_1_in_training_and_its_mean_in_evaluation(load_space):
    """Training draws mixing weights ~ Dir(elu(beta) + 1): its mean and variance on every edge. In eval mode the
    supernet mixes with alpha / sum(alpha), deterministically."""
    model_search = load_space(SPACE, "model_search")
    torch.manual_seed(0)
    net, row = model_search.Network(C, 10, LAYERS, k=2), torch.tensor([2.0, 0.5, 0.0, -0.5, -1.0, -2.0, 1.0])
    with torch.no_grad():
        net.beta_normal.copy_(row.expand(14, 7))
        net.beta_reduce.copy_(row.roll(3).expand(14, 7))
        draws = torch.stack([net.arch_weights() for _ in range(300)])  # (300, 2, 14, 7)
    for t, beta in enumerate((row, row.roll(3))):
        a = concentration_by_hand(beta)
        a0 = a.sum()
        samples = draws[:, t].reshape(-1, 7)  # 4200 draws of one Dirichlet
        torch.testing.assert_close(samples.mean(0), a / a0, atol=0.015, rtol=0)  # E = alpha / alpha_0
        # Total variance sum_i alpha_i (alpha_0 - alpha_i) / (alpha_0^2 (alpha_0 + 1)) pins the scale alpha_0
        # (worst deviation over 100 seeds: 3.6 %; doubling alpha would lower it by 47 %).
        total = (a * (a0 - a)).sum() / (a0**2 * (a0 + 1))
        assert abs(float(samples.var(0).sum() / total) - 1) < 0.12
    with torch.no_grad():
        net.beta_normal.normal_(0, 1)
        net.beta_reduce.normal_(0, 1)
    net.eval()
    alpha = concentration_by_hand(torch.stack([net.beta_normal, net.beta_reduce]).detach())
    mean = alpha / alpha.sum(-1, keepdim=True)
    torch.testing.assert_close(net.arch_weights(), mean)
    x, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x, mean))


def test_genotype_ranks_edges_by_softmax_strength_of_best_kept_op_not_raw_beta(load_space):
    model_search, genotypes = load_space(SPACE, "model_search", "genotypes")
    P, net = genotypes.PRIMITIVES, model_search.Network(C, 10, LAYERS, k=2)
    with torch.no_grad():
        net.beta_normal.zero_()
        net.beta_reduce.zero_()
        net.beta_normal[2] = 0.95  # node 1 reads edges 2 (input 0), 3 (input 1), 4 (node 0)
        net.beta_normal[2, P.index("sep_conv_3x3")] = 1.0  # largest beta, but a flat softmax (0.149)
        net.beta_normal[3] = -3.0
        net.beta_normal[3, P.index("dil_conv_5x5")] = 0.6  # small beta, peaked softmax (0.859)
        net.beta_normal[4] = 0.9
        net.beta_normal[4, P.index("avg_pool_3x3")] = 0.9001  # second-largest beta, softmax 0.143
    gene = net.genotype().normal[2:4]
    assert sorted(gene, key=lambda g: g[1]) == [("sep_conv_3x3", 0), ("dil_conv_5x5", 1)]


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_is_the_weighted_sum_of_its_ops_one_hot_gives_the_op_alone(load_space, stride):
    model_search, operations, genotypes = load_space(SPACE, "model_search", "operations", "genotypes")
    torch.manual_seed(0)
    edge = model_search.MixedOp(8, stride, 1, range(7))  # train mode: BatchNorm uses batch statistics
    x, one_hot = torch.randn(2, 8, 8, 8), torch.eye(7)
    x_relu = F.relu(x)  # the cell's one ReLU of the state
    with torch.no_grad():
        singles = [edge(x, x_relu, one_hot[i]) for i in range(7)]
        for i, name in enumerate(genotypes.PRIMITIVES):
            alone = operations.search_op(name, 8, stride)
            alone.load_state_dict(edge.ops[i].state_dict())
            # Convolutions (and the factorized reduce of skip_connect) start with a ReLU; pools and identity do not.
            relu = name in CONV_OPS or (name == "skip_connect" and stride == 2)
            expected = alone(F.relu(x) if relu else x)
            assert expected.shape == (2, 8, 8 // stride, 8 // stride)
            torch.testing.assert_close(singles[i], expected, atol=1e-6, rtol=1e-6, msg=name)
        w = torch.tensor([0.3, -0.7, 1.4, 0.2, -0.1, 0.9, 0.5])
        torch.testing.assert_close(edge(x, x_relu, w), sum(w[i] * singles[i] for i in range(7)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(edge(x, x_relu, torch.zeros(7)), torch.zeros_like(singles[0]))


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channels_bypass_is_max_pooled_2x2_on_reduction_and_output_shuffled_in_k_groups(load_space, stride):
    model_search = load_space(SPACE, "model_search")
    torch.manual_seed(0)
    Cin, k = 8, 4
    part = Cin // k
    edge, x = model_search.MixedOp(Cin, stride, k, range(7)), torch.randn(2, Cin, 8, 8)
    h, bypass = 8 // stride, x[:, part:]
    if stride == 2:  # max over each 2x2 block
        bypass = bypass.reshape(2, Cin - part, h, 2, h, 2).amax(dim=(3, 5))
    with torch.no_grad():
        out = edge(x, F.relu(x), torch.zeros(7))
    expected = shuffle_by_hand(torch.cat([torch.zeros(2, part, h, h), bypass], dim=1), k)
    assert out.shape == (2, Cin, h, h) and torch.equal(out, expected)
    if stride == 1:  # skip_connect alone: the op's part is x[:, :C/k] itself, so the edge is shuffle(x)
        with torch.no_grad():
            out = edge(x, F.relu(x), torch.eye(7)[2])
        assert torch.equal(out, shuffle_by_hand(x, k))


@pytest.mark.parametrize("reg_type", ["l2", "kl"])
def test_architect_is_adam_betas_0_5_0_999_lr_arch_lr_l2_decay_or_kl_to_uniform_dirichlet(load_space, reg_type):
    model_search, architect = load_space(SPACE, "model_search", "architect")
    torch.manual_seed(0)
    net = model_search.Network(C, 10, LAYERS, k=2).double()
    with torch.no_grad():  # away from beta = 0, where the KL and its gradient vanish
        for beta in net.arch_parameters():
            beta.normal_(0, 0.5)
    scale, lr = 0.3, 0.01
    arch = architect.Architect(net, arch_args(reg_type=reg_type, reg_scale=scale, arch_learning_rate=lr))
    sgd = torch.optim.SGD(net.weights(), 0.1)
    b1, b2, eps = 0.5, 0.999, 1e-8
    params = [b.detach().clone() for b in net.arch_parameters()]
    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    grads_seen = []
    for t in (1, 2):
        (x, y), (xv, yv) = batch(seed=10 * t, dtype=torch.double), batch(seed=10 * t + 1, dtype=torch.double)
        torch.manual_seed(100 + t)  # the architect's forward draws the same mixing weights
        grads = list(torch.autograd.grad(F.cross_entropy(net(xv), yv), net.arch_parameters()))
        beta = [b.detach().clone().requires_grad_(True) for b in net.arch_parameters()]
        if reg_type == "kl":
            kl = scale * kl_to_uniform_dirichlet(torch.stack(beta))
            grads = [g + gk for g, gk in zip(grads, torch.autograd.grad(kl, beta))]
        else:
            grads = [g + scale * p for g, p in zip(grads, params)]
        grads_seen.append(grads[0])
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            params[i] = params[i] - lr * m_hat / (v_hat.sqrt() + eps)
        torch.manual_seed(100 + t)
        arch.step(x, y, xv, yv, 0.1, sgd)
        for b, expected in zip(net.arch_parameters(), params):
            torch.testing.assert_close(b.detach(), expected, atol=1e-12, rtol=1e-10)
    assert not torch.allclose(grads_seen[0], grads_seen[1])  # two different gradients were taken


def test_unrolled_finite_difference_is_central_at_w_plus_minus_0_01_over_norm_of_dw(load_space):
    """--unrolled: w' = w - lr (g + momentum m + wd w); the HVP runs at w +- 0.01 dw'/||dw'||; w restored."""
    model_search, architect = load_space(SPACE, "model_search", "architect")
    torch.manual_seed(0)
    net = model_search.Network(C, 10, LAYERS, k=2).double()
    momentum, wd, lr = 0.9, 3e-4, 0.05
    sgd = torch.optim.SGD(net.weights(), lr, momentum=momentum, weight_decay=wd)
    (x, y), (xv, yv) = batch(seed=1, dtype=torch.double), batch(seed=2, dtype=torch.double)
    F.cross_entropy(net(x), y).backward()
    sgd.step()  # momentum buffers exist, as mid-search
    sgd.zero_grad(set_to_none=True)
    arch = architect.Architect(net, arch_args(unrolled=True, momentum=momentum, weight_decay=wd))
    weights = net.weights()
    w0 = flat(weights)
    state0 = {k: t.clone() for k, t in net.state_dict().items() if not k.startswith("beta")}
    betas0 = [b.detach().clone() for b in net.arch_parameters()]
    snaps, mixes, sampled = [], [], []

    def snapshot(module, args):  # (x,) or (x, mix)
        snaps.append(flat(weights))
        mixes.append(args[1].detach().clone() if len(args) > 1 else None)

    net.register_forward_pre_hook(snapshot)
    sample = net.arch_weights

    def recording_sample():
        mix = sample()
        sampled.append(mix.detach().clone())
        return mix

    net.arch_weights = recording_sample
    arch.step(x, y, xv, yv, lr, sgd)
    del net.arch_weights
    for key, value in net.state_dict().items():  # the real weights and BatchNorm statistics are back
        if not key.startswith("beta"):
            assert torch.equal(value, state0[key]), key
    for beta, beta0 in zip(net.arch_parameters(), betas0):  # only beta moved
        assert not torch.equal(beta, beta0) and torch.isfinite(beta).all()
    assert len(sampled) == 2  # the training draw (fixed for the virtual step and both sides), the validation one
    assert len(snaps) == 4  # virtual step, validation at w', then w + eps dw' and w - eps dw'
    assert torch.equal(snaps[0], w0)
    plus, minus = snaps[-2], snaps[-1]
    torch.testing.assert_close((plus - minus).norm(), torch.tensor(0.02, dtype=torch.double), atol=0, rtol=1e-9)
    torch.testing.assert_close((plus + minus) / 2, w0, atol=1e-13, rtol=0)
    # The virtual step, by hand, from the training loss under the same draw.
    grads = torch.autograd.grad(F.cross_entropy(net(x, mixes[0]), y), weights)
    bufs = [sgd.state[w]["momentum_buffer"] for w in weights]
    step = flat([g + momentum * b + wd * w for g, b, w in zip(grads, bufs, weights)])
    torch.testing.assert_close(snaps[1], w0 - lr * step, atol=1e-12, rtol=0)
    # The direction: dw' = grad_w' L_val(w') under the validation draw.
    with torch.no_grad():
        offset = 0
        for w in weights:
            w.copy_(snaps[1][offset : offset + w.numel()].view_as(w))
            offset += w.numel()
    dw = flat(torch.autograd.grad(F.cross_entropy(net(xv, sampled[1]), yv), weights))
    direction = (plus - minus) / 2
    sign = 1.0 if float(direction @ dw) > 0 else -1.0
    torch.testing.assert_close(direction, sign * 0.01 * dw / dw.norm(), atol=1e-12, rtol=0)


def test_weight_step_clips_the_weight_gradient_norm_to_grad_clip_and_leaves_beta(load_space):
    search, model_search, distributed = load_space(SPACE, "train_search", "model_search", "runkit.distributed")
    torch.manual_seed(0)
    net = model_search.Network(C, 10, LAYERS, k=2)
    weights = net.weights()
    sgd = torch.optim.SGD(weights, lr=1.0, momentum=0.0, weight_decay=0.0)
    x, y = batch()
    w0, beta0, clip = flat(weights), flat(net.arch_parameters()), 1e-3
    torch.manual_seed(5)
    logits, loss = search.weight_step(net, sgd, weights, x, y, clip, distributed.setup("cpu"))
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))
    torch.manual_seed(5)  # the same draw: the unclipped gradient is far larger than the clip
    full = flat(torch.autograd.grad(F.cross_entropy(net(x), y), weights)).norm()
    assert full > 100 * clip
    torch.testing.assert_close((flat(weights) - w0).norm(), torch.tensor(clip), atol=0, rtol=1e-4)
    assert torch.equal(flat(net.arch_parameters()), beta0) and all(b.grad is None for b in net.arch_parameters())


def test_stage_schedule_25_plus_25_epochs_first_10_weights_only_then_an_adam_step_per_batch_lr_one_cosine(load_space):
    search, model_search, stages = load_space(SPACE, "train_search", "model_search", "runkit.run_flags")
    args = search.get_parser().parse_args([])
    schedule = [stages.stage_at(search.get_stages(args), epoch) for epoch in range(50)]
    assert schedule == [(e // 25, e % 25 >= 10) for e in range(50)]
    # The weights' learning rate is 0.1 * (1 + cos(pi e / 50)) / 2, continuous across the stage switch.
    for epoch in range(50):
        assert search.learning_rate(epoch, args) == pytest.approx(0.05 * (1 + math.cos(math.pi * epoch / 50)))
    args.learning_rate_min = 0.001  # and learning_rate_min is the end point of the cosine
    assert search.learning_rate(25, args) == pytest.approx(0.001 + 0.099 / 2)
    args = argparse.Namespace(stage_epochs=[3, 4, 2], stage_k=[1, 1, 1], stage_keep=[7, 7, 7], warmup_epochs=1)
    assert [stages.stage_at(search.get_stages(args), e) for e in range(9)] == [
        (0, False), (0, True), (0, True), (1, False), (1, True), (1, True), (1, True), (2, False), (2, True),
    ]  # fmt: skip
    # search.search: a warm-up epoch leaves beta and Adam untouched; later epochs step beta every batch.
    torch.manual_seed(0)
    net = model_search.Network(C, 10, LAYERS, k=2)
    argv = f"--layers {LAYERS} --init_channels {C} --batch_size 2 --workers 0 --seed 0 --data_on_device off"
    argv += " --learning_rate 0.05 --arch_learning_rate 0.01 --stage_epochs 2 --stage_k 2 --stage_keep 7"
    args = search.get_parser().parse_args([*argv.split(), "--warmup_epochs", "1"])
    data = [batch(seed=s) for s in range(4)]
    images = torch.utils.data.TensorDataset(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))
    beta0, w0 = flat(net.arch_parameters()), flat(net.weights())
    run = LoopRun(steps=2)
    optimizer, architect = search.optimizers(net, args, run.dist)
    search.search(run, net, architect, optimizer, *search.search_data(images, images, args, run.dist), args)
    warm, searched = run.saved  # the script's state at the end of epochs 1 and 2
    assert torch.equal(flat([warm["model"]["beta_normal"], warm["model"]["beta_reduce"]]), beta0)
    assert not warm["architect"]["state"], "no Adam step in the warm-up"
    weight_names = [name for name, p in net.named_parameters() if not name.startswith("beta_")]
    assert not torch.equal(flat(warm["model"][name] for name in weight_names), w0), "the weights trained"
    assert not torch.equal(flat(net.arch_parameters()), beta0)
    assert all(float(state["step"]) == 2 for state in searched["architect"]["state"].values())
    assert len(searched["architect"]["state"]) == 2, "both betas step once per batch"


def test_stage_switch_prunes_to_top_keep_ops_widens_to_next_k_same_lr_and_carries_the_sgd_momentum(load_space):
    search, model_search, net2wider = load_space(SPACE, "train_search", "model_search", "runkit.net2wider")
    torch.manual_seed(0)
    net = model_search.Network(C, 10, LAYERS, k=2)
    with torch.no_grad():
        net.beta_normal.normal_(0, 1)
        net.beta_reduce.normal_(0, 1)
    argv = ["--stage_epochs", "1", "1", "--stage_k", "2", "1", "--stage_keep", "7", "3", "--warmup_epochs", "0"]
    args = search.get_parser().parse_args(argv)
    assert (args.momentum, args.weight_decay) == (0.9, 3e-4)
    sgd = torch.optim.SGD(net.weights(), 0.037, momentum=0.9, weight_decay=3e-4)
    x, y = batch()
    for _ in range(2):  # buffers that are not just the last gradient
        sgd.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        sgd.step()
    old = {p: sgd.state[p]["momentum_buffer"].clone() for p in net.weights()}
    moved, widen = [], net.widen

    def recording_widen(*widen_args):
        records = widen(*widen_args)
        moved.extend(records)
        return records

    net.widen = recording_widen
    new = search.enter_stage(net, sgd, 1, args)
    del net.widen
    for cell in net.cells:
        beta = (net.beta_reduce if cell.reduction else net.beta_normal).detach()
        for e, edge in enumerate(cell.edges):
            assert edge.kept == sorted(beta[e].topk(3).indices.tolist()) and edge.k == 1
    assert net.k == 1
    group, weights = new.param_groups[0], net.weights()
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.037, 0.9, 3e-4)
    assert {id(p) for p in group["params"]} == {id(p) for p in weights}
    assert set(new.state) <= set(weights), "pruned ops leave no state behind"
    kept = [p for p in weights if p in old]
    assert any(p is net.stem0[0].weight for p in kept)
    for p in kept:
        assert torch.equal(new.state[p]["momentum_buffer"], old[p])
    assert moved and any(m.new.shape != m.old.shape for m in moved)
    for m in moved:
        assert any(m.new is p for p in weights)
        assert torch.equal(new.state[m.new]["momentum_buffer"], net2wider.expand(old[m.old], m.plan))
    assert len(kept) + len(moved) == len(weights), "every weight of the new optimiser has its momentum"
    depthwise = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.in_channels in (C, 2 * C, 4 * C) for m in depthwise)  # all channels: k=1
    F.cross_entropy(net(x), y).backward()
    new.step()


def test_search_run_sgd_momentum_0_9_decay_3e_4_on_weights_only_lr_per_epoch_arch_after_warmup(
    load_space, tmp_path, monkeypatch
):
    train_search, search, utils = load_space(SPACE, "train_search", "train_search", "runkit.utils")
    monkeypatch.setattr(utils, "setup_logging", lambda run_dir: None)  # keep pytest's logging
    seen = []

    def recording_step(model, architect, optimizer, weights, train_batch, valid_batch, lr, grad_clip, dist):
        groups = [{key: value for key, value in g.items() if key != "params"} for g in optimizer.param_groups]
        params = [{id(p) for p in g["params"]} for g in optimizer.param_groups]
        weights, beta = {id(p) for p in model.weights()}, {id(p) for p in model.arch_parameters()}
        arch_on = valid_batch is not None
        seen.append(dict(type=type(optimizer), groups=groups, params=params, arch_on=arch_on, k=model.k))
        seen[-1].update(weights=weights, beta=beta, architect=architect)
        return torch.zeros(2, 10), torch.zeros(())

    monkeypatch.setattr(search, "search_step", recording_step)
    argv = "--dataset synthetic --layers 3 --init_channels 4 --batch_size 2 --stage_epochs 2 2 --stage_k 2 1"
    argv += " --stage_keep 7 3 --warmup_epochs 1 --max_steps_per_epoch 1 --device cpu --workers 0"
    train_search.main([*argv.split(), "--save", str(tmp_path / "run")])
    assert [s["arch_on"] for s in seen] == [False, True, False, True] and [s["k"] for s in seen] == [2, 2, 1, 1]
    for epoch, s in enumerate(seen):
        assert s["type"] is torch.optim.SGD and len(s["groups"]) == 1
        group = s["groups"][0]
        assert group["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * epoch / 4)))
        assert [group[key] for key in ("momentum", "weight_decay", "dampening", "nesterov")] == [0.9, 3e-4, 0, False]
        assert s["params"][0] == s["weights"] and not s["beta"] & s["weights"]
    adam = seen[0]["architect"].optimizer
    assert type(adam) is torch.optim.Adam and {id(p) for p in adam.param_groups[0]["params"]} == seen[0]["beta"]
    assert adam.param_groups[0]["lr"] == 6e-4 and adam.param_groups[0]["betas"] == (0.5, 0.999)
    assert adam.param_groups[0]["eps"] == 1e-8 and adam.param_groups[0]["weight_decay"] == 0
    # The paper's Adam weight decay 1e-3 on beta: the l2 term, whose gradient is 1e-3 * beta.
    assert (seen[0]["architect"].reg_type, seen[0]["architect"].reg_scale) == ("l2", 1e-3)


def _indexed_images(first, count, size):
    """`count` images whose pixels all hold their index (first, first + 1, ...); labels 0..9 in turn."""
    index = torch.arange(first, first + count, dtype=torch.float32)
    images = index.view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()
    return torch.utils.data.TensorDataset(images, index.long() % 10)


@pytest.mark.parametrize("script", ["train_search", "train_search_imagenet"])
def test_search_weights_and_architecture_train_on_disjoint_parts_that_cover_the_search_data(
    load_space, tmp_path, monkeypatch, restore_logging, tiny_imagenet, script
):
    module, search, architect, datasets = load_space(SPACE, script, "train_search", "architect", "datasets")
    size = 8 if script == "train_search" else 32
    if script == "train_search":  # 32 training images: 16 for the weights, 16 for beta
        parts, full = (range(16), range(16, 32)), _indexed_images(0, 32, size)
        monkeypatch.setattr(datasets, "get_datasets", lambda *args, **kwargs: (full, _indexed_images(99, 4, size), 10))
    else:  # the folders: the weights read train/, the architecture val/
        train, val, _ = datasets.imagenet_datasets(tiny_imagenet, size, search=True)
        assert {path for path, _ in train.samples} == {str(p) for p in tiny_imagenet.glob("train/*/*.png")}
        assert {path for path, _ in val.samples} == {str(p) for p in tiny_imagenet.glob("val/*/*.png")}
        parts = (range(16), range(16, 32))
        both = (_indexed_images(0, 16, size), _indexed_images(16, 16, size), 10)
        monkeypatch.setattr(datasets, "imagenet_or_synthetic", lambda *args, **kwargs: both)
    seen = {"weights": [], "architecture": []}
    arch_step, weight_step = architect.Architect.step, search.weight_step

    def recording_arch_step(self, x, y, x_valid, y_valid, *rest):
        seen["architecture"] += x_valid[:, 0, 0, 0].long().tolist()
        return arch_step(self, x, y, x_valid, y_valid, *rest)

    def recording_weight_step(model, optimizer, weights, x, *rest):
        seen["weights"] += x[:, 0, 0, 0].long().tolist()
        return weight_step(model, optimizer, weights, x, *rest)

    monkeypatch.setattr(architect.Architect, "step", recording_arch_step)
    monkeypatch.setattr(search, "weight_step", recording_weight_step)
    flags = ["--stage_epochs", "1", "--stage_k", "2", "--stage_keep", "7", "--warmup_epochs", "0", "--layers", "3"]
    flags += ["--init_channels", "4", "--batch_size", "4", "--device", "cpu", "--workers", "0"]
    module.main([*flags, "--dataset", "synthetic", "--save", str(tmp_path / "run")])
    weights, arch = seen["weights"], seen["architecture"]
    assert not set(weights) & set(arch), "no image trains both the weights and beta"
    assert sorted(weights) == list(parts[0]) and sorted(arch) == list(parts[1]), "each part whole, once"


def test_eval_loss_is_ce_plus_auxiliary_weight_times_ce_of_aux_head_minimised_with_gradient_norm_clip(load_space):
    training = load_space(SPACE, "train")
    logits, aux = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]]), torch.tensor([[-1.0, 1.0, 0.0], [3.0, 0.0, -2.0]])
    y = torch.tensor([0, 2])

    def ce(z):  # mean over the batch of logsumexp(z) - z[y]
        return sum(math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(z.tolist(), y.tolist())) / 2

    criterion = torch.nn.CrossEntropyLoss()
    assert float(training.training_loss(criterion, logits, aux, y, 0.4)) == pytest.approx(ce(logits) + 0.4 * ce(aux))
    assert float(training.training_loss(criterion, logits, None, y, 0.4)) == pytest.approx(ce(logits))
    # train's step minimises it, with the gradient norm clipped.
    torch.manual_seed(0)

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.main, self.aux = torch.nn.Linear(12, 5), torch.nn.Linear(12, 5)

        def forward(self, x):
            return self.main(x.flatten(1)), self.aux(x.flatten(1))

    net = TwoHeads()
    x, y = torch.randn(4, 3, 2, 2) * 10, torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        main, aux = net(x)
        expected = F.cross_entropy(main, y) + 0.25 * F.cross_entropy(aux, y)
    before = flat(net.parameters())
    # Plain SGD with lr 1: the step moves the weights by exactly the clipped gradient.
    args = argparse.Namespace(
        amp=False, compile=False, data_on_device="off", deterministic=False, auxiliary_weight=0.25, grad_clip=1e-3,
        batch_size=4, learning_rate=1.0, momentum=0.0, weight_decay=0.0, seed=0, workers=0, max_steps_per_epoch=0,
        epochs=1, drop_path_prob=0.0,
    )  # fmt: skip
    data = torch.utils.data.TensorDataset(x, y)  # one batch of all 4 samples
    run = LoopRun(steps=1)
    training.train(run, net, data, data, torch.nn.CrossEntropyLoss(), lambda epoch: 1.0, args)
    [(_, _, targets, loss)] = run.updates
    assert sorted(targets.tolist()) == [0, 1, 2, 3] and float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    torch.testing.assert_close((flat(net.parameters()) - before).norm(), torch.tensor(1e-3), atol=0, rtol=1e-4)


def test_cifar_train_crop_32_pad_4_flip_normalise_cutout_16_only_when_asked_test_only_normalised(load_space, tmp_path):
    datasets = load_space(SPACE, "datasets")
    import torchvision.transforms as T

    with open(write_tiny_cifar(tmp_path) / "test_batch", "rb") as f:
        pixels = pickle.load(f)["data"]
    assert datasets.CIFAR10_MEAN == (0.4914, 0.4822, 0.4465) and datasets.CIFAR10_STD == (0.2470, 0.2435, 0.2616)
    assert datasets.CIFAR100_MEAN == (0.5071, 0.4865, 0.4409) and datasets.CIFAR100_STD == (0.2673, 0.2564, 0.2762)
    mean, std = torch.tensor(datasets.CIFAR10_MEAN)[:, None, None], torch.tensor(datasets.CIFAR10_STD)[:, None, None]
    for cutout in (False, True):
        train, test, _ = datasets.get_datasets("cifar10", tmp_path, cutout=cutout)
        crop, flip, to_tensor, norm, *rest = train.transform.transforms
        assert isinstance(crop, T.RandomCrop) and crop.size == (32, 32) and crop.padding == 4
        assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5 and isinstance(to_tensor, T.ToTensor)
        assert isinstance(norm, T.Normalize) and tuple(norm.mean) == datasets.CIFAR10_MEAN
        assert tuple(norm.std) == datasets.CIFAR10_STD
        # Cutout only when asked, after the normalisation, as in DARTS.
        assert len(rest) == cutout and all(isinstance(r, datasets.Cutout) and r.length == 16 for r in rest)
        image = torch.from_numpy(pixels[1].reshape(3, 32, 32)).float() / 255
        torch.manual_seed(0)
        torch.testing.assert_close(test[1][0], (image - mean) / std)  # test: normalised, nothing else
    torch.manual_seed(0)  # cutout(16) zeroes a 16x16 square (clipped at the border)
    zeros = [int((datasets.Cutout(16)(torch.ones(3, 32, 32)) == 0).sum()) for _ in range(50)]
    assert max(zeros) == 3 * 16 * 16 and min(zeros) >= 3 * 8 * 8


SEARCH_DEFAULTS = dict(
    dataset="cifar10", stage_epochs=[25, 25], batch_size=64, learning_rate=0.1, learning_rate_min=0.0,
    lr_warmup_epochs=0, arch_learning_rate=6e-4, init_channels=36, layers=20, stage_k=[6, 4], stage_keep=[7, 4],
    warmup_epochs=10, train_portion=0.5, momentum=0.9, weight_decay=3e-4, grad_clip=5.0, reg_type="l2",
    reg_scale=1e-3, unrolled=False,
)  # fmt: skip
TRAIN_DEFAULTS = dict(
    dataset="cifar10", epochs=600, batch_size=64, learning_rate=0.025, momentum=0.9, weight_decay=3e-4,
    init_channels=36, layers=20, drop_path_prob=0.3, auxiliary_weight=0.4, cutout_length=16, grad_clip=5.0,
    arch="DrNAS_cifar10",
)  # fmt: skip


@pytest.mark.parametrize("script, expected", [("train_search", SEARCH_DEFAULTS), ("train", TRAIN_DEFAULTS)])
def test_search_and_train_defaults_are_the_papers(load_space, script, expected):
    args = vars(load_space(SPACE, script).get_parser().parse_args([]))
    assert {key: args[key] for key in expected} == expected
