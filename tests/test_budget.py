"""Search within a budget (`--cost`): the cost model equals the counts of train.py's networks, `--cost none` leaves
the search as it was, a tight target binds the derived cell, resume is exact with the term on, and a budget that
cannot work is refused in one line."""

import itertools
import json
import random
import re

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY_201, TINY_DARTS_TRAIN, assert_one_line_error
from interrupted_run import interrupted

SPACES = ["201-space", "DARTS-space"]
SEARCH = {
    "201-space": [*TINY_201, "--epochs", "2", "--benchmark", "none", "--max_steps_per_epoch", "2"],
    "DARTS-space": (
        "--dataset synthetic --layers 3 --init_channels 4 --batch_size 4 --stage_epochs 1 1 --stage_k 2 1 "
        "--warmup_epochs 0 --max_steps_per_epoch 2 --device cpu --workers 0"
    ).split(),
}
# Tight targets (millions of parameters): 201's cells cost 0.0733 M without a conv and 0.1013 M with one 1x1 conv,
# so only conv-free cells meet 0.09; DARTS' cells cost 1.37 M with pools only, 3.04 M with dil_conv_3x3 only.
TIGHT = {"201-space": 0.09, "DARTS-space": 2.0}
FAST_BETA = ["--arch_learning_rate", "0.1"]  # beta moves within the few steps of a test


def cells(space, genotypes, count=6):
    """The named cells of `genotypes` and `count` random ones."""
    rng = random.Random(0)
    found = list(genotypes.NAMED.values())
    for _ in range(count):
        if space == "201-space":
            found.append(genotypes.Structure.from_edges([rng.choice(genotypes.PRIMITIVES) for _ in genotypes.EDGES]))
            continue
        normal, reduce = (
            [(rng.choice(genotypes.PRIMITIVES), j) for node in range(4) for j in rng.sample(range(2 + node), 2)]
            for _ in range(2)
        )
        found.append(genotypes.Genotype(normal, [2, 3, 4, 5], reduce, [2, 3, 4, 5]))
    return found


def network_counts(space, model, budget, cell, num_classes, size, imagenet=False):
    """What train.py counts of its network for `cell`: (parameters without an auxiliary head, multiply-adds)."""
    if space == "201-space":
        net = model.Network(16, 5, cell, num_classes)
        params = sum(p.numel() for p in net.parameters())
    else:
        net = (model.NetworkImageNet(48, num_classes, 14, True, cell) if imagenet else
               model.NetworkCIFAR(36, num_classes, 20, True, cell))  # fmt: skip
        params = model.param_count(net)
    return {"params": params, "flops": budget.count_flops(net, (3, size, size))}


@pytest.mark.quick
@pytest.mark.parametrize("space", SPACES)
def test_the_cost_model_equals_the_counts_of_the_trained_network(load_space, space):
    model, genotypes, budget = load_space(space, "model", "genotypes", "runkit.budget")
    costs = model.cost_model(10, 32)
    for cell in cells(space, genotypes):
        assert costs.of(model.cost_rows(cell)) == network_counts(space, model, budget, cell, 10, 32), cell
    # The other image sizes: NAS-Bench-201's ImageNet16-120, and train_imagenet.py's network.
    imagenet = space == "DARTS-space"
    cell = genotypes.DrNAS_imagenet if imagenet else genotypes.DrNAS
    num_classes, size = (1000, 224) if imagenet else (120, 16)
    costs = model.cost_model(num_classes, size, imagenet=True) if imagenet else model.cost_model(num_classes, size)
    assert costs.of(model.cost_rows(cell)) == network_counts(space, model, budget, cell, num_classes, size, imagenet)


@pytest.mark.quick
def test_the_cost_model_knows_nas_bench_201s_figures_and_bounds(load_space):
    model, genotypes = load_space("201-space", "model", "genotypes")
    costs = model.cost_model(10, 32)
    all_3x3 = genotypes.Structure.from_edges(["nor_conv_3x3"] * 6)
    assert costs.of(model.cost_rows(all_3x3)) == {"params": 1531546, "flops": 220119690}  # the benchmark's
    every_cell = [costs.of(enumerate(ops)) for ops in itertools.product(range(5), repeat=6)]
    for kind in ("params", "flops"):
        figures = [cost[kind] for cost in every_cell]
        assert costs.bounds(kind) == (min(figures), max(figures))


