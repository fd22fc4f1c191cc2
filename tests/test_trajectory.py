"""The NAS-Bench-201 trajectory (201-space/benchmark.py): cells drawn from the search's current distribution.
A cell outside NAS-Bench-201 (an op a researcher added to the 201 space) does not stop a search: it is recorded
as not in NAS-Bench-201 (trajectory.query_benchmark), the trajectory plot leaves it out, and the search goes on."""

import collections
import json

import numpy as np
import pytest
import torch

from conftest import TINY_201

pytestmark = pytest.mark.quick


def _model(load_space, method, beta):
    model_search = load_space("201-space", "model_search")
    model = model_search.Network(4, 1, 10, 1, method)
    with torch.no_grad():
        model.beta.copy_(beta)
    return model


@pytest.mark.parametrize("method", ["dirichlet", "darts"])
def test_samples_follow_the_distribution_and_respect_pruning(load_space, method):
    trajectory, genotypes = load_space("201-space", "benchmark", "genotypes")
    ops, n = genotypes.PRIMITIVES, 2000
    beta = torch.full((6, len(ops)), -2.0)
    beta[:, ops.index("nor_conv_3x3")] = 0.0
    model = _model(load_space, method, beta)
    model.kept[0] = [ops.index("skip_connect"), ops.index("avg_pool_3x3")]  # edge 0 pruned to two ops
    archs = trajectory.sample_architectures(model, n, np.random.default_rng(0))
    assert archs == trajectory.sample_architectures(model, n, np.random.default_rng(0)), "seeded"
    edge_ops = [[token.split("~")[0] for token in a.replace("+", "").split("|") if token] for a in archs]
    per_edge = [collections.Counter(cell[e] for cell in edge_ops) for e in range(6)]
    assert set(per_edge[0]) == {"skip_connect", "avg_pool_3x3"}, "a pruned op is never drawn"
    # How often the favoured op wins a draw: Dirichlet(elu(beta) + 1) = Dirichlet(1, e^-2 x 4), estimated
    # here with NumPy alone (about 0.73), or softmax(beta) for the categorical methods (0.65): the two differ
    # by more than the tolerance, so drawing from the wrong one fails too.
    if method == "dirichlet":
        draws = np.random.default_rng(1).dirichlet([1.0] + [np.exp(-2.0)] * 4, size=200_000)
        p = float((draws.argmax(1) == 0).mean())
    else:
        p = float(1 / (1 + 4 * np.exp(-2.0)))
    for counts in per_edge[1:]:
        share = counts["nor_conv_3x3"] / n
        assert abs(share - p) < 4 * (p * (1 - p) / n) ** 0.5 + 0.005, (method, p, counts)


def test_query_records_the_derived_cell_and_the_sampled_spread(load_space, nb201_table):
    trajectory, benchmark, search = load_space("201-space", "benchmark", "benchmark", "train_search")
    bench = benchmark.load_benchmark(nb201_table)
    model = _model(load_space, "dirichlet", 1e-3 * torch.randn(6, 5, generator=torch.Generator().manual_seed(0)))
    args = search.get_parser().parse_args(["--dataset", "cifar10", "--trajectory_samples", "50", "--seed", "3"])
    record = trajectory.query_benchmark(model, bench, args, epoch=4)
    assert record["benchmark"] == bench.query(str(model.genotype()))
    assert record["nb201_cifar100"] == record["benchmark"]["cifar100"] and "benchmark_note" not in record
    archs = trajectory.sample_architectures(model, 50, np.random.default_rng(3 * 100003 + 4))
    cifar10, summary = sorted(bench.query(a)["cifar10"] for a in archs), record["trajectory"]["cifar10"]
    assert (summary["min"], summary["max"]) == (cifar10[0], cifar10[-1])
    assert summary["min"] < summary["median"] < summary["max"], "nearly uniform beta: a spread of cells"
    args = search.get_parser().parse_args(["--dataset", "synthetic"])
    assert trajectory.query_benchmark(model, bench, args, 0)["benchmark_note"].endswith("not measured on synthetic")


EXTRA = "nor_conv_5x5"  # not one of NAS-Bench-201's five ops


