"""The CUDA tier's kernels."""

import copy

import pytest
import torch
import torch.nn.functional as F

from cuda_jobs import DEVICE, assert_near

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("start_cuda_runs")]


# Lean against plain, relative to each tensor's largest entry: fp32 (the same kernels, recomputed), and
# bf16 autocast (both round to bf16 in places that differ: BatchNorm in or outside the fused function).
LEAN_REL = {"fp32": 1e-4, "bf16": 3e-2}


def autocast(precision):
    return torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _input(precision, *shape, seed=0):
    """A cell state as the supernet hands it to an op: bf16 under autocast (the convs' and BatchNorms' output)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    return x.to(torch.bfloat16 if precision == "bf16" else torch.float32).requires_grad_()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name,stride", [("sep_conv_3x3", 1), ("sep_conv_5x5", 2), ("dil_conv_3x3", 1)])
def test_depthwise_pointwise_matches_plain_ops(load_space, name, stride, precision):
    """`DepthwisePointwise` (SepConv's fused BatchNorm-ReLU-convs, DilConv) against the same op with `lean = False`."""
    operations = load_space("DARTS-space", "operations")
    torch.manual_seed(0)
    lean = operations.search_op(name, 8, stride).to(DEVICE)
    plain = copy.deepcopy(lean)
    for module in plain.modules():
        if isinstance(module, operations.DilConv):
            module.lean = False
    assert any(getattr(m, "lean", False) for m in lean.modules())
    x = _input(precision, 4, 8, 12, 12)
    scale = torch.tensor(0.3, device=DEVICE, requires_grad=True)
    rel = LEAN_REL[precision]

    def run(op, params):
        with autocast(precision):
            out = op(F.relu(x), scale)  # the edge's shared ReLU
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
        return out, torch.autograd.grad(out, [x, scale, *params], grad_out)

    out_lean, grads_lean = run(lean, list(lean.parameters()))
    out_plain, grads_plain = run(plain, list(plain.parameters()))
    assert out_lean.dtype == out_plain.dtype
    assert_near(out_lean, out_plain, rel, f"{name} output")
    names = ["input", "scale", *(n for n, _ in lean.named_parameters())]
    for what, a, b, p in zip(names, grads_lean, grads_plain, [x, scale, *lean.parameters()]):
        assert a.dtype == p.dtype, f"{what}: gradient in {a.dtype}, tensor in {p.dtype}"
        assert_near(a, b, rel, f"{name} gradient of {what}")
    for key, value in plain.state_dict().items():
        assert_near(lean.state_dict()[key], value, rel, f"{name} {key}")
    for p in [*lean.parameters(), *plain.parameters()]:
        p.requires_grad_(False)
    (_, grads_lean), (_, grads_plain) = run(lean, []), run(plain, [])
    for what, a, b in zip(("input", "scale"), grads_lean, grads_plain):
        assert_near(a, b, rel, f"{name} frozen weights, gradient of {what}")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (2, 2, 0)])
def test_lean_max_pool_matches_max_pool(load_space, kernel, stride, padding, precision):
    """`_LeanMaxPool` (argmax recomputed in the backward pass) equals max pooling exactly, gradient included."""
    lean_ops = load_space("DARTS-space", "lean_ops")
    x = _input(precision, 4, 8, 12, 12)
    lean = lean_ops.LeanMaxPool(kernel, stride, padding)
    assert lean.lean
    with autocast(precision):
        out_lean, out_plain = lean(x), F.max_pool2d(x, kernel, stride, padding)
    torch.testing.assert_close(out_lean, out_plain, rtol=0, atol=0)
    g = torch.randn(out_plain.shape, generator=torch.Generator().manual_seed(1)).to(out_plain)
    (grad_lean,), (grad_plain,) = torch.autograd.grad(out_lean, x, g), torch.autograd.grad(out_plain, x, g)
    assert grad_lean.dtype == x.dtype
    torch.testing.assert_close(grad_lean, grad_plain, rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mix_batch_norm_with_scale_matches_scaled_batch_norm(load_space, precision):
    """`MixBatchNorm(x, w)` (the mixing weight as BatchNorm's affine weight) against w * BatchNorm(x)."""
    lean_ops = load_space("DARTS-space", "lean_ops")
    mix = lean_ops.MixBatchNorm(8).to(DEVICE)
    plain = torch.nn.BatchNorm2d(8, affine=False).to(DEVICE)
    x = _input(precision, 4, 8, 6, 6)
    w = torch.tensor(0.3, device=DEVICE, requires_grad=True)
    with autocast(precision):
        out_mix, out_plain = mix(x, w), w * plain(x)
    rel = LEAN_REL[precision]
    assert_near(out_mix, out_plain, rel, "output")
    g = torch.randn(out_plain.shape, generator=torch.Generator().manual_seed(1)).to(out_plain)
    grads_mix, grads_plain = torch.autograd.grad(out_mix, [x, w], g), torch.autograd.grad(out_plain, [x, w], g)
    for what, a, b in zip(("x", "w"), grads_mix, grads_plain):
        assert_near(a, b, rel, f"gradient of {what}")
    assert grads_mix[1].dtype == torch.float32
    for key in ("running_mean", "running_var"):
        assert_near(getattr(mix, key), getattr(plain, key), 1e-5 if precision == "fp32" else rel, key)
    assert int(mix.num_batches_tracked) == int(plain.num_batches_tracked) == 1


@pytest.mark.parametrize("kernel, padding, dilation", [(5, 4, 2), (3, 2, 2), (5, 2, 1)])
def test_compiled_bf16_depthwise_conv_weight_gradient_matches_eager(kernel, padding, dilation):
    """On the GPU the compiled bf16 dilated depthwise conv weight gradient is the eager one."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, kernel, 1, padding, dilation, groups=8, bias=False).to(DEVICE)
    x = torch.randn(16, 8, 32, 32, device=DEVICE)

    def loss(x):
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
            return conv(torch.relu(x)).float().square().mean()

    eager = torch.autograd.grad(loss(x), conv.weight)[0]
    compiled = torch.autograd.grad(torch.compile(loss, dynamic=False)(x), conv.weight)[0]
    assert torch.isfinite(compiled).all()
    torch.testing.assert_close(compiled, eager, rtol=3e-2, atol=1e-3 * eager.abs().max().item())
