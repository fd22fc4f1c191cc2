"""Operations of the DARTS search space, each able to grow its channels (net2wider).

`OPS[name](C, stride, affine)` builds one of the 7 candidate ops of `genotypes.PRIMITIVES`
(the evaluation network of `model.py` uses them with `affine=True`); pools are followed by
an affine-free BatchNorm, as in the paper's op table. `search_op(name, C, stride)` builds
the search-cell version, where every BatchNorm is affine-free, as in the paper's supernet.

Progressive search (DrNAS section 3.3) grows every op between stages from C/k_old to
C/k_new channels by net2wider: `op.widen(index)`, where `index` (length C_new, starting
with `arange(C_old)`) names the old channel each new one copies. What is preserved is the
op on replicated inputs: `new_op(x[:, index]) == old_op(x)[:, out_index]` in eval mode,
where `out_index` is what `widen` returns. In the supernet the widened op reads new, real
channels of the cell state instead of copies, so the supernet's function changes.
Depthwise convs grow their groups, dense convs copy output channels and split the
weight of a replicated input channel among its copies (Chen et al., Net2Net), BatchNorm
copies its statistics. Each widening also reports which
parameter became which (`Moved` records) so that the optimiser's momentum can follow.

Memory of the supernet (a search step keeps ~100 op activations per cell alive): the
search ops fold their edge's mixing weight into their last BatchNorm (`MixBatchNorm`),
take a ReLU shared by the edge, and recompute cheap intermediates in the backward pass
instead of storing them (`_LeanMaxPool`, `_DepthwisePointwise`); the results and
gradients equal those of the plain ops (tests/test_darts_search_ops.py). The supernet's
`use_lean_ops(False)` (`--lean_ops off`) runs the plain ops instead: no recomputation, more memory.

    python -c "import operations as o, torch; print(o.OPS['sep_conv_3x3'](8, 2, False)(torch.randn(2, 8, 8, 8)).shape)"
"""

from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# A parameter replaced by widening: `new = expand(old, plan)`; plan = ((dim, index, divide), ...).
Moved = namedtuple("Moved", "old new plan")


def expand(tensor, plan):
    """Apply a widening plan to a tensor (a parameter, or optimiser state shaped like it)."""
    # The same plan serves the weight and its SGD momentum buffer, so the momentum of a
    # copied channel is the momentum of the channel it copies (split like the weight).
    for dim, index, divide in plan:
        index = index.to(tensor.device)
        counts = torch.bincount(index, minlength=tensor.shape[dim]).to(tensor.dtype)
        tensor = tensor.index_select(dim, index)
        if divide:
            # A replicated input channel feeds its copies: split its weight among them.
            shape = [1] * tensor.dim()
            shape[dim] = -1
            tensor = tensor / counts[index].view(shape)
    return tensor


def grow_index(c_old, c_new, generator=None):
    """`arange(c_old)` followed by `c_new - c_old` channels drawn at random among them."""
    # Old channels keep their place; each new one replicates a random old one (net2wider).
    extra = torch.randint(c_old, (c_new - c_old,), generator=generator)
    return torch.cat([torch.arange(c_old), extra])


def widen_conv(conv, in_index, out_index, moved):
    """A copy of `conv` on `len(in_index)` inputs and `len(out_index)` outputs."""
    depthwise = conv.groups > 1
    # weight: (C_out, C_in / groups, kh, kw). A depthwise filter sees only its own
    # channel, so copying it is exact; a dense conv sees every input channel, so the
    # weight of a replicated input is divided by its number of copies.
    if depthwise:  # one filter per channel: inputs and outputs follow the same index
        assert conv.groups == conv.in_channels == conv.out_channels
        plan = ((0, out_index, False),)
    else:
        plan = ((0, out_index, False), (1, in_index, True))
    new = (
        nn.Conv2d(
            len(in_index),
            len(out_index),
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            groups=len(out_index) if depthwise else 1,
            bias=False,
        )
        .to(conv.weight.device)
        .train(conv.training)
    )
    with torch.no_grad():
        new.weight.copy_(expand(conv.weight, plan))
    moved.append(Moved(conv.weight, new.weight, plan))
    return new