@pytest.mark.quick
def test_the_darts_bounds_are_cells_of_the_space(load_space):
    model, genotypes = load_space("DARTS-space", "model", "genotypes")
    costs = model.cost_model(10, 32)

    def uniform(op):
        edges = [(op, 0), (op, 1)] * 4
        return costs.of(model.cost_rows(genotypes.Genotype(edges, [2, 3, 4, 5], edges, [2, 3, 4, 5])))

    for kind in ("params", "flops"):
        assert costs.bounds(kind) == (uniform("max_pool_3x3")[kind], uniform("sep_conv_5x5")[kind])
        assert all(costs.bounds(kind)[0] < costs.of(model.cost_rows(c))[kind] < costs.bounds(kind)[1]
                   for c in cells("DARTS-space", genotypes))  # fmt: skip


@pytest.mark.quick
@pytest.mark.parametrize("space", SPACES)
def test_the_cost_is_that_of_train_py_at_its_defaults(load_space, space):
    model, train = load_space(space, "model", "train")
    defaults = {name: train.get_parser().get_default(name) for name in ("init_channels", "layers")}
    explicit = model.cost_model(10, 32, C=defaults["init_channels"], layers=defaults["layers"])
    assert model.cost_model(10, 32).fixed == explicit.fixed
    if space == "DARTS-space":
        train_imagenet = load_space(space, "train_imagenet")
        parser = train_imagenet.get_parser()
        explicit = model.cost_model(10, 64, parser.get_default("init_channels"), parser.get_default("layers"), True)
        assert model.cost_model(10, 64, imagenet=True).fixed == explicit.fixed


@pytest.mark.parametrize("space", SPACES)
def test_train_py_prints_the_figures_of_the_cost_model(load_space, tmp_path, restore_logging, space):
    model, genotypes, train = load_space(space, "model", "genotypes", "train")
    if space == "201-space":
        argv, layers, cell = [*TINY_201, "--epochs", "1", "--max_steps_per_epoch", "1"], 1, genotypes.DrNAS
    else:
        argv, layers, cell = [*TINY_DARTS_TRAIN, "--dataset", "synthetic", "--layers", "5"], 5, genotypes.DrNAS_cifar10
    train.main([*argv, "--save", str(tmp_path / "run")])  # in this process, as the searches below
    log = (tmp_path / "run" / "log.txt").read_text()
    params, flops = re.search(r"param count = (\d+) .*multiply-adds \(FLOPs\) = (\d+)", log).groups()
    figures = model.cost_model(10, 32, C=4, layers=layers).of(model.cost_rows(cell))
    assert figures == {"params": int(params), "flops": int(flops)}


def finished(run_dir):
    """(checkpoint, history records, genotype.json) of a finished search in `run_dir`."""
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    return checkpoint, history, json.loads((run_dir / "genotype.json").read_text())


def assert_same(a, b, where="task"):
    """Two nested checkpoint states are equal, tensors bit for bit."""
    if torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, (dict, list, tuple)):
        assert len(a) == len(b), where
        keys = a.keys() if isinstance(a, dict) else range(len(a))
        for key in keys:
            assert_same(a[key], b[key], f"{where}.{key}")
    else:
        assert a == b, where


