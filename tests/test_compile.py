"""`--compile` on the CPU."""

import argparse
import copy
import functools
import shutil

import pytest
import torch
import torch._dynamo.symbolic_convert
import torch.nn.functional as F
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters

from conftest import TINY_201, assert_one_line_error, run_script

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler on the CPU")
CPU = torch.device("cpu")


def _forget_compilations():
    torch._dynamo.reset()  # and its module cache by name (a DARTS `operations` is not the 201 one)
    import_module = getattr(torch._dynamo.symbolic_convert, "_import_module", None)
    if hasattr(import_module, "cache_clear"):
        import_module.cache_clear()


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch."""
    _forget_compilations()
    yield
    _forget_compilations()


def _batch(generator, n=16, size=32, dtype=torch.float32):
    images = torch.randn(n, 3, size, size, generator=generator, dtype=dtype)
    return images, torch.randint(10, (n,), generator=generator)


def _state(model):
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _change_error(actual, expected, start, skip=()):
    """max |actual - expected| over float entries / the largest change of `expected` from `start`; ints equal."""
    error = scale = 0.0
    for key, value in expected.items():
        if key in skip:
            continue
        if not value.is_floating_point():
            assert torch.equal(actual[key], value), key
            continue
        error = max(error, float((actual[key] - value).abs().max()))
        scale = max(scale, float((value - start[key]).abs().max()))
    assert scale > 0, "the steps changed nothing"
    return error / scale


# 201 train.py's network, fp32, 3 steps of 16 images. Measured spread (eager 1/2 threads, inductor, float64): losses
# 2e-6, first step's state change 1e-5 (later steps amplify rounding); tolerances 50x-100x that.
TRAIN_LOSS_REL, TRAIN_FIRST_STEP_REL = 1e-4, 1e-3


def test_201_train_steps_compiled_and_eager_agree(load_space, monkeypatch):
    """Three training steps of the network compiled in place (as train.py --compile) and eager. The graph runs on
    aot_eager (traced, through AOTAutograd): inductor's CPU kernels are compared in the second-order test below."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    train, model_module, genotypes, accel = load_space("201-space", "train", "model", "genotypes", "runkit.accel")
    args = train.get_parser().parse_args([])
    structure = genotypes.load_arch("DrNAS")
    torch.manual_seed(0)
    reference = model_module.Network(4, 1, structure, 10).to(memory_format=torch.channels_last)
    start = _state(reference)
    generator = torch.Generator().manual_seed(1)
    batches, (x_test, y_test) = [_batch(generator) for _ in range(3)], _batch(generator)
    runs = {}
    for compiled in (False, True):
        net = copy.deepcopy(reference)
        counters.clear()
        if compiled:
            accel.compile_model(net, CPU)
        hyper = dict(momentum=args.momentum, weight_decay=args.weight_decay)
        optimizer = torch.optim.SGD(net.parameters(), args.learning_rate, nesterov=True, **hyper)
        losses = []
        for x, y in batches:
            net.train()
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if len(losses) == 1:
                first = _state(net)
                net.eval()
                with torch.no_grad():
                    test_loss = float(F.cross_entropy(net(x_test), y_test))
        assert (counters["stats"]["unique_graphs"] > 0) == compiled, "inductor compiled the network (only then)"
        runs[compiled] = losses, first, test_loss, net
    (eager, eager_first, eager_test, _), (losses, first, test_loss, net) = runs[False], runs[True]
    assert losses == pytest.approx(eager, rel=TRAIN_LOSS_REL)
    assert _change_error(first, eager_first, start) <= TRAIN_FIRST_STEP_REL
    assert test_loss == pytest.approx(eager_test, rel=TRAIN_LOSS_REL)
    state = net.state_dict()
    assert not any("_orig_mod" in key for key in state)
    model_module.Network(4, 1, structure, 10).load_state_dict(state)  # strict: the same keys


# The second-order search in float64 (fp32 finite differences are only ~5% exact): eager and inductor agreed to
# 6e-14; tolerance 1e-8; a lost second-order term moves the gradient far more (asserted below).
SEARCH_REL = 1e-8


@needs_cxx
def test_201_second_order_search_steps_compiled_and_eager_agree(load_space):
    """Two 201 --unrolled --method darts steps, compiled vs eager: same arch gradients, losses, weights, BN stats."""
    search, model_search, architect_module, accel = load_space(
        "201-space", "train_search", "model_search", "architect", "runkit.accel"
    )
    args = search.get_parser().parse_args(["--unrolled", "--method", "darts"])
    torch.manual_seed(0)
    reference = model_search.Network(4, 1, 10, 1, "darts").double().to(memory_format=torch.channels_last).train()
    start = _state(reference)
    generator = torch.Generator().manual_seed(1)
    momentum = [0.01 * torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in reference.weights()]
    steps = [tuple(_batch(generator, dtype=torch.float64) for _ in "tv") for _ in range(2)]
    runs = {}
    for name in ("eager", "compiled", "first order"):
        model = copy.deepcopy(reference)
        counters.clear()
        if name == "compiled":
            accel.compile_model(model, CPU)
        architect = architect_module.Architect(
            model, argparse.Namespace(**{**vars(args), "unrolled": name != "first order"})
        )
        grads = []
        architect.optimizer.register_step_pre_hook(
            lambda opt, *_, model=model, grads=grads: grads.append([p.grad.clone() for p in model.arch_parameters()])
        )
        weights = model.weights()
        optimizer = torch.optim.SGD(weights, args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay)
        for p, buffer in zip(weights, momentum):
            optimizer.state[p]["momentum_buffer"] = buffer.clone()
        step = search.search_step
        losses = [float(step(model, architect, optimizer, weights, t, v, 0.025, args.grad_clip)[1]) for t, v in steps]
        assert (counters["stats"]["unique_graphs"] > 0) == (name == "compiled"), name
        runs[name] = grads, losses, _state(model)
    (eager_grads, eager_losses, eager_state), (grads, losses, state) = runs["eager"], runs["compiled"]
    assert len(grads) == len(eager_grads) == 2, "one architecture step per search step"
    for step, (got, want) in enumerate(zip(grads, eager_grads)):
        for g, e in zip(got, want):
            scale = float(e.abs().max())
            assert float((g - e).abs().max()) <= SEARCH_REL * scale, f"architecture gradient of step {step + 1}"
    first_order, want = runs["first order"][0][0][0], eager_grads[0][0]
    assert float((first_order - want).abs().max()) > 1e3 * SEARCH_REL * float(want.abs().max()), "2nd order matters"
    assert losses == pytest.approx(eager_losses, rel=SEARCH_REL)
    assert _change_error(state, eager_state, start, skip=("beta",)) <= SEARCH_REL
    assert not any("_orig_mod" in key for key in state)