def widen_bn(bn, index, moved):
    """A copy of `bn` on `len(index)` channels: affine weights and running statistics copied."""
    new = batch_norm(len(index), bn.affine).to(bn.running_mean.device).train(bn.training)
    plan = ((0, index, False),)
    with torch.no_grad():
        new.running_mean.copy_(expand(bn.running_mean, plan))
        new.running_var.copy_(expand(bn.running_var, plan))
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
        if bn.affine:
            for name in ("weight", "bias"):
                getattr(new, name).copy_(expand(getattr(bn, name), plan))
                moved.append(Moved(getattr(bn, name), getattr(new, name), plan))
    return new


class MixBatchNorm(nn.BatchNorm2d):
    """Affine-free BatchNorm whose output can be scaled by an edge's mixing weight for free.

    `bn(x, scale)` equals `scale * bn(x)`, but passing the scalar as BatchNorm's affine
    weight lets the fused kernel recompute the normalised input in the backward pass,
    where the product would keep one more activation per op alive (DrNAS mixes 7 ops
    on each of 14 edges per cell: this is a large share of the search's memory).
    """

    def __init__(self, num_features):
        super().__init__(num_features, affine=False)

    def forward(self, x, scale=None):
        if scale is None:
            return super().forward(x)
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            scale.expand(self.num_features).contiguous(),
            None,
            self.training,
            self.momentum,
            self.eps,
        )


def batch_norm(C, affine):
    """Affine BatchNorm (evaluation network) or the scalable affine-free one (search cells)."""
    return nn.BatchNorm2d(C) if affine else MixBatchNorm(C)


def normalize(bn, x, scale):
    """`bn(x)`, times `scale` when given (only the search's MixBatchNorm receives one)."""
    return bn(x) if scale is None else bn(x, scale)


class ReLUConvBN(nn.Module):
    """ReLU -> Conv -> BatchNorm (the cells' 1x1 preprocessing)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv = nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = batch_norm(C_out, affine)

    def forward(self, x):
        return self.bn(self.conv(self.relu(x)))  # (B, C_out, H / stride, W / stride)

    def widen(self, index, moved, generator=None):
        """net2wider on input channels `index`; returns the output channels' index."""
        # Square convs keep the input's channel map; otherwise the outputs grow in proportion.
        out_index = (
            index
            if self.conv.in_channels == self.conv.out_channels
            else grow_index(
                self.conv.out_channels, self.conv.out_channels * len(index) // self.conv.in_channels, generator
            )
        )
        self.conv = widen_conv(self.conv, index, out_index, moved)
        self.bn = widen_bn(self.bn, out_index, moved)
        return out_index


