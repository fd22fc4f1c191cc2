"""Draw the normal and reduction cells of a genotype to a PNG, SVG or PDF (matplotlib).

    python visualize.py DrNAS_cifar10 --out ../docs/DrNAS_cifar10.png
    python visualize.py experiments/train_search-.../genotype.json --out cell.svg

Nodes: the inputs c_{k-2}, c_{k-1}, the nodes 0..3 and the output c_{k}; each edge carries its op's name.
"""

import argparse
import logging
from pathlib import Path

from runkit import run_flags, run_folder, utils
from runkit.utils import UserError

import genotypes

logger = logging.getLogger(__name__)

# One colour per built-in op (in PRIMITIVES' order), so the same op reads the same in both cells; others are black.
COLORS = dict(zip(genotypes.PRIMITIVES, ("#1f77b4", "#17becf", "#7f7f7f", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd")))
FORMATS = (".png", ".svg", ".pdf")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=run_flags.HelpFormatter)
    text = f"a genotype name ({', '.join(genotypes.NAMED)}) or a genotype.json from a search"
    parser.add_argument("arch", type=str, metavar="NAME_OR_JSON", help=text)
    parser.add_argument("--out", type=str, default="cell.png", help="output picture (.png, .svg or .pdf)")
    parser.add_argument("--dpi", type=int, default=150, help="resolution of a PNG")
    return parser


SPACING = 2.2  # horizontal distance between neighbouring nodes
BEND = 0.6  # arc height / half the chord length: longer edges arc higher, so labels stay apart


def draw_cell(ax, edges, concat, title):
    """Draw one cell (`edges` = [(op, input index)], two per node) as an arc diagram."""
    names = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(len(edges) // 2)]
    pos = {name: i * SPACING for i, name in enumerate(names + ["c_{k}"])}  # x of every node, on one line
    arrow = dict(arrowstyle="-|>", mutation_scale=14, shrinkA=14, shrinkB=14)
    for position, (op, index) in enumerate(edges):
        (_, first), (_, second) = edges[position - position % 2 : position - position % 2 + 2]
        # A node's edge from the earlier node arcs above, the other below (the first above if both share an input).
        above = index == min(first, second) if first != second else position % 2 == 0
        x0, x1 = pos[names[index]], pos[str(position // 2)]
        # matplotlib's arc3 bends a left-to-right edge downwards for a positive rad.
        rad, color = (-BEND if above else BEND), COLORS.get(op, "black")
        props = dict(arrow, color=color, lw=1.8, connectionstyle=f"arc3,rad={rad}")
        ax.annotate("", xy=(x1, 0), xytext=(x0, 0), arrowprops=props)
        # The curve's midpoint lies rad/2 times the chord length off the line.
        box = dict(boxstyle="round,pad=0.2", fc="white", ec=color, lw=0.6)
        ax.text((x0 + x1) / 2, -rad / 2 * (x1 - x0), op, fontsize=9, ha="center", va="center", color=color, bbox=box)
    props = dict(arrow, color="#aaaaaa", lw=1.0, ls="--", connectionstyle="arc3,rad=0.25")
    for node in concat:
        ax.annotate("", xy=(pos["c_{k}"], 0), xytext=(pos[names[node]], 0), arrowprops=props)
    for name, x in pos.items():
        is_io = name.startswith("c_")
        box = dict(boxstyle="round,pad=0.45", fc="#c6dbef" if is_io else "#fdd0a2", ec="black")
        ax.text(x, 0, f"${name}$" if is_io else name, fontsize=12, ha="center", va="center", zorder=3, bbox=box)
    height = BEND / 2 * (max(pos.values()) - SPACING)
    ax.set_title(title, fontsize=13)
    ax.set(xlim=(-0.8, max(pos.values()) + 0.8), ylim=(-height - 0.5, height + 0.5))
    ax.axis("off")


def plot_genotype(genotype, out, dpi=150, name=""):
    """Write a picture of both cells of `genotype` to `out`."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display

    fig = Figure(figsize=(12, 11), layout="tight")
    top, bottom = fig.subplots(2, 1)
    draw_cell(top, genotype.normal, genotype.normal_concat, f"{name} normal cell".strip())
    draw_cell(bottom, genotype.reduce, genotype.reduce_concat, f"{name} reduction cell".strip())
    fig.savefig(out, dpi=dpi)


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"--out {out}: unknown picture format; use one of {', '.join(FORMATS)}")
    run_folder.check_writable(out, "--out")  # before any drawing, so a path that cannot be written ends in one line
    genotype = genotypes.load_genotype(args.arch, flag="genotype")
    out.parent.mkdir(parents=True, exist_ok=True)
    name = args.arch if args.arch in genotypes.NAMED else Path(args.arch).stem
    plot_genotype(genotype, out, args.dpi, name)
    logger.info("wrote %s", out)


if __name__ == "__main__":
    main()
