"""DARTS-space search ops and data: shapes, function-preserving net2wider, Cutout, errors."""

import pytest
import torch

pytestmark = pytest.mark.quick


@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_shape_scale_shared_relu_and_widening(load_space, stride):
    operations, net2wider, genotypes = load_space("DARTS-space", "operations", "runkit.net2wider", "genotypes")
    torch.manual_seed(0)
    x, w = torch.randn(2, 8, 12, 12), torch.tensor(0.3, requires_grad=True)
    size = 12 // stride
    for name in genotypes.PRIMITIVES:
        for op in (operations.OPS[name](8, stride, True), operations.search_op(name, 8, stride)):
            assert op(x).shape == (2, 8, size, size), name
        # The search form takes the shared ReLU and the mixing weight: w * the plain op.
        search = operations.search_op(name, 8, stride)
        plain = operations.OPS[name](8, stride, False)  # own ReLU, unscaled; pools end in their BatchNorm
        if not name.endswith("pool_3x3"):
            plain.load_state_dict(search.state_dict())
        out = search(torch.relu(x) if search.expects_relu else x, w)
        torch.testing.assert_close(out, w * plain(x), atol=1e-5, rtol=1e-5)
        (grad,) = torch.autograd.grad(out.square().sum(), w)  # the weight's gradient flows
        assert torch.isfinite(grad)
        # net2wider 8 -> 12 channels copies weights (no division, as the paper's code), so
        # with zeros on the new input channels the old output channels are kept (eval mode);
        # sep_conv's second half reads the copies its first half made, so it keeps nothing simple.
        op = operations.search_op(name, 8, stride)
        for _ in range(2):
            op(x + torch.randn_like(x))  # non-trivial BatchNorm running statistics
        op.eval()
        before = op(x)
        index, moved = net2wider.grow_index(8, 12), []
        out_index = net2wider.widen_op(op, index, moved)
        after = op(torch.cat([x, torch.zeros(2, 4, 12, 12)], dim=1))
        assert after.shape == (2, 12, size, size), name
        originals = [out_index.tolist().index(c) for c in range(8)]  # where each old output channel went
        if name.endswith("pool_3x3") or (name == "skip_connect" and stride == 1):
            torch.testing.assert_close(after[:, originals], before, atol=1e-5, rtol=1e-5)
            # Per-channel ops keep their function on replicated inputs too.
            torch.testing.assert_close(op(x[:, index]), before[:, out_index], atol=1e-5, rtol=1e-5)
        elif not name.startswith("sep_conv"):  # dil_conv, FactorizedReduce: the new channels copy the old ones'
            torch.testing.assert_close(after, before[:, out_index], atol=1e-5, rtol=1e-5)
        for m in moved:  # every replaced parameter is reported with its plan, and is a copy
            assert torch.equal(net2wider.expand(m.old, m.plan), m.new)


def test_widened_op_trains_and_keeps_mode_and_search_bn_is_affine_free(load_space):
    operations, net2wider = load_space("DARTS-space", "operations", "runkit.net2wider")
    op = operations.search_op("sep_conv_3x3", 4, 1).eval()
    net2wider.widen_op(op, net2wider.grow_index(4, 8), [])
    assert not any(m.training for m in op.modules())
    op.train()
    op(torch.randn(2, 8, 6, 6)).sum().backward()
    assert all(p.grad is not None for p in op.parameters())
    assert sum(p.numel() for p in operations.search_op("max_pool_3x3", 8, 2).parameters()) == 0
    sep = operations.search_op("sep_conv_3x3", 8, 1)
    assert all(not m.affine for m in sep.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_cutout_synthetic_and_dataset_errors(load_space, tmp_path):
    datasets, utils = load_space("DARTS-space", "datasets", "runkit.utils")
    train, test, num_classes = datasets.get_datasets("synthetic", "unused", cutout=True, cutout_length=8)
    assert num_classes == 10 and len(train) == 256 and len(test) == 128
    torch.manual_seed(0)
    image, label = train[0]
    assert image.shape == (3, 32, 32) and 0 <= int(label) < 10
    assert (image == 0).sum() >= 3 * 4 * 4  # a (possibly clipped) 8x8 square is zeroed
    state, a = torch.get_rng_state(), datasets.Cutout(8)(torch.ones(3, 16, 16))
    torch.set_rng_state(state)
    assert torch.equal(a, datasets.Cutout(8)(torch.ones(3, 16, 16)))  # torch RNG only
    with pytest.raises(utils.UserError, match="train/ and .*val/"):
        datasets.imagenet_datasets(tmp_path)
    with pytest.raises(utils.UserError, match="unknown dataset"):
        datasets.get_datasets("mnist", tmp_path)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (2, 2, 0)])
def test_lean_max_pool_matches_max_pool(load_space, kernel, stride, padding):
    lean_ops = load_space("DARTS-space", "lean_ops")
    x = torch.randn(2, 4, 8, 8, dtype=torch.double, requires_grad=True)
    lean, plain = lean_ops.LeanMaxPool(kernel, stride, padding), torch.nn.MaxPool2d(kernel, stride, padding)
    torch.testing.assert_close(lean(x), plain(x))
    g = torch.randn_like(plain(x))
    torch.testing.assert_close(torch.autograd.grad(lean(x), x, g)[0], torch.autograd.grad(plain(x), x, g)[0])
    torch.autograd.gradcheck(lean, (x,))


@pytest.mark.parametrize("name,stride", [("sep_conv_3x3", 1), ("sep_conv_5x5", 2), ("dil_conv_5x5", 2)])
def test_lean_conv_ops_match_plain_gradients(load_space, name, stride):
    operations = load_space("DARTS-space", "operations")
    torch.manual_seed(0)
    lean, plain = operations.search_op(name, 4, stride).double(), operations.search_op(name, 4, stride).double()
    plain.load_state_dict(lean.state_dict())
    for module in plain.modules():
        if isinstance(module, operations.DilConv):
            module.lean = False
    x = torch.randn(2, 4, 8, 8, dtype=torch.double, requires_grad=True)
    g = torch.randn_like(plain(x))
    lean(x)  # as many training passes as plain, for the running statistics
    params = list(lean.parameters())
    grads_lean = torch.autograd.grad(lean(x), [x, *params], g)
    grads_plain = torch.autograd.grad(plain(x), [x, *plain.parameters()], g)
    for a, b in zip(grads_lean, grads_plain):
        torch.testing.assert_close(a, b)
    for key, value in plain.state_dict().items():  # BatchNorm running statistics alike
        torch.testing.assert_close(lean.state_dict()[key], value, msg=key)
    lean.eval()
    plain.eval()
    torch.testing.assert_close(lean(x), plain(x))
    torch.testing.assert_close(torch.autograd.grad(lean(x), x, g)[0], torch.autograd.grad(plain(x), x, g)[0])
    lean.train()
    # Frozen weights (an architecture step): the shortcut without recomputation.
    for p in params:
        p.requires_grad_(False)
    torch.testing.assert_close(torch.autograd.grad(lean(x), x, g)[0], grads_plain[0])
