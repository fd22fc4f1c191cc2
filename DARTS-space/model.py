"""The evaluation networks of the DARTS space: a searched cell stacked into a full network.

`NetworkCIFAR` (32x32 inputs, 20 cells at C=36 in the paper) and `NetworkImageNet`
(224x224 inputs, 14 cells at C=48) are built from a `genotypes.Genotype`. Both return
`(logits, logits_aux)`; `logits_aux` comes from the auxiliary head and is `None` unless
the network was built with `auxiliary=True` and is in training mode.

    python -c "import model as m, genotypes as g; print(m.param_count(m.NetworkCIFAR(36, 10, 20, 0, g.DrNAS_cifar10)))"

Drop path (the `drop_path_prob` attribute, set by the training script each epoch) zeroes
whole samples of every non-identity op's output, on any device.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from operations import OPS, FactorizedReduce, Identity, ReLUConvBN


def drop_path(x, drop_prob, in_place=True):
    """Zero each sample of `x` with probability `drop_prob`, scaling survivors by 1/(1-p).

    The mask is drawn on `x`'s device (the DARTS code builds a `torch.cuda.FloatTensor`
    here and so cannot run without a GPU). In place (the cells do it for ops that are
    `drop_in_place`: the built-in ops end in a BatchNorm, whose fresh output no backward pass
    needs), no activation copy is kept per edge; this saves about a sixth of the training
    memory at C=36, 20 cells. Other ops' outputs (`in_place=False`) are left untouched.
    """
    keep = 1.0 - drop_prob  # a float, or a 0-dim tensor (the network's, so a compiled graph reads its value)
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)  # (B, 1, 1, 1)
    return x.div_(keep).mul_(mask) if in_place else x.div(keep).mul(mask)


class Cell(nn.Module):
    """One cell: 2 inputs, `len(genotype.normal) // 2` nodes, each the sum of two ops."""

    def __init__(self, genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        # The previous-previous output is at twice our resolution when the previous
        # cell reduced; a factorized reduce (two offset stride-2 1x1 convs) matches it.
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=True)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=True)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=True)
        edges = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.reduction = reduction
        self.steps = len(edges) // 2
        self.concat = list(concat)
        self.multiplier = len(self.concat)
        self.genotype_edges = list(edges)
        self.indices = [index for _, index in edges]
        self.ops = nn.ModuleList()
        # Drop path skips identities: dropping a skip connection would cut the
        # gradient highway that the cell relies on (DARTS does the same).
        self.is_identity = []
        self.drop_in_place = []  # whether drop path may scale the op's output in place (see drop_path)
        # The convolutions start with a ReLU of their input. Several edges read the same
        # state, so the cell rectifies each state once and hands the result to every op
        # that can leave its ReLU to the cell (`share_relu`, then `expects_relu`): the same
        # function as DARTS' cell, but one saved activation per state instead of one per op.
        self.takes_relu = []
        for name, index in edges:
            # Only edges from the two cell inputs change resolution in a reduction cell.
            stride = 2 if reduction and index < 2 else 1
            op = OPS[name](C, stride, True)
            share_relu = getattr(op, "share_relu", None)
            if share_relu is not None:
                op = share_relu()
            self.ops.append(op)
            self.is_identity.append(isinstance(op, (Identity, nn.Identity)))
            self.drop_in_place.append(getattr(op, "drop_in_place", False))
            self.takes_relu.append(getattr(op, "expects_relu", False))  # pools take the raw state

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
                    if index not in rectified:
                        rectified[index] = F.relu(x)
                    x = rectified[index]
                h = self.ops[edge](x)
                if drop_prob is not None and not self.is_identity[edge]:
                    h = drop_path(h, drop_prob, self.drop_in_place[edge])
                total = total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)  # (B, multiplier * C, H, W)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier on the feature map after the second reduction cell.

    CIFAR (`pool_stride=3`, 8x8 input) and ImageNet (`pool_stride=2`, 7x7 input) differ
    only in the pooling stride and in the BatchNorm after the 2x2 conv, which the
    DARTS/DrNAS ImageNet head leaves out (the published ImageNet numbers were trained so).
    """

    def __init__(self, C, num_classes, pool_stride, final_bn):
        super().__init__()
        layers = [
            nn.ReLU(inplace=False),  # the main path's feature map, read again by later cells
            nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),  # -> 2x2
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),  # 2x2 -> 1x1
        ]
        layers += [nn.BatchNorm2d(768)] if final_bn else []
        self.features = nn.Sequential(*layers, nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.features(x)
        # A no-op at the design sizes (1x1 already); keeps larger inputs from failing.
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 768)
        return self.classifier(x)


class _Network(nn.Module):
    """The stack of cells shared by both networks; subclasses provide the stem.

    `drop_path_prob` (set every epoch) is kept as a float for logs and as a 0-dim buffer
    that the forward pass reads, so that `torch.compile` neither guards on the value
    nor compiles again each epoch; drop path runs in training mode when it is above 0.
    """

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
        # aux_shape: (pool stride, final BatchNorm) of the auxiliary head, see AuxiliaryHead.
        self.cells = nn.ModuleList()
        # Reduction cells at 1/3 and 2/3 of the depth double the channels and halve H, W.
        self.reduction_layers = (layers // 3, 2 * layers // 3)
        self.aux_layer = 2 * layers // 3
        C_aux = None
        for i in range(layers):
            reduction = i in self.reduction_layers
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self.aux_layer:
                C_aux = C_prev
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes, *aux_shape) if self.auxiliary else None
        self.classifier = nn.Linear(C_prev, num_classes)

    def _forward_cells(self, s0, s1):
        logits_aux = None
        drop_prob = self.drop_prob if self.training and self._drop_path_on else None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop_prob)
            if i == self.aux_layer and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = F.adaptive_avg_pool2d(s1, 1).flatten(1)  # (B, C_prev)
        return self.classifier(out), logits_aux


class NetworkCIFAR(_Network):
    """Evaluation network for 32x32 images: stem (3C channels), `layers` cells, classifier."""

    def __init__(self, C, num_classes, layers, auxiliary, genotype, stem_multiplier=3):
        super().__init__()
        self.auxiliary = auxiliary
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        self._build_cells(genotype, C_curr, C_curr, C, layers, False, num_classes, (3, True))

    def forward(self, x):
        s = self.stem(x)  # (B, 3C, 32, 32)
        return self._forward_cells(s, s)


class NetworkImageNet(_Network):
    """Evaluation network for 224x224 images: two stride-4/stride-2 stems, cells, classifier."""

    def __init__(self, C, num_classes, layers, auxiliary, genotype):
        super().__init__()
        self.auxiliary = auxiliary
        # Two stems bring 224x224 down to 28x28 before the first cell (/8), so the
        # cells work at the resolutions of the CIFAR network after its first reduction.
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # stem0 is at twice stem1's resolution, so the first cell reduces its s0 input.
        self._build_cells(genotype, C, C, C, layers, True, num_classes, (2, False))

    def forward(self, x):
        s0 = self.stem0(x)  # (B, C, H/4, W/4)
        s1 = self.stem1(s0)  # (B, C, H/8, W/8)
        return self._forward_cells(s0, s1)


def param_count(model):
    """Number of parameters without the auxiliary head (the figure papers report)."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("auxiliary_head."))
