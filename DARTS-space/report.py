"""Tabulate finished DARTS-space runs like the paper's tables (DrNAS Tables 1 and 2).

    cd DARTS-space
    python train_search.py --save runs/search              # the search: its cell and cost
    for s in 0 1 2 3; do python train.py --cutout --auxiliary --seed $s --save runs/eval$s; done
    python report.py runs/search runs/eval*                 # Markdown on stdout
    python report.py runs/search runs/eval* --csv runs/table.csv   # and the same rows as CSV

Search runs (train_search.py, train_search_imagenet.py): one row each with seed, data set,
cell, epochs and the search cost the run measured (history.jsonl's `device_hours`: wall
hours of the epoch loop times the number of processes, summed over resumes) in GPU-days
(device-days unless every run used CUDA; n/a for runs made before the engine recorded
it). Evaluation runs (train.py, train_imagenet.py): one row each with seed, data set,
cell, parameters in millions (without the auxiliary head), epochs, and the test error
(100 - accuracy, %) at the best epoch and at the last, and the last top-5 error. A cell
is named by its genotype.json: a named genotype (DrNAS_cifar10, ...) by its name, any
other as `cell` and the first 8 hex digits of the SHA-1 of its content, so that a search
and the training runs of its genotype.json carry the same name. Evaluation runs are grouped by
data set and cell, searches by data set, and each group gets a row of mean ± std over its
runs: the sample std (ddof=1), 0.00 for a single run. The CSV holds the same rows, a
summary as two rows (`mean`, `std`) of plain numbers with the number of runs.

Each RUN_DIR must be a finished run of one of those scripts (args.json names the script;
a history line per epoch marks the end). Anything else (not a run, a run stopped or still
going) stops the report with one line naming the folder, so that a table never averages
a partial run.
"""

import argparse
import csv
import hashlib
import json
import statistics
import sys
from pathlib import Path

import run_folder
from genotypes import NAMED, genotype_from_dict, genotype_to_dict
from utils import UserError, exits_cleanly, read_checkpoint

SEARCHES = ("train_search", "train_search_imagenet")
TRAININGS = ("train", "train_imagenet")


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("runs", type=str, nargs="+", metavar="RUN_DIR", help="run folders of finished runs")
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


def cell_name(run_dir):
    """The name of the run's genotype.json: a named genotype's name, else `cell` + 8 hex digits of its SHA-1."""
    path = Path(run_dir) / "genotype.json"
    try:
        plain = genotype_to_dict(genotype_from_dict(json.loads(path.read_text())))
    except (ValueError, UserError) as err:
        raise UserError(f"{path}: not a DARTS-space genotype ({err})") from None
    for name, genotype in NAMED.items():
        if genotype_to_dict(genotype) == plain:
            return name
    return "cell " + hashlib.sha1(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:8]


def run_rows(run_dir):
    """(kind, row) of one finished run: kind is "search" or "eval"."""
    args, history = read_run(run_dir, SEARCHES + TRAININGS)
    last = history[-1]
    row = {"run": str(run_dir), "seed": args["seed"], "data set": args["dataset"], "cell": cell_name(run_dir)}
    epochs = sum(args["stage_epochs"]) if "stage_epochs" in args else args["epochs"]
    if args["script"] in SEARCHES:
        days = None if last.get("device_hours") is None else last["device_hours"] / 24
        return "search", {**row, "epochs": epochs, "cost": days, "device": last.get("device", "n/a")}
    ckpt = read_checkpoint(Path(run_dir) / "checkpoint.pt")  # the count without the auxiliary head, as papers give it
    try:
        params = ckpt["task"]["param_count"] / 1e6
    except (TypeError, KeyError):
        raise UserError(
            f"{run_dir}: no readable checkpoint.pt with a parameter count (missing or damaged); "
            "give the --save folders of finished runs"
        ) from None
    return "eval", {
        **row,
        "params (M)": params,
        "epochs": epochs,
        "best error (%)": 100 - max(r["valid_acc"] for r in history),
        "last error (%)": 100 - last["valid_acc"],
        "last top-5 error (%)": 100 - last["valid_top5"],
    }


@exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.csv:
        run_folder.check_writable(args.csv, "--csv")
    rows = {"search": [], "eval": []}
    for run_dir in dict.fromkeys(args.runs):  # a folder named twice counts once
        kind, row = run_rows(run_dir)
        rows[kind].append(row)
    tables, lines = {}, []
    if rows["search"]:
        cost = "search (GPU-days)" if all(r["device"] == "cuda" for r in rows["search"]) else "search (device-days)"
        searches = [{(cost if k == "cost" else k): v for k, v in row.items()} for row in rows["search"]]
        tables["search"] = (searches, summarize(searches, ["data set"], [cost]))
        lines += ["Search runs", "", *markdown(*tables["search"]), ""]
    if rows["eval"]:
        numeric = [column for column in rows["eval"][0] if column.endswith("(%)") or column == "params (M)"]
        tables["eval"] = (rows["eval"], summarize(rows["eval"], ["data set", "cell"], numeric))
        lines += ["Evaluation runs (test error = 100 - test accuracy)", "", *markdown(*tables["eval"]), ""]
    for name, (_, summaries) in tables.items():
        for summary, count in summaries:
            group = summary["data set"] + ("" if name == "search" else f", {summary['cell']}")
            lines.append(f"{name} {group}: mean ± std over {_runs(count)} (sample std, ddof=1; 0.00 for a single run).")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.csv:
        write_csv(args.csv, tables)


if __name__ == "__main__":
    main()
