"""What both report.py share: reading finished runs; tables with mean ± std (sample std; 0.00 for one run)."""

import csv
import json
import statistics
from pathlib import Path

from . import run_folder
from .data_common import FOLDERS, genotype_space
from .utils import UserError


def read_run(run_dir, space, scripts):
    """args.json and history.jsonl of a finished run of one of `scripts`; a `UserError` for anything else."""
    run_dir = Path(run_dir)
    if not (run_dir / "args.json").is_file():
        what = "not a run folder (no args.json)" if run_dir.is_dir() else "no such folder"
        raise UserError(f"{run_dir}: {what}; give the --save folders of finished runs")
    try:
        args = json.loads((run_dir / "args.json").read_text())
        path = run_dir / "history.jsonl"
        history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    except (OSError, ValueError) as err:
        raise UserError(f"{run_dir}: unreadable args.json or history.jsonl ({err})") from None
    script = args.get("script") if isinstance(args, dict) else None
    # Both folders have a train_search.py and a train.py: the run's genotype.json tells the other space's runs apart.
    try:
        found = genotype_space(json.loads((run_dir / "genotype.json").read_text()))
    except (OSError, ValueError):
        found = None
    if found not in (None, space):
        folder = FOLDERS[found]
        raise UserError(f"{run_dir}: a run of the {folder} ({script}.py); report it with {folder}/report.py")
    if script not in scripts:
        wanted = " or ".join(f"{s}.py" for s in scripts)
        raise UserError(f"{run_dir}: a run of {script}.py; this report takes runs of {wanted}")
    epochs = sum(args["stage_epochs"]) if "stage_epochs" in args else args["epochs"]
    pid, done = run_folder.holder(run_dir), f"{len(history)} of {epochs} epochs"
    if pid is not None:
        raise UserError(f"{run_dir}: still running (process {pid}, {done} done); wait for it to end, or leave it out")
    if len(history) < epochs or not (run_dir / "genotype.json").is_file():
        resume = f"--resume {run_dir / 'checkpoint.pt'}"
        raise UserError(f"{run_dir}: unfinished ({done}); finish it with {resume}, or leave it out")
    return args, history


def summarize(rows, keys, numeric):
    """Per group of rows equal in the `keys` columns: (a row of (mean, std) of the `numeric` columns, run count)."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    summaries = []
    for group in groups.values():
        summary = {column: "" for column in group[0]}
        summary.update({k: group[0][k] for k in keys}, run=f"mean ± std over {runs_text(len(group))}")
        if "cell" not in keys:
            summary["cell"] = f"{len({r['cell'] for r in group})} distinct"
        for column in numeric:  # (mean, sample std) of the values that are not None, or None
            values = [r[column] for r in group if r[column] is not None]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[column] = (statistics.fmean(values), spread) if values else None
        if "device" in summary:
            summary["device"] = ", ".join(sorted({str(r["device"]) for r in group}))
        summaries.append((summary, len(group)))
    return summaries


def runs_text(count):
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

    body = ["| " + " | ".join(text(v) for v in row.values()) + " |" for row in rows + [s for s, _ in summaries]]
    return ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0]), *body]


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