@needs_cxx
@pytest.mark.parametrize("script", ["train.py", "train_search.py"])
def test_201_scripts_compile_the_network_they_run(load_space, tmp_path, restore_logging, monkeypatch, script):
    """--compile: the script hands its network to `accel.compile_model` once, on the run's device."""
    module, accel = load_space("201-space", script[:-3], "runkit.accel")
    calls = []
    monkeypatch.setattr(accel, "compile_model", lambda model, device, *rest: calls.append((model, device)))
    flags = ["--arch", "DrNAS"] if script == "train.py" else ["--benchmark", "none"]
    argv = [*TINY_201, "--epochs", "1", "--max_steps_per_epoch", "1", *flags, "--compile"]
    module.main([*argv, "--save", str(tmp_path / "run")])
    assert len(calls) == 1 and isinstance(calls[0][0], torch.nn.Module) and calls[0][1] == CPU


class CountingBackend:
    """aot_eager (the traced graph run eagerly, through AOTAutograd) that counts the graphs it was given."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return lookup_backend("aot_eager")(graph_module, example_inputs)


def test_darts_compiled_training_matches_eager_and_drop_path_is_random_per_step_without_recompiling(load_space):
    """Three SGD steps (auxiliary loss, clipping) through the traced graph equal the eager ones, drop path off; then
    drop path switches on with one new graph, later epochs' values need none, and each call draws a new mask."""
    model, genotypes = load_space("DARTS-space", "model", "genotypes")
    backend, losses = CountingBackend(), {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        net = model.NetworkCIFAR(4, 10, 3, True, genotypes.DrNAS_cifar10).train()
        net.drop_path_prob = 0.0
        compiled = torch.compile(net, backend=backend, dynamic=False) if name == "compiled" else net
        optimizer = torch.optim.SGD(net.parameters(), 0.05, momentum=0.9)
        torch.manual_seed(1)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(10, (8,))
        losses[name] = []
        for _ in range(3):
            logits, aux = compiled(x)
            loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimizer.step()
            losses[name].append(float(loss.detach()))
    # aot_eager agreed with eager and float64 to 2e-7; a lost term (the auxiliary loss) moves them by percents.
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4) and losses["eager"][-1] < losses["eager"][0]
    first = backend.graphs
    assert first > 0
    net.drop_path_prob = 0.1  # drop path switches on: one new graph
    compiled(x)
    assert (switched_on := backend.graphs) > first
    for p in (0.15, 0.2, 0.3):  # later epochs: the value lives in a buffer, no new graph
        net.drop_path_prob = p
        compiled(x)
    assert backend.graphs == switched_on
    assert float(net.drop_prob) == pytest.approx(0.3) and net.drop_path_prob == pytest.approx(0.3)
    assert "drop_prob" not in net.state_dict()  # set from the epoch, not saved
    net.drop_path_prob = 0.5
    (first, aux), (second, _) = compiled(x), compiled(x)
    assert aux is not None and aux.shape == (8, 10)  # the auxiliary head in training mode
    assert not torch.allclose(first, second)  # a new mask per call, not one baked into the graph
    net.drop_path_prob = 1e-9  # practically off, without a new graph: the same function every call
    torch.testing.assert_close(compiled(x)[0], compiled(x)[0])
    assert backend.graphs == switched_on
    net.eval()
    logits, aux = compiled(x)
    assert aux is None and torch.equal(logits, compiled(x)[0])  # evaluation: no drop path, no head


DARTS_FLAGS = ["--dataset", "synthetic", "--device", "cpu", "--layers", "3"]


@pytest.mark.parametrize(
    "space, script, flags", [("201-space", "train.py", TINY_201), ("201-space", "train_search.py", TINY_201),
                             ("DARTS-space", "train.py", DARTS_FLAGS)]
)  # fmt: skip
def test_amp_with_compile_on_a_cpu_is_refused_before_writing(tmp_path, load_space, space, script, flags):
    """Inductor's bf16 CPU kernels get dilated depthwise-conv weight gradients wrong."""
    save = tmp_path / "run"
    result = run_script(space, script, *flags, "--amp", "--compile", "--save", save)
    bf16 = load_space(space, "runkit.accel").cpu_has_bf16()
    expected = "--compile with --amp on a CPU" if bf16 else "--amp on a CPU without bf16 units"
    assert_one_line_error(result.returncode, result.stderr, expected)
    assert not save.exists()
