"""Draw the NAS-Bench-201 accuracy trajectory of a search from its history.jsonl: per data set the sampled cells'
min-max band and median, the derived cell, a line per progressive stage. The search draws it; redraw it with

    python plot_trajectory.py experiments/train_search-20260101-120000
    python plot_trajectory.py RUN_DIR --out trajectory.pdf
"""

import argparse
import json
import logging
from pathlib import Path

from runkit import run_flags, run_folder
from runkit.utils import UserError, exits_cleanly

from benchmark import DATASETS

logger = logging.getLogger(__name__)

TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "ImageNet16-120": "ImageNet16-120"}
STATS = ("min", "median", "max")


def read_history(run_dir):
    """The records of `RUN_DIR/history.jsonl`, one per epoch."""
    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: no such file; give the run directory of a search (it holds history.jsonl)")
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path} line {line_no}: not JSON ({err})") from None
    return records


def trajectory_series(records):
    """What the figure draws, checked: 1-based epochs, per dataset the derived cell's and the sampled accuracies, the
    stage starts `[(x, stage number)]`, the note and the `missing` line. A cell not in NAS-Bench-201 is NaN: a gap."""
    usable = sorted((r for r in records if isinstance(r, dict) and "benchmark" in r), key=lambda r: r["epoch"])
    if not usable:
        how = "search with the default --benchmark (the shipped table), another CSV table or the official file"
        raise UserError(f"the history has no benchmark accuracies (a search with --benchmark none); {how}")
    epochs = [int(r["epoch"]) + 1 for r in usable]
    # A run with --trajectory_samples 0 records the derived cell only: no band then.
    sampled_records = [(e, r) for e, r in zip(epochs, usable) if "trajectory" in r]
    nan, trajectories = float("nan"), [r["trajectory"] for _, r in sampled_records]
    series = {}
    for dataset in DATASETS:
        try:
            derived = [nan if r["benchmark"] is None else float(r["benchmark"][dataset]) for r in usable]
            sampled = {s: [nan if t is None else float(t[dataset][s]) for t in trajectories] for s in STATS}
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"history record lacks {dataset} accuracies ({type(err).__name__}: {err})") from None
        series[dataset] = {"derived": derived, "sampled": sampled}
    starts = zip(epochs[1:], usable[1:], usable)
    stages = [(x - 0.5, int(r["stage"]) + 1) for x, r, before in starts if r.get("stage", 0) != before.get("stage", 0)]
    derived_out = sum(r["benchmark"] is None for r in usable)
    sampled_out = sum(int(r.get("trajectory_missing", 0)) for _, r in sampled_records)
    missing = f"the derived cell of {derived_out} epoch(s), {sampled_out} sampled cell(s)"
    missing = f"not in NAS-Bench-201, left out: {missing}" if derived_out or sampled_out else None
    note = next((r["benchmark_note"] for r in usable if r.get("benchmark_note")), None)
    sampled = [e for e, _ in sampled_records]
    return dict(epochs=epochs, sampled_epochs=sampled, series=series, stage_starts=stages, note=note, missing=missing)


def draw_trajectory(records):
    """The trajectory figure of `records` (history lines), a matplotlib Figure on an Agg canvas."""
    data = trajectory_series(records)
    from matplotlib.figure import Figure  # the object API leaves pyplot's global backend alone
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(4.2 * len(DATASETS), 3.6), layout="constrained")
    axes = fig.subplots(1, len(DATASETS))
    epochs, sampled_epochs = data["epochs"], data["sampled_epochs"]
    band = dict(color="tab:blue", alpha=0.2, label="sampled architectures (min-max)")
    derived = dict(color="tab:red", linewidth=1.8, marker="o" if len(epochs) <= 30 else None, markersize=3)
    stage = dict(xycoords=("data", "axes fraction"), xytext=(3, -3), textcoords="offset points", va="top")
    for ax, dataset in zip(axes, DATASETS):
        sampled = data["series"][dataset]["sampled"]
        if len(sampled_epochs) == 1:  # a band one epoch wide has no area: a bar and a tick instead
            ax.vlines(sampled_epochs, sampled["min"], sampled["max"], linewidth=8, **band)
            ax.plot(sampled_epochs, sampled["median"], "_", color="tab:blue", markersize=14, label="sampled median")
        elif sampled_epochs:
            ax.fill_between(sampled_epochs, sampled["min"], sampled["max"], linewidth=0, **band)
            ax.plot(sampled_epochs, sampled["median"], "--", color="tab:blue", linewidth=1.2, label="sampled median")
        ax.plot(epochs, data["series"][dataset]["derived"], "-", label="derived architecture", **derived)
        for x, number in data["stage_starts"]:
            ax.axvline(x, color="0.3", linestyle=":", linewidth=1.2)
            ax.annotate(f"stage {number}", (x, 1), fontsize=8, color="0.3", **stage)
        ax.set(title=TITLES[dataset], xlabel="search epoch", ylabel="test accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    axes[0].legend(loc="best", fontsize=8)
    title = "NAS-Bench-201 accuracy during the search (200-epoch training)"
    fig.suptitle("\n".join(line for line in (title, data["note"], data["missing"]) if line))
    return fig


def plot_trajectory(records, out_path):
    """Draw the trajectory figure of `records` (history lines) into `out_path`."""
    fig = draw_trajectory(records)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    return Path(out_path)


def get_parser():
    desc = "Redraw trajectory.png of a search run from its history.jsonl."
    parser = argparse.ArgumentParser(description=desc, formatter_class=run_flags.HelpFormatter)
    group = parser.add_argument_group("plot")
    group.add_argument("run_dir", type=str, help="run directory of a search made with a benchmark")
    group.add_argument("--out", type=str, default=None, help="output image (default: RUN_DIR/trajectory.png)")
    return parser


@exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out) if args.out else Path(args.run_dir) / "trajectory.png"
    run_folder.check_writable(out, "--out")  # before any drawing, so a path that cannot be written ends in one line
    plot_trajectory(read_history(args.run_dir), out)
    logger.info("wrote %s", out)


if __name__ == "__main__":
    main()
