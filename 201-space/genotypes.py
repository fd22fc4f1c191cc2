"""NAS-Bench-201 architectures: the op list, the cell structure type, named cells, genotype.json.

A cell has 4 nodes; node i (1..3) sums one op on every earlier node j < i (6 edges). An architecture string has one
`+`-separated group per node, each `op~j` naming the op on the edge from node j (`Structure.from_str`, `str`):

    |nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|
"""

from pathlib import Path

from runkit.data_common import DATA_KEYS, read_genotype_json
from runkit.utils import UserError, write_json

SPACE = "NAS-Bench-201"  # as checkpoints record it (a checkpoint of the other folder is refused)
PRIMITIVES = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]  # the columns of beta
MAX_NODES = 4
EDGES = [(i, j) for i in range(1, MAX_NODES) for j in range(i)]  # (to node i, from node j), the strings' order


class Structure:
    """One NAS-Bench-201 cell: `nodes[i-1]` is a tuple of (op, j) for node i."""

    def __init__(self, nodes):
        self.nodes = tuple(tuple((op, int(j)) for op, j in node) for node in nodes)
        if len(self.nodes) != MAX_NODES - 1:
            raise ValueError(f"a cell has {MAX_NODES - 1} nodes, got {len(self.nodes)}")
        for i, node in enumerate(self.nodes, start=1):
            if sorted(j for _, j in node) != list(range(i)):
                raise ValueError(f"node {i} must take exactly one op from each of nodes 0..{i - 1}")
            for op, _ in node:
                if op not in PRIMITIVES:
                    raise ValueError(f"unknown op {op!r}; the space has {', '.join(PRIMITIVES)}")

    @classmethod
    def from_str(cls, arch):
        """Parse `|op~0|+|op~0|op~1|+|...|`; raises ValueError on a malformed string."""
        nodes = []
        for group in arch.strip().split("+"):
            if not (group.startswith("|") and group.endswith("|") and len(group) > 2):
                raise ValueError(f"malformed node {group!r} in {arch!r}; expected |op~j|...|")
            nodes.append([])
            for token in group[1:-1].split("|"):
                op, sep, j = token.partition("~")
                if not sep or not j.isdigit():
                    raise ValueError(f"malformed edge {token!r} in {arch!r}; expected op~j")
                nodes[-1].append((op, int(j)))
        return cls(nodes)

    @classmethod
    def from_edges(cls, ops):
        """Build from one op name per edge, in `EDGES` order."""
        nodes = [[] for _ in range(MAX_NODES - 1)]
        for (i, j), op in zip(EDGES, ops, strict=True):
            nodes[i - 1].append((op, j))
        return cls(nodes)

    def edge_ops(self):
        """One op name per edge, in `EDGES` order."""
        lookup = {(i, j): op for i, node in enumerate(self.nodes, start=1) for op, j in node}
        return [lookup[edge] for edge in EDGES]

    def __str__(self):
        return "+".join("|" + "|".join(f"{op}~{j}" for op, j in node) + "|" for node in self.nodes)

    def __repr__(self):
        return f"Structure({str(self)!r})"

    def __eq__(self, other):
        return isinstance(other, Structure) and self.edge_ops() == other.edge_ops()

    def __hash__(self):
        return hash(str(self))


# Named cells. ResNet is NAS-Bench-201's reference; DrNAS is the paper's search result (94.36 / 73.51 / 46.34 test
# accuracy on CIFAR-10 / CIFAR-100 / ImageNet16-120).
ResNet = Structure.from_str("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|")
DrNAS = Structure.from_str(
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
)
NAMED = {"ResNet": ResNet, "DrNAS": DrNAS}


def save_genotype(genotype, path, data=None):
    """Write a search's result as `{"arch": "|...|", **data}` (`data`: what it ran on, `DATA_KEYS`), atomically."""
    write_json(path, {"arch": str(genotype), **(data or {})})


def load_arch(spec):
    """A named cell, an architecture string, or the path of a search's `genotype.json`."""
    return load_arch_and_data(spec)[0]


def load_arch_and_data(spec):
    """`load_arch(spec)` and the data record of its genotype.json (a dict of `DATA_KEYS`, else None)."""
    if spec in NAMED:
        return NAMED[spec], None
    text, data = spec, None
    if not spec.lstrip().startswith("|"):
        path = Path(spec)
        if not path.is_file():
            named = f"a named cell ({', '.join(NAMED)}), an architecture string like '|nor_conv_3x3~0|+|...|'"
            raise UserError(f"--arch {spec!r} is neither {named}, nor an existing genotype.json")
        saved = read_genotype_json(path, f"--arch {path}", SPACE)  # a DARTS-space file is named as such
        text = saved.get("arch") if isinstance(saved, dict) else None
        if not isinstance(text, str):
            raise UserError(f"--arch {path}: not a genotype.json with an \"arch\" string like '|nor_conv_3x3~0|+|...|'")
        if all(key in saved for key in DATA_KEYS):
            data = {key: saved[key] for key in DATA_KEYS}
    try:
        return Structure.from_str(text), data
    except ValueError as err:
        raise UserError(f"--arch: {err}") from None
