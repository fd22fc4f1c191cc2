"""net2wider: grow a conv or a BatchNorm to more channels by copying old ones.

Progressive search (DrNAS section 3.3) grows every op between stages from C/k_old to
C/k_new channels. An `index` (length C_new, starting with `arange(C_old)`, `grow_index`)
names the old channel each new one copies. Dense convs copy their output and input
channels, depthwise convs grow their groups, BatchNorm copies its affine weights and
running statistics. Weights are copied, never divided: this follows the paper's code,
whose wider ops concatenate copies, not Net2Net (Chen et al.), which divides the weight of
a replicated input channel among its copies. Each widening appends `Moved` records (old
parameter, new parameter, plan) so that the optimiser's momentum can follow (`carry_momentum`).
`widen_op` widens one candidate op: by its own `widen(index, moved, generator)` when it has one
(the built-in ops), else by walking its layers (`widen_layers`), so a plain op made of convs and
BatchNorms needs nothing more. The file is the same in both folders (tests/test_utils_copies.py). Not a script.
"""

import copy
from collections import namedtuple

import torch
import torch.nn as nn

from .utils import UserError

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


def widen_op(op, index, moved, generator=None):
    """net2wider of a candidate op on input channels `index`; returns its output channels' index.

    An op with a `widen(index, moved, generator)` method of its own (an override: the built-in ops
    have one) is widened by it; any other op by `widen_layers`.
    """
    widen = getattr(op, "widen", None)
    if widen is not None:
        return widen(index, moved, generator)
    return widen_layers(op, index, moved, generator)


def widen_layers(op, index, moved, generator=None):
    """net2wider of an op whose layers are applied one after the other, in the order they are registered
    (e.g. an nn.Sequential of ReLU, Conv2d and BatchNorm2d); the layers are replaced in place.

    `index` (from `grow_index`: it starts with `arange(C_old)`) maps the new input channels to old ones.
    A dense conv widens its inputs by it, and its outputs by the same map when it is square, else in
    proportion with new channels drawn by `grow_index`; a depthwise conv grows its groups with its channels;
    a BatchNorm follows the channels it normalises. Layers without tensors (ReLU, pooling, ...) act per
    channel and stay. Anything else (a Linear, a grouped conv, a layer that does not take the previous
    layer's channels, tensors held outside a Conv2d or BatchNorm2d) is refused, no guess: a one-line
    UserError stops the run, whose last checkpoint is kept.
    Returns the output channels' index.
    """
    width = int(index.max()) + 1  # the channels the layer at hand reads, before widening
    for parent, name, layer in _layers(op):
        where = f"net2wider: {type(op).__name__} layer {name} ({type(layer).__name__})"
        channels = layer.in_channels if isinstance(layer, nn.Conv2d) else getattr(layer, "num_features", width)
        if channels != width:
            raise UserError(f"{where} reads {channels} channels, not the {width} before it: not a chain of layers")
        if isinstance(layer, nn.Conv2d):
            if layer.groups == 1:
                out_index = (
                    index
                    if layer.out_channels == layer.in_channels
                    else grow_index(layer.out_channels, layer.out_channels * len(index) // width, generator)
                )
            elif layer.groups == layer.in_channels == layer.out_channels:  # depthwise: one filter per channel
                out_index = index
            else:
                raise UserError(f"{where} is a grouped conv; give the op a widen method of its own")
            setattr(parent, name, widen_conv(layer, index, out_index, moved))
            index, width = out_index, layer.out_channels
        elif isinstance(layer, nn.BatchNorm2d):
            setattr(parent, name, widen_bn(layer, index, moved))
        elif _holds_tensors(layer):
            raise UserError(f"{where} holds tensors but is no Conv2d or BatchNorm2d; give the op a widen method")
    return index


def _holds_tensors(module):
    """Whether `module` has parameters or buffers of its own (not its children's)."""
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


def _layers(module):
    """(parent, name, layer) of every leaf module under `module`, in registration order."""
    if _holds_tensors(module):
        raise UserError(
            f"net2wider: {type(module).__name__} holds tensors of its own; make it an nn.Sequential of "
            "Conv2d and BatchNorm2d layers, or give it a widen method"
        )
    for name, child in list(module.named_children()):
        if next(child.children(), None) is None:
            yield module, name, child
        else:
            yield from _layers(child)


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
