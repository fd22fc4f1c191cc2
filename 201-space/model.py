"""The NAS-Bench-201 evaluation network: one fixed cell, stacked as in the benchmark.

stem (3x3 conv + BN) -> N cells at C -> residual reduction -> N cells at 2C ->
residual reduction -> N cells at 4C -> BN + ReLU -> global average pool -> linear.
Ops use affine BatchNorm with running statistics, so the parameter count equals
NAS-Bench-201's: the all-`nor_conv_3x3` cell at C=16, N=5 with 10 classes has
1,531,546 parameters (the benchmark's 1.531546 MB) and 220.11969 MFLOPs. Used by
`train.py`:

    python train.py --arch DrNAS --dataset cifar10
"""

import torch
import torch.nn as nn

from operations import OPS, ResNetBasicBlock


class InferCell(nn.Module):
    """A NAS-Bench-201 cell with one op per edge; node i sums its ops on nodes j < i."""

    def __init__(self, structure, C):
        super().__init__()
        self.structure = structure
        # An op that `adds_nothing` (the zero op) contributes nothing, so its edge gets no module at all.
        self.links = []  # (i, j) of every edge with an op, node by node
        edges = {}
        for i, node in enumerate(structure.nodes, start=1):
            for name, j in node:
                op = OPS[name](C, C, 1, True)
                if not getattr(op, "adds_nothing", False):
                    self.links.append((i, j))
                    edges[f"{i}_from_{j}"] = op
        self.edges = nn.ModuleDict(edges)

    def forward(self, x):
        nodes = [x]  # node 0 is the cell input, (B, C, H, W)
        for i in range(1, len(self.structure.nodes) + 1):
            terms = [self.edges[f"{i}_from_{j}"](nodes[j]) for ii, j in self.links if ii == i]
            # A node whose edges all add nothing is zero, as NAS-Bench-201's Zero op gives.
            nodes.append(sum(terms[1:], terms[0]) if terms else torch.zeros_like(x))
        return nodes[-1]


class Network(nn.Module):
    """NAS-Bench-201's evaluation network (its `TinyNetwork` of inference cells)."""

    def __init__(self, C, N, structure, num_classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        # N cells per stage; stages at C, 2C, 4C joined by stride-2 residual blocks.
        channels = [C] * N + [2 * C] + [2 * C] * N + [4 * C] + [4 * C] * N
        reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
        cells = []
        C_prev = C
        for C_curr, reduction in zip(channels, reductions):
            cells.append(ResNetBasicBlock(C_prev, C_curr, 2) if reduction else InferCell(structure, C_curr))
            C_prev = C_curr
        self.cells = nn.Sequential(*cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        out = self.lastact(self.cells(self.stem(x)))  # (B, 4C, H/4, W/4)
        out = self.global_pooling(out).flatten(1)  # (B, 4C)
        return self.classifier(out)


def count_flops(model, input_size):
    """Multiply-adds (+ bias adds) of the convolutions and linear layers for one input.

    Counted as NAS-Bench-201 counts its FLOPs: the all-`nor_conv_3x3` cell at C=16, N=5
    on a 3x32x32 input with 10 classes gives 220,119,690 (the benchmark's 220.11969 M).
    """
    total = [0]

    def conv_hook(module, inputs, output):
        # Each output element costs (C_in / groups) * kh * kw multiply-adds.
        kh, kw = module.kernel_size
        total[0] += output.numel() * ((module.in_channels // module.groups) * kh * kw + (module.bias is not None))

    def linear_hook(module, inputs, output):
        total[0] += output.numel() * (module.in_features + (module.bias is not None))

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total[0]