@pytest.mark.parametrize("space", SPACES)
def test_cost_none_searches_as_before_and_a_tight_target_binds_the_derived_cell_and_resumes_exactly(
    load_space, tmp_path, restore_logging, space
):
    train_search, architect, utils = load_space(space, "train_search", "architect", "runkit.utils")
    train_search.main([*SEARCH[space], *FAST_BETA, "--cost", "none", "--save", str(tmp_path / "none")])

    def before(net, reg_type, reg_scale, budget=None):
        assert budget is None
        return torch.autograd.grad(reg_scale * architect.REGULARIZERS[reg_type](net), net.arch_parameters())

    with pytest.MonkeyPatch.context() as patch:  # the search before --cost existed: the regularisers' gradient alone
        patch.setattr(train_search, "cost_model", lambda *args, **kwargs: None)
        patch.setattr(train_search.budget, "make_budget", lambda *args: None)
        patch.setattr(architect, "regularizer_grads", before)
        train_search.main([*SEARCH[space], *FAST_BETA, "--save", str(tmp_path / "before")])
    (checkpoint, history, saved), (earlier, _, _) = finished(tmp_path / "none"), finished(tmp_path / "before")
    assert_same(checkpoint["task"], earlier["task"])
    # Every epoch records the derived cell's exact figures (as genotype.json does) and the surrogate's.
    exact = saved["cost"]
    assert history[-1]["cell_params"] == exact["params"] / 1e6 and history[-1]["cell_flops"] == exact["flops"] / 1e6
    assert all(record["expected_params"] > 0 and record["expected_flops"] > 0 for record in history)
    tags = EventAccumulator(str(tmp_path / "none" / "tb")).Reload().Tags()["scalars"]
    assert {"cell/params", "cell/flops", "expected/params", "expected/flops"} <= set(tags)
    assert history[-1]["cell_params"] > TIGHT[space], "without the term the cell is over the target"

    budget = ["--cost", "params", "--cost_target", str(TIGHT[space]), *FAST_BETA]
    train_search.main([*SEARCH[space], *budget, "--save", str(tmp_path / "bound")])
    interrupted(utils, train_search.main, [*SEARCH[space], *budget, "--save", str(tmp_path / "resumed")], {1})
    bound, history, saved = finished(tmp_path / "bound")
    assert history[-1]["cell_params"] <= TIGHT[space] and saved["cost"]["params"] <= TIGHT[space] * 1e6
    assert history[-1]["expected_params"] < history[0]["expected_params"]
    assert_same(bound["task"], finished(tmp_path / "resumed")[0]["task"])


@pytest.mark.parametrize("space", SPACES)
def test_a_budget_that_cannot_work_is_refused_in_one_line(load_space, capsys, tmp_path, space):
    train_search = load_space(space, "train_search")
    cheapest, dearest = {"201-space": ("0.0733", "1.5315"), "DARTS-space": ("1.3701", "5.1441")}[space]
    reach = f"the cells of this space cost {cheapest} to {dearest} million parameters"
    cases = [
        (["--cost_target", "1"], "needs --cost params or --cost flops"),
        (["--cost", "params"], f"needs --cost_target T in millions; {reach}"),
        (["--cost", "params", "--cost_target", "0.01"], f"below the cheapest cell: {reach}"),
        (["--cost", "params", "--cost_target", "100"], f"above the dearest cell (it limits nothing): {reach}"),
        (["--cost", "flops", "--cost_target", "300", "--cost_scale", "-1"], "--cost_scale -1.0 is out of range"),
    ]
    for flags, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            train_search.main([*SEARCH[space], *flags, "--save", str(tmp_path / "run")])
        assert_one_line_error(exit_info.value.code, capsys.readouterr().err, expected)
        assert not (tmp_path / "run").exists(), "a refused run writes nothing"


@pytest.mark.parametrize("space", SPACES)
def test_the_term_works_with_other_methods_regularisers_the_second_order_and_stages(
    load_space, tmp_path, restore_logging, space
):
    """A budget binds a second-order search with the KL prior and a Gumbel sampler, through its pruning stage."""
    others = ["--unrolled", "--reg_type", "kl", "--method", "gdas" if space == "201-space" else "snas"]
    budget = ["--cost", "flops", "--cost_target", "10" if space == "201-space" else "300", *FAST_BETA, *others]
    script, argv = "train_search", SEARCH[space]
    if space == "201-space":  # the progressive preset: two stages, pruned to 3 ops in the second
        script, argv = "train_search_progressive", [*TINY_201, "--benchmark", "none", "--max_steps_per_epoch", "2"]
        argv += "--stage_epochs 1 1 --stage_k 2 1 --stage_keep 5 3 --warmup_epochs 0".split()
    load_space(space, script).main([*argv, *budget, "--save", str(tmp_path / "run")])
    _, history, saved = finished(tmp_path / "run")
    assert [record["stage"] for record in history] == [0, 1]
    assert history[-1]["cell_flops"] <= float(budget[3]) and saved["cost"]["flops"] <= float(budget[3]) * 1e6
    assert history[-1]["expected_flops"] < history[0]["expected_flops"]
