"""NAS-Bench-201 look-ups: the official benchmark file or a compact CSV table.

`load_benchmark(path)` reads either

* the official file (`NAS-Bench-201-v1_0-e61699.pth`, `NAS-Bench-201-v1_1-096897.pth`)
  through `nas_201_api` (pip install nas-bench-201), answering the test accuracy after
  200 epochs on cifar10 / cifar100 / ImageNet16-120 and the cifar10-valid valid accuracy;
* a compact table, CSV `index,arch,cifar10,cifar100,ImageNet16-120` (test accuracy in
  percent after 200 epochs, one row per architecture, optionally a `cifar10-valid`
  column), which loads in well under a second, plain or gzipped. `tables/` ships one for
  all 15,625 architectures (see tables/README.md for where it comes from).

Both answer `query(arch_str)` with a dict keyed by dataset. `--benchmark` defaults to the
shipped table (found next to this file, whatever the current folder); `--benchmark none`
turns the searches' look-ups off. `--arch` takes a named cell (DrNAS, ResNet), an
architecture string or a search's genotype.json:

    python benchmark.py query --arch DrNAS
    python benchmark.py query \
        --arch '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|'
    python benchmark.py query --benchmark NAS-Bench-201-v1_0-e61699.pth --arch experiments/.../genotype.json
    python benchmark.py export --benchmark NAS-Bench-201-v1_0-e61699.pth --out nb201.csv
"""

import argparse
import csv
import gzip
import io
import json
import logging
import math
import statistics
import sys
from pathlib import Path

from runkit import run_flags
from runkit.utils import UserError, exits_cleanly, write_atomic

from genotypes import NAMED, Structure, load_arch

logger = logging.getLogger(__name__)

# The table shipped in tables/: the default of every --benchmark, resolved against this
# folder rather than the current one, so the scripts find it from anywhere.
DEFAULT_TABLE = "tables/nb201_test_accuracy.csv.gz"
HERE = Path(__file__).resolve().parent
# The search data sets the benchmark measured (the searches' --dataset names); on any
# other data set its figures describe the cell, not the run.
MEASURED = ("cifar10", "cifar100", "imagenet16-120")

# Test accuracy after 200 epochs on these datasets; cifar10-valid (valid accuracy) only
# where the source has it.
DATASETS = ("cifar10", "cifar100", "ImageNet16-120")
VALID = "cifar10-valid"
HEADER = ["index", "arch", *DATASETS]


def summarize(accs):
    """Min, median and max of a list of accuracies (the trajectory's per-epoch summary)."""
    accs = [float(a) for a in accs]
    if not accs:
        raise ValueError("summarize() needs at least one accuracy")
    return {"min": min(accs), "median": float(statistics.median(accs)), "max": max(accs)}


class NotInBenchmark(UserError):
    """A well-formed cell the benchmark does not hold, such as one with an op added to the space's `PRIMITIVES`.

    `benchmark.py query` stops on it; a search records the cell as not in NAS-Bench-201 and goes on (trajectory.py).
    """


def _unknown_arch(arch, path):
    """The error for an architecture the benchmark does not hold (says why, if it can)."""
    try:
        Structure.from_str(arch)
    except ValueError as err:
        return UserError(f"{arch!r} is not a NAS-Bench-201 architecture string ({err})")
    return NotInBenchmark(f"architecture {arch} is not in the benchmark {path}")


