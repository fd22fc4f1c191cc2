"""net2wider in both folders: one API, weights copied without division (the paper's code), momentum following."""

import inspect

import pytest
import torch
import torch.nn as nn

pytestmark = pytest.mark.quick

SPACES = ["201-space", "DARTS-space"]
PUBLIC = ["Moved", "expand", "grow_index", "widen_conv", "widen_bn"]


def test_same_public_api_in_both_folders(load_space):
    signatures = []
    for space in SPACES:
        n2w = load_space(space, "runkit.net2wider")
        public = sorted(name for name in vars(n2w) if not name.startswith("_") and callable(getattr(n2w, name)))
        assert set(PUBLIC) <= set(public), space
        signatures.append({name: str(inspect.signature(getattr(n2w, name))) for name in PUBLIC})
        assert n2w.Moved._fields == ("old", "new", "plan")
    assert signatures[0] == signatures[1]


@pytest.mark.parametrize("space", SPACES)
def test_conv_copies_weights_without_division_depthwise_conv_grows_its_groups_bn_copies_statistics(load_space, space):
    n2w = load_space(space, "runkit.net2wider")
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 3, padding=1, bias=True)
    in_index, out_index = torch.tensor([0, 1, 2, 3, 1, 1]), torch.tensor([0, 1, 2, 0, 2])
    moved = []
    new = n2w.widen_conv(conv, in_index, out_index, moved)
    assert (new.in_channels, new.out_channels, new.groups) == (6, 5, 1)
    w = conv.weight.detach()
    assert torch.equal(new.weight[:3, :4], w), "old channels are kept"
    # Input channel 1 now appears three times, each with its full weight (Net2Net would divide by 3).
    for c in (1, 4, 5):
        assert torch.equal(new.weight[:3, c], w[:, 1])
    assert torch.equal(new.weight[3], new.weight[0]) and torch.equal(new.weight[4], new.weight[2])
    assert torch.equal(new.bias, conv.bias[out_index])
    assert [(m.old, m.new) for m in moved] == [(conv.weight, new.weight), (conv.bias, new.bias)]
    for m in moved:
        assert torch.equal(n2w.expand(m.old, m.plan), m.new)

    conv, index = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, bias=False), torch.tensor([0, 1, 2, 3, 3, 0])
    new = n2w.widen_conv(conv, index, index, [])
    assert (new.in_channels, new.out_channels, new.groups) == (6, 6, 6)
    assert (new.kernel_size, new.padding, new.dilation) == (conv.kernel_size, conv.padding, conv.dilation)
    assert torch.equal(new.weight, conv.weight[index])  # (6, 1, 3, 3): each filter follows its channel
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(new(x[:, index]), conv(x)[:, index])
    # BatchNorm: running statistics and affine parameters are copied.
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias):
            t.copy_(torch.rand(4) + 0.5)
    bn.num_batches_tracked.fill_(7)
    bn.eval()
    index, moved = torch.tensor([0, 1, 2, 3, 2, 2]), []
    new = n2w.widen_bn(bn, index, moved)
    assert type(new) is type(bn) and new.num_features == 6 and not new.training
    for name in ("running_mean", "running_var", "weight", "bias"):
        assert torch.equal(getattr(new, name), getattr(bn, name)[index]), name
    assert new.num_batches_tracked.item() == 7
    assert [(m.old, m.new) for m in moved] == [(bn.weight, new.weight), (bn.bias, new.bias)]
    assert all(isinstance(m.new, nn.Parameter) for m in moved)
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(new(x[:, index]), bn(x)[:, index])
    if space == "DARTS-space":  # the search's BatchNorm stays a MixBatchNorm
        n2w, lean_ops = load_space(space, "runkit.net2wider", "lean_ops")
        new = n2w.widen_bn(lean_ops.MixBatchNorm(4), torch.tensor([0, 1, 2, 3, 0]), [])
        assert type(new) is lean_ops.MixBatchNorm and new.num_features == 5
        out = new(torch.randn(2, 5, 3, 3), torch.tensor(0.5))  # the mixing weight still folds in
        assert out.shape == (2, 5, 3, 3)


@pytest.mark.parametrize("space", SPACES)
def test_grow_index_is_reproducible_momentum_follows_the_channels_and_a_widened_op_keeps_its_outputs(load_space, space):
    n2w = load_space(space, "runkit.net2wider")
    index = n2w.grow_index(4, 10, torch.Generator().manual_seed(3))
    assert torch.equal(index[:4], torch.arange(4)) and index.shape == (10,) and (index < 4).all()
    assert torch.equal(index, n2w.grow_index(4, 10, torch.Generator().manual_seed(3)))
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 1, bias=False)
    sgd = torch.optim.SGD(conv.parameters(), 0.1, momentum=0.9)
    conv(torch.randn(2, 3, 4, 4)).square().sum().backward()
    sgd.step()
    buf = sgd.state[conv.weight]["momentum_buffer"]
    index, moved = torch.tensor([0, 1, 2, 1, 0]), []
    new = n2w.widen_conv(conv, index, index, moved)
    (m,) = moved
    carried = n2w.expand(buf, m.plan)
    assert carried.shape == new.weight.shape
    assert torch.equal(carried, buf[index][:, index]), "the same channels as the parameter"
    assert torch.equal(new.weight, conv.weight[index][:, index]) and carried.data_ptr() != buf.data_ptr()
    # A widened op (201 nor_conv_3x3, DARTS dil_conv_3x3): zeros on the new input channels leave the old outputs.
    n2w, operations = load_space(space, "runkit.net2wider", "operations")
    torch.manual_seed(0)
    if space == "201-space":
        op = operations.OPS["nor_conv_3x3"](4, 4, 1, False)
    else:
        op = operations.search_op("dil_conv_3x3", 4, 1)
    x = torch.randn(2, 4, 6, 6)
    for _ in range(2):
        op(x + torch.randn_like(x))  # non-trivial BatchNorm running statistics
    op.eval()
    before = op(x)
    index, moved = n2w.grow_index(4, 8, torch.Generator().manual_seed(0)), []
    out_index = n2w.widen_op(op, index, moved, None)
    assert torch.equal(out_index, index) and moved
    after = op(torch.cat([x, torch.zeros(2, 4, 6, 6)], dim=1))
    assert after.shape == (2, 8, 6, 6)
    torch.testing.assert_close(after[:, :4], before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, before[:, index], atol=1e-5, rtol=1e-5)  # new channels copy old ones
    # Copies are not divided: replicated inputs count once per copy, so the dense conv's outputs change.
    assert not torch.allclose(op(x[:, index]), before[:, index], atol=1e-3)
