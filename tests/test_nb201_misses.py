"""A cell outside NAS-Bench-201 (an op a researcher added to the 201 space) does not stop a search: it is recorded
as not in NAS-Bench-201 (trajectory.query_benchmark), the trajectory plot leaves it out, and the search goes on."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY_201

# The quick tier (`python -m pytest tests -m quick`): method and paper tests, in-process, seconds each.
pytestmark = pytest.mark.quick

EXTRA = "nor_conv_5x5"  # not one of NAS-Bench-201's five ops


def _space_with_extra_op(load_space, monkeypatch, *more):
    """The 201 space's modules (and the `more` ones, imported with them) with `EXTRA` added to OPS and
    PRIMITIVES (the last column of beta)."""
    names = ("operations", "genotypes", "model_search", "benchmark", "benchmark", "train_search", *more)
    modules = load_space("201-space", *names)
    operations, genotypes = modules[:2]
    monkeypatch.setitem(
        operations.OPS,
        EXTRA,
        lambda C_in, C_out, stride, affine: operations.ReLUConvBN(C_in, C_out, 5, stride, 2, affine),
    )
    genotypes.PRIMITIVES.append(EXTRA)  # the list every module reads (the modules are dropped afterwards)
    return modules


def test_cells_holding_an_unknown_op_are_recorded_not_raised(load_space, monkeypatch, nb201_table, caplog):
    _, genotypes, model_search, trajectory, benchmark, search = _space_with_extra_op(load_space, monkeypatch)
    extra = genotypes.PRIMITIVES.index(EXTRA)
    bench = benchmark.load_benchmark(nb201_table)
    model = model_search.Network(4, 1, 10, 1, "dirichlet")
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