class TableBenchmark:
    """The compact CSV table: a dict from architecture string to its accuracies."""

    kind = "table"

    def __init__(self, path):
        self.path = Path(path)
        self._rows = {}
        self._order = []
        try:
            # The table shipped in tables/ is gzipped; plain CSV files are read as they are.
            opener = gzip.open if self.path.suffix == ".gz" else open
            with opener(self.path, "rt", newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                columns = self._check_header(header)
                for line, row in enumerate(reader, start=2):
                    if row:
                        self._add_row(row, columns, line)
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
            raise UserError(f"--benchmark {self.path}: cannot read the table ({err})") from None
        if not self._rows:
            raise UserError(f"--benchmark {self.path}: the table has a header but no rows")
        self._order.sort()

    def _check_header(self, header):
        if header is None or header[: len(HEADER)] != HEADER or header[len(HEADER) :] not in ([], [VALID]):
            raise UserError(
                f"--benchmark {self.path}: not a NAS-Bench-201 table; the first line must be "
                f"{','.join(HEADER)} (optionally ,{VALID}), got {','.join(header or [])!r}"
            )
        return header[2:]

    def _add_row(self, row, columns, line):
        where = f"--benchmark {self.path} line {line}"
        if len(row) != len(columns) + 2:
            raise UserError(f"{where}: expected {len(columns) + 2} fields, got {len(row)}")
        try:
            index = int(row[0])
            values = [float(v) for v in row[2:]]
        except ValueError as err:
            raise UserError(f"{where}: bad number ({err})") from None
        if not all(math.isfinite(v) and 0.0 <= v <= 100.0 for v in values):
            raise UserError(f"{where}: accuracies must be percentages in [0, 100], got {row[2:]}")
        arch = row[1].strip()
        if arch in self._rows:
            raise UserError(f"{where}: architecture {arch} appears twice")
        self._rows[arch] = dict(zip(columns, values))
        self._order.append((index, arch))

    def __len__(self):
        return len(self._rows)

    def archs(self):
        """Architecture strings in index order."""
        return [arch for _, arch in self._order]

    def query(self, arch):
        """Accuracies of one architecture, keyed by dataset."""
        row = self._rows.get(str(arch))
        if row is None:
            raise _unknown_arch(str(arch), self.path)
        return dict(row)


class _HandOver(dict):
    """The benchmark dict, handed to nas_201_api without the deep copy it would make.

    `NASBench201API(dict)` calls `copy.deepcopy` on what it gets, which doubles the
    memory of a 2-5 GB file; a copy of this dict is the dict itself.
    """

    def __deepcopy__(self, _memo):
        return self


class OfficialBenchmark:
    """The official NAS-Bench-201 file, read through `nas_201_api` with `hp='200'`."""

    kind = "official"

    def __init__(self, path):
        self.path = Path(path)
        try:
            import torch
            from nas_201_api import NASBench201API
        except ImportError:
            raise UserError(
                f"--benchmark {self.path} is an official NAS-Bench-201 file, which needs the "
                "nas_201_api package (pip install nas-bench-201); or use a compact CSV table"
            ) from None
        try:
            # nas_201_api's own torch.load lacks weights_only=False, which torch >= 2.6
            # needs for these pickles; so we load the dict and hand it over.
            data = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as err:  # torch/pickle raise many types for a foreign file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"--benchmark {self.path}: not a readable NAS-Bench-201 file ({reason})") from None
        keys = ("meta_archs", "arch2infos", "evaluated_indexes")
        if not isinstance(data, dict) or any(key not in data for key in keys):
            raise UserError(
                f"--benchmark {self.path}: not a NAS-Bench-201 file (expected a dict with {', '.join(keys)})"
            )
        try:
            self.api = NASBench201API(_HandOver(data), verbose=False)
        except Exception as err:
            raise UserError(
                f"--benchmark {self.path}: nas_201_api rejected the file ({type(err).__name__}: {err})"
            ) from None
        del data
        self._cache = {}

    def __len__(self):
        return len(self.api)

    def archs(self):
        """Architecture strings in index order."""
        return list(self.api.meta_archs)

    def query(self, arch):
        """Accuracies of one architecture, keyed by dataset (averaged over the benchmark's seeds)."""
        arch = str(arch)
        if arch not in self._cache:
            self._cache[arch] = self._lookup(arch)
        return dict(self._cache[arch])

    def _lookup(self, arch):
        # query_index_by_arch answers -1 (not an error) for a string it does not know.
        index = self.api.query_index_by_arch(arch)
        if index < 0:
            raise _unknown_arch(arch, self.path)
        if index not in self.api.arch2infos_dict:
            raise UserError(f"architecture {arch} (index {index}) has no results in {self.path}")
        names = self.api.arch2infos_dict[index]["200"].get_dataset_names()
        result = {}
        for dataset in (VALID, *DATASETS):
            if dataset not in names:
                if dataset == VALID:
                    continue
                raise UserError(f"{self.path}: architecture {index} has no 200-epoch results on {dataset}")
            # is_random=False averages the trials; get_more_info reads 'ori-test' for cifar10
            # and 'x-test' for cifar100 / ImageNet16-120, both reported as 'test-accuracy'.
            info = self.api.get_more_info(index, dataset, hp="200", is_random=False)
            key = "valid-accuracy" if dataset == VALID else "test-accuracy"
            if info.get(key) is None:
                # get_more_info silently drops a set it cannot read instead of raising.
                raise UserError(f"{self.path}: architecture {index} has no {key} on {dataset}")
            result[dataset] = float(info[key])
        return result


def benchmark_path(spec):
    """The file a --benchmark value names: None for 'none', the shipped table for the default."""
    if spec is None or spec.strip().lower() == "none":
        return None
    return HERE / DEFAULT_TABLE if spec == DEFAULT_TABLE else Path(spec)


def open_benchmark(spec):
    """`load_benchmark` of a --benchmark value, or None when it is 'none'."""
    path = benchmark_path(spec)
    return None if path is None else load_benchmark(path)


def benchmark_note(dataset):
    """None on a data set the benchmark measured; otherwise the label its figures carry in a search."""
    if dataset in MEASURED:
        return None
    return f"the benchmark's figures for the cell, not measured on {dataset}"


def load_benchmark(path):
    """Open a benchmark (official .pth or compact CSV), failing with a `UserError` at once."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--benchmark {path}: no such file; give the official NAS-Bench-201 .pth or a CSV "
            f"table with header {','.join(HEADER)}"
        )
    with open(path, "rb") as f:
        head = f.read(64)
    if path.suffix.lower() in (".csv", ".gz") or head.startswith(b"index,"):
        return TableBenchmark(path)
    # torch.save writes a zip archive (PK) or, for old files, a raw pickle (0x80).
    if path.suffix.lower() in (".pth", ".pt") or head[:2] == b"PK" or head[:1] == b"\x80":
        return OfficialBenchmark(path)
    raise UserError(
        f"--benchmark {path}: unknown format; expected the official NAS-Bench-201 .pth "
        f"or a CSV table with header {','.join(HEADER)}"
    )


def export_table(bench, out, with_valid=False):
    """Write `bench` as a compact table (every architecture, index order, 4 decimals)."""
    columns = [*DATASETS, VALID] if with_valid else list(DATASETS)
    text = io.StringIO()  # built in memory, then written at once: a refusal midway leaves no file behind
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "arch", *columns])
    for index, arch in enumerate(bench.archs()):
        accs = bench.query(arch)
        if with_valid and VALID not in accs:
            raise UserError(f"--with_valid: {bench.path} has no {VALID} accuracy for {arch}")
        writer.writerow([index, arch, *(f"{accs[c]:.4f}" for c in columns)])
    write_atomic(out, text.getvalue().encode())
    return len(bench)


def get_parser():
    parser = argparse.ArgumentParser(
        description="Query NAS-Bench-201 or export its compact table.",
        formatter_class=run_flags.HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{query,export}")
    query = commands.add_parser(
        "query",
        help="print one architecture's accuracies as JSON",
        formatter_class=run_flags.HelpFormatter,
    )
    group = query.add_argument_group("query")
    group.add_argument(
        "--benchmark",
        type=str,
        default=DEFAULT_TABLE,
        help="official NAS-Bench-201 .pth or compact CSV table (the default is the table shipped next to this file)",
    )
    group.add_argument(
        "--arch",
        type=str,
        required=True,
        default=None,
        help=f"cell: a named one ({', '.join(NAMED)}), an architecture string '|nor_conv_3x3~0|+|...|', "
        "or a search's genotype.json",
    )
    export = commands.add_parser(
        "export",
        help="write the compact CSV table from the official file",
        formatter_class=run_flags.HelpFormatter,
    )
    group = export.add_argument_group("export")
    group.add_argument(
        "--benchmark",
        type=str,
        required=True,
        default=None,
        help="official NAS-Bench-201 .pth (a table is copied as is)",
    )
    group.add_argument("--out", type=str, required=True, default=None, help="CSV file to write")
    group.add_argument(
        "--with_valid",
        action="store_true",
        default=False,
        help=f"add a {VALID} column (valid accuracy) after the three test accuracies",
    )
    return parser


@exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "query":
        structure = load_arch(args.arch.strip())  # a bad --arch fails before the benchmark loads
        path = benchmark_path(args.benchmark)
        if path is None:
            raise UserError("query needs a benchmark; --benchmark none is for the searches")
        # The canonical string (nodes' edges in order), as the benchmark spells it.
        arch = str(Structure.from_edges(structure.edge_ops()))
        sys.stdout.write(json.dumps(load_benchmark(path).query(arch)) + "\n")
    else:
        bench = load_benchmark(benchmark_path(args.benchmark) or args.benchmark)
        count = export_table(bench, args.out, args.with_valid)
        logger.info("wrote %d architectures to %s", count, args.out)


if __name__ == "__main__":
    main()
