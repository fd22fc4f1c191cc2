"""The NAS-Bench-201 supernet as a model."""

import csv
import gzip
import itertools

import pytest
import torch
import torch.nn.functional as F

from conftest import forbid_host_reads, image_batch

pytestmark = pytest.mark.quick


def test_parameter_count_matches_the_paper(load_space):
    ms = load_space("201-space", "model_search")
    model = ms.Network(C=16, N=5, num_classes=10, k=1)
    assert sum(p.numel() for p in model.weights()) == 1_686_106
    assert sum(p.numel() for p in model.arch_parameters()) == 30
    assert model.beta.shape == (6, 5) and len(model.search_cells()) == 15


@pytest.mark.parametrize(
    "method, k, prune",
    [("dirichlet", 1, None), ("dirichlet", 2, None), ("dirichlet", 2, 2), ("darts", 2, None), ("darts", 2, 3)]
    + [("gdas", 1, None), ("gdas", 2, 2)],
)
def test_every_weight_gets_a_gradient_and_the_pass_reads_no_host_value(load_space, method, k, prune):
    ms = load_space("201-space", "model_search")
    torch.manual_seed(0)
    model = ms.Network(C=4, N=1, num_classes=10, k=k, method=method)
    if prune:
        model.prune(prune)
    assert "beta" in model.state_dict() and all(p is not model.beta for p in model.weights())
    assert len(model.weights()) == len(list(model.parameters())) - 1
    model.genotype()  # reads values, legitimately, outside the pass
    x, y = image_batch(2, 16)
    with forbid_host_reads():
        model.arch_weights()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        beta_grad = model.beta.grad.clone()  # of the loss alone
        model.kl_regularizer().backward()
    assert out.shape == (2, 10) and torch.isfinite(out).all() and bool(torch.isfinite(loss))
    weights = model.weights()
    grads = [p.grad for p in weights if p.grad is not None]
    # gdas: one op per edge is active; others legitimately get no gradient
    assert (grads if method == "gdas" else len(grads) == len(weights)) and all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(beta_grad).all() and model.beta.grad is not None


@pytest.mark.parametrize("method", ["dirichlet", "darts"])
def test_pruned_ops_are_deleted_and_never_called(load_space, method):
    ms, gt = load_space("201-space", "model_search", "genotypes")
    torch.manual_seed(0)
    model = ms.Network(C=4, N=1, num_classes=10, k=1, method=method)
    with torch.no_grad():
        model.beta.copy_(torch.randn(6, 5))
    calls, all_ops = {}, {}
    for cell_index, cell in enumerate(model.search_cells()):
        for e, edge in enumerate(cell.edges):
            for o, op in zip(edge.kept, edge.ops):
                key = (cell_index, e, gt.PRIMITIVES[o])
                all_ops[key], calls[key] = op, 0  # search cells call ops through forward_scaled or __call__
                op.register_forward_hook(lambda mod, inp, out, key=key: calls.__setitem__(key, calls[key] + 1))
                if hasattr(op, "forward_scaled"):

                    def counted(*args, key=key, original=op.forward_scaled):
                        calls[key] += 1
                        return original(*args)

                    op.forward_scaled = counted
    model.prune(3)
    for cell in model.search_cells():
        for e, edge in enumerate(cell.edges):
            assert edge.kept == model.kept[e] and len(edge.ops) == 3
    module_ids = {id(m) for m in model.modules()}
    for key, op in all_ops.items():
        kept = gt.PRIMITIVES.index(key[2]) in model.kept[key[1]]
        assert (id(op) in module_ids) == kept, key
    x, _ = image_batch(2, 16)
    model(x), model(x)
    for (cell_index, e, name), count in calls.items():
        kept = gt.PRIMITIVES.index(name) in model.kept[e]
        assert count == (2 if kept and name != "none" else 0), (cell_index, e, name, count)


