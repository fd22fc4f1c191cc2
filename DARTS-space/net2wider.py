"""net2wider for the DARTS-space ops: grow a conv or a BatchNorm to more channels, copying old ones.

Progressive search (DrNAS section 3.3) grows every op between stages from C/k_old to
C/k_new channels. An `index` (length C_new, starting with `arange(C_old)`, `grow_index`)
names the old channel each new one copies. Depthwise convs grow their groups, dense convs
copy output channels and split the weight of a replicated input channel among its copies
(Chen et al., Net2Net), BatchNorm copies its statistics. Each widening appends `Moved`
records (old parameter, new parameter, plan) so that the optimiser's momentum can follow
with `expand`. Not a script.
"""

from collections import namedtuple

import torch
import torch.nn as nn

from lean_ops import batch_norm

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
