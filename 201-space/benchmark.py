"""NAS-Bench-201 look-ups, and what each search epoch records from them.

`load_benchmark(path)` reads the official file through `nas_201_api` (pip install nas-bench-201) or a compact CSV
table `index,arch,cifar10,cifar100,ImageNet16-120[,cifar10-valid]`, plain or gzipped (`tables/` ships one for all
15,625 cells, the default of `--benchmark`; `none` turns the searches' look-ups off). `--arch`: a named cell, a string
or a genotype.json; `query` prints per data set the test accuracy (%) after 200 epochs:

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

import numpy as np
from runkit import run_flags
from runkit.utils import UserError, exits_cleanly, write_atomic

from genotypes import NAMED, PRIMITIVES, Structure, load_arch

logger = logging.getLogger(__name__)

# The shipped table, the default of every --benchmark, resolved against this folder rather than the current one.
DEFAULT_TABLE = "tables/nb201_test_accuracy.csv.gz"
MEASURED = ("cifar10", "cifar100", "imagenet16-120")  # the benchmark's data sets, as the searches' --dataset names
DATASETS = ("cifar10", "cifar100", "ImageNet16-120")  # test accuracy after 200 epochs on these
VALID = "cifar10-valid"  # valid accuracy, only where the source has it
HEADER = ["index", "arch", *DATASETS]


def summarize(accs):
    """Min, median and max of a list of accuracies (the trajectory's per-epoch summary)."""
    accs = [float(a) for a in accs]
    return {"min": min(accs), "median": float(statistics.median(accs)), "max": max(accs)}


class NotInBenchmark(UserError):
    """A well-formed cell the benchmark does not hold (an op added to `PRIMITIVES`); a search records it."""


def _unknown_arch(arch, path):
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
        self._rows, self._order, where = {}, [], f"--benchmark {self.path}"
        try:
            with (gzip.open if self.path.suffix == ".gz" else open)(self.path, "rt", newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None or header[: len(HEADER)] != HEADER or header[len(HEADER) :] not in ([], [VALID]):
                    want = f"{','.join(HEADER)} (optionally ,{VALID}), got {','.join(header or [])!r}"
                    raise UserError(f"{where}: not a NAS-Bench-201 table; the first line must be {want}")
                for line, row in enumerate(reader, start=2):
                    if row:
                        self._add_row(row, header[2:], line)
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
            raise UserError(f"{where}: cannot read the table ({err})") from None
        if not self._rows:
            raise UserError(f"{where}: the table has a header but no rows")
        self._order.sort()

    def _add_row(self, row, columns, line):
        where = f"--benchmark {self.path} line {line}"
        if len(row) != len(columns) + 2:
            raise UserError(f"{where}: expected {len(columns) + 2} fields, got {len(row)}")
        try:
            index, values = int(row[0]), [float(v) for v in row[2:]]
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
        return [arch for _, arch in self._order]

    def query(self, arch):
        row = self._rows.get(str(arch))
        if row is None:
            raise _unknown_arch(str(arch), self.path)
        return dict(row)


class _HandOver(dict):
    """`NASBench201API(dict)` deep-copies what it gets, doubling the memory of a 2-5 GB file: this copy is itself."""

    def __deepcopy__(self, _memo):
        return self


class OfficialBenchmark:
    """The official NAS-Bench-201 file, read through `nas_201_api` with `hp='200'`."""

    kind = "official"

    def __init__(self, path):
        self.path = Path(path)
        where = f"--benchmark {self.path}"
        try:
            import torch
            from nas_201_api import NASBench201API
        except ImportError:
            need = "which needs the nas_201_api package (pip install nas-bench-201); or use a compact CSV table"
            raise UserError(f"{where} is an official NAS-Bench-201 file, {need}") from None
        try:
            # nas_201_api's own torch.load lacks weights_only=False, which torch >= 2.6 needs for these pickles.
            data = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as err:  # torch/pickle raise many types for a foreign file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"{where}: not a readable NAS-Bench-201 file ({reason})") from None
        keys = ("meta_archs", "arch2infos", "evaluated_indexes")
        if not isinstance(data, dict) or any(key not in data for key in keys):
            raise UserError(f"{where}: not a NAS-Bench-201 file (expected a dict with {', '.join(keys)})")
        try:
            self.api = NASBench201API(_HandOver(data), verbose=False)
        except Exception as err:
            raise UserError(f"{where}: nas_201_api rejected the file ({type(err).__name__}: {err})") from None
        self._cache = {}

    def __len__(self):
        return len(self.api)

    def archs(self):
        return list(self.api.meta_archs)

    def query(self, arch):
        """Accuracies of one architecture, keyed by dataset (averaged over the benchmark's seeds)."""
        arch = str(arch)
        if arch in self._cache:
            return dict(self._cache[arch])
        index = self.api.query_index_by_arch(arch)  # -1, not an error, for a string it does not know
        if index < 0:
            raise _unknown_arch(arch, self.path)
        if index not in self.api.arch2infos_dict:
            raise UserError(f"architecture {arch} (index {index}) has no results in {self.path}")
        names = self.api.arch2infos_dict[index]["200"].get_dataset_names()
        result = {}
        for dataset in [VALID, *DATASETS] if VALID in names else DATASETS:
            if dataset not in names:
                raise UserError(f"{self.path}: architecture {index} has no 200-epoch results on {dataset}")
            # is_random=False averages the trials; 'test-accuracy' is cifar10's 'ori-test', the others' 'x-test'.
            info = self.api.get_more_info(index, dataset, hp="200", is_random=False)
            key = "valid-accuracy" if dataset == VALID else "test-accuracy"
            if info.get(key) is None:  # get_more_info silently drops a set it cannot read
                raise UserError(f"{self.path}: architecture {index} has no {key} on {dataset}")
            result[dataset] = float(info[key])
        self._cache[arch] = result
        return dict(result)


def benchmark_path(spec):
    """The file a --benchmark value names: None for 'none', the shipped table for the default."""
    if spec is None or spec.strip().lower() == "none":
        return None
    return Path(__file__).resolve().parent / DEFAULT_TABLE if spec == DEFAULT_TABLE else Path(spec)


def open_benchmark(spec):
    """`load_benchmark` of a --benchmark value, or None when it is 'none'."""
    path = benchmark_path(spec)
    return None if path is None else load_benchmark(path)


def benchmark_note(dataset):
    """None on a data set the benchmark measured; otherwise the label its figures carry in a search."""
    return None if dataset in MEASURED else f"the benchmark's figures for the cell, not measured on {dataset}"


def load_benchmark(path):
    """Open a benchmark (official .pth or compact CSV), failing with a `UserError` at once."""
    path = Path(path)
    expected = f"the official NAS-Bench-201 .pth or a CSV table with header {','.join(HEADER)}"
    if not path.is_file():
        raise UserError(f"--benchmark {path}: no such file; give {expected}")
    with open(path, "rb") as f:
        head = f.read(64)
    if path.suffix.lower() in (".csv", ".gz") or head.startswith(b"index,"):
        return TableBenchmark(path)
    # torch.save writes a zip archive (PK) or, for old files, a raw pickle (0x80).
    if path.suffix.lower() in (".pth", ".pt") or head[:2] == b"PK" or head[:1] == b"\x80":
        return OfficialBenchmark(path)
    raise UserError(f"--benchmark {path}: unknown format; expected {expected}")


def export_table(bench, out, with_valid=False):
    """Write `bench` as a compact table (every architecture, index order, 4 decimals)."""
    columns = [*DATASETS, VALID] if with_valid else list(DATASETS)
    text = io.StringIO()  # written at once at the end: a refusal midway leaves no file behind
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "arch", *columns])
    for index, arch in enumerate(bench.archs()):
        accs = bench.query(arch)
        if with_valid and VALID not in accs:
            raise UserError(f"--with_valid: {bench.path} has no {VALID} accuracy for {arch}")
        writer.writerow([index, arch, *(f"{accs[c]:.4f}" for c in columns)])
    write_atomic(out, text.getvalue().encode())
    return len(bench)


