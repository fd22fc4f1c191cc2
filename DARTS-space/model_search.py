"""The DARTS-space supernet of DrNAS with partial channels and progressive pruning.

`Network(C, num_classes, layers, k)` stacks search cells (2 inputs, 4 nodes, 14 mixed edges) on the CIFAR stem or,
with `imagenet=True`, three stride-2 convolutions. Each edge is a `MixedOp` over its kept ops, applied to C/k of its
channels. The architecture parameters `beta_normal`, `beta_reduce` (14, len(PRIMITIVES)) become mixing weights by
the `method` of `SAMPLERS` (DrNAS: a draw from Dir(elu(beta) + 1), Eq. 3; its mean in evaluation). Progressive
learning (Sec. 3.3): `prune(n)` keeps the n ops with the largest beta per edge, `widen(k)` grows them to C/k channels.

    python -c "import model_search as m; print(m.Network(16, 10, 8, k=4).genotype())"
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from runkit.net2wider import grow_index, widen_op
from runkit.utils import UserError

from genotypes import PRIMITIVES, Genotype
from lean_ops import LeanMaxPool
from operations import FactorizedReduce, ReLUConvBN, search_op


def concentration(beta):
    """Dirichlet concentration alpha = elu(beta) + 1 > 0 (DrNAS section 3.1)."""
    return F.elu(beta) + 1.0


def dirichlet_sampler(beta, tau, training):
    """DrNAS: one reparameterised draw from Dir(elu(beta) + 1) in training, the Dirichlet mean in eval."""
    alpha = concentration(beta)
    if not training:
        return alpha / alpha.sum(-1, keepdim=True)
    # validate_args=False: the argument checks would read tensor values on the host.
    return torch.distributions.Dirichlet(alpha, validate_args=False).rsample()


# --method: `sampler(beta, tau, training)` turns beta over the kept ops (last dim) into mixing weights of that shape,
# in every forward, so it reads no tensor value on the host. snas and gdas draw in evaluation too.
SAMPLERS = {
    "dirichlet": dirichlet_sampler,
    "darts": lambda beta, tau, training: F.softmax(beta, dim=-1),
    "snas": lambda beta, tau, training: F.gumbel_softmax(beta, tau=tau, dim=-1),  # relaxed Gumbel-softmax
    "gdas": lambda beta, tau, training: F.gumbel_softmax(beta, tau=tau, hard=True, dim=-1),  # one-hot, straight-through
}


def gumbel_tau(epoch, epochs, tau_max, tau_min):
    """Gumbel temperature of `epoch` (0-based) of `epochs`: linear from tau_max (first) to tau_min (last epoch)."""
    return tau_max - (tau_max - tau_min) * epoch / max(epochs - 1, 1)


def cell_channels(C, layers):
    """(channels, is_reduction) of every cell: C doubles at 1/3 and 2/3 of the depth."""
    cells, channels = [], C
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        channels *= 2 if reduction else 1
        cells.append((channels, reduction))
    return cells


def check_k(C, layers, k, flag="--k"):
    """Refuse a partial-channel factor that does not split every cell's channels evenly."""
    if C % 2:
        raise UserError(f"--init_channels {C} must be even (the reduction preprocessing halves it)")

    def fits(q):
        # Every cell's C/q whole; a reduction cell's even too (the two halves of FactorizedReduce, skip at stride 2).
        return all(c % q == 0 and (not red or (c // q) % 2 == 0) for c, red in cell_channels(C, layers))

    if not fits(k):
        valid = [q for q in range(1, C + 1) if fits(q)]
        sizes = sorted({c for c, _ in cell_channels(C, layers)})
        raise UserError(
            f"{flag} {k} does not split the cells' channels {sizes} (init_channels {C}) into equal "
            f"partial-channel groups; valid values: {', '.join(map(str, valid))}"
        )


class MixedOp(nn.Module):
    """One edge: sum_o w_o * op_o(x[:, :C/k]) over the kept ops (`search_op`s, `op(x, w)` = `w * op(x)`), bypassed
    channels concatenated, then shuffled."""

    def __init__(self, C, stride, k, kept):
        super().__init__()
        self.C, self.k, self.stride = C, k, stride
        self.kept = list(kept)  # indices into PRIMITIVES, host data
        self.ops = nn.ModuleList(search_op(PRIMITIVES[i], C // k, stride) for i in kept)
        # On a reduction edge the bypassed channels must shrink too.
        self.bypass_pool = LeanMaxPool(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x, x_relu, mix):
        # x: (B, C, H, W); x_relu = relu(x) (at least its first C/k channels; None if no op expects it); mix: (n_kept,)
        part = self.C // self.k
        x_part, relu_part = x[:, :part], None if x_relu is None else x_relu[:, :part]
        mixed = sum(op(relu_part if op.expects_relu else x_part, w) for op, w in zip(self.ops, mix))
        if self.k == 1:
            return mixed
        out = torch.cat([mixed, self.bypass_pool(x[:, part:])], dim=1)  # (B, C, H', W')
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
    """A search cell: 2 inputs, `steps` nodes, one MixedOp per (input, node) pair."""

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, k, kept):
        super().__init__()
        self.reduction, self.steps, self.multiplier = reduction, steps, multiplier
        # The inputs are brought to C channels (and c_{k-2} to the resolution of c_{k-1}).
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for node in range(steps):
            for j in range(2 + node):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(MixedOp(C, stride, k, kept[len(self.edges)]))

    def forward(self, s0, s1, mix):
        # mix: (14, n_kept) mixing weights, one row per edge in the order of self.edges.
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        # One ReLU per state (of the C/k channels the edges read) for all the ops expecting it, not one per edge.
        part = states[1].shape[1] // self.edges[0].k
        relu = any(op.expects_relu for edge in self.edges for op in edge.ops)
        relus = [F.relu(h[:, :part]) if relu else None for h in states]
        offset = 0
        for i in range(self.steps):
            node = sum(self.edges[offset + j](h, r, mix[offset + j]) for j, (h, r) in enumerate(zip(states, relus)))
            offset += len(states)
            states.append(node)
            relus.append(F.relu(node[:, :part]) if relu and i < self.steps - 1 else None)  # the last feeds no edge
        return torch.cat(states[-self.multiplier :], dim=1)  # (B, multiplier * C, H, W)


class Network(nn.Module):
    """The DrNAS supernet for the DARTS space (CIFAR stem, or ImageNet stems); `method` names its sampler."""

    def __init__(
        self, C, num_classes, layers, k=6, steps=4, multiplier=4, imagenet=False, kept=None, method="dirichlet"
    ):
        super().__init__()
        if method not in SAMPLERS:
            raise ValueError(f"method must be one of {tuple(SAMPLERS)}, not {method!r}")
        check_k(C, layers, k)
        self.C, self.layers, self.steps, self.k, self.method = C, layers, steps, k, method
        self.tau = 10.0  # Gumbel temperature of the sampler (snas, gdas), set each epoch by the search
        num_edges = sum(2 + i for i in range(steps))
        # kept[e]: PRIMITIVES indices still searched on edge e (host data), edges as beta_normal's then beta_reduce's.
        self.kept = [list(ops) for ops in kept or [range(len(PRIMITIVES))] * (2 * num_edges)]

        C_stem = 3 * C  # both stems end at 3C channels
        if imagenet:
            # Three stride-2 convs, 224 px -> 28 px, ending at 3C channels (the paper's evaluation network ends at C).
            def conv_bn(C_in, C_out):
                return nn.Conv2d(C_in, C_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C_out)

            self.stem0 = nn.Sequential(*conv_bn(3, C_stem // 2), nn.ReLU(inplace=True), *conv_bn(C_stem // 2, C_stem))
            self.stem1 = nn.Sequential(nn.ReLU(inplace=True), *conv_bn(C_stem, C_stem))
            reduction_prev = True  # stem0's output is at twice stem1's resolution
        else:
            self.stem0 = nn.Sequential(nn.Conv2d(3, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
            self.stem1 = None
            reduction_prev = False
        C_prev_prev, C_prev = C_stem, C_stem

        self.cells = nn.ModuleList()
        for C_curr, reduction in cell_channels(C, layers):
            kept_cell = self.kept[num_edges:] if reduction else self.kept[:num_edges]
            cell = Cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, k, kept_cell)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        # DrNAS: beta ~ 1e-3 * N(0, 1); alpha = elu(beta) + 1 is then close to 1 (uniform).
        self.beta_normal = nn.Parameter(1e-3 * torch.randn(num_edges, len(PRIMITIVES)))
        self.beta_reduce = nn.Parameter(1e-3 * torch.randn(num_edges, len(PRIMITIVES)))
        self._set_kept_index()
        self.amp = False  # bf16 autocast of the cells (--amp); the mixing weights stay fp32

    def arch_parameters(self):
        return [self.beta_normal, self.beta_reduce]

    def weights(self):
        """Every parameter except the architecture ones (found by exclusion)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def _set_kept_index(self):
        # (2, 14, n_kept) PRIMITIVES indices; a buffer to follow .to(device), not persistent (`kept` is checkpointed).
        index = torch.tensor(self.kept, dtype=torch.long).view(2, len(self.kept) // 2, -1)
        self.register_buffer("kept_index", index.to(self.beta_normal.device), persistent=False)

    def kept_beta(self):
        """beta of the kept ops: (2, 14, n_kept) for (normal, reduce)."""
        return torch.stack([self.beta_normal, self.beta_reduce]).gather(2, self.kept_index)

    def kept_concentrations(self):
        """alpha of the kept ops: (2, 14, n_kept) for (normal, reduce)."""
        return concentration(self.kept_beta())

    def arch_weights(self):
        """Mixing weights of every edge from the `method`'s sampler, in one call: (2, 14, n_kept). For the Dirichlet,
        sampling the kept ops equals sampling all ops, zeroing the pruned ones and renormalising (aggregation)."""
        return SAMPLERS[self.method](self.kept_beta(), self.tau, self.training)

    def kl_regularizer(self):
        """KL(Dir(alpha) || Dir(1)) summed over the edges of both cell types (kept ops)."""
        alpha = self.kept_concentrations()
        posterior = torch.distributions.Dirichlet(alpha, validate_args=False)
        prior = torch.distributions.Dirichlet(torch.ones_like(alpha), validate_args=False)
        return torch.distributions.kl_divergence(posterior, prior).sum()

    def expected_cost(self, edge_costs):
        """The cells' cost under the Dirichlet mean of the kept ops: `edge_costs` (edges, ops) weighted and summed."""
        alpha = self.kept_concentrations()  # (2, 14, n_kept)
        costs = edge_costs.view(2, -1, edge_costs.shape[-1]).gather(2, self.kept_index)
        return (alpha / alpha.sum(-1, keepdim=True) * costs).sum()

    def compile(self, **kwargs):
        """torch.compile `logits`, one graph for every forward; the draw stays eager fp32, outside any CUDA graph."""
        self.logits = torch.compile(self.logits, **kwargs)

    def forward(self, x, mix=None):
        """Logits (B, num_classes); `mix` (2, 14, n_kept) overrides the sampled weights."""
        return self.logits(x, self.arch_weights() if mix is None else mix)

    def logits(self, x, mix):
        """The cells under the mixing weights `mix`; `amp`: bf16 cells, fp32 logits."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            s0 = self.stem0(x)
            s1 = s0 if self.stem1 is None else self.stem1(s0)
            for cell in self.cells:
                s0, s1 = s1, cell(s0, s1, mix[1] if cell.reduction else mix[0])
            logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits.float() if self.amp else logits  # the loss is taken in fp32

    def use_lean_ops(self, lean):
        """Memory-saving ops (recomputation in the backward pass, see lean_ops.py) on or off: the one switch."""
        for module in self.modules():
            if hasattr(module, "lean"):
                module.lean = lean

    def prune(self, keep):
        """Keep on every edge the `keep` kept ops with the largest beta (ties: the earlier in PRIMITIVES); delete the
        rest. At initialisation beta is 1e-3 * N(0, 1): the choice is random, fixed by the seed."""
        beta = torch.cat(self.arch_parameters()).detach().cpu()  # one row per edge, as `kept`
        for e, kept in enumerate(self.kept):
            self.kept[e] = sorted(sorted(kept, key=lambda i: float(beta[e, i]), reverse=True)[:keep])
        for cell in self.cells:
            for e, edge in enumerate(cell.edges):
                edge.prune(self.kept[e + len(cell.edges) * cell.reduction])
        self._set_kept_index()

    def widen(self, k, generator=None):
        """net2wider every mixed op to C/k channels; returns the `Moved` parameter records."""
        check_k(self.C, self.layers, k)
        moved = []
        for cell in self.cells:
            for edge in cell.edges:
                edge.widen(k, generator, moved)
        self.k = k
        return moved

    def genotype(self):
        """Per node the two incoming edges whose best kept op is strongest, then that op."""

        def parse(beta, kept):
            beta = beta.detach().cpu()
            gene, start = [], 0
            for node in range(self.steps):
                scored = []
                for j in range(2 + node):
                    ops = kept[start + j]
                    strength = F.softmax(beta[start + j, ops], dim=0)  # softmax over kept ops
                    best = int(strength.argmax())
                    scored.append((float(strength[best]), j, PRIMITIVES[ops[best]]))
                for _, j, name in sorted(scored, key=lambda s: -s[0])[:2]:
                    gene.append((name, j))
                start += 2 + node
            return gene

        concat, half = list(range(2, 2 + self.steps)), len(self.kept) // 2
        return Genotype(
            parse(self.beta_normal, self.kept[:half]), concat, parse(self.beta_reduce, self.kept[half:]), concat
        )
