"""One dialect: each concept below has the same name and parameters in both folders, but for trailing
parameters with defaults that one space adds for its own needs (the DARTS ImageNet supernet, torchrun)."""

import functools
import inspect

import pytest
import torch

SPACES = ("201-space", "DARTS-space")
SHARED = [
    ("train_search", "get_stages"), ("train_search", "build_model"), ("train_search", "sgd"),
    ("train_search", "enter_stage"), ("train_search", "search_step"), ("train_search", "infer"),
    ("train_search", "search"), ("train_search", "finish"), ("train_search", "main"), ("train", "main"),
    ("train", "train"), ("train", "finish"), ("train", "infer"),
    ("model_search", "gumbel_tau"), ("model_search", "concentration"), ("model_search", "Network.arch_parameters"),
    ("model_search", "Network.weights"), ("model_search", "Network.arch_weights"),
    ("model_search", "Network.kl_regularizer"), ("model_search", "Network.forward"),
    ("model_search", "Network.genotype"), ("model_search", "Network.prune"), ("model_search", "Network.widen"),
    ("model_search", "MixedOp.__init__"), ("model_search", "MixedOp.forward"), ("model_search", "MixedOp.widen"),
    ("model_search", "MixedOp.prune"), ("architect", "Architect"),
    ("architect", "Architect.step"), ("architect", "regularizer_grads"), ("genotypes", "save_genotype"),
    ("model", "cost_model"), ("model", "cost_rows"), ("model_search", "Network.expected_cost"),
]  # fmt: skip


@pytest.mark.parametrize(("module", "name"), SHARED, ids=[f"{m}.{n}" for m, n in SHARED])
def test_both_folders_define_the_concept_with_the_same_signature(load_space, module, name):
    definitions = [functools.reduce(getattr, name.split("."), load_space(space, module)) for space in SPACES]
    parameters = [inspect.signature(definition).parameters.values() for definition in definitions]
    signatures = [[(p.name, p.default is not inspect.Parameter.empty) for p in params] for params in parameters]
    shorter, longer = sorted(signatures, key=len)
    assert longer[: len(shorter)] == shorter, f"{module}.{name}: 201 {signatures[0]} vs DARTS {signatures[1]}"
    assert all(has_default for _, has_default in longer[len(shorter) :]), f"{module}.{name}: {signatures}"


def test_the_tables_of_samplers_and_regularisers_offer_the_same_names(load_space):
    tables = [load_space(space, "model_search", "architect") for space in SPACES]
    (ms201, arch201), (msdarts, archdarts) = tables
    assert list(ms201.SAMPLERS) == list(msdarts.SAMPLERS) == ["dirichlet", "darts", "snas", "gdas"]
    assert list(arch201.REGULARIZERS) == list(archdarts.REGULARIZERS)


@pytest.mark.parametrize("space", SPACES)
def test_kept_lists_the_primitives_indices_per_row_of_beta_and_held_out_accuracy_mixes_with_the_dirichlet_mean(
    load_space, space
):
    """`kept[e]`: ops still searched on row e of the arch parameters; `prune(keep)` keeps the largest-beta ones."""
    model_search, genotypes = load_space(space, "model_search", "genotypes")
    torch.manual_seed(0)
    model = model_search.Network(8, 1, 10) if space == "201-space" else model_search.Network(8, 10, 5, k=4)
    beta = torch.cat(model.arch_parameters()).detach()
    assert model.kept == [list(range(len(genotypes.PRIMITIVES)))] * len(beta)
    model.eval()  # the held-out accuracy mixes with the Dirichlet mean
    alpha = model_search.concentration(torch.stack(model.arch_parameters()).detach())
    weights, mean = model.arch_weights().detach(), alpha / alpha.sum(-1, keepdim=True)
    assert torch.allclose(weights.reshape(mean.shape), mean)
    model.prune(3)
    assert model.kept == [sorted(row.topk(3).indices.tolist()) for row in beta]