def compute_dtype(x):
    """The dtype convolutions on `x` run in: autocast's (bf16 under --amp) when it is on, else `x`'s own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def cast(grad, dtype):
    """`grad` in `dtype` (None stays None)."""
    return None if grad is None else grad.to(dtype)


class _DepthwisePointwise(torch.autograd.Function):
    """[BatchNorm -> ReLU ->] depthwise conv -> 1x1 conv, keeping only its input for backward.

    The depthwise output (the 1x1 conv's input) is one of the largest activations of the
    supernet; it is recomputed in the backward pass, and only when the 1x1 weights need
    a gradient (an architecture step freezes the weights, so it never recomputes). With
    `bn` (the affine-free BatchNorm that ends the first half of a SepConv), the input is
    that BatchNorm's input, which it keeps anyway, and the normalised, rectified tensor
    is recomputed too: one activation less per SepConv.
    """

    @staticmethod
    def forward(ctx, x, w_dw, w_pw, stride, padding, dilation, bn):
        # Under autocast (--amp) the convolutions run in its dtype; the backward pass runs
        # outside autocast, so the weights are cast here once and saved in that dtype.
        dtype, weight_dtype = compute_dtype(x), w_dw.dtype
        w_dw, w_pw = w_dw.to(dtype), w_pw.to(dtype)
        mean = invstd = x.new_empty(0, dtype=torch.float32)
        r = x
        if bn is not None:
            if bn.training:  # batch statistics; updates the running ones like nn.BatchNorm2d
                y, mean, invstd = torch.ops.aten.native_batch_norm(
                    x, None, None, bn.running_mean, bn.running_var, True, bn.momentum, bn.eps
                )
            else:
                mean, invstd = bn.running_mean.clone(), (bn.running_var + bn.eps).rsqrt()
                y = (x - mean[:, None, None]) * invstd[:, None, None]
            r = F.relu(y)
            ctx.bn = (bn.training, bn.eps)
        else:
            ctx.bn = None
        ctx.save_for_backward(x, w_dw, w_pw, mean, invstd)
        ctx.config, ctx.weight_dtype = (stride, padding, dilation), weight_dtype
        r = r.to(dtype)  # the BatchNorm's output, or the input itself, in the convolutions' dtype
        d = F.conv2d(r, w_dw, None, stride, padding, dilation, groups=x.shape[1])  # (B, C_in, H', W')
        return F.conv2d(d, w_pw)  # (B, C_out, H', W')

    @staticmethod
    def backward(ctx, grad):
        x, w_dw, w_pw, mean, invstd = ctx.saved_tensors
        stride, padding, dilation = ctx.config
        need_x, need_dw, need_pw = ctx.needs_input_grad[:3]
        r = x
        if ctx.bn is not None:  # recompute the normalised, rectified input
            y = (x - mean[:, None, None]) * invstd[:, None, None]
            r = F.relu(y)
        r, grad = r.to(w_dw.dtype), grad.to(w_dw.dtype)
        if need_pw:
            d = F.conv2d(r, w_dw, None, stride, padding, dilation, groups=x.shape[1])
        else:  # only its shape is read when the 1x1 weight gradient is not asked for
            d = x.new_empty(grad.shape[0], x.shape[1], *grad.shape[2:])
        grad_d, grad_pw, _ = torch.ops.aten.convolution_backward(
            grad, d, w_pw, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [need_x or need_dw, need_pw, False]
        )
        grad_x = grad_dw = None
        if need_x or need_dw:
            grad_x, grad_dw, _ = torch.ops.aten.convolution_backward(
                grad_d,
                r,
                w_dw,
                None,
                [stride] * 2,
                [padding] * 2,
                [dilation] * 2,
                False,
                [0, 0],
                x.shape[1],
                [need_x, need_dw, False],
            )
        if need_x and ctx.bn is not None:
            training, eps = ctx.bn
            grad_y = (grad_x * (y > 0)).to(x.dtype)
            if training:
                grad_x = torch.ops.aten.native_batch_norm_backward(
                    grad_y, x, None, None, None, mean, invstd, True, eps, [True, False, False]
                )[0]
            else:
                grad_x = grad_y * invstd[:, None, None]
        # Gradients in the dtypes of the inputs (fp32 weights under autocast).
        return cast(grad_x, x.dtype), cast(grad_dw, ctx.weight_dtype), cast(grad_pw, ctx.weight_dtype), *[None] * 4


class DilConv(nn.Module):
    """ReLU -> depthwise (dilated) conv -> 1x1 conv -> BatchNorm.

    `relu=False` leaves the first ReLU to the caller: a search edge computes it once
    for all its ops (`expects_relu` tells it to) instead of once per op.
    """

    # Search cells set this (see `search_op`): the depthwise output is then recomputed
    # in the backward pass instead of being kept.
    lean = False

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True, relu=True):
        super().__init__()
        self.expects_relu = not relu
        self.relu = nn.ReLU(inplace=False) if relu else nn.Identity()
        self.depthwise = nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation, groups=C_in, bias=False)
        self.pointwise = nn.Conv2d(C_in, C_out, 1, bias=False)
        self.bn = batch_norm(C_out, affine)

    def convs(self, x, bn=None):
        """The op before its BatchNorm; `bn(x)` then ReLU come first when given (lean only)."""
        if self.lean:
            dw = self.depthwise
            return _DepthwisePointwise.apply(
                x, dw.weight, self.pointwise.weight, dw.stride[0], dw.padding[0], dw.dilation[0], bn
            )
        # (B, C_in, H, W) -> depthwise (B, C_in, H', W') -> pointwise (B, C_out, H', W')
        return self.pointwise(self.depthwise(x))

    def forward(self, x, scale=None):
        return normalize(self.bn, self.convs(self.relu(x)), scale)

    def widen(self, index, moved, generator=None):
        """Depthwise filters follow `index`; the 1x1 conv maps to the same channels."""
        self.depthwise = widen_conv(self.depthwise, index, index, moved)
        self.pointwise = widen_conv(self.pointwise, index, index, moved)
        self.bn = widen_bn(self.bn, index, moved)
        return index


class SepConv(nn.Module):
    """Two stacked depthwise-separable convs (the first one carries the stride)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True, relu=True):
        super().__init__()
        self.first = DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine, relu)
        self.second = DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine)
        self.expects_relu = self.first.expects_relu

    def forward(self, x, scale=None):
        if not self.second.lean:
            return self.second(self.first(x), scale)
        # Lean search version: the first BatchNorm and the ReLU between the halves run
        # inside the second half's fused function, which recomputes their output.
        bn = self.first.bn
        if bn.training:
            bn.num_batches_tracked.add_(1)
        hidden = self.first.convs(self.first.relu(x))  # (B, C_in, H', W'), before the first BatchNorm
        return normalize(self.second.bn, self.second.convs(hidden, bn), scale)

    def widen(self, index, moved, generator=None):
        # Both halves follow one channel map: the first's output feeds the second.
        return self.second.widen(self.first.widen(index, moved, generator), moved, generator)


