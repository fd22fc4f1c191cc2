"""The memory-lean parts of the DARTS search ops, and the BatchNorm that mixes for free.

A search step keeps ~100 op activations per cell alive. `MixBatchNorm` folds an edge's mixing weight into the op's
last BatchNorm; `DepthwisePointwise` (the depthwise and 1x1 convs of `DilConv`/`SepConv`, with SepConv's middle
BatchNorm and ReLU) and `LeanMaxPool` keep only their inputs and recompute the rest in the backward pass. Results and
gradients equal the plain ops' (tests/test_darts_search_ops.py; under bf16 autocast, tests/test_amp.py). Not a script.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class MixBatchNorm(nn.BatchNorm2d):
    """Affine-free BatchNorm whose `bn(x, scale)` equals `scale * bn(x)`: the scalar as the affine weight saves the
    activation the product would keep, one per op (a large share of the search's memory)."""

    def __init__(self, num_features):
        super().__init__(num_features, affine=False)

    def forward(self, x, scale=None):
        if scale is None:
            return super().forward(x)
        if self.training:
            self.num_batches_tracked.add_(1)
        weight = scale.expand(self.num_features).contiguous()
        args = self.running_mean, self.running_var, weight, None, self.training, self.momentum, self.eps
        return F.batch_norm(x, *args)


def batch_norm(C, affine):
    """Affine BatchNorm (evaluation network) or the scalable affine-free one (search cells)."""
    return nn.BatchNorm2d(C) if affine else MixBatchNorm(C)


def normalize(bn, x, scale):
    """`bn(x)`, times `scale` when given (only the search's MixBatchNorm receives one)."""
    return bn(x) if scale is None else bn(x, scale)


class DepthwisePointwise(torch.autograd.Function):
    """[BatchNorm -> ReLU ->] depthwise conv -> 1x1 conv, keeping only its input for backward: the depthwise output
    is recomputed when the 1x1 weights need a gradient (never in an architecture step), and so is the rectified
    output of `bn` (the affine-free BatchNorm ending a SepConv's first half)."""

    @staticmethod
    def forward(ctx, x, w_dw, w_pw, stride, padding, dilation, bn):
        # Under autocast (--amp) the convolutions run in its dtype; the weights are cast once and saved so for backward.
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        ctx.config, ctx.weight_dtype = (stride, padding, dilation), w_dw.dtype
        w_dw, w_pw = w_dw.to(dtype), w_pw.to(dtype)
        mean = invstd = x.new_empty(0, dtype=torch.float32)
        r, ctx.bn = x, None if bn is None else (bn.training, bn.eps)
        if bn is not None:
            if bn.training:  # batch statistics; updates the running ones like nn.BatchNorm2d
                statistics = bn.running_mean, bn.running_var, True, bn.momentum, bn.eps
                y, mean, invstd = torch.ops.aten.native_batch_norm(x, None, None, *statistics)
            else:
                mean, invstd = bn.running_mean.clone(), (bn.running_var + bn.eps).rsqrt()
                y = (x - mean[:, None, None]) * invstd[:, None, None]
            r = F.relu(y)
        ctx.save_for_backward(x, w_dw, w_pw, mean, invstd)
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
        pointwise = [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [need_x or need_dw, need_pw, False]
        grad_d, grad_pw, _ = torch.ops.aten.convolution_backward(grad, d, w_pw, None, *pointwise)
        grad_x = grad_dw = None
        if need_x or need_dw:
            config = [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], x.shape[1], [need_x, need_dw, False]
            grad_x, grad_dw, _ = torch.ops.aten.convolution_backward(grad_d, r, w_dw, None, *config)
        if need_x and ctx.bn is not None:
            training, eps = ctx.bn
            grad_y = (grad_x * (y > 0)).to(x.dtype)
            if training:
                saved = None, None, None, mean, invstd, True, eps, [True, False, False]
                grad_x = torch.ops.aten.native_batch_norm_backward(grad_y, x, *saved)[0]
            else:
                grad_x = grad_y * invstd[:, None, None]
        # Gradients in the dtypes of the inputs (fp32 weights under autocast).
        dtypes = (x.dtype, ctx.weight_dtype, ctx.weight_dtype)
        return *(None if g is None else g.to(d) for g, d in zip((grad_x, grad_dw, grad_pw), dtypes)), *[None] * 4


class _LeanMaxPool(torch.autograd.Function):
    """Max pooling that keeps only its input for the backward pass, not the argmax indices (int64, twice the output's
    size: about a tenth of the search's activation memory), recomputed from the input, which the search keeps anyway."""

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
        size = [kernel] * 2, [stride] * 2, [padding] * 2, [1, 1], False
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *size, indices), None, None, None


class LeanMaxPool(nn.Module):
    """`nn.MaxPool2d(kernel, stride, padding)` with the memory of `_LeanMaxPool` (plain when `lean` is off)."""

    lean = True

    def __init__(self, kernel, stride, padding=0):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x):
        config = self.kernel, self.stride, self.padding
        return _LeanMaxPool.apply(x, *config) if self.lean else F.max_pool2d(x, *config)
