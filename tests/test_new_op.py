"""A new candidate op is a plain `nn.Module`."""

import copy
import json
import math
import re

import pytest
import torch
import torch.nn as nn

from conftest import TINY_201, TINY_DARTS_TRAIN, read_history

pytestmark = pytest.mark.quick


class Conv5x5(nn.Sequential):
    """The new op: ReLU -> 5x5 conv -> BatchNorm, nothing more (a class of its own only to be found again)."""

    def __init__(self, C_in, C_out, stride, affine):
        super().__init__(
            nn.ReLU(), nn.Conv2d(C_in, C_out, 5, stride, 2, bias=False), nn.BatchNorm2d(C_out, affine=affine)
        )


# The table entry of each folder: 201 `OPS[name](C_in, C_out, stride, affine)`, DARTS `OPS[name](C, stride, affine)`.
NEW = {
    "201-space": ("nor_conv_5x5", lambda C_in, C_out, stride, affine: Conv5x5(C_in, C_out, stride, affine)),
    "DARTS-space": ("conv_5x5", lambda C, stride, affine: Conv5x5(C, C, stride, affine)),
}


def add_op(request, genotypes, operations, name, build):
    """Put op `name` into the folder's `OPS` and `PRIMITIVES` (the list every module imported, extended in place)."""
    operations.OPS[name] = build
    genotypes.PRIMITIVES.append(name)
    request.addfinalizer(lambda: (genotypes.PRIMITIVES.remove(name), operations.OPS.pop(name)))


@pytest.fixture
def with_new_op(load_space, request):
    """`load(space, *names)`: the folder's genotypes, operations and `names`, with the new op in the table."""

    def load(space, *names):
        genotypes, operations, *modules = load_space(space, "genotypes", "operations", *names)
        add_op(request, genotypes, operations, *NEW[space])
        return genotypes, operations, *modules

    return load


def add_nothing(request, genotypes, operations):
    """A zero op under another name: its class says it adds nothing, not its name."""
    add_op(request, genotypes, operations, "nothing", lambda C_in, C_out, stride, affine: operations.Zero(C_out, 1))


def new_ops(model):
    return [m for m in model.modules() if isinstance(m, Conv5x5)]


def record_builds(monkeypatch, module, name, build):
    """The networks `module.<name>(...)` builds, built by `build`."""
    nets = []

    def recording(*args):
        nets.append(build(*args))
        return nets[-1]

    monkeypatch.setattr(module, name, recording)
    return nets


def capture_models(monkeypatch, search):
    """Record the supernet `search.build_model` builds, and what each of its widenings does to the new op."""
    built, widenings = [], []
    build_model = search.build_model

    def recording(*args, **kwargs):
        model = build_model(*args, **kwargs)
        widen = model.widen

        def recording_widen(k, generator=None):
            ops = new_ops(model)
            before = [(op[1].weight.detach().clone(), op[2].running_mean.clone()) for op in ops]
            moved = widen(k, generator)
            after = [(op[1].weight, op[1].weight.detach().clone(), op[2].running_mean.clone()) for op in ops]
            widenings.append((ops, before, after, moved))
            return moved

        model.widen = recording_widen
        built.append((model, [p.detach().clone() for p in model.arch_parameters()]))
        return model

    monkeypatch.setattr(search, "build_model", recording)
    return built, widenings


def train_losses(run_dir):
    losses = [h["train_loss"] for h in read_history(run_dir)]
    assert losses and all(math.isfinite(loss) for loss in losses)
    return losses


SEARCH = {
    "201-space": [*TINY_201, "--max_steps_per_epoch", "2", "--benchmark", "none", "--report_freq", "100"],
    "DARTS-space": """--dataset synthetic --layers 3 --init_channels 8 --batch_size 4 --stage_epochs 1 1 --stage_k 4 2
--stage_keep 8 8 --warmup_epochs 0 --max_steps_per_epoch 2 --report_freq 100 --device cpu --workers 0
--image_size 16""".split(),
}
STAGES_201 = "--stage_epochs 1 1 --warmup_epochs 0 --stage_k 4 2 --stage_keep 6 6".split()