def log_benchmark(benchmark, args):
    """The run's first word on NAS-Bench-201: the benchmark its epochs query, or that they query none."""
    if benchmark is None:
        logger.info("NAS-Bench-201 look-ups off (--benchmark none): no benchmark accuracies, no trajectory.png")
        return
    note = f"; {args.dataset} is none of its data sets, so its figures describe the cells, not this run"
    info = (benchmark.kind, benchmark.path, len(benchmark), note if benchmark_note(args.dataset) else "")
    logger.info("NAS-Bench-201 %s %s (%d architectures) queried every epoch%s", *info)


def _lookup(benchmark, arch):
    try:
        return benchmark.query(arch)
    except NotInBenchmark:
        return None


def query_benchmark(model, benchmark, args, epoch):
    """The epoch's record: `benchmark` (the derived cell's accuracies or None), `nb201_<dataset>`, `trajectory`..."""
    arch = str(model.genotype())
    accs = _lookup(benchmark, arch)
    record = {"benchmark": accs, **{f"nb201_{name}": acc for name, acc in (accs or {}).items()}}
    note = benchmark_note(args.dataset)
    if note:
        record["benchmark_note"] = note
    if accs is None:
        logger.info("the derived cell %s is not in NAS-Bench-201 (%s): no accuracies", arch, benchmark.path)
    else:
        label = f"NAS-Bench-201 ({note}):" if note else "NAS-Bench-201"
        logger.info("%s %s", label, " ".join(f"{k} {v:.2f}" for k, v in accs.items()))
    if args.trajectory_samples > 0:
        archs = sample_architectures(model, args.trajectory_samples, np.random.default_rng(args.seed * 100003 + epoch))
        results = [found for found in (_lookup(benchmark, a) for a in archs) if found is not None]
        missing = len(archs) - len(results)
        record["trajectory"] = {key: summarize([r[key] for r in results]) for key in results[0]} if results else None
        if missing:
            record["trajectory_missing"] = missing
        spread = (record["trajectory"] or {}).items()
        summary = " ".join(f"{k} {s['min']:.2f}/{s['median']:.2f}/{s['max']:.2f}" for k, s in spread)
        left_out = f" ({missing} not in NAS-Bench-201, left out)" if missing else ""
        logger.info("sampled %d architectures%s: %s", len(archs), left_out, summary or "none in NAS-Bench-201")
    return record


