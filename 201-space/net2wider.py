"""net2wider: grow a conv or a BatchNorm to more channels by copying old ones.

Progressive search (DrNAS section 3.3) grows every op between stages from C/k_old to
C/k_new channels. An `index` (length C_new, starting with `arange(C_old)`, `grow_index`)
names the old channel each new one copies. Dense convs copy their output and input
channels, depthwise convs grow their groups, BatchNorm copies its affine weights and
running statistics. Weights are copied, never divided: this follows the paper's code,
whose wider ops concatenate copies, not Net2Net (Chen et al.), which divides the weight of
a replicated input channel among its copies. Each widening appends `Moved` records (old
parameter, new parameter, plan) so that the optimiser's momentum can follow (`carry_momentum`).
The file is the same in both folders (tests/test_utils_copies.py). Not a script.
"""

import copy
from collections import namedtuple

import torch
import torch.nn as nn

# A parameter replaced by widening: `new = expand(old, plan)`; plan = ((dim, index), ...).
Moved = namedtuple("Moved", "old new plan")


def expand(tensor, plan):
    """Apply a widening plan to a tensor (a parameter, or optimiser state shaped like it): a new tensor."""
    # The same plan serves the weight and its SGD momentum buffer, so the momentum of a
    # copied channel is the momentum of the channel it copies.
    for dim, index in plan:
        tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor


def grow_index(c_old, c_new, generator=None):
    """`arange(c_old)` followed by `c_new - c_old` channels drawn at random among them."""
    # Old channels keep their place; each new one replicates a random old one.
    extra = torch.randint(c_old, (c_new - c_old,), generator=generator)
    return torch.cat([torch.arange(c_old), extra])


def widen_conv(conv, in_index, out_index, moved):
    """A copy of `conv` on `len(in_index)` inputs and `len(out_index)` outputs; weights copied."""
    # weight: (C_out, C_in / groups, kh, kw). A depthwise filter sees only its own channel:
    # it follows its channel, and the groups grow with the channels.
    depthwise = conv.groups > 1
    if depthwise:
        assert conv.groups == conv.in_channels == conv.out_channels and torch.equal(in_index, out_index)
        plan = ((0, out_index),)
    else:
        plan = ((0, out_index), (1, in_index))
    new = nn.Conv2d(
        len(in_index),
        len(out_index),
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups=len(out_index) if depthwise else 1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    ).train(conv.training)
    with torch.no_grad():
        new.weight.copy_(expand(conv.weight, plan))
    moved.append(Moved(conv.weight, new.weight, plan))
    if conv.bias is not None:
        with torch.no_grad():
            new.bias.copy_(expand(conv.bias, plan[:1]))
        moved.append(Moved(conv.bias, new.bias, plan[:1]))
    return new


def widen_bn(bn, index, moved):
    """A copy of `bn` on `len(index)` channels: affine weights and running statistics copied."""
    # A deep copy keeps the class and every setting of `bn` (201: nn.BatchNorm2d; DARTS
    # search cells: lean_ops.MixBatchNorm, which mixes for free), its mode, device and
    # num_batches_tracked; only the per-channel tensors are replaced.
    new = copy.deepcopy(bn)
    new.num_features = len(index)
    plan = ((0, index),)
    for name in ("running_mean", "running_var"):
        if getattr(bn, name) is not None:
            setattr(new, name, expand(getattr(bn, name), plan))
    for name in ("weight", "bias"):
        if getattr(bn, name) is not None:
            old = getattr(bn, name)
            setattr(new, name, nn.Parameter(expand(old.detach(), plan), requires_grad=old.requires_grad))
            moved.append(Moved(old, getattr(new, name), plan))
    return new


def carry_momentum(old, new, moved):
    """Give the optimiser `new` (over the widened network) the state of `old` (before the widening).

    Parameters that stayed keep their state; widened ones (`moved`) get their momentum buffer
    expanded with their own plan, so a copied channel carries the momentum of the channel it
    copies; the state of pruned ops is dropped. The state is filled in parameter order, as a
    resumed optimiser's is.
    """
    widened = {m.new: m for m in moved}
    for group in new.param_groups:
        for p in group["params"]:
            if p in old.state:
                new.state[p] = old.state[p]
            elif p in widened:
                buf = old.state.get(widened[p].old, {}).get("momentum_buffer")
                if buf is not None:
                    new.state[p] = {"momentum_buffer": expand(buf, widened[p].plan)}