@pytest.mark.parametrize(
    "space, script, flags",
    [
        ("201-space", "train_search", ["--epochs", "2"]),
        ("201-space", "train_search_progressive", STAGES_201),
        ("DARTS-space", "train_search", []),
        ("DARTS-space", "train_search", ["--unrolled"]),
    ],
    ids=["201", "201-progressive", "darts", "darts-unrolled"],
)
def test_search_trains_a_plain_op_and_the_progressive_one_widens_it(
    with_new_op, tmp_path, monkeypatch, restore_logging, space, script, flags
):
    genotypes, _, search, module = with_new_op(space, "train_search", script)
    built, widenings = capture_models(monkeypatch, search)
    run_dir = tmp_path / "run"
    module.main([*SEARCH[space], *flags, "--save", str(run_dir)])
    train_losses(run_dir)
    model, arch_before = built[0]
    ops = new_ops(model)
    assert ops, "the new op is in the supernet"
    for op in ops:
        grad = op[1].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, "the op is trained"
    column, n_ops = genotypes.PRIMITIVES.index(NEW[space][0]), 6 if space == "201-space" else 8
    for beta, before in zip(model.arch_parameters(), arch_before):
        assert beta.shape[-1] == n_ops and not torch.equal(beta[:, column], before[:, column]), (
            "its architecture weight is trained"
        )
    cells = model.search_cells() if space == "201-space" else model.cells
    edges = [edge for cell in cells for edge in cell.edges]
    assert len(ops) == len(edges) == len(cells) * (len(genotypes.EDGES) if space == "201-space" else 14)
    if space == "201-space":
        saved = genotypes.Structure.from_str(json.loads((run_dir / "genotype.json").read_text())["arch"])
    else:
        saved = genotypes.load_genotype(str(run_dir / "genotype.json"))
    assert saved == model.genotype()
    if space == "201-space" and script == "train_search":
        return  # no stages
    assert [h["stage"] for h in read_history(run_dir)] == [0, 1] and model.k == 2
    assert len(widenings) == 1  # the stage switch widened every new op by net2wider
    widened, before, after, moved = widenings[0]
    assert widened and all(op in ops for op in widened), "the widened ops are the network's"
    moved_new = {id(m.new) for m in moved}
    for (old_w, old_mean), (param, new_w, new_mean) in zip(before, after):
        old, new = old_w.shape[0], new_w.shape[0]
        assert new == 2 * old and new_w.shape[1] == new and new_mean.shape == (new,)
        assert id(param) in moved_new, "SGD momentum follows the widened conv"
        index = [next(j for j in range(old) if torch.equal(old_mean[j], new_mean[c])) for c in range(new)]
        assert index[:old] == list(range(old)) and torch.equal(new_w, old_w[index][:, index])
    for edge in edges:
        (op,) = new_ops(edge)
        assert op[1].weight.shape[:2] == (edge.C // 2, edge.C // 2) and op[1].stride == (edge.stride,) * 2


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_train_with_a_plain_op(with_new_op, request, tmp_path, monkeypatch, restore_logging, space):
    genotypes, operations, model_module, train = with_new_op(space, "model", "train")
    name, run_dir = NEW[space][0], tmp_path / "run"
    if space == "201-space":
        add_nothing(request, genotypes, operations)  # gets no module either
        arch = f"|{name}~0|+|{name}~0|nothing~1|+|skip_connect~0|{name}~1|avg_pool_3x3~2|"
        nets = record_builds(monkeypatch, train, "Network", model_module.Network)
        train.main([*TINY_201, "--arch", arch, "--epochs", "1", "--max_steps_per_epoch", "2", "--save", str(run_dir)])
        train_losses(run_dir)
        assert json.loads((run_dir / "genotype.json").read_text())["arch"] == arch
        # The op's parameters are all counted: the same network with `none` there has exactly those fewer.
        without = model_module.Network(4, 1, genotypes.Structure.from_str(arch.replace(name, "none")), 10)
        count, skip = lambda net: sum(p.numel() for p in net.parameters()), ()
    else:
        # The new op on edges from the cell inputs: stride 2 in the reduction cells.
        edges = [(name, 0), ("sep_conv_3x3", 1), (name, 1), ("skip_connect", 2)]
        edges += [("max_pool_3x3", 0), (name, 3), ("dil_conv_3x3", 2), ("avg_pool_3x3", 4)]
        genotype = genotypes.Genotype(
            normal=edges, normal_concat=[2, 3, 4, 5], reduce=edges, reduce_concat=[2, 3, 4, 5]
        )
        genotypes.save_genotype(genotype, tmp_path / "genotype.json")
        nets = record_builds(monkeypatch, train, "NetworkCIFAR", model_module.NetworkCIFAR)
        # Two epochs: the second one drops paths, the new op's included.
        argv = [*TINY_DARTS_TRAIN, "--dataset", "synthetic", "--layers", "3", "--epochs", "2"]
        train.main([*argv, "--arch", str(tmp_path / "genotype.json"), "--save", str(run_dir)])
        assert len(train_losses(run_dir)) == 2 and read_history(run_dir)[-1]["drop_path_prob"] > 0
        # The same network with a parameter-free pool there has exactly the op's parameters fewer.
        pools = [(("max_pool_3x3" if op == name else op), j) for op, j in edges]
        without = model_module.NetworkCIFAR(4, 10, 3, False, genotype._replace(normal=pools, reduce=pools))
        count, skip = model_module.param_count, ("auxiliary_head",)
    (net,) = nets
    ops = new_ops(net)
    assert len(ops) == 3 * 3, "three edges in each of the three cells"
    assert all(op[2].affine and op[1].weight.grad is not None for op in ops)
    params = int(re.search(r"param count = (\d+)", (run_dir / "log.txt").read_text()).group(1))
    modules = [m for name, m in net.named_modules() if not any(name.startswith(s) for s in skip)]
    assert params == sum(p.numel() for m in modules for p in m.parameters(recurse=False)) == count(net)
    assert params - count(without) == sum(op[1].weight.numel() + 2 * op[2].num_features * op[2].affine for op in ops)
    if space == "201-space":
        cells = [cell for cell in net.cells if isinstance(cell, model_module.InferCell)]
        assert [len(cell.edges) for cell in cells] == [5] * 3
        assert not any(isinstance(m, operations.Zero) for m in net.modules())
    else:
        strides = sorted(op[1].stride[0] for op in ops)
        assert strides == [1] * 5 + [2] * 4, "two of them on the inputs of each reduction cell"


def test_201_edge_mixes_fused_and_plain_ops(with_new_op, request):
    genotypes, operations, model_search = with_new_op("201-space", "model_search")
    add_nothing(request, genotypes, operations)  # skipped as well
    fused = 0
    for name in genotypes.PRIMITIVES:  # the overrides, one by one: values, gradients, BatchNorm statistics
        torch.manual_seed(0)
        op = operations.OPS[name](8, 8, 1, False).train()
        if hasattr(op, "forward_scaled"):
            plain = copy.deepcopy(op)
            x, w = torch.randn(3, 8, 6, 6, requires_grad=True), torch.tensor(0.37, requires_grad=True)
            _assert_same(op.forward_scaled(x, torch.relu(x), w), w * plain(x), [x, w], op, plain, name)
            fused += 1
    assert fused == 4  # skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3

    torch.manual_seed(0)
    edge = model_search.MixedOp(8, 1, 1, range(len(genotypes.PRIMITIVES))).train()
    plain = copy.deepcopy(edge.ops)  # the same ops, called as `op(x)`
    calls = {name: 0 for name in genotypes.PRIMITIVES}
    for name, op in zip(genotypes.PRIMITIVES, edge.ops):
        op.register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls[name] + 1))
    x = torch.randn(3, 8, 6, 6, requires_grad=True)
    mix = torch.rand(len(genotypes.PRIMITIVES)).softmax(0).requires_grad_(True)
    got, want = edge(x, torch.relu(x), mix), sum(w * op(x) for w, op in zip(mix, plain))
    assert calls["none"] == calls["nothing"] == 0, "zero ops are skipped"
    assert calls[NEW["201-space"][0]] == 1, "the plain op is run as `op(x)`"
    _assert_same(got, want, [x, mix], edge, plain)


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_darts_edge_mixes_search_forms_and_plain_ops(with_new_op, stride, lean):
    genotypes, operations, model_search = with_new_op("DARTS-space", "model_search")

    def set_lean(module):
        for m in module.modules():
            if hasattr(m, "lean"):
                m.lean = lean
        return module.train()

    for name in genotypes.PRIMITIVES:  # the overrides, one by one: values, gradients, BatchNorm statistics
        torch.manual_seed(0)
        search = set_lean(operations.search_op(name, 8, stride))
        torch.manual_seed(0)  # the same draws: the plain op holds the same weights
        plain = operations.OPS[name](8, stride, False).train()
        x, w = torch.randn(3, 8, 8, 8, requires_grad=True), torch.tensor(0.37, requires_grad=True)
        got = search(torch.relu(x) if search.expects_relu else x, w)
        _assert_same(got, w * plain(x), [x, w], search, plain, name)

    n = len(genotypes.PRIMITIVES)
    torch.manual_seed(0)
    edge = set_lean(model_search.MixedOp(8, stride, 1, range(n)))
    torch.manual_seed(0)
    plain = nn.ModuleList(operations.OPS[name](8, stride, False) for name in genotypes.PRIMITIVES).train()
    x, mix = torch.randn(3, 8, 8, 8, requires_grad=True), torch.rand(n).softmax(0).requires_grad_(True)
    got, want = edge(x, torch.relu(x), mix), sum(mix[i] * op(x) for i, op in enumerate(plain))
    _assert_same(got, want, [x, mix], edge, plain)
    assert [type(op) for op in new_ops(edge)] == [Conv5x5]


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_widen_op_walks_a_chain_of_convs_and_batchnorms(load_space, space):
    n2w = load_space(space, "runkit.net2wider")
    torch.manual_seed(0)
    depthwise = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4, affine=False))
    dense = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    op = nn.Sequential(nn.ReLU(), dense, nn.BatchNorm2d(4), depthwise, nn.Conv2d(4, 6, 1, bias=True), nn.BatchNorm2d(6))
    op(torch.randn(2, 4, 5, 5))  # running statistics
    old, index = copy.deepcopy(op), n2w.grow_index(4, 8, torch.Generator().manual_seed(1))
    moved = []
    out_index = n2w.widen_op(op, index, moved, torch.Generator().manual_seed(2))
    assert len(out_index) == 12 and torch.equal(out_index[:6], torch.arange(6))
    dense, bn, (depthwise, bn2), last, bn3 = op[1], op[2], op[3], op[4], op[5]
    assert torch.equal(dense.weight, old[1].weight[index][:, index])
    assert torch.equal(bn.weight, old[2].weight[index]) and torch.equal(bn.running_var, old[2].running_var[index])
    assert depthwise.groups == 8 and torch.equal(depthwise.weight, old[3][0].weight[index])
    assert torch.equal(bn2.running_mean, old[3][1].running_mean[index])
    assert torch.equal(last.weight, old[4].weight[out_index][:, index])
    assert torch.equal(last.bias, old[4].bias[out_index]) and torch.equal(bn3.bias, old[5].bias[out_index])
    assert {id(m.new) for m in moved} == {id(p) for p in op.parameters()}, "every parameter has a momentum plan"
    for m in moved:
        assert torch.equal(n2w.expand(m.old, m.plan), m.new)
    assert op(torch.randn(2, 8, 5, 5)).shape == (2, 12, 5, 5)
    # Not a chain of convs and BatchNorms: refused, not guessed.
    for bad in (nn.Sequential(nn.Conv2d(4, 4, 1, groups=2)), nn.Sequential(nn.Flatten(), nn.Linear(4, 4))):
        with pytest.raises(Exception, match="net2wider") as refused:
            n2w.widen_op(bad, index, [])
        assert type(refused.value).__name__ == "UserError", "one line, not a traceback"


def _assert_same(got, want, inputs, module_got, module_want, msg=None):
    """Equal values, gradients w.r.t. `inputs` and the modules' parameters, and BatchNorm statistics, tightly."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=msg)
    for a, b in zip(module_got.buffers(), module_want.buffers()):
        torch.testing.assert_close(a, b, msg=msg)
    g = torch.randn_like(want)
    grads_got = torch.autograd.grad(got, [*inputs, *module_got.parameters()], g, allow_unused=True)
    grads_want = torch.autograd.grad(want, [*inputs, *module_want.parameters()], g, allow_unused=True)
    assert len(grads_got) == len(grads_want)
    for a, b in zip(grads_got, grads_want):
        assert (a is None) == (b is None), msg
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=msg)