def test_genotype_picks_argmax_of_kept_ops_and_round_trips(load_space):
    ms, gt = load_space("201-space", "model_search", "genotypes")
    model = ms.Network(C=4, N=1, num_classes=10, k=1)
    want = ["nor_conv_3x3", "avg_pool_3x3", "skip_connect", "none", "nor_conv_1x1", "nor_conv_3x3"]
    runner_up = ["skip_connect", "nor_conv_1x1", "none", "avg_pool_3x3", "nor_conv_3x3", "none"]
    with torch.no_grad():
        model.beta.zero_()
        for e, (a, b) in enumerate(zip(want, runner_up)):
            model.beta[e, gt.PRIMITIVES.index(a)] = 2.0
            model.beta[e, gt.PRIMITIVES.index(b)] = 1.0
            model.beta[e, gt.PRIMITIVES.index(next(o for o in gt.PRIMITIVES if o not in (a, b)))] = 0.5
    geno = model.genotype()
    assert isinstance(geno, gt.Structure) and geno.edge_ops() == want
    assert str(gt.Structure.from_str(str(geno))) == str(geno) and all(op in gt.PRIMITIVES for op in geno.edge_ops())
    model.prune(3)  # after pruning, raise a pruned op above all others: the genotype ignores it
    with torch.no_grad():
        for e, kept in enumerate(model.kept):
            pruned = next(o for o in range(5) if o not in kept)
            model.beta[e, pruned] = 10.0
    assert model.genotype().edge_ops() == want
    model.prune(2)  # with two kept ops the runner-up wins once the winner drops below it
    with torch.no_grad():
        for e, a in enumerate(want):
            model.beta[e, gt.PRIMITIVES.index(a)] = -1.0
    assert model.genotype().edge_ops() == runner_up


