"""Tabulate finished DARTS-space runs like the paper's tables (DrNAS Tables 1 and 2).

    cd DARTS-space
    python train_search.py --save runs/search              # the search: its cell and cost
    for s in 0 1 2 3; do python train.py --cutout --auxiliary --seed $s --save runs/eval$s; done
    python report.py runs/search runs/eval*                 # Markdown on stdout
    python report.py runs/search runs/eval* --csv runs/table.csv   # and the same rows as CSV

A search is a row of its cell's parameters and multiply-adds (millions, in train.py's network) and its GPU-days
(device-days unless every run used CUDA); an evaluation, of parameters and multiply-adds (no auxiliary head), the
last epoch's test and top-5 error (the paper's numbers) and the best epoch's (chosen on the test set, so optimistic).
A cell is named by its genotype's name, else `cell <8 hex digits of its SHA-1>`. Rows are grouped by data set (and
cell), each group with a row of mean ± std (sample std). Each RUN_DIR must be a finished run of those scripts.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

from runkit import run_flags, run_folder
from runkit.report_tables import markdown, read_run, runs_text, summarize, write_csv
from runkit.utils import UserError, exits_cleanly, read_checkpoint

from genotypes import NAMED, SPACE, genotype_from_dict, genotype_to_dict

SEARCHES = ("train_search", "train_search_imagenet")
TRAININGS = ("train", "train_imagenet")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=run_flags.HelpFormatter)
    parser.add_argument("runs", type=str, nargs="+", metavar="RUN_DIR", help="run folders of finished runs")
    parser.add_argument("--csv", type=str, default=None, help="also write the rows to this CSV file")
    return parser


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


def _test(record, key):
    """`test_<key>` of a history record (test accuracy, %); runs recorded before its rename call it `valid_<key>`."""
    return record[f"test_{key}"] if f"test_{key}" in record else record[f"valid_{key}"]


def run_rows(run_dir):
    """(kind, row) of one finished run: kind is "search" or "eval"."""
    args, history = read_run(run_dir, SPACE, SEARCHES + TRAININGS)
    last = history[-1]
    row = {"run": str(run_dir), "seed": args["seed"], "data set": args["dataset"], "cell": cell_name(run_dir)}
    epochs = sum(args["stage_epochs"]) if "stage_epochs" in args else args["epochs"]
    if args["script"] in SEARCHES:
        days = None if last.get("device_hours") is None else last["device_hours"] / 24
        cell = {"params (M)": last.get("cell_params"), "MACs (M)": last.get("cell_flops")}  # in train.py's network
        return "search", {**row, **cell, "epochs": epochs, "cost": days, "device": last.get("device", "n/a")}
    ckpt = read_checkpoint(Path(run_dir) / "checkpoint.pt")  # the count without the auxiliary head, as papers give it
    try:
        params, flops = ckpt["task"]["param_count"] / 1e6, ckpt["task"].get("flops")
    except (TypeError, KeyError):
        missing = "no readable checkpoint.pt with a parameter count (missing or damaged)"
        raise UserError(f"{run_dir}: {missing}; give the --save folders of finished runs") from None
    # The last epoch's errors, as the paper reports them; MACs None for a run from before their count.
    macs = None if flops is None else flops / 1e6
    row.update({"params (M)": params, "MACs (M)": macs, "epochs": epochs, "test error (%)": 100 - _test(last, "acc")})
    row["test top-5 error (%)"] = 100 - _test(last, "top5")
    row["best-epoch error (%, chosen on test)"] = 100 - max(_test(r, "acc") for r in history)
    return "eval", row


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
        tables["search"] = (searches, summarize(searches, ["data set"], ["params (M)", "MACs (M)", cost]))
        lines += ["Search runs", "", *markdown(*tables["search"]), ""]
    if rows["eval"]:
        numeric = [column for column in rows["eval"][0] if "(%" in column or "(M)" in column]
        tables["eval"] = (rows["eval"], summarize(rows["eval"], ["data set", "cell"], numeric))
        note = "the paper's number; the best epoch is chosen on the test set itself, so its error is optimistic"
        lines += [f"Evaluation runs (test error = 100 - test accuracy of the last epoch, {note})", ""]
        lines += [*markdown(*tables["eval"]), ""]
    for name, (_, summaries) in tables.items():
        for summary, count in summaries:
            group = summary["data set"] + ("" if name == "search" else f", {summary['cell']}")
            std = "sample std, ddof=1; 0.00 for a single run"
            lines.append(f"{name} {group}: mean ± std over {runs_text(count)} ({std}).")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.csv:
        write_csv(args.csv, tables)


if __name__ == "__main__":
    main()
