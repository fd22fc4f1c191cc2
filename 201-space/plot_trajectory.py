"""Draw the accuracy trajectory of a search run with a NAS-Bench-201 benchmark.

A search run with `--benchmark PATH` records in `history.jsonl`, for every epoch, the
benchmark accuracy of the derived architecture and the min / median / max accuracy of
architectures sampled from the current Dirichlet. The figure has one panel per dataset:
a band between the min and max of the sampled architectures, their median dashed, and
the derived architecture as a solid line. The search draws it at its end; redraw it with

    python plot_trajectory.py experiments/train_search-20260101-120000
    python plot_trajectory.py RUN_DIR --out trajectory.pdf
"""

import argparse
import json
import logging
from pathlib import Path

from benchmark import DATASETS
from utils import UserError, exits_cleanly

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


def _series(records):
    """Epochs, derived accuracies and sampled summaries per dataset, checked."""
    usable = [r for r in records if isinstance(r, dict) and "benchmark" in r and "trajectory" in r]
    if not usable:
        raise UserError(
            "the history has no benchmark accuracies or trajectory; run the search with "
            "--benchmark PATH (the official NAS-Bench-201 file or a CSV table)"
        )
    usable.sort(key=lambda r: r["epoch"])
    epochs = [int(r["epoch"]) for r in usable]
    series = {}
    for dataset in DATASETS:
        try:
            derived = [float(r["benchmark"][dataset]) for r in usable]
            sampled = {s: [float(r["trajectory"][dataset][s]) for r in usable] for s in STATS}
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"history record lacks {dataset} accuracies ({type(err).__name__}: {err})") from None
        series[dataset] = (derived, sampled)
    return epochs, series


def plot_trajectory(records, out_path):
    """Draw the trajectory figure of `records` (history lines) into `out_path`."""
    epochs, series = _series(records)
    # The object API with an Agg canvas leaves pyplot's global backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(4.2 * len(DATASETS), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(DATASETS))
    marker = "o" if len(epochs) <= 30 else None
    for ax, dataset in zip(axes, DATASETS):
        derived, sampled = series[dataset]
        ax.fill_between(
            epochs,
            sampled["min"],
            sampled["max"],
            color="tab:blue",
            alpha=0.2,
            linewidth=0,
            label="sampled architectures (min-max)",
        )
        ax.plot(epochs, sampled["median"], "--", color="tab:blue", linewidth=1.2, label="sampled median")
        ax.plot(
            epochs,
            derived,
            "-",
            color="tab:red",
            linewidth=1.8,
            marker=marker,
            markersize=3,
            label="derived architecture",
        )
        ax.set_title(TITLES[dataset])
        ax.set_xlabel("search epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle("NAS-Bench-201 accuracy during the search (200-epoch training)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    return out_path


def get_parser():
    parser = argparse.ArgumentParser(
        description="Redraw trajectory.png of a search run from its history.jsonl.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    group = parser.add_argument_group("plot")
    group.add_argument("run_dir", type=str, help="run directory of a search made with --benchmark")
    group.add_argument("--out", type=str, default=None, help="output image (default: RUN_DIR/trajectory.png)")
    return parser


@exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out) if args.out else Path(args.run_dir) / "trajectory.png"
    plot_trajectory(read_history(args.run_dir), out)
    logger.info("wrote %s", out)


if __name__ == "__main__":
    main()
