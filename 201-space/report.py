"""Tabulate finished NAS-Bench-201 searches like the paper's table (DrNAS Table 3).

    cd 201-space
    for s in 0 1 2 3; do python train_search.py --seed $s --save runs/s$s; done
    python report.py runs/s*                          # Markdown on stdout
    python report.py runs/s* --csv runs/table.csv     # and the same rows as CSV
    python report.py runs/s* --benchmark NAS-Bench-201-v1_0-e61699.pth   # the official file instead

One row per run: seed, data set searched on, method, final cell (genotype.json), its
NAS-Bench-201 test accuracy (%, 200 epochs) on cifar10, cifar100 and ImageNet16-120 from
the table in tables/ (or `--benchmark PATH`), and the search cost the run measured
(history.jsonl's `device_hours`: wall hours of the epoch loop times the number of
processes, summed over resumes; GPU-hours when every run used CUDA; n/a for runs made
before the engine recorded it). Then, per data set and method, a row of mean ± std over
its runs: the sample std (ddof=1), 0.00 for a single run. The CSV holds the same rows, a
summary as two rows (`mean`, `std`) of plain numbers with the number of runs.

Each RUN_DIR must be a finished run of train_search.py or train_search_progressive.py
(args.json names the script; genotype.json and a history line per epoch mark the end).
Anything else (not a run, a training run, a run stopped or still going) stops the report
with one line naming the folder, so that a table never averages a partial search.
"""

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import run_folder
from benchmark import DATASETS, load_benchmark
from genotypes import Structure
from utils import UserError, exits_cleanly

SCRIPTS = ("train_search", "train_search_progressive")
# The table shipped in tables/, found next to this file whatever the current folder.
TABLE = "tables/nb201_test_accuracy.csv.gz"


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("runs", type=str, nargs="+", metavar="RUN_DIR", help="run folders of finished searches")
    parser.add_argument(
        "--benchmark", type=str, default=TABLE, help="NAS-Bench-201 .pth or compact CSV table for the accuracies"
    )
    parser.add_argument("--csv", type=str, default=None, help="also write the rows to this CSV file")
    return parser


def read_run(run_dir, scripts):
    """args.json and history.jsonl of a finished run of one of `scripts`; a `UserError` for anything else."""
    run_dir = Path(run_dir)
    if not (run_dir / "args.json").is_file():
        what = "not a run folder (no args.json)" if run_dir.is_dir() else "no such folder"
        raise UserError(f"{run_dir}: {what}; give the --save folders of finished runs")
    try:
        args = json.loads((run_dir / "args.json").read_text())
        path = run_dir / "history.jsonl"
        history = [
            json.loads(line) for line in (path.read_text() if path.exists() else "").splitlines() if line.strip()
        ]
    except (OSError, ValueError) as err:
        raise UserError(f"{run_dir}: unreadable args.json or history.jsonl ({err})") from None
    if not isinstance(args, dict) or args.get("script") not in scripts:
        script = args.get("script") if isinstance(args, dict) else None
        wanted = " or ".join(f"{s}.py" for s in scripts)
        raise UserError(f"{run_dir}: a run of {script}.py; this report takes runs of {wanted}")
    epochs = sum(args["stage_epochs"]) if "stage_epochs" in args else args["epochs"]
    pid = run_folder.holder(run_dir)
    if pid is not None:
        raise UserError(
            f"{run_dir}: still running (process {pid}, {len(history)} of {epochs} epochs done); "
            "wait for it to end, or leave it out"
        )
    if len(history) < epochs or not (run_dir / "genotype.json").is_file():
        raise UserError(
            f"{run_dir}: unfinished ({len(history)} of {epochs} epochs); finish it with "
            f"--resume {run_dir / 'checkpoint.pt'}, or leave it out"
        )
    return args, history


