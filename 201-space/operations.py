"""Operations of the NAS-Bench-201 space and the residual block between its stages.

`OPS[name](C_in, C_out, stride, affine)` builds one candidate op, a plain `nn.Module`; with its name in
`genotypes.PRIMITIVES` that is all a new op needs (net2wider widens its convs and BatchNorms). Search cells use
`affine=False` BatchNorm, as the paper's code; `model.py` affine. Optional overrides, used where present:
- `forward_scaled(x, x_relu, scale)` = `scale * op(x)` given the node's shared `relu(x)`: the weight rides on the
  BatchNorm (or the pooling kernel), so a search cell keeps about half the activations;
- `adds_nothing = True` (the zero op, `none`): cells skip it;
- `widen(index, moved, generator)`: grows to the channels `index` (old params into `moved`), returns its outputs' index.
"""

import torch.nn as nn
import torch.nn.functional as F


class ReLUConvBN(nn.Module):
    """ReLU -> Conv -> BatchNorm (NAS-Bench-201's `nor_conv_*`)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        conv = nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.op = nn.Sequential(nn.ReLU(inplace=False), conv, nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)

    def forward_scaled(self, x, x_relu, scale):
        """`scale * self(x)`, the weight riding on the BatchNorm (same statistics): no ReLU or BN output kept per op."""
        bn, x = self.op[2], self.op[1](x_relu)
        weight = scale.expand(x.size(1)).contiguous() if bn.weight is None else bn.weight * scale
        bias = None if bn.bias is None else bn.bias * scale
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
        # Running statistics are read in eval mode and updated in train mode when tracked.
        mean, var = (bn.running_mean, bn.running_var) if not bn.training or bn.track_running_stats else (None, None)
        return F.batch_norm(x, mean, var, weight, bias, bn.training or bn.running_mean is None, bn.momentum, bn.eps)


def avg_pool_3x3(x, stride, scale=None):
    """`F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)` (whose CPU kernel is ~6x slower) as a depthwise conv;
    a `scale` multiplies the kernel: `scale * pool(x)` keeps no output for backward."""
    C, H, W = x.shape[1:]
    ones = x.new_ones(1, 1, 3, 3)
    counts = F.conv2d(x.new_ones(1, 1, H, W), ones, stride=stride, padding=1)  # (1, 1, H', W')
    # contiguous(): convolution kernels read a stride-0 (expanded) weight wrongly in backward.
    kernel = (ones if scale is None else ones * scale).expand(C, 1, 3, 3).contiguous()
    return F.conv2d(x, kernel, stride=stride, padding=1, groups=C) / counts


class Pooling(nn.Module):
    """3x3 average pooling, with a 1x1 ReLUConvBN first when the channel count changes."""

    def __init__(self, C_in, C_out, stride, affine=True):
        super().__init__()
        self.preprocess = None if C_in == C_out else ReLUConvBN(C_in, C_out, 1, 1, 0, affine)
        self.stride = stride

    def forward(self, x):
        return avg_pool_3x3(x if self.preprocess is None else self.preprocess(x), self.stride)

    def forward_scaled(self, x, x_relu, scale):
        """`scale * self(x)` (search cells, where C_in == C_out)."""
        return avg_pool_3x3(x, self.stride, scale)


class Identity(nn.Module):
    """`skip_connect` inside a cell (stride 1, same channels)."""

    def forward(self, x):
        return x

    def forward_scaled(self, x, x_relu, scale):
        return scale * x


class Zero(nn.Module):
    """`none`: the edge is absent. Cells skip it outright (`adds_nothing`: its output is 0)."""

    adds_nothing = True

    def __init__(self, C_out, stride):
        super().__init__()
        self.C_out, self.stride = C_out, stride

    def forward(self, x):
        out = x[:, :, :: self.stride, :: self.stride]
        if out.size(1) != self.C_out:
            out = out.new_zeros(out.size(0), self.C_out, out.size(2), out.size(3))
        return out.mul(0.0)

    def widen(self, index, moved, generator=None):
        self.C_out = len(index)
        return index


OPS = {
    "none": lambda C_in, C_out, stride, affine: Zero(C_out, stride),
    "skip_connect": lambda C_in, C_out, stride, affine: Identity(),
    "nor_conv_1x1": lambda C_in, C_out, stride, affine: ReLUConvBN(C_in, C_out, 1, stride, 0, affine),
    "nor_conv_3x3": lambda C_in, C_out, stride, affine: ReLUConvBN(C_in, C_out, 3, stride, 1, affine),
    "avg_pool_3x3": lambda C_in, C_out, stride, affine: Pooling(C_in, C_out, stride, affine),
}


class ResNetBasicBlock(nn.Module):
    """Residual reduction block between stages (stride 2): two 3x3 ReLUConvBN, avg-pool + 1x1 shortcut."""

    def __init__(self, C_in, C_out):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        pool = nn.AvgPool2d(kernel_size=2, stride=2, padding=0)
        self.downsample = nn.Sequential(pool, nn.Conv2d(C_in, C_out, kernel_size=1, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))
