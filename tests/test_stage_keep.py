"""`--stage_keep N1 N2 ...` in both search spaces."""

import pytest
import torch

from conftest import INTERRUPTED_RUN, TINY_201, popen_script, read_history

pytestmark = pytest.mark.quick

# Both spaces' progressive searches, tiny, k 4 -> 2; the tests add --stage_keep and --stage_epochs.
BASE = {
    "201-space": [*TINY_201, "--stage_k", "4", "2", "--warmup_epochs", "0", "--benchmark", "none"],
    "DARTS-space": (
        "--dataset synthetic --layers 3 --init_channels 8 --batch_size 4 --stage_k 4 2 --warmup_epochs 0 --device cpu "
        "--workers 0"
    ).split(),
}
KEEP = ["--stage_keep", "3", "2"]  # 3 ops per edge in stage 1, 2 in stage 2
SCRIPT = {"201-space": "train_search_progressive", "DARTS-space": "train_search"}


def _build(load_space, space, argv, state=None):
    """The search's supernet as its script builds it (seeded as the script seeds it), with the parsed flags."""
    search, script, utils = load_space(space, "train_search", SCRIPT[space], "runkit.utils")
    args = script.get_parser().parse_args(argv)
    utils.set_seed(args.seed)
    return search.build_model(args, 10, torch.device("cpu"), state), args


def _edges(model, space):
    """(kept PRIMITIVES indices, the MixedOp's ops, beta row) of every edge of every search cell."""
    if space == "201-space":
        cells = model.search_cells()
        return [(model.kept[e], list(edge.ops), model.beta[e]) for c in cells for e, edge in enumerate(c.edges)]
    betas = [(c, model.beta_reduce if c.reduction else model.beta_normal) for c in model.cells]
    return [(edge.kept, list(edge.ops), beta[e]) for c, beta in betas for e, edge in enumerate(c.edges)]


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_first_stage_keeps_n1_ops_by_initial_beta_from_the_start(load_space, space):
    model, _ = _build(load_space, space, [*BASE[space], *KEEP])
    edges = _edges(model, space)
    assert edges and all(len(kept) == len(ops) == 3 for kept, ops, _ in edges), "N1 = 3 ops on every edge"
    for kept, _, beta in edges:  # the 3 ops with the largest initial beta
        assert kept == sorted(beta.detach().topk(3).indices.tolist())
    again, _ = _build(load_space, space, [*BASE[space], *KEEP])
    assert [kept for kept, _, _ in _edges(again, space)] == [kept for kept, _, _ in edges], "fixed by the seed"
    # A resumed run rebuilds the checkpoint's pruned stage 1, tensor for tensor.
    state = {"k": model.k, "kept": model.kept, "model": model.state_dict(), "stage": 0}
    resumed, _ = _build(load_space, space, [*BASE[space], *KEEP, "--seed", "7"], state)
    assert resumed.kept == model.kept
    assert {k: v.shape for k, v in resumed.state_dict().items()} == {k: v.shape for k, v in state["model"].items()}
    resumed.load_state_dict(state["model"])
    full, _ = _build(load_space, space, BASE[space])  # the default --stage_keep searches every op in stage 1, as before
    n_ops = len(load_space(space, "genotypes").PRIMITIVES)
    assert all(len(kept) == len(ops) == n_ops for kept, ops, _ in _edges(full, space))


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_every_stage_logs_k_and_ops_when_it_starts_and_resume_in_stage_1_is_exact(load_space, tmp_path, space):
    # 2 + 1 epochs; the interrupted run dies after its first checkpoint (inside stage 1) and resumes there.
    argv = [*BASE[space], *KEEP, "--stage_epochs", "2", "1", "--max_steps_per_epoch", "2"]
    straight = popen_script(space, f"{SCRIPT[space]}.py", *argv, "--save", tmp_path / "straight")
    broken = popen_script(space, INTERRUPTED_RUN, SCRIPT[space], "1", "--", *argv, "--save", tmp_path / "resumed")
    for proc in (straight, broken):
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
    first, second = "stage 1/2: k=4, 3 ops kept per edge", "stage 2/2: k=2, 2 ops kept per edge"
    log = (tmp_path / "straight" / "log.txt").read_text()
    assert log.count(first) == 1 and log.count(second) == 1 and log.index(first) < log.index("epoch 1/3")
    resumed_log = (tmp_path / "resumed" / "log.txt").read_text()
    assert resumed_log.count(first) == 2 and resumed_log.count(second) == 1, "the resumed run names its stage"
    utils = load_space(space, "runkit.utils")
    a = utils.load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["task"]
    b = utils.load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["task"]
    assert a["kept"] == b["kept"]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], atol=1e-6, rtol=0, msg=key)
    assert [h["stage"] for h in read_history(tmp_path / "resumed")] == [0, 0, 1]


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_stage_keep_bounds_follow_the_primitives(load_space, space):
    """With one more op in PRIMITIVES, N1 may be that many ops and no more, refused in one line naming the bound."""
    search, script, genotypes, utils = load_space(space, "train_search", SCRIPT[space], "genotypes", "runkit.utils")
    genotypes.PRIMITIVES.append("extra_op")  # the list the search reads (the modules are dropped afterwards)
    n_ops, check = len(genotypes.PRIMITIVES), search.get_stages if space == "201-space" else search.check_args

    def refusal(*keep):
        argv = [*BASE[space], "--stage_epochs", "2", "2", "--stage_keep", *map(str, keep)]
        args = script.get_parser().parse_args(argv)
        try:
            check(args)
        except utils.UserError as err:
            return str(err)
        return None

    assert refusal(n_ops, 2) is None, f"{n_ops} ops are all the space's ops"
    message = refusal(n_ops + 1, 2)
    assert message is not None and f"{n_ops} ops" in message and "\n" not in message
    assert refusal(3, 0) is not None, "a stage keeps at least one op"