def test_widen_copies_channels(load_space):
    ms, ops, n2w = load_space("201-space", "model_search", "operations", "runkit.net2wider")
    torch.manual_seed(0)
    model = ms.Network(C=8, N=1, num_classes=10, k=4).train()
    for seed in range(2):  # non-trivial BN running statistics
        model(image_batch(4, 16, seed)[0])
    edges = [(name, m) for name, m in model.named_modules() if isinstance(m, ms.MixedOp)]
    old = {name: {n: t.detach().clone() for n, t in m.state_dict().items()} for name, m in edges}
    old_c = {name: m.C // m.k for name, m in edges}
    moved = model.widen(2, torch.Generator().manual_seed(0))
    assert model.k == 2
    # One index per edge, drawn edge by edge in cell order from the seeded generator: reproducible.
    generator = torch.Generator().manual_seed(0)
    indices = {name: n2w.grow_index(c, 2 * c, generator) for name, c in old_c.items()}
    convs = [op.op[1].weight for _, m in edges for op in m.ops if hasattr(op, "op")]
    assert [id(m.new) for m in moved] == [id(w) for w in convs], "every widened parameter is reported"
    for m in moved:
        assert torch.equal(m.new, n2w.expand(m.old, m.plan))
    for name, m in edges:
        c_old, c_new, index = old_c[name], 2 * old_c[name], indices[name]
        assert m.k == 2 and m.C // m.k == c_new and index.shape == (c_new,)
        assert torch.equal(index[:c_old], torch.arange(c_old)) and ((index >= 0) & (index < c_old)).all()
        new = m.state_dict()
        assert set(new) == set(old[name])
        for key, t in new.items():
            o = old[name][key]
            if key.endswith("num_batches_tracked"):
                assert torch.equal(t, o)
            elif t.dim() == 4:  # conv weight (out, in, kh, kw)
                assert t.shape == (c_new, c_new, *o.shape[2:]) and torch.equal(t[:c_old, :c_old], o)
                assert torch.equal(t, o[index][:, index])
            else:  # BN running_mean / running_var
                assert t.shape == (c_new,) and torch.equal(t[:c_old], o) and torch.equal(t, o[index]), key
        for op in m.ops:
            if isinstance(op, ops.ReLUConvBN):
                assert op.op[1].in_channels == op.op[1].out_channels == op.op[2].num_features == c_new
    out = model(image_batch(2, 16)[0])
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        model.widen(2, torch.Generator())  # not wider


def test_all_edge_combinations_round_trip_and_are_the_shipped_tables_architectures(load_space, nb201_table):
    gt, seen = load_space("201-space", "genotypes"), set()
    for ops in itertools.product(gt.PRIMITIVES, repeat=6):
        structure = gt.Structure.from_edges(ops)
        s = str(structure)
        back = gt.Structure.from_str(s)
        assert back.edge_ops() == list(ops) and str(back) == s and gt.Structure.from_edges(back.edge_ops()) == back
        seen.add(s)
    assert len(seen) == 5**6
    with gzip.open(nb201_table, "rt", newline="") as f:
        archs = [row["arch"] for row in csv.DictReader(f)]
    assert len(archs) == len(set(archs)) == 15_625 and set(archs) == seen
    drnas = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    assert str(gt.DrNAS) == drnas


MALFORMED = """|nor_conv_3x3~0| |nor_conv_3x3~0|+|none~0|none~1|
|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|+|none~0| |conv~0|+|none~0|none~1|+|none~0|none~1|none~2|
|none-0|+|none~0|none~1|+|none~0|none~1|none~2| |none~x|+|none~0|none~1|+|none~0|none~1|none~2|
|none~1|+|none~0|none~1|+|none~0|none~1|none~2| |none~0|+|none~0|none~0|+|none~0|none~1|none~2|
|none~0|+|none~0|none~1|+|none~0|none~1| none~0+none~0|none~1+none~0|none~1|none~2
|none~0|+|none~0|none~1|+|none~0|none~1|none~2|+ ||+|none~0|none~1|+|none~0|none~1|none~2|
|none~0|+|none~0|none~1|+|none~0|none~1|none~3|"""


@pytest.mark.parametrize("bad", ["", *MALFORMED.split()])
def test_malformed_strings_raise_value_error(load_space, bad):
    gt = load_space("201-space", "genotypes")
    with pytest.raises(ValueError):
        gt.Structure.from_str(bad)


@pytest.mark.parametrize("affine", [False, True])
def test_forward_scaled_equals_scale_times_op(load_space, affine):
    ops = load_space("201-space", "operations")
    torch.manual_seed(0)
    a, b = ops.ReLUConvBN(4, 4, 3, 1, 1, affine), ops.ReLUConvBN(4, 4, 3, 1, 1, affine)
    b.load_state_dict(a.state_dict())
    if affine:
        with torch.no_grad():
            for m in (a, b):
                m.op[2].weight.copy_(torch.linspace(0.5, 2, 4))
                m.op[2].bias.copy_(torch.linspace(-1, 1, 4))
    x, scale = torch.randn(3, 4, 6, 6), torch.tensor(0.3, requires_grad=True)
    for train in (True, False):
        a.train(train), b.train(train)
        got = b.forward_scaled(x, torch.relu(x), scale)
        torch.testing.assert_close(got, 0.3 * a(x), rtol=1e-5, atol=1e-6)
        for (name, buf_a), buf_b in zip(a.named_buffers(), b.buffers()):
            torch.testing.assert_close(buf_b, buf_a, msg=name)  # same running-statistics updates
    got.sum().backward()
    assert scale.grad is not None and torch.isfinite(scale.grad)


def test_scaled_ops_match_scale_times_op_on_channels_last_input(load_space):
    """Regressions on channels-last input: an expanded (stride-0) pooling kernel once gave NaN input gradients,
    and BatchNorm's backward misread an expanded (stride-0) weight."""
    ops = load_space("201-space", "operations")
    torch.manual_seed(0)
    conv = ops.ReLUConvBN(6, 6, 3, 1, 1, affine=False)
    pool = (lambda x, s: ops.avg_pool_3x3(x, 1, s), lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    cases = [(pool, 16)] * 5 + [((lambda x, s: conv.forward_scaled(x, torch.relu(x), s), conv), 12)]
    for (scaled, plain), size in cases:
        x = torch.randn(8, 6, size, size).to(memory_format=torch.channels_last).requires_grad_(True)
        scale = torch.rand((), requires_grad=True)
        got, want = scaled(x, scale), scale * plain(x)
        g = torch.randn_like(want)
        got_grads = torch.autograd.grad((got * g).sum(), [x, scale])
        want_grads = torch.autograd.grad((want * g).sum(), [x, scale])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
