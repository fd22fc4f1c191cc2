"""Operations of the DARTS search space, each able to grow its channels (net2wider).

`OPS[name](C, stride, affine)` builds one of the 7 candidate ops of `genotypes.PRIMITIVES`
(the evaluation network of `model.py` uses them with `affine=True`); pools are followed by
an affine-free BatchNorm, as in the paper's op table. `search_op(name, C, stride)` builds
the search-cell version, where every BatchNorm is affine-free, as in the paper's supernet.

Progressive search (DrNAS section 3.3) grows every op between stages from C/k_old to
C/k_new channels: `op.widen(index, moved, generator)` (net2wider.py), where `index`
(length C_new, starting with `arange(C_old)`) names the old channel each new one copies;
`widen` returns the same for its outputs (`out_index`). Weights are copied, not divided,
as in the paper's code, so a dense conv adds the share of every new input channel to its
outputs. Fed zeros on the new input channels, every op but sep_conv keeps its old output
channels, and the conv ops' new ones copy theirs: `new_op(x_pad) == old_op(x)[:, out_index]`
(sep_conv's second half reads the copies its first half made). On replicated inputs
`x[:, index]` only per-channel ops (pools, skip at stride 1) keep their function. In the
supernet the widened op reads new, real channels of the cell state, so the supernet's
function changes.

Memory of the supernet: the search ops fold their edge's mixing weight into their last
BatchNorm, take a ReLU shared by the edge, and recompute cheap intermediates in the
backward pass instead of storing them (lean_ops.py). The supernet's `use_lean_ops(False)`
(`--lean_ops off`) runs the plain ops instead: no recomputation, more memory.

    python -c "import operations as o, torch; print(o.OPS['sep_conv_3x3'](8, 2, False)(torch.randn(2, 8, 8, 8)).shape)"
"""

import torch
import torch.nn as nn

from lean_ops import DepthwisePointwise, LeanMaxPool, MixBatchNorm, batch_norm, normalize
from net2wider import grow_index, widen_bn, widen_conv


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
            return DepthwisePointwise.apply(
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
