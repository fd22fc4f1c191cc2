"""Cells of the DARTS search space: the op list, the `Genotype` type, published cells, JSON.

A genotype lists, for each of the 4 intermediate nodes of a cell, its two inputs as `(op_name, input_index)`:
index 0 is the cell's input c_{k-2}, 1 is c_{k-1}, 2.. the earlier nodes. `normal_concat` / `reduce_concat`
name the nodes whose outputs are concatenated into the cell's output. The network is in `model.py`.

    python -c "import genotypes; print(genotypes.DrNAS_cifar10)"
    python train.py --arch DrNAS_cifar10             # a name defined here
    python train.py --arch experiments/.../genotype.json   # what a search wrote
"""

from collections import namedtuple
from pathlib import Path

from runkit.data_common import DATA_KEYS, read_genotype_json
from runkit.utils import UserError, write_json

# The search space, as checkpoints record it (a checkpoint of the other folder is refused).
SPACE = "DARTS"

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

# fmt: off
# The 7 DARTS ops searched by DrNAS. There is no 'none': DrNAS (like PC-DARTS' code) searches without the zero op,
# so every derived edge is one of these. A genotype may use exactly these ops (an op added to the space too).
PRIMITIVES = ["max_pool_3x3", "avg_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]

# A cell's edges in the order of the rows of beta: (node, state it reads), node k reading states 0 .. k + 1
# (0, 1 the cell's inputs, 2.. the earlier nodes). A genotype keeps two of each node's edges.
EDGES = [(node, index) for node in range(4) for index in range(2 + node)]

# ---------------------------------------------------------------- published cells (two nodes a line)
CONCAT = [2, 3, 4, 5]  # every published cell's output concatenates its four nodes

# DrNAS (Chen et al., ICLR 2021), progressive search on CIFAR-10: 2.46 +- 0.03 % test error, 4.1M parameters.
DrNAS_cifar10 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2), ("dil_conv_5x5", 3)], normal_concat=CONCAT,
    reduce=[("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("dil_conv_5x5", 2), ("sep_conv_5x5", 1),
            ("sep_conv_5x5", 1), ("dil_conv_5x5", 3), ("skip_connect", 4), ("sep_conv_5x5", 1)], reduce_concat=CONCAT)

# DrNAS, searched directly on ImageNet: 23.7 % top-1 error, 5.7M parameters (C=48, 14 cells).
DrNAS_imagenet = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0), ("dil_conv_3x3", 3), ("skip_connect", 0), ("sep_conv_3x3", 1)], normal_concat=CONCAT,
    reduce=[("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 2), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1)], reduce_concat=CONCAT)

# DARTS first order (Liu et al., ICLR 2019): 3.00 % error (the paper rounds its size to 3.3M; this cell has 3.17M).
DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)], normal_concat=CONCAT,
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)], reduce_concat=CONCAT)

# DARTS second order: 2.76 +- 0.09 % error, 3.3M parameters.
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)], normal_concat=CONCAT,
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)], reduce_concat=CONCAT)