def sample_architectures(model, count, rng):
    """Architecture strings from `count` draws of the current distribution (argmax per edge)."""
    from model_search import concentration  # here: the look-ups and their CLI need not load the supernet

    beta = model.beta.detach().cpu().double()
    archs = []
    for _ in range(count):
        ops = []
        for e, kept in enumerate(model.kept):
            if model.method == "dirichlet":
                w = rng.dirichlet(concentration(beta[e, kept]).numpy())
            else:  # the categorical distribution softmax(beta) of DARTS, SNAS and GDAS
                w = rng.gumbel(size=len(kept)) + beta[e, kept].numpy()
            ops.append(PRIMITIVES[kept[int(np.argmax(w))]])
        archs.append(str(Structure.from_edges(ops)))
    return archs


def get_parser():
    fmt = run_flags.HelpFormatter
    what = "Query NAS-Bench-201 or export its compact table."
    parser = argparse.ArgumentParser(description=what, formatter_class=fmt)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{query,export}")
    query = commands.add_parser("query", help="print one architecture's accuracies as JSON", formatter_class=fmt)
    group = query.add_argument_group("query")
    where = "official NAS-Bench-201 .pth or compact CSV table (the default is the table shipped next to this file)"
    group.add_argument("--benchmark", type=str, default=DEFAULT_TABLE, help=where)
    cells = f"a named one ({', '.join(NAMED)}), an architecture string '|nor_conv_3x3~0|+|...|'"
    group.add_argument("--arch", type=str, required=True, help=f"cell: {cells}, or a search's genotype.json")
    what = "write the compact CSV table from the official file"
    group = commands.add_parser("export", help=what, formatter_class=fmt).add_argument_group("export")
    where = "official NAS-Bench-201 .pth (a table is copied as is)"
    group.add_argument("--benchmark", type=str, required=True, help=where)
    group.add_argument("--out", type=str, required=True, help="CSV file to write")
    valid = f"add a {VALID} column (valid accuracy) after the three test accuracies"
    group.add_argument("--with_valid", action="store_true", help=valid)
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
        arch = str(Structure.from_edges(structure.edge_ops()))  # the canonical spelling, the benchmark's
        sys.stdout.write(json.dumps(load_benchmark(path).query(arch)) + "\n")
    else:
        bench = load_benchmark(benchmark_path(args.benchmark) or args.benchmark)
        logger.info("wrote %d architectures to %s", export_table(bench, args.out, args.with_valid), args.out)


if __name__ == "__main__":
    main()
