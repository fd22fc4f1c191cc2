"""The NAS-Bench-201 trajectory of a search: what each epoch records from the benchmark.

Every epoch the search looks up the test accuracies of its derived cell (argmax per
edge) and summarises those of `--trajectory_samples` cells drawn from the current
Dirichlet (or softmax) distribution: min, median and max per data set. The records go
into history.jsonl and TensorBoard; plot_trajectory.py draws them. On a data set the
benchmark did not measure (synthetic, your own images) the figures describe the cells,
not the run, and the records say so. A cell the benchmark does not hold (one with an op
added to the space) is recorded as not in NAS-Bench-201 and the search goes on
(`query_benchmark`). Not a script.
"""

import logging

import numpy as np

from benchmark import NotInBenchmark, benchmark_note, summarize
from genotypes import PRIMITIVES, Structure
from model_search import concentration

logger = logging.getLogger(__name__)


def log_benchmark(benchmark, args):
    """The run's first word on NAS-Bench-201: the benchmark its epochs query, or that they query none."""
    if benchmark is None:
        logger.info("NAS-Bench-201 look-ups off (--benchmark none): no benchmark accuracies, no trajectory.png")
        return
    note = benchmark_note(args.dataset)
    logger.info(
        "NAS-Bench-201 %s %s (%d architectures) queried every epoch%s",
        benchmark.kind,
        benchmark.path,
        len(benchmark),
        f"; {args.dataset} is none of its data sets, so its figures describe the cells, not this run" if note else "",
    )


def query_benchmark(model, benchmark, args, epoch):
    """Benchmark accuracies of the derived architecture and of architectures drawn from the Dirichlet.

    The record: `benchmark`, the derived cell's accuracy per data set, and its flat copies `nb201_<dataset>`;
    with --trajectory_samples, `trajectory`: per data set the min / median / max over the drawn cells.
    A cell NAS-Bench-201 does not hold (`NotInBenchmark`: an op added to the space) is recorded, not an error:
    the derived one as `"benchmark": None` without `nb201_*` fields; drawn ones by their count
    `trajectory_missing` (present only when some are), `trajectory` then summarising the others (None when no
    drawn cell is held). The epoch's log says so in one line.
    """
    arch = str(model.genotype())
    accs = _lookup(benchmark, arch)
    # The flat nb201_* fields become the TensorBoard scalars nb201/<dataset>.
    record = {"benchmark": accs, **{f"nb201_{name}": acc for name, acc in (accs or {}).items()}}
    # On a data set the benchmark did not measure, the figures describe the cell, not this run.
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
        summary = " ".join(
            f"{k} {s['min']:.2f}/{s['median']:.2f}/{s['max']:.2f}" for k, s in (record["trajectory"] or {}).items()
        )
        left_out = f" ({missing} not in NAS-Bench-201, left out)" if missing else ""
        logger.info("sampled %d architectures%s: %s", len(archs), left_out, summary or "none in NAS-Bench-201")
    return record


def _lookup(benchmark, arch):
    """`benchmark.query(arch)`, or None for a cell the benchmark does not hold."""
    try:
        return benchmark.query(arch)
    except NotInBenchmark:
        return None


def sample_architectures(model, count, rng):
    """Architecture strings from `count` draws of the current distribution (argmax per edge)."""
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