# P-DARTS (Chen et al., ICCV 2019), CIFAR-10: 2.50 % error, 3.4M parameters.
PDARTS = Genotype(
    normal=[("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)], normal_concat=CONCAT,
    reduce=[("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
            ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)], reduce_concat=CONCAT)

# PC-DARTS (Xu et al., ICLR 2020), CIFAR-10: 2.57 +- 0.07 % error, 3.6M parameters.
PC_DARTS_cifar = Genotype(
    normal=[("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
            ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)], normal_concat=CONCAT,
    reduce=[("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)], reduce_concat=CONCAT)

# PC-DARTS searched on ImageNet: 24.2 % top-1 error, 5.3M parameters.
PC_DARTS_image = Genotype(
    normal=[("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 1),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4)], normal_concat=CONCAT,
    reduce=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
            ("sep_conv_3x3", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_3x3", 3)], reduce_concat=CONCAT)

# The names `--arch` accepts (also what `choices` and error messages list).
NAMED = {name: globals()[name] for name in (
    "DrNAS_cifar10", "DrNAS_imagenet", "DARTS_V1", "DARTS_V2", "PDARTS", "PC_DARTS_cifar", "PC_DARTS_image")}
# fmt: on

# ---------------------------------------------------------------- JSON in and out


def genotype_to_dict(genotype):
    """A genotype as plain lists (JSON-able, loads under `torch.load(weights_only=True)`)."""
    return {
        key: [int(i) for i in value] if key.endswith("_concat") else [[op, int(index)] for op, index in value]
        for key, value in zip(Genotype._fields, genotype)
    }


def _check_edges(edges, key):
    """Validate one cell's edge list; return it as a list of (op, index) tuples."""
    if not isinstance(edges, list) or not edges or len(edges) % 2:
        raise UserError(f"'{key}' must be a non-empty list of [op, input] pairs, two per node")
    checked = []
    for position, edge in enumerate(edges):
        if not (isinstance(edge, (list, tuple)) and len(edge) == 2):
            raise UserError(f"'{key}' entry {position} is {edge!r}, not an [op, input] pair")
        op, index = edge
        if op not in PRIMITIVES:
            raise UserError(f"'{key}' uses op {op!r}, which is not in the space; accepted ops: {', '.join(PRIMITIVES)}")
        # Node n (0-based, two entries each) may read the 2 cell inputs and nodes 0..n-1.
        limit = position // 2 + 2
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < limit:
            raise UserError(f"'{key}' entry {position} reads input {index!r}; it must be an integer in 0..{limit - 1}")
        checked.append((op, index))
    return checked


def genotype_from_dict(data):
    """Build a `Genotype` from `genotype_to_dict` output, checking ops, indices and shape."""
    if isinstance(data, dict) and isinstance(data.get("genotype"), dict):
        data = data["genotype"]  # a search's summary may nest the genotype under a key
    if not isinstance(data, dict):
        raise UserError(f"a genotype must be a JSON object with keys {', '.join(Genotype._fields)}")
    missing = [key for key in Genotype._fields if key not in data]
    if missing:
        raise UserError(f"genotype lacks {', '.join(missing)}; expected keys {', '.join(Genotype._fields)}")
    normal, reduce = _check_edges(data["normal"], "normal"), _check_edges(data["reduce"], "reduce")
    if len(normal) != len(reduce):
        raise UserError(
            f"'normal' has {len(normal)} entries but 'reduce' {len(reduce)}; both cells have the same nodes"
        )
    last = len(normal) // 2 + 1  # the index of the last node (0, 1: the cell's inputs)
    for key in ("normal_concat", "reduce_concat"):
        concat = data[key]
        valid = isinstance(concat, list) and concat
        valid = valid and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= last for i in concat)
        if not valid or len(set(concat)) != len(concat):
            raise UserError(f"'{key}' must be a non-empty list of distinct node indices in 0..{last}, got {concat!r}")
    return Genotype(normal, list(data["normal_concat"]), reduce, list(data["reduce_concat"]))


def save_genotype(genotype, path, data=None):
    """Write a genotype as JSON (what `train.py --arch` reads) with `data` (`DATA_KEYS`: what it ran on), atomically."""
    write_json(path, {**genotype_to_dict(genotype), **(data or {})})


def load_genotype(name_or_path, flag="--arch"):
    """A genotype by name from this module, or from a genotype.json path (`flag` names it in errors)."""
    return load_genotype_and_data(name_or_path, flag)[0]


def load_genotype_and_data(name_or_path, flag="--arch"):
    """`load_genotype(name_or_path, flag)` and its genotype.json's data record (a dict of `DATA_KEYS`, else None)."""
    if name_or_path in NAMED:
        return NAMED[name_or_path], None
    path = Path(name_or_path)
    if not path.is_file():
        accepted = f"accepted names: {', '.join(NAMED)}, or the path of a genotype.json written by a search"
        raise UserError(f"{flag} {name_or_path}: neither a genotype name nor a file; {accepted}")
    data = read_genotype_json(path, f"{flag} {path}", SPACE)  # a 201-space file is named as such
    try:
        genotype = genotype_from_dict(data)
    except UserError as err:
        raise UserError(f"{flag} {path}: {err}") from None
    return genotype, ({key: data[key] for key in DATA_KEYS} if all(key in data for key in DATA_KEYS) else None)
