"""The evaluation networks of the DARTS space: a searched cell stacked into a full network.

`NetworkCIFAR` (32x32 inputs, 20 cells at C=36 in the paper) and `NetworkImageNet` (224x224 inputs, 14 cells at
C=48) are built from a `genotypes.Genotype` and return `(logits, logits_aux)`; `logits_aux` is `None` unless built
with `auxiliary=True` and in training mode.

    python -c "import model as m, genotypes as g; print(m.param_count(m.NetworkCIFAR(36, 10, 20, 0, g.DrNAS_cifar10)))"
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from runkit.budget import KINDS, CostModel, count

from genotypes import EDGES, PRIMITIVES, Genotype
from operations import OPS, FactorizedReduce, Identity, ReLUConvBN


def drop_path(x, drop_prob, in_place=True):
    """Zero each sample of `x` with probability `drop_prob`, scaling survivors by 1/(1-p). In place (`drop_in_place`
    ops end in a BatchNorm, whose output no backward reads), no copy is kept per edge: a sixth of the memory."""
    keep = 1.0 - drop_prob  # a float, or a 0-dim tensor (the network's, so a compiled graph reads its value)
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)  # (B, 1, 1, 1)
    return x.div_(keep).mul_(mask) if in_place else x.div(keep).mul(mask)


class Cell(nn.Module):
    """One cell: 2 inputs, `len(genotype.normal) // 2` nodes, each the sum of two ops."""

    def __init__(self, genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        # After a reduction cell, s0 is at twice our resolution: a factorized reduce matches it.
        self.preprocess0 = FactorizedReduce(C_prev_prev, C) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=True)
        edges = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.reduction, self.steps, self.concat, self.multiplier = reduction, len(edges) // 2, list(concat), len(concat)
        self.genotype_edges = list(edges)
        self.indices = [index for _, index in edges]
        self.ops = nn.ModuleList()
        # Drop path skips identities (as DARTS). The cell rectifies each state once for the ops that `share_relu`.
        for name, index in edges:
            op = self.make_op(name, C, reduction, index)
            self.ops.append(op.share_relu() if hasattr(op, "share_relu") else op)
        self.is_identity = [isinstance(op, (Identity, nn.Identity)) for op in self.ops]
        self.drop_in_place = [getattr(op, "drop_in_place", False) for op in self.ops]  # see drop_path
        self.takes_relu = [getattr(op, "expects_relu", False) for op in self.ops]  # pools take the raw state

    @staticmethod
    def make_op(name, C, reduction, index):
        """The op `name` on an edge from state `index`: only edges from the two cell inputs reduce (stride 2)."""
        return OPS[name](C, 2 if reduction and index < 2 else 1, True)

    def forward(self, s0, s1, drop_prob=None):
        # drop_prob: None (no drop path), or the probability as a 0-dim tensor
        states = [self.preprocess0(s0), self.preprocess1(s1)]  # each (B, C, H, W)
        rectified = {}  # state index -> relu(state), computed on first use
        for node in range(self.steps):
            total = 0
            for edge in (2 * node, 2 * node + 1):
                index = self.indices[edge]
                x = states[index]
                if self.takes_relu[edge]:
                    x = rectified[index] = rectified[index] if index in rectified else F.relu(x)
                h = self.ops[edge](x)
                if drop_prob is not None and not self.is_identity[edge]:
                    h = drop_path(h, drop_prob, self.drop_in_place[edge])
                total = total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)  # (B, multiplier * C, H, W)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier after the second reduction cell: CIFAR (`pool_stride=3`, 8x8 input) or ImageNet
    (`pool_stride=2`, 7x7 input, no BatchNorm after the 2x2 conv, as the DARTS/DrNAS ImageNet head)."""

    def __init__(self, C, num_classes, pool_stride, final_bn):
        super().__init__()
        # The first ReLU is not in place: its input is the main path's, read again by later cells. Pool -> 2x2, then
        # the 2x2 conv -> 1x1 (`forward` pools larger inputs down to 1x1).
        layers = [nn.ReLU(inplace=False), nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False)]
        layers += [nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(128, 768, 2, bias=False)] + ([nn.BatchNorm2d(768)] if final_bn else [])
        self.features = nn.Sequential(*layers, nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))  # (B, 768) -> classes


class _Network(nn.Module):
    """The stack of cells shared by both networks (subclasses provide the stem). `drop_path_prob` (set every epoch)
    is a float for logs and a 0-dim buffer for the forward pass, so that `torch.compile` does not compile again."""

    def __init__(self):
        super().__init__()
        self.register_buffer("drop_prob", torch.zeros(()), persistent=False)
        self.drop_path_prob = 0.0

    @property
    def drop_path_prob(self):
        return self._drop_path_prob

    @drop_path_prob.setter
    def drop_path_prob(self, p):
        self._drop_path_prob, self._drop_path_on = float(p), p > 0
        self.drop_prob.fill_(p)

    def _build_cells(self, genotype, C_prev_prev, C_prev, C_curr, layers, reduction_prev, num_classes, aux_shape):
        # aux_shape: (pool stride, final BatchNorm) of the auxiliary head (see AuxiliaryHead), None without one.
        self.cells = nn.ModuleList()
        self.aux_layer = 2 * layers // 3
        C_aux = None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)  # double the channels and halve H, W
            C_curr *= 2 if reduction else 1
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev, C_prev_prev, C_prev = reduction, C_prev, cell.multiplier * C_curr
            if i == self.aux_layer:
                C_aux = C_prev
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes, *aux_shape) if aux_shape else None
        self.classifier = nn.Linear(C_prev, num_classes)

    def _forward_cells(self, s0, s1):
        logits_aux = None
        drop_prob = self.drop_prob if self.training and self._drop_path_on else None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop_prob)
            if i == self.aux_layer and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1)), logits_aux  # pooled to (B, C_prev)