class Identity(nn.Module):
    """skip_connect at stride 1."""

    expects_relu = False

    def forward(self, x, scale=None):
        return x if scale is None else x * scale

    def widen(self, index, moved, generator=None):
        return index


class FactorizedReduce(nn.Module):
    """Halve H and W with two 1x1 stride-2 convs, the second shifted by one pixel."""

    def __init__(self, C_in, C_out, affine=True, relu=True):
        super().__init__()
        assert C_out % 2 == 0, "FactorizedReduce needs an even number of output channels"
        self.expects_relu = not relu
        self.relu = nn.ReLU(inplace=False) if relu else nn.Identity()
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = batch_norm(C_out, affine)

    def forward(self, x, scale=None):
        x = self.relu(x)
        # (B, C_out, H/2, W/2): even pixels through conv_1, odd ones through conv_2.
        return normalize(self.bn, torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1), scale)

    def widen(self, index, moved, generator=None):
        """Each half grows on its own, so the output index differs from `index`."""
        half_old = self.conv_1.out_channels
        half_new = half_old * len(index) // self.conv_1.in_channels
        first, second = grow_index(half_old, half_new, generator), grow_index(half_old, half_new, generator)
        self.conv_1 = widen_conv(self.conv_1, index, first, moved)
        self.conv_2 = widen_conv(self.conv_2, index, second, moved)
        out_index = torch.cat([first, second + half_old])
        self.bn = widen_bn(self.bn, out_index, moved)
        return out_index


