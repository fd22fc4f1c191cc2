"""Tabulate finished NAS-Bench-201 searches like the paper's table (DrNAS Table 3).

    cd 201-space && for s in 0 1 2 3; do python train_search.py --seed $s --save runs/s$s; done
    python report.py runs/s*                          # Markdown on stdout
    python report.py runs/s* --csv runs/table.csv     # and the same rows as CSV
    python report.py runs/s* --benchmark NAS-Bench-201-v1_0-e61699.pth   # the official file instead

One row per run: seed, data set, method, final cell, its NAS-Bench-201 test accuracies (%, 200 epochs), its params
and multiply-adds (M) in train.py's network and the search's device-hours (GPU-hours when all used CUDA); then per
data set and method mean ± std. Each RUN_DIR must be a finished search (train_search*.py).
"""

import argparse
import json
import sys
from pathlib import Path

from runkit import run_flags, run_folder
from runkit.report_tables import markdown, read_run, runs_text, summarize, write_csv
from runkit.utils import UserError, exits_cleanly

from benchmark import DATASETS, DEFAULT_TABLE, benchmark_path, load_benchmark
from genotypes import SPACE, Structure

SCRIPTS = ("train_search", "train_search_progressive")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=run_flags.HelpFormatter)
    parser.add_argument("runs", type=str, nargs="+", metavar="RUN_DIR", help="run folders of finished searches")
    where = "NAS-Bench-201 .pth or compact CSV table for the accuracies"
    parser.add_argument("--benchmark", type=str, default=DEFAULT_TABLE, help=where)
    parser.add_argument("--csv", type=str, default=None, help="also write the rows to this CSV file")
    return parser


def search_rows(run_dirs, benchmark):
    """One row per run (column -> value), in the order given; the cost column is GPU-hours if all used CUDA."""
    rows = []
    for run_dir in run_dirs:
        args, history = read_run(run_dir, SPACE, SCRIPTS)
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
        # The cell's size in train.py's network (history.jsonl's record; None for runs from before it).
        row.update({"params (M)": history[-1].get("cell_params"), "MACs (M)": history[-1].get("cell_flops")})
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
        read_run(run_dir, SPACE, SCRIPTS)  # every folder is checked before the benchmark loads
    rows, cost = search_rows(run_dirs, load_benchmark(benchmark_path(args.benchmark) or args.benchmark))
    summaries = summarize(rows, ["data set", "method"], [*DATASETS, "params (M)", "MACs (M)", cost])
    # The cell is the one of the search's last epoch: no accuracy picked it, the test one least of all.
    source = f"NAS-Bench-201 test accuracy (%) after 200 epochs of each search's final cell, from {args.benchmark}."
    std = "mean ± std over {} (sample std, ddof=1; 0.00 for a single run)."
    lines = [*markdown(rows, summaries), "", source]
    lines += [f"{s['data set']}, {s['method']}: {std.format(runs_text(count))}" for s, count in summaries]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.csv:
        write_csv(args.csv, {"search": (rows, summaries)})


if __name__ == "__main__":
    main()