class NetworkCIFAR(_Network):
    """Evaluation network for 32x32 images: stem (3C channels), `layers` cells, classifier."""

    def __init__(self, C, num_classes, layers, auxiliary, genotype):
        super().__init__()
        C_curr = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        self._build_cells(genotype, C_curr, C_curr, C, layers, False, num_classes, (3, True) if auxiliary else None)

    def forward(self, x):
        s = self.stem(x)  # (B, 3C, 32, 32)
        return self._forward_cells(s, s)


class NetworkImageNet(_Network):
    """Evaluation network for 224x224 images: two stride-4/stride-2 stems, cells, classifier."""

    def __init__(self, C, num_classes, layers, auxiliary, genotype):
        super().__init__()

        # Two stems bring 224x224 down to 28x28 (/8) before the first cell: each a stride-2 3x3 conv and BatchNorm.
        def conv_bn(C_in, C_out):
            return nn.Conv2d(C_in, C_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C_out)

        self.stem0 = nn.Sequential(*conv_bn(3, C // 2), nn.ReLU(inplace=True), *conv_bn(C // 2, C))
        self.stem1 = nn.Sequential(nn.ReLU(inplace=True), *conv_bn(C, C))
        # stem0 is at twice stem1's resolution, so the first cell reduces its s0 input.
        self._build_cells(genotype, C, C, C, layers, True, num_classes, (2, False) if auxiliary else None)

    def forward(self, x):
        s0 = self.stem0(x)  # (B, C, H/4, W/4)
        s1 = self.stem1(s0)  # (B, C, H/8, W/8)
        return self._forward_cells(s0, s1)


def param_count(model):
    """Number of parameters without the auxiliary head (the figure papers report)."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("auxiliary_head."))


def cost_model(num_classes, image_size, C=None, layers=None, imagenet=False):
    """The `budget.CostModel` of train.py's network (`imagenet`: train_imagenet.py's) for `num_classes` and
    `image_size` px inputs, without the auxiliary head; C and layers default to theirs. Each op on each edge is counted
    as the module its cells build, summed over the cells of its type; rows are the normal `EDGES`, then the reduction
    ones; the derived cell keeps 2 of each node's incoming edges."""
    C, layers = C or (48 if imagenet else 36), layers or (14 if imagenet else 20)
    nodes = sorted({node for node, _ in EDGES})
    probe_edges = [(PRIMITIVES[0], index) for index in (0, 1)] * len(nodes)  # every node reads states 0 and 1
    concat = [node + 2 for node in nodes]
    cells = []  # per cell: (reduction, (C, H, W) of its input states, of its node states)

    def record(op, inputs, output, cell):
        cells.append((cell.reduction, tuple(inputs[0].shape[1:]), tuple(output.shape[1:])))

    with torch.random.fork_rng(devices=[]):  # building modules draws weights: the caller's seed stays untouched
        network = NetworkImageNet if imagenet else NetworkCIFAR
        net = network(C, num_classes, layers, False, Genotype(probe_edges, concat, probe_edges, concat))
        # The probe's first op reads input state 0 and writes node 0: both shapes of its cell (`net` is thrown away).
        for cell in net.cells:
            cell.ops[0].register_forward_hook(functools.partial(record, cell=cell))
        total = count(net, (3, image_size, image_size))
        op_count = functools.cache(
            lambda name, reduction, index, shape: count(Cell.make_op(name, shape[0], reduction, index), shape)
        )
        edges = {kind: [[0] * len(PRIMITIVES) for _ in range(2 * len(EDGES))] for kind in KINDS}
        for reduction, inputs, states in cells:
            for row, (_, index) in enumerate(EDGES, start=reduction * len(EDGES)):
                for op, name in enumerate(PRIMITIVES):
                    counted = op_count(name, reduction, min(index, 2), inputs if index < 2 else states)
                    for kind in KINDS:
                        edges[kind][row][op] += counted[kind]
    probed = [t * len(EDGES) + row for t in (0, 1) for row, (_, index) in enumerate(EDGES) if index < 2]
    fixed = {kind: total[kind] - sum(edges[kind][row][0] for row in probed) for kind in KINDS}
    groups = [
        ([t * len(EDGES) + r for r, (n, _) in enumerate(EDGES) if n == node], 2) for t in (0, 1) for node in nodes
    ]
    return CostModel(fixed, edges, groups)


def cost_rows(genotype):
    """The cell's edges as (row: normal `EDGES`, then reduction ones; index into PRIMITIVES), for `CostModel.of`."""
    cells = (genotype.normal, genotype.reduce)
    return [
        (t * len(EDGES) + EDGES.index((k // 2, index)), PRIMITIVES.index(name))
        for t, edges in enumerate(cells)
        for k, (name, index) in enumerate(edges)
    ]