def mean_std(values):
    """(mean, sample std with ddof=1) of the values that are not None; std 0.0 for one value, None for none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows, keys, numeric):
    """Per group of rows equal in the `keys` columns: (a row of (mean, std) of the `numeric` columns, run count)."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    summaries = []
    for group in groups.values():
        summary = {column: "" for column in group[0]}
        summary.update({k: group[0][k] for k in keys}, run=f"mean ± std over {_runs(len(group))}")
        if "cell" not in keys:
            summary["cell"] = f"{len({r['cell'] for r in group})} distinct"
        summary.update({column: mean_std([r[column] for r in group]) for column in numeric})
        if "device" in summary:
            summary["device"] = ", ".join(sorted({str(r["device"]) for r in group}))
        summaries.append((summary, len(group)))
    return summaries


def _runs(count):
    return f"{count} run" if count == 1 else f"{count} runs"


def markdown(rows, summaries):
    """The lines of a Markdown table: the run rows, then the summary rows (mean ± std, 2 decimals)."""

    def text(value):
        if value is None:
            return "n/a"
        if isinstance(value, tuple):
            return f"{value[0]:.2f} ± {value[1]:.2f}"
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value).replace("|", "\\|")  # a 201 cell string's bars would split the Markdown cell

    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    for row in rows + [summary for summary, _ in summaries]:
        lines.append("| " + " | ".join(text(v) for v in row.values()) + " |")
    return lines


def write_csv(path, tables):
    """`tables` ({name: (rows, summaries)}) as one CSV: the run rows, then each summary as a `mean` and a `std` row."""
    columns = ["table", "row"]
    for rows, _ in tables.values():
        columns += [column for column in rows[0] if column not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, [*columns, "runs"], lineterminator="\n")
        writer.writeheader()
        for name, (rows, summaries) in tables.items():
            for row in rows:
                writer.writerow({**row, "table": name, "row": "run", "runs": 1})
            for summary, count in summaries:
                for i, kind in enumerate(("mean", "std")):
                    plain = {k: (v[i] if isinstance(v, tuple) else v) for k, v in summary.items()}
                    writer.writerow({**plain, "table": name, "row": kind, "run": "", "runs": count})


def search_rows(run_dirs, benchmark):
    """One row per run (column -> value), in the order given; the cost column is GPU-hours if all used CUDA."""
    rows = []
    for run_dir in run_dirs:
        args, history = read_run(run_dir, SCRIPTS)
        try:
            arch = json.loads((Path(run_dir) / "genotype.json").read_text())["arch"]
            # The canonical spelling (edges in order) is the one the benchmark knows.
            arch = str(Structure.from_edges(Structure.from_str(arch).edge_ops()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{run_dir}/genotype.json: not a NAS-Bench-201 cell ({err})") from None
        accs = benchmark.query(arch)
        method = args["method"] + (" progressive" if args["script"] == "train_search_progressive" else "")
        row = {"run": str(run_dir), "seed": args["seed"], "data set": args["dataset"], "method": method, "cell": arch}
        row.update({name: accs[name] for name in DATASETS})
        rows.append({**row, "cost": history[-1].get("device_hours"), "device": history[-1].get("device", "n/a")})
    cost = "search (GPU-hours)" if all(row["device"] == "cuda" for row in rows) else "search (device-hours)"
    return [{(cost if k == "cost" else k): v for k, v in row.items()} for row in rows], cost


@exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.csv:
        run_folder.check_writable(args.csv, "--csv")
    run_dirs = list(dict.fromkeys(args.runs))  # a folder named twice counts once
    for run_dir in run_dirs:
        read_run(run_dir, SCRIPTS)  # every folder is checked before the benchmark loads
    path = Path(__file__).resolve().parent / TABLE if args.benchmark == TABLE else args.benchmark
    rows, cost = search_rows(run_dirs, load_benchmark(path))
    summaries = summarize(rows, ["data set", "method"], [*DATASETS, cost])
    lines = [
        *markdown(rows, summaries),
        "",
        f"NAS-Bench-201 test accuracy (%) after 200 epochs, from {args.benchmark}.",
    ]
    for summary, count in summaries:
        lines.append(
            f"{summary['data set']}, {summary['method']}: mean ± std over {_runs(count)} "
            "(sample std, ddof=1; 0.00 for a single run)."
        )
    sys.stdout.write("\n".join(lines) + "\n")
    if args.csv:
        write_csv(args.csv, {"search": (rows, summaries)})


if __name__ == "__main__":
    main()