def _space_with_extra_op(load_space, monkeypatch, *more):
    """The 201 space's modules (and `more`) with `EXTRA` added to OPS and PRIMITIVES (the last column of beta)."""
    names = ("operations", "genotypes", "model_search", "benchmark", "benchmark", "train_search", *more)
    modules = load_space("201-space", *names)
    operations, genotypes = modules[:2]
    conv_5x5 = lambda C_in, C_out, stride, affine: operations.ReLUConvBN(C_in, C_out, 5, stride, 2, affine)  # noqa: E731
    monkeypatch.setitem(operations.OPS, EXTRA, conv_5x5)
    genotypes.PRIMITIVES.append(EXTRA)  # the list every module reads (the modules are dropped afterwards)
    return modules


def test_cells_holding_an_unknown_op_are_recorded_not_raised(load_space, monkeypatch, nb201_table, caplog):
    _, genotypes, model_search, trajectory, benchmark, search = _space_with_extra_op(load_space, monkeypatch)
    extra = genotypes.PRIMITIVES.index(EXTRA)
    bench, model = benchmark.load_benchmark(nb201_table), model_search.Network(4, 1, 10, 1, "dirichlet")
    with torch.no_grad():  # the extra op wins edge 0 (so the derived cell holds it), nor_conv_3x3 the others
        model.beta.zero_()
        model.beta[1:, genotypes.PRIMITIVES.index("nor_conv_3x3")] = 0.5
        model.beta[0, extra] = 0.5
    assert EXTRA in str(model.genotype())
    args = search.get_parser().parse_args(["--dataset", "cifar10", "--trajectory_samples", "60", "--seed", "3"])
    with caplog.at_level("INFO"):
        record = trajectory.query_benchmark(model, bench, args, epoch=2)
    assert record["benchmark"] is None and not any(key.startswith("nb201_") for key in record)
    assert f"{model.genotype()} is not in NAS-Bench-201" in caplog.text
    # The drawn cells the benchmark holds are summarised as before; the others are counted.
    archs = trajectory.sample_architectures(model, 60, np.random.default_rng(3 * 100003 + 2))
    held = [bench.query(a)["cifar10"] for a in archs if EXTRA not in a]
    assert 0 < len(held) < 60 and record["trajectory_missing"] == 60 - len(held)
    assert (record["trajectory"]["cifar10"]["min"], record["trajectory"]["cifar10"]["max"]) == (min(held), max(held))
    assert f"({60 - len(held)} not in NAS-Bench-201, left out)" in caplog.text
    json.dumps(record)  # history.jsonl takes it as it is
    model.kept[0] = [extra]  # every drawn cell now holds the extra op
    record = trajectory.query_benchmark(model, bench, args, epoch=3)
    assert record["trajectory"] is None and record["trajectory_missing"] == 60


def test_search_goes_on_and_the_plot_leaves_such_cells_out(load_space, monkeypatch, tmp_path, restore_logging):
    modules = _space_with_extra_op(load_space, monkeypatch, "train_search", "plot_trajectory")
    genotypes, search, train_search, plot = modules[1], *modules[-3:]
    build_model = search.build_model

    def favouring_the_extra_op(*args, **kwargs):  # the search's derived cell holds the extra op on every edge
        model = build_model(*args, **kwargs)
        with torch.no_grad():
            model.beta[:, genotypes.PRIMITIVES.index(EXTRA)] = 1.0
        return model

    monkeypatch.setattr(search, "build_model", favouring_the_extra_op)
    run = tmp_path / "run"
    flags = ["--epochs", "2", "--max_steps_per_epoch", "1", "--trajectory_samples", "10", "--save", str(run)]
    train_search.main([*TINY_201, *flags])
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1], "the search went on past its first epoch"
    assert all(r["benchmark"] is None and r["trajectory_missing"] >= 1 for r in history)
    assert (run / "trajectory.png").stat().st_size > 10_000
    assert "is not in NAS-Bench-201" in (run / "log.txt").read_text()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2
    # A history mixing held cells and cells outside the benchmark: the latter are gaps, and the title counts them.
    mixed = [dict(history[0], epoch=0), {**history[1], "epoch": 1, "benchmark": {d: 50.0 for d in plot.DATASETS}}]
    mixed[1]["trajectory"] = {d: {"min": 40.0, "median": 45.0, "max": 50.0} for d in plot.DATASETS}
    fig = plot.draw_trajectory(mixed)
    for ax in fig.axes:
        (derived,) = [line for line in ax.get_lines() if line.get_label() == "derived architecture"]
        assert np.isnan(derived.get_ydata()[0]) and derived.get_ydata()[1] == 50.0
    assert "the derived cell of 1 epoch(s)" in fig._suptitle.get_text()
