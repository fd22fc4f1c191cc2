"""The NAS-Bench-201 supernet searched by DrNAS (and DARTS, SNAS, GDAS for comparison).

`Network`: stem -> 3 stages of N search cells (C, 2C, 4C) joined by residual reduction blocks -> BN + ReLU -> pool ->
classifier. Each of a cell's 6 edges is a `MixedOp` over its kept ops on `C/k` of its channels (partial channels).
`beta` (6 edges x len(PRIMITIVES)) is one `nn.Parameter` shared by all cells; the `method` (a `SAMPLERS` entry) turns
it into mixing weights. DrNAS (`dirichlet`) draws them for all edges from Dir(elu(beta) + 1) in one reparameterised
call per training forward (paper Eq. 3-4) and uses the mean in evaluation. Pruned ops (host-side `kept`) are deleted.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from runkit.net2wider import grow_index, widen_op

from genotypes import EDGES, PRIMITIVES, Structure
from operations import OPS, ResNetBasicBlock


def concentration(beta):
    """Dirichlet concentration alpha = elu(beta) + 1 > 0 (DrNAS Sec. 3.1)."""
    return F.elu(beta) + 1.0


def dirichlet_sampler(beta, tau, training):
    """DrNAS: one reparameterised draw from Dir(elu(beta) + 1) in training, the Dirichlet mean in eval."""
    alpha = concentration(beta)
    if not training:
        return alpha / alpha.sum(-1, keepdim=True)
    # validate_args=False: the argument checks would read tensor values on the host.
    return torch.distributions.Dirichlet(alpha, validate_args=False).rsample()


# --method: name -> `sampler(beta, tau, training)`, beta over the kept ops (last dim) -> mixing weights of that shape
# (tau: the Gumbel temperature). It runs in every forward: no host read of a tensor value (no .item(), no `if tensor`).
# snas and gdas have no deterministic weights: they draw in evaluation too.
SAMPLERS = {
    "dirichlet": dirichlet_sampler,
    "darts": lambda beta, tau, training: F.softmax(beta, dim=-1),
    "snas": lambda beta, tau, training: F.gumbel_softmax(beta, tau=tau, dim=-1),  # relaxed Gumbel-softmax
    "gdas": lambda beta, tau, training: F.gumbel_softmax(beta, tau=tau, hard=True, dim=-1),  # one-hot, straight-through
}


def gumbel_tau(epoch, epochs, tau_max, tau_min):
    """Gumbel temperature of `epoch` (0-based) of `epochs`: linear from tau_max (first) to tau_min (last epoch)."""
    return tau_max - (tau_max - tau_min) * epoch / max(epochs - 1, 1)


class MixedOp(nn.Module):
    """One edge: sum_o w_o * op_o(x[:, :C/k]) over the kept ops (`forward_scaled`, `adds_nothing`: operations.py),
    bypassed channels concatenated, then shuffled."""

    def __init__(self, C, stride, k, kept):
        super().__init__()
        self.C, self.k, self.stride = C, k, stride
        self.kept = list(kept)  # indices into PRIMITIVES, host data
        self.ops = nn.ModuleList(OPS[PRIMITIVES[i]](C // k, C // k, stride, False) for i in kept)

    def forward(self, x, x_relu, mix):
        # x: (B, C, H, W); x_relu = relu(x) (at least its first C/k channels), one per node; mix: (n_kept,) weights.
        part = self.C // self.k
        x_part, relu_part = (x[:, :part], x_relu[:, :part]) if self.k > 1 else (x, x_relu)
        terms = []  # w_o * op_o(x), in the order of the kept ops
        for op, w in zip(self.ops, mix):
            if getattr(op, "adds_nothing", False):
                continue
            scaled = getattr(op, "forward_scaled", None)  # the op folds its weight in
            terms.append(scaled(x_part, relu_part, w) if scaled is not None else w * op(x_part))
        mixed = sum(terms) if terms else torch.zeros_like(x_part)
        if self.k == 1:
            return mixed
        out = torch.cat([mixed, x[:, part:]], dim=1)  # (B, C, H, W)
        b, c, h, w = out.shape  # channel shuffle (ShuffleNet): interleave the k groups
        return out.view(b, self.k, c // self.k, h, w).transpose(1, 2).reshape(b, c, h, w)

    def prune(self, kept):
        """Keep only the ops `kept` (PRIMITIVES indices); the others are deleted."""
        position = {op_index: i for i, op_index in enumerate(self.kept)}
        self.ops = nn.ModuleList(self.ops[position[i]] for i in kept)
        self.kept = list(kept)

    def widen(self, k, generator, moved):
        """net2wider every op from C/k_old to C/k channels (the same new channels for all)."""
        index = grow_index(self.C // self.k, self.C // k, generator)
        for op in self.ops:
            widen_op(op, index, moved, generator)
        self.k = k


class Cell(nn.Module):
    """NAS-Bench-201 search cell: node i = sum_{j<i} MixedOp_{i,j}(node j), output node 3."""

    def __init__(self, C, k, kept):
        super().__init__()
        self.edges = nn.ModuleList(MixedOp(C, 1, k, ops) for ops in kept)  # stride 1: no reduction in a cell

    def forward(self, x, mix):
        # mix: (6, n_kept) mixing weights, one row per edge in EDGES order.
        nodes, relus = [x], [F.relu(x)]  # one ReLU per node, shared by all the ops that read it
        for i in range(1, 4):
            node = sum(self.edges[e](nodes[j], relus[j], mix[e]) for e, (to, j) in enumerate(EDGES) if to == i)
            nodes.append(node)
            relus.append(F.relu(node) if i < 3 else None)  # the output node feeds no edge
        return nodes[-1]


class Network(nn.Module):
    """The supernet. `arch_parameters()` is `[beta]`; `weights()` is everything else."""

    def __init__(self, C=16, N=5, num_classes=10, k=1, method="dirichlet"):
        super().__init__()
        if method not in SAMPLERS:
            raise ValueError(f"method must be one of {tuple(SAMPLERS)}, not {method!r}")
        if C % k:
            raise ValueError(f"k={k} does not divide the {C} channels of the first stage")
        self.C, self.N, self.num_classes, self.k, self.method = C, N, num_classes, k, method
        self.tau = 10.0  # Gumbel temperature of the sampler (snas, gdas), set each epoch by the search
        self.amp = False  # bf16 autocast of the cells (--amp); the mixing weights stay fp32
        self.kept = [list(range(len(PRIMITIVES))) for _ in EDGES]  # host-side: indices into PRIMITIVES, per edge
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers, C_prev = [], C
        for stage, C_curr in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                layers.append(ResNetBasicBlock(C_prev, C_curr))
            layers += [Cell(C_curr, k, self.kept) for _ in range(N)]
            C_prev = C_curr
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        # DrNAS: beta ~ 1e-3 * N(0, 1), one row per edge, shared by all cells.
        self.beta = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(PRIMITIVES)))
        self._kept_index = {}

    def arch_parameters(self):
        return [self.beta]

    def weights(self):
        return [p for p in self.parameters() if p is not self.beta]

    def search_cells(self):
        return [m for m in self.cells if isinstance(m, Cell)]

    def kept_index(self):
        """(edges, kept) index tensor on beta's device, rebuilt only when `kept` changes."""
        key = (self.beta.device, tuple(map(tuple, self.kept)))
        if key not in self._kept_index:
            self._kept_index = {key: torch.tensor(self.kept, device=self.beta.device)}
        return self._kept_index[key]

    def arch_weights(self):
        """Mixing weights of the kept ops (6, n_kept) for one forward (for the Dirichlet, as drawing all ops, zeroing
        the pruned ones and renormalising)."""
        return SAMPLERS[self.method](self.beta.gather(1, self.kept_index()), self.tau, self.training)

    def kl_regularizer(self):
        """KL(Dir(alpha) || Dir(1)) summed over edges, over the kept ops (DrNAS Eq. 6)."""
        alpha = concentration(self.beta.gather(1, self.kept_index()))
        prior = torch.distributions.Dirichlet(torch.ones_like(alpha), validate_args=False)
        posterior = torch.distributions.Dirichlet(alpha, validate_args=False)
        return torch.distributions.kl_divergence(posterior, prior).sum()

    def expected_cost(self, edge_costs):
        """The cells' cost under the Dirichlet mean of the kept ops: `edge_costs` (edges, ops) weighted and summed."""
        index = self.kept_index()
        alpha = concentration(self.beta.gather(1, index))
        return (alpha / alpha.sum(-1, keepdim=True) * edge_costs.gather(1, index)).sum()

    def compile(self, **kwargs):
        """torch.compile `logits`, one graph for every forward; the draw stays eager fp32, outside any CUDA graph."""
        self.logits = torch.compile(self.logits, **kwargs)

    def forward(self, x, mix=None):
        """Logits for x (B, 3, H, W), mixing weights drawn unless given (6, n_kept)."""
        return self.logits(x, self.arch_weights() if mix is None else mix)

    def logits(self, x, mix):
        """The cells under the mixing weights `mix`; `amp`: bf16 cells, fp32 logits."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            x = self.stem(x)
            for layer in self.cells:
                x = layer(x, mix) if isinstance(layer, Cell) else layer(x)
            x = self.global_pooling(self.lastact(x)).flatten(1)  # (B, 4C)
            logits = self.classifier(x)
        return logits.float() if self.amp else logits  # the loss is taken in fp32

    def genotype(self):
        """Per edge the kept op with the largest beta, as a NAS-Bench-201 `Structure`."""
        beta = self.beta.detach().cpu()
        ops = [PRIMITIVES[max(kept, key=lambda o: beta[e, o].item())] for e, kept in enumerate(self.kept)]
        return Structure.from_edges(ops)

    def arch_values(self):
        """For logs: per edge alpha (dirichlet) or softmax(beta) (other methods) of the kept ops, pruned ops None."""
        rows = []
        for row, kept in zip(self.beta.detach().cpu(), self.kept):
            values = (concentration(row[kept]) if self.method == "dirichlet" else F.softmax(row[kept], dim=0)).tolist()
            rows.append([round(values[kept.index(o)], 4) if o in kept else None for o in range(len(row))])
        return rows

    def prune(self, keep):
        """Keep the `keep` ops with the largest beta on every edge (ties: the earlier in PRIMITIVES); delete the others.
        At initialisation beta is 1e-3 * N(0, 1): the choice is random, fixed by the seed."""
        beta = self.beta.detach().cpu()
        self.set_kept([sorted(sorted(ops, key=lambda o: -beta[e, o].item())[:keep]) for e, ops in enumerate(self.kept)])

    def set_kept(self, kept):
        """Keep the ops `kept[e]` (indices into PRIMITIVES) on edge e of every cell."""
        self.kept = [list(ops) for ops in kept]
        for cell in self.search_cells():
            for e, edge in enumerate(cell.edges):
                edge.prune(self.kept[e])

    def widen(self, k, generator=None):
        """net2wider every edge to C/k channels; returns the `Moved` parameter records."""
        if k >= self.k or self.C % k:
            raise ValueError(f"cannot widen from k={self.k} to k={k}")
        moved = []
        for cell in self.search_cells():
            for edge in cell.edges:
                edge.widen(k, generator, moved)
        self.k = k
        return moved
