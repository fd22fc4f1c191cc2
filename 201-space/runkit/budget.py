"""Search within a budget (`--cost params|flops --cost_target T --cost_scale S`): what a cell costs, and the term.

A cell costs what the network train.py builds from it (at its defaults, for the searched data) costs: a fixed part
(stem, preprocessing, reductions, classifier) plus what each edge's op adds over all cells, counted on the real
modules by each folder's `model.cost_model` (`CostModel`; multiply-adds as NAS-Bench-201 counts them). With `--cost`
the architecture loss gains S * max(0, E[cost] - T) / T (T = --cost_target, in millions), E[cost] being the fixed
part plus each edge's cost under the Dirichlet mean of its kept ops, weighted by the share of its group the derived
cell keeps (1 in NAS-Bench-201; 2 of a node's n incoming edges in the DARTS space). The target binds the derived
cell only through this surrogate: the log gives the derived cell's exact cost.
"""

import torch
import torch.nn as nn

from .utils import UserError

KINDS = ("params", "flops")


def add_arguments(group):
    what = "search within a budget of parameters or multiply-adds of the network train.py trains from the cell"
    group.add_argument("--cost", type=str, default="none", choices=("none", *KINDS), help=what)
    group.add_argument("--cost_target", type=float, default=None, help="the budget T, in millions (with --cost)")
    group.add_argument("--cost_scale", type=float, default=1.0, help="weight S of the term S * max(0, E[cost] - T) / T")


def count_flops(model, input_size):
    """Multiply-adds (+ bias adds) of the convolutions and linear layers for one input of `input_size` (C, H, W),
    as NAS-Bench-201 counts FLOPs: its all-`nor_conv_3x3` cell at C=16, N=5 with 10 classes gives 220,119,690."""
    total = [0]

    def hook(module, inputs, output):
        # An output element costs one output unit's weights: (C_in / groups) * kh * kw for a conv, in_features else.
        total[0] += output.numel() * (module.weight[0].numel() + (module.bias is not None))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=next(model.parameters(), torch.empty(0)).device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total[0]


def count(module, input_size):
    return {"params": sum(p.numel() for p in module.parameters()), "flops": count_flops(module, input_size)}


class CostModel:
    """What each op adds to the evaluation network. `fixed[kind]`: the network without its cells' ops;
    `edges[kind][row][op]`: op `op` (an index into PRIMITIVES) on edge `row` (a row of the architecture parameters),
    summed over the cells; `groups`: (rows, pick) per node, of whose incoming edges the derived cell keeps `pick`."""

    def __init__(self, fixed, edges, groups):
        self.fixed, self.edges, self.groups = fixed, edges, groups

    def of(self, ops):
        """The exact figures {kind: count} of the cell whose edges are the (row, op) pairs `ops`."""
        ops = list(ops)
        return {kind: self.fixed[kind] + sum(self.edges[kind][row][op] for row, op in ops) for kind in KINDS}

    def bounds(self, kind):
        """(cheapest, dearest) cell of the space, as counts."""
        low = high = self.fixed[kind]
        for rows, pick in self.groups:
            low += sum(sorted(min(self.edges[kind][row]) for row in rows)[:pick])
            high += sum(sorted(max(self.edges[kind][row]) for row in rows)[len(rows) - pick :])
        return low, high

    def surrogate(self, kind, device):
        """(rows, ops) tensor, in millions: each edge's op costs times the share of its group the cell keeps."""
        table = torch.tensor(self.edges[kind], dtype=torch.float64) / 1e6
        for rows, pick in self.groups:
            table[rows] *= pick / len(rows)
        return table.float().to(device)


class Budget:
    """The term `S * max(0, E[cost] - T) / T` of the architecture loss (`--cost`, `--cost_target`, `--cost_scale`)."""

    def __init__(self, costs, args, device):
        self.table = costs.surrogate(args.cost, device)
        self.fixed, self.target, self.scale = costs.fixed[args.cost] / 1e6, args.cost_target, args.cost_scale

    def term(self, model):
        """The term for the supernet `model` (its `expected_cost` of the kept ops), differentiable in beta."""
        return self.scale * torch.relu(self.fixed + model.expected_cost(self.table) - self.target) / self.target


def make_budget(args, costs, device):
    """The search's `Budget` on `device`, or None without `--cost`; a target missing or out of reach is refused."""
    if args.cost == "none":
        if args.cost_target is not None:
            raise UserError(f"--cost_target {args.cost_target} needs --cost params or --cost flops (what it limits)")
        return None
    unit = "million parameters" if args.cost == "params" else "million multiply-adds"
    low, high = (count / 1e6 for count in costs.bounds(args.cost))
    reach = f"the cells of this space cost {low:.4f} to {high:.4f} {unit} in the network trained from them"
    if args.cost_target is None:
        raise UserError(f"--cost {args.cost} needs --cost_target T in millions; {reach}")
    if not low <= args.cost_target <= high:
        side = "below the cheapest cell" if args.cost_target < low else "above the dearest cell (it limits nothing)"
        raise UserError(f"--cost_target {args.cost_target} is {side}: {reach}")
    return Budget(costs, args, device)


def report(costs, ops, model):
    """The record's cost fields in millions: the derived cell's (`ops`: its (row, op) pairs) and the surrogate's."""
    device = model.arch_parameters()[0].device
    record = {f"cell_{kind}": count / 1e6 for kind, count in costs.of(ops).items()}
    with torch.no_grad():
        for kind in KINDS:
            expected = model.expected_cost(costs.surrogate(kind, device))
            record[f"expected_{kind}"] = costs.fixed[kind] / 1e6 + float(expected)
    return record