class _LeanMaxPool(torch.autograd.Function):
    """Max pooling that keeps only its input for the backward pass, not the argmax indices.

    The indices (int64, twice the size of the output) are recomputed in the backward
    pass from the input, which the search keeps alive anyway (it is a view of a cell
    state). Saves about a tenth of the search's activation memory.
    """

    @staticmethod
    def forward(ctx, x, kernel, stride, padding):
        ctx.save_for_backward(x)
        ctx.config = (kernel, stride, padding)
        return F.max_pool2d(x, kernel, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        kernel, stride, padding = ctx.config
        _, indices = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, [kernel] * 2, [stride] * 2, [padding] * 2, [1, 1], False, indices
        )
        return grad_x, None, None, None


class LeanMaxPool(nn.Module):
    """`nn.MaxPool2d(kernel, stride, padding)` with the memory of `_LeanMaxPool` (plain when `lean` is off)."""

    lean = True

    def __init__(self, kernel, stride, padding=0):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x):
        if not self.lean:
            return F.max_pool2d(x, self.kernel, self.stride, self.padding)
        return _LeanMaxPool.apply(x, self.kernel, self.stride, self.padding)


class PoolBN(nn.Module):
    """3x3 max or average pooling, followed by an affine-free BatchNorm in search cells."""

    expects_relu = False

    def __init__(self, kind, C, stride):
        super().__init__()
        self.pool = LeanMaxPool(3, stride, 1) if kind == "max" else make_pool(kind, stride)
        self.bn = MixBatchNorm(C)

    def forward(self, x, scale=None):
        return self.bn(self.pool(x), scale)

    def widen(self, index, moved, generator=None):
        # Pooling acts per channel: only the BatchNorm statistics need copying.
        self.bn = widen_bn(self.bn, index, moved)
        return index


def make_pool(kind, stride):
    """3x3 pooling; average pooling ignores the padding, as in DARTS."""
    if kind == "max":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


def pool_bn(kind, C, stride):
    """3x3 pooling followed by an affine-free BatchNorm, as every pool of the paper's cells."""
    return nn.Sequential(make_pool(kind, stride), nn.BatchNorm2d(C, affine=False))


# name -> constructor(C, stride, affine, relu=True); the search version of each is `search_op`.
# Pools are followed by an affine-free BatchNorm in the evaluation cells too (the paper's
# code builds both networks from one op table); skip_connect reduces with
# FactorizedReduce at stride 2; dilated convs pad so that the size only follows the stride.
OPS = {
    "max_pool_3x3": lambda C, stride, affine, relu=True: pool_bn("max", C, stride),
    "avg_pool_3x3": lambda C, stride, affine, relu=True: pool_bn("avg", C, stride),
    "skip_connect": lambda C, stride, affine, relu=True: (
        Identity() if stride == 1 else FactorizedReduce(C, C, affine, relu)
    ),
    "sep_conv_3x3": lambda C, stride, affine, relu=True: SepConv(C, C, 3, stride, 1, affine, relu),
    "sep_conv_5x5": lambda C, stride, affine, relu=True: SepConv(C, C, 5, stride, 2, affine, relu),
    "dil_conv_3x3": lambda C, stride, affine, relu=True: DilConv(C, C, 3, stride, 2, 2, affine, relu),
    "dil_conv_5x5": lambda C, stride, affine, relu=True: DilConv(C, C, 5, stride, 4, 2, affine, relu),
}


def search_op(name, C, stride):
    """The search-cell version of `OPS[name]`: affine-free BatchNorm, pools with BatchNorm.

    Call it as `op(x, scale)` = `scale * OPS-op(x)`; ops with `expects_relu` take the
    edge's shared ReLU(x) instead of x. Its memory-saving parts start `lean`; the supernet's
    `use_lean_ops(False)` turns them all into the plain ops (the one place of that choice).
    """
    if name.endswith("pool_3x3"):
        return PoolBN(name[:3], C, stride)
    op = OPS[name](C, stride, False, relu=False)
    for module in op.modules():
        if isinstance(module, DilConv):  # also the two halves of a SepConv
            module.lean = True
    return op
