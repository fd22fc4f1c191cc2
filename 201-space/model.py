"""The NAS-Bench-201 evaluation network: one fixed cell stacked as in the benchmark (`train.py --arch DrNAS`).

stem -> N cells at C -> residual reduction -> N at 2C -> reduction -> N at 4C -> BN + ReLU -> pool -> linear, with
affine BatchNorm: the all-`nor_conv_3x3` cell at C=16, N=5, 10 classes has NAS-Bench-201's 1,531,546 parameters and
220.11969 MFLOPs.
"""

import functools

import torch
import torch.nn as nn
from runkit.budget import KINDS, CostModel, count

from genotypes import EDGES, PRIMITIVES, Structure
from operations import OPS, ResNetBasicBlock


class InferCell(nn.Module):
    """A NAS-Bench-201 cell with one op per edge; node i sums its ops on nodes j < i."""

    def __init__(self, structure, C):
        super().__init__()
        self.structure = structure
        ops = {(i, j): OPS[name](C, C, 1, True) for i, node in enumerate(structure.nodes, start=1) for name, j in node}
        # An op that `adds_nothing` (the zero op) contributes nothing, so its edge gets no module at all.
        ops = {edge: op for edge, op in ops.items() if not getattr(op, "adds_nothing", False)}
        self.links = list(ops)  # (i, j) of every edge with an op, node by node
        self.edges = nn.ModuleDict({f"{i}_from_{j}": op for (i, j), op in ops.items()})

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
        self.genotype = structure  # the cell, as genotypes.Structure
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        cells = []
        for stage, width in enumerate((C, 2 * C, 4 * C)):  # N cells per stage, joined by stride-2 residual blocks
            if stage:
                cells.append(ResNetBasicBlock(width // 2, width))
            cells += [InferCell(structure, width) for _ in range(N)]
        self.cells = nn.Sequential(*cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(4 * C), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * C, num_classes)

    def forward(self, x):
        out = self.lastact(self.cells(self.stem(x)))  # (B, 4C, H/4, W/4)
        out = self.global_pooling(out).flatten(1)  # (B, 4C)
        return self.classifier(out)


def cost_model(num_classes, image_size, C=16, layers=5):
    """The `budget.CostModel` of this network (train.py's C and layers) for `num_classes` and `image_size` px inputs."""
    with torch.random.fork_rng(devices=[]):  # building modules draws weights: the caller's seed stays untouched
        probe = Network(C, layers, Structure.from_edges([PRIMITIVES[-1]] * len(EDGES)), num_classes)
        shapes = []  # (C, H, W) of every cell's input, which all its ops take
        for cell in probe.cells:
            if isinstance(cell, InferCell):  # the probe is dropped afterwards, hooks and all
                cell.register_forward_pre_hook(lambda _, inputs: shapes.append(inputs[0].shape[1:]))
        total = count(probe, (3, image_size, image_size))
        op_count = functools.cache(lambda name, shape: count(OPS[name](shape[0], shape[0], 1, True), shape))
        per_op = [[op_count(name, tuple(shape)) for shape in shapes] for name in PRIMITIVES]
    edges = {kind: [[sum(c[kind] for c in counts) for counts in per_op] for _ in EDGES] for kind in KINDS}
    fixed = {kind: total[kind] - sum(row[-1] for row in edges[kind]) for kind in KINDS}
    return CostModel(fixed, edges, [([row], 1) for row in range(len(EDGES))])


def cost_rows(genotype):
    """The cell's edges (a `Structure`) as (row of beta, index into PRIMITIVES) pairs, for `CostModel.of`."""
    return [(row, PRIMITIVES.index(name)) for row, name in enumerate(genotype.edge_ops())]
