"""net2wider: widen ops between a progressive search's stages, copying channels' weights (undivided, as the paper's
code; Net2Net divides) and their momentum (`Moved`, `carry_momentum`)."""

import copy
from collections import namedtuple

import torch
import torch.nn as nn

from .utils import UserError

# A parameter replaced by widening: `new = expand(old, plan)`; plan = ((dim, index), ...).
Moved = namedtuple("Moved", "old new plan")


def expand(tensor, plan):
    """Apply a widening plan to a tensor (a parameter or its optimiser state: a copy keeps its source's momentum)."""
    for dim, index in plan:
        tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor


def grow_index(c_old, c_new, generator=None):
    """`arange(c_old)` (old channels keep their place) followed by `c_new - c_old` random old channels."""
    extra = torch.randint(c_old, (c_new - c_old,), generator=generator)
    return torch.cat([torch.arange(c_old), extra])


def _widen_parameters(module, new, plans, moved):
    """Give `new` (a copy of `module`) each parameter `name` of `plans` ({name: plan}) expanded, and record it."""
    for name, plan in plans.items():
        old = getattr(module, name)
        if old is not None:
            setattr(new, name, nn.Parameter(expand(old.detach(), plan), requires_grad=old.requires_grad))
            moved.append(Moved(old, getattr(new, name), plan))


def widen_conv(conv, in_index, out_index, moved):
    """A copy of `conv` on `len(in_index)` inputs and `len(out_index)` outputs; a depthwise conv's groups grow."""
    depthwise = conv.groups > 1  # a depthwise filter sees only its own channel, which it follows
    assert not depthwise or (conv.groups == conv.in_channels == conv.out_channels and torch.equal(in_index, out_index))
    plan = ((0, out_index),) if depthwise else ((0, out_index), (1, in_index))
    new = copy.deepcopy(conv)
    new.in_channels, new.out_channels, new.groups = len(in_index), len(out_index), len(out_index) if depthwise else 1
    _widen_parameters(conv, new, {"weight": plan, "bias": plan[:1]}, moved)
    return new


def widen_bn(bn, index, moved):
    """A copy of `bn` (its class, settings, mode and device kept) on `len(index)` channels, tensors copied."""
    new, plan = copy.deepcopy(bn), ((0, index),)
    new.num_features = len(index)
    for name in ("running_mean", "running_var"):
        if getattr(bn, name) is not None:
            setattr(new, name, expand(getattr(bn, name), plan))
    _widen_parameters(bn, new, {"weight": plan, "bias": plan}, moved)
    return new


def widen_op(op, index, moved, generator=None):
    """net2wider of a candidate op on input channels `index` (`grow_index`), in place; returns its output channels'
    index. An op without a `widen(index, moved, generator)` method must be a chain of convs and BatchNorms."""
    if getattr(op, "widen", None) is not None:
        return op.widen(index, moved, generator)
    width = int(index.max()) + 1  # the channels the layer at hand reads, before widening
    for parent, name, layer in _layers(op):
        where = f"net2wider: {type(op).__name__} layer {name} ({type(layer).__name__})"
        channels = layer.in_channels if isinstance(layer, nn.Conv2d) else getattr(layer, "num_features", width)
        if channels != width:
            raise UserError(f"{where} reads {channels} channels, not the {width} before it: not a chain of layers")
        if isinstance(layer, nn.Conv2d):
            if layer.groups == 1:
                wider = layer.out_channels * len(index) // width
                out_index = index if layer.out_channels == width else grow_index(layer.out_channels, wider, generator)
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
    return any(True for _ in [*module.parameters(recurse=False), *module.buffers(recurse=False)])


def _layers(module):
    """(parent, name, layer) of every leaf module under `module`, in registration order."""
    if _holds_tensors(module):
        fix = "make it an nn.Sequential of Conv2d and BatchNorm2d layers, or give it a widen method"
        raise UserError(f"net2wider: {type(module).__name__} holds tensors of its own; {fix}")
    for name, child in list(module.named_children()):
        if next(child.children(), None) is None:
            yield module, name, child
        else:
            yield from _layers(child)


def carry_momentum(old, new, moved):
    """Give the optimiser `new` the state of `old`: kept parameters theirs, widened ones (`moved`) their momentum."""
    widened = {m.new: m for m in moved}
    for group in new.param_groups:
        for p in group["params"]:
            if p in old.state:
                new.state[p] = old.state[p]
            elif p in widened:
                buf = old.state.get(widened[p].old, {}).get("momentum_buffer")
                if buf is not None:
                    new.state[p] = {"momentum_buffer": expand(buf, widened[p].plan)}
