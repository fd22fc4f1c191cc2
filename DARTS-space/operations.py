"""Operations of the DARTS search space, each able to grow its channels (net2wider).

`OPS[name](C, stride, affine)` builds one candidate op, an `nn.Module`; that and its name in `genotypes.PRIMITIVES`
are all a new op needs: evaluation cells run it as it is, search cells mix it as `w * op(x)` (`search_op`), and
net2wider widens its convs and BatchNorms. The built-in ops add optional overrides: `share_relu()` (the op drops its
first ReLU and sets `expects_relu`: the cell computes it once per state), `search_form()` (`op(x, scale)` with the
scale folded into the last BatchNorm and lean parts, lean_ops.py), `widen(index, moved, generator)` (net2wider of an
op that is no chain of convs and BatchNorms; returns its output index) and `drop_in_place` (drop path may scale the
output in place). Widening copies weights (as the paper's code): fed zeros on the new channels, every op but sep_conv
keeps its old outputs, `new_op(x_pad) == old_op(x)[:, out_index]`.

    python -c "import operations as o, torch; print(o.OPS['sep_conv_3x3'](8, 2, False)(torch.randn(2, 8, 8, 8)).shape)"
"""

import torch
import torch.nn as nn
from runkit.net2wider import grow_index, widen_bn, widen_conv

from lean_ops import DepthwisePointwise, LeanMaxPool, MixBatchNorm, batch_norm, normalize


class ReLUConvBN(nn.Module):
    """ReLU -> Conv -> BatchNorm (the cells' 1x1 preprocessing)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv = nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = batch_norm(C_out, affine)

    def forward(self, x):
        return self.bn(self.conv(self.relu(x)))  # (B, C_out, H / stride, W / stride)


class DilConv(nn.Module):
    """ReLU -> depthwise (dilated) conv -> 1x1 conv -> BatchNorm."""

    lean = False  # search cells set it (`search_form`): the depthwise output is then recomputed, not kept
    expects_relu = False
    drop_in_place = True

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.depthwise = nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation, groups=C_in, bias=False)
        self.pointwise = nn.Conv2d(C_in, C_out, 1, bias=False)
        self.bn = batch_norm(C_out, affine)

    def convs(self, x, bn=None):
        """The op before its BatchNorm; `bn(x)` then ReLU come first when given (lean only)."""
        if self.lean:
            dw, pw = self.depthwise, self.pointwise
            return DepthwisePointwise.apply(x, dw.weight, pw.weight, dw.stride[0], dw.padding[0], dw.dilation[0], bn)
        # (B, C_in, H, W) -> depthwise (B, C_in, H', W') -> pointwise (B, C_out, H', W')
        return self.pointwise(self.depthwise(x))

    def forward(self, x, scale=None):
        return normalize(self.bn, self.convs(self.relu(x)), scale)

    def share_relu(self):
        self.relu, self.expects_relu = nn.Identity(), True
        return self

    def search_form(self):  # the BatchNorm of a search op is a `MixBatchNorm`, taking the scale
        self.lean = True
        return self.share_relu()


class SepConv(nn.Module):
    """Two stacked depthwise-separable convs (the first one carries the stride)."""

    expects_relu = False
    drop_in_place = True

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.first = DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine)
        self.second = DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine)

    def forward(self, x, scale=None):
        if not self.second.lean:
            return self.second(self.first(x), scale)
        # Lean search version: the first BatchNorm and the ReLU between the halves run inside the second half's fused
        # function, which recomputes their output.
        bn = self.first.bn
        if bn.training:
            bn.num_batches_tracked.add_(1)
        hidden = self.first.convs(self.first.relu(x))  # (B, C_in, H', W'), before the first BatchNorm
        return normalize(self.second.bn, self.second.convs(hidden, bn), scale)

    def share_relu(self):
        self.first.share_relu()
        self.expects_relu = True
        return self

    def search_form(self):
        self.first.lean = self.second.lean = True
        return self.share_relu()


class Identity(nn.Module):
    """skip_connect at stride 1."""

    expects_relu = False

    def forward(self, x, scale=None):
        return x if scale is None else x * scale

    def search_form(self):
        return self


class FactorizedReduce(nn.Module):
    """Halve H and W with two 1x1 stride-2 convs, the second shifted by one pixel."""

    expects_relu = False
    drop_in_place = True

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        assert C_out % 2 == 0, "FactorizedReduce needs an even number of output channels"
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = batch_norm(C_out, affine)

    def forward(self, x, scale=None):
        x = self.relu(x)
        # (B, C_out, H/2, W/2): even pixels through conv_1, odd ones through conv_2.
        return normalize(self.bn, torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1), scale)

    share_relu = search_form = DilConv.share_relu  # the search form: shared ReLU, `op(x, scale)`

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
    """The search form of `PoolThenBN`: lean max pooling, the mixing weight folded into the BatchNorm."""

    expects_relu = False

    def __init__(self, kind, C, stride):
        super().__init__()
        self.pool = LeanMaxPool(3, stride, 1) if kind == "max" else make_pool(kind, stride)
        self.bn = MixBatchNorm(C)

    def forward(self, x, scale=None):
        return self.bn(self.pool(x), scale)


def make_pool(kind, stride):
    """3x3 pooling; average pooling ignores the padding, as in DARTS."""
    if kind == "max":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


class PoolThenBN(nn.Sequential):
    """3x3 pooling (`[0]`) followed by an affine-free BatchNorm (`[1]`), as every pool of the paper's cells."""

    drop_in_place = True

    def __init__(self, kind, C, stride):
        super().__init__(make_pool(kind, stride), nn.BatchNorm2d(C, affine=False))
        self.kind, self.stride = kind, stride

    def search_form(self):
        return PoolBN(self.kind, self[1].num_features, self.stride)


class Scaled(nn.Module):
    """A search cell's form of an op without `search_form`: `Scaled(op)(x, scale)` = `scale * op(x)`."""

    expects_relu = False

    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x, scale=None):
        out = self.op(x)
        return out if scale is None else scale * out


# name -> constructor(C, stride, affine) (search version: `search_op`). Pools are followed by an affine-free BatchNorm
# in both networks (the paper's one op table); dilated convs pad so that the size only follows the stride.
OPS = {
    "max_pool_3x3": lambda C, stride, affine: PoolThenBN("max", C, stride),
    "avg_pool_3x3": lambda C, stride, affine: PoolThenBN("avg", C, stride),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
}


def search_op(name, C, stride):
    """The search-cell version of `OPS[name](C, stride, False)`, called as `op(x, scale)` = `scale * OPS-op(x)`: its
    `search_form()` (lean parts on, until the supernet's `use_lean_ops(False)`), or else the op in `Scaled`."""
    op = OPS[name](C, stride, False)
    return op.search_form() if hasattr(op, "search_form") else Scaled(op)
