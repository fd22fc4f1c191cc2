"""`--compile` on the CPU: compiled and eager training agree; drop path stays random and compiles once.

The script tests run inductor (a C++ compiler builds its kernels: about a minute each on
two cores); the drop-path tests trace the DARTS evaluation network with a counting backend,
which shows what `torch.compile` sees without building kernels.
"""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_201, assert_one_line_error, run_script


def history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler on the CPU")
def test_201_train_compiled_and_eager_agree(tmp_path):
    """One epoch of 201 train.py with and without --compile (same seed): the same losses and accuracy."""
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        save = tmp_path / name
        flags = [*TINY_201, "--epochs", "1", "--arch", "DrNAS", "--save", save, *extra]
        result = run_script("201-space", "train.py", *flags)
        assert result.returncode == 0, result.stderr
        runs[name] = history(save)[0]
        assert json.loads((save / "args.json").read_text())["compile"] is (name == "compiled")
    eager, compiled = runs["eager"], runs["compiled"]
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-3)
    assert compiled["test_loss"] == pytest.approx(eager["test_loss"], rel=1e-3)
    assert compiled["test_acc"] == pytest.approx(eager["test_acc"], abs=1.0)
    # The checkpoint holds the plain module's keys, so it loads into an uncompiled network.
    ckpt = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=True)
    assert not any("_orig_mod" in key for key in ckpt["task"]["model"])


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler on the CPU")
def test_201_second_order_search_compiled_and_eager_agree(tmp_path):
    """One epoch of the 201 search with --unrolled, with and without --compile: the cells compiled, the mixing
    weights eager, and the retained backward passes of the virtual step through compiled cells give the same
    search. `--method darts` (softmax weights): a Dirichlet draw is a rejection sampler, so rounding-level
    differences in beta can flip an acceptance and change a whole draw; the compiled cells are the same."""
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        save = tmp_path / name
        flags = [
            *TINY_201,
            "--epochs",
            "1",
            "--unrolled",
            "--method",
            "darts",
            "--benchmark",
            "none",
            "--save",
            save,
            *extra,
        ]
        result = run_script("201-space", "train_search.py", *flags)
        assert result.returncode == 0, result.stderr
        runs[name] = history(save)[0], torch.load(save / "checkpoint.pt", weights_only=True)["task"]
    (eager, eager_task), (compiled, compiled_task) = runs["eager"], runs["compiled"]
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-3)
    assert compiled["valid_loss"] == pytest.approx(eager["valid_loss"], rel=1e-3)
    beta = eager_task["model"]["beta"]
    assert not torch.equal(beta, torch.zeros_like(beta)), "the architecture was trained"
    # Adam steps near-zero gradient entries by about its learning rate (3e-4) whatever their size, so rounding
    # moves such an entry by up to a step; a wrong second-order term would move beta by several.
    torch.testing.assert_close(compiled_task["model"]["beta"], beta, rtol=0, atol=3e-4)
    assert not any("_orig_mod" in key for key in compiled_task["model"])


class CountingBackend:
    """A torch.compile backend that runs the traced graph eagerly and counts the graphs it was given."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def eval_network(load_space):
    model, genotypes = load_space("DARTS-space", "model", "genotypes")
    torch.manual_seed(0)
    return model.NetworkCIFAR(4, 10, 3, True, genotypes.DrNAS_cifar10).train()


def test_darts_drop_path_probability_changes_without_recompiling(load_space):
    net = eval_network(load_space)
    backend = CountingBackend()
    compiled = torch.compile(net, backend=backend, dynamic=False)
    x = torch.randn(4, 3, 32, 32)
    net.drop_path_prob = 0.0
    compiled(x)
    first = backend.graphs
    net.drop_path_prob = 0.1  # drop path switches on: one new graph
    compiled(x)
    switched_on = backend.graphs
    assert switched_on > first
    for p in (0.15, 0.2, 0.3):  # later epochs: the value lives in a buffer, no new graph
        net.drop_path_prob = p
        compiled(x)
    assert backend.graphs == switched_on
    assert float(net.drop_prob) == pytest.approx(0.3) and net.drop_path_prob == pytest.approx(0.3)
    assert "drop_prob" not in net.state_dict()  # set from the epoch, not saved


def test_darts_compiled_drop_path_is_random_per_step_and_follows_the_value(load_space):
    net = eval_network(load_space)
    compiled = torch.compile(net, backend="aot_eager", dynamic=False)
    x = torch.randn(8, 3, 32, 32)
    net.drop_path_prob = 0.5
    first, aux = compiled(x)
    second, _ = compiled(x)
    assert aux is not None and aux.shape == (8, 10)  # the auxiliary head in training mode
    assert not torch.allclose(first, second)  # a new mask per call, not one baked into the graph
    net.drop_path_prob = 1e-9  # practically off, without a new graph: the same function every call
    a, _ = compiled(x)
    b, _ = compiled(x)
    torch.testing.assert_close(a, b)
    net.eval()
    logits, aux = compiled(x)
    assert aux is None and torch.equal(logits, compiled(x)[0])  # evaluation: no drop path, no head


def test_darts_compiled_training_steps_match_eager(load_space):
    """Three SGD steps (auxiliary loss, clipping) through the traced graph equal the eager ones, drop path off."""
    losses = {}
    for name in ("eager", "compiled"):
        net = eval_network(load_space)
        step_net = torch.compile(net, backend="aot_eager", dynamic=False) if name == "compiled" else net
        optimizer = torch.optim.SGD(net.parameters(), 0.05, momentum=0.9)
        torch.manual_seed(1)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(10, (8,))
        losses[name] = []
        for _ in range(3):
            logits, aux = step_net(x)
            loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimizer.step()
            losses[name].append(float(loss.detach()))
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    assert losses["eager"][-1] < losses["eager"][0]


@pytest.mark.parametrize(
    "space, script, flags",
    [
        ("201-space", "train.py", TINY_201),
        ("201-space", "train_search.py", TINY_201),
        ("DARTS-space", "train.py", ["--dataset", "synthetic", "--device", "cpu", "--layers", "3"]),
    ],
)
def test_amp_with_compile_on_a_cpu_is_refused_before_writing(tmp_path, space, script, flags):
    """Inductor's bf16 CPU kernels get dilated depthwise-conv weight gradients wrong: one line, nothing written."""
    save = tmp_path / "run"
    result = run_script(space, script, *flags, "--amp", "--compile", "--save", save)
    assert_one_line_error(result.returncode, result.stderr, "--compile with --amp on a CPU")
    assert not save.exists()
