"""The NAS-Bench-201 trajectory (201-space/benchmark.py): cells drawn from the search's current distribution."""

import collections

import numpy as np
import pytest
import torch

# The quick tier (`python -m pytest tests -m quick`): method and paper tests, in-process, seconds each.
pytestmark = pytest.mark.quick


def _model(load_space, method, beta):
    model_search = load_space("201-space", "model_search")
    model = model_search.Network(4, 1, 10, 1, method)
    with torch.no_grad():
        model.beta.copy_(beta)
    return model


def _ops(arch):
    """The six op names of an architecture string, edge by edge."""
    return [token.split("~")[0] for token in arch.replace("+", "").split("|") if token]


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
    per_edge = [collections.Counter(_ops(a)[e] for a in archs) for e in range(6)]
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
    cifar10 = sorted(bench.query(a)["cifar10"] for a in archs)
    summary = record["trajectory"]["cifar10"]
    assert (summary["min"], summary["max"]) == (cifar10[0], cifar10[-1])
    assert summary["min"] < summary["median"] < summary["max"], "nearly uniform beta: a spread of cells"
    on_synthetic = trajectory.query_benchmark(
        model, bench, search.get_parser().parse_args(["--dataset", "synthetic"]), 0
    )
    assert on_synthetic["benchmark_note"].endswith("not measured on synthetic")
