"""The CUDA tier: what only a GPU can show. Marked `cuda`, so it skips without one (tests/conftest.py);
`python -m pytest tests -m cuda` runs it alone (`.ci/gpu` does, on the GPU machine).

- every script a few steps on the GPU with synthetic data: both 201 searches (each method, second order, the
  stage switch), 201 train.py, the DARTS search (both stages, second order, plain ops), train.py, train_imagenet.py
  and torchrun; again with --amp, --compile and --data_on_device on/off, and an interrupted run resumed on the GPU;
- the first search step on the GPU against the CPU (fp32, TF32 off), for both supernets;
- the DARTS memory-saving autograd functions against the plain ops on the GPU, fp32 and under bf16 autocast;
- no host synchronisation inside a search step or a training step (CUDA sync debug mode).

The script runs are tiny and mostly start-up and compilation, so one module fixture starts them all at once and
the tests read their results; the first test that needs them waits only for a fast one, and the in-process tests
below it run while the rest (the --compile runs are the slowest) go on in the background.
"""

import argparse
import copy
import json
import re
import subprocess
import sys
import time
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import INTERRUPTED, SPACES, TINY_201, script_env

pytestmark = pytest.mark.cuda

DEVICE = "cuda"  # where the tier runs; the CUDA-only checks (sync debug mode, NCCL) need "cuda"
RUN_TIMEOUT = 240  # seconds for all the background script runs together, from their common start
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]


def on_device(args):
    """`args` with the value of `--device` replaced by the tier's device."""
    args = list(args)
    args[args.index("--device") + 1] = DEVICE
    return args


# The smallest 201 search: C=4, one cell per stage, 4 steps per epoch (128 images for the weights, batch 32).
S201 = [*on_device(TINY_201), "--report_freq", "1", "--benchmark", "none"]
S201_STEPS = 4
# The smallest 201 training run: 8 steps per epoch (256 images, batch 32), 4 test batches.
T201 = [*on_device(TINY_201), "--arch", "DrNAS", "--epochs", "2", "--report_freq", "4"]
# A DARTS search through both stages: 3 cells of 8 channels, 1 + 1 epochs of 3 steps, k 4 -> 2, 7 -> 3 ops.
DS = [
    *("--dataset", "synthetic", "--layers", "3", "--init_channels", "8", "--batch_size", "8"),
    *("--stage_epochs", "1", "1", "--stage_k", "4", "2", "--stage_keep", "7", "3", "--warmup_epochs", "0"),
    *("--max_steps", "3", "--report_freq", "1", "--device", DEVICE, "--workers", "0"),
]
DS_STEPS = 3
# The DARTS evaluation network of the CPU tests (5 cells of 8 channels, auxiliary head, cutout): 2 epochs of
# 16 steps, which take it well above chance.
DT = [
    *("--dataset", "synthetic", "--cutout", "--auxiliary", "--layers", "5", "--init_channels", "8"),
    *("--batch_size", "16", "--learning_rate", "0.05", "--epochs", "2", "--seed", "3", "--report_freq", "8"),
    *("--device", DEVICE, "--workers", "0"),
]

# The collectives the run engine uses, in a torchrun group of one: NCCL on the GPU (argv[1] names the device).
COLLECTIVES = """
import sys, torch, torch.distributed as dist
device = torch.device(sys.argv[1])
if device.type == "cuda":
    torch.cuda.set_device(0)
dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
x = torch.arange(4.0, device=device)
dist.all_reduce(x, op=dist.ReduceOp.MAX)
dist.broadcast(x, src=0)
gathered = [None]
dist.all_gather_object(gathered, {"rank": dist.get_rank()})
dist.barrier()
assert x.tolist() == [0.0, 1.0, 2.0, 3.0] and gathered == [{"rank": 0}], (x, gathered)
print("collectives ok", dist.get_backend(), dist.get_world_size())
dist.destroy_process_group()
"""


def _script_runs(tmp):
    """name -> (space, arguments of `python`) of every background run (a --save is added to each)."""
    collectives = tmp / "collectives.py"
    collectives.write_text(COLLECTIVES)
    return {
        # 201 searches: every method, second order, bf16, data on and off the device.
        "s201": ("201-space", ["train_search.py", *S201, "--epochs", "2", "--data_on_device", "on"]),
        "s201_darts": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--method", "darts"]),
        "s201_snas": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--method", "snas"]),
        "s201_gdas": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--method", "gdas"]),
        "s201_unrolled": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--unrolled", "--reg_type", "kl"]),
        "s201_amp": ("201-space", ["train_search.py", *S201, "--epochs", "2", "--amp"]),
        "s201_off": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--data_on_device", "off"]),
        "s201_compile": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--compile", "--amp"]),
        # Second order compiled: retained backward passes through the compiled cells, under CUDA graphs.
        "s201_unrolled_compile": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--unrolled", "--compile"]),
        "s201_resumed": (
            "201-space",
            ["-c", INTERRUPTED, "train_search", "1", "--", *S201, "--epochs", "2", "--data_on_device", "on"],
        ),
        "p201": (
            "201-space",
            ["train_search_progressive.py", *S201, "--stage_epochs", "1", "1", "--warmup_epochs", "0"],
        ),
        "p201_amp": (
            "201-space",
            ["train_search_progressive.py", *S201, "--stage_epochs", "1", "1", "--warmup_epochs", "0", "--amp"],
        ),
        # 201 training from scratch.
        "t201": ("201-space", ["train.py", *T201, "--data_on_device", "on"]),
        "t201_amp": ("201-space", ["train.py", *T201, "--amp", "--data_on_device", "off"]),
        "t201_compile": ("201-space", ["train.py", *T201, "--compile"]),
        # DARTS searches through both stages.
        "ds": ("DARTS-space", ["train_search.py", *DS, "--data_on_device", "on"]),
        "ds_unrolled": ("DARTS-space", ["train_search.py", *DS, "--unrolled"]),
        "ds_amp": ("DARTS-space", ["train_search.py", *DS, "--amp", "--data_on_device", "off"]),
        "ds_plain_ops": ("DARTS-space", ["train_search.py", *DS, "--lean_ops", "off", "--amp"]),
        # DARTS training from scratch, in one process and under torchrun.
        "dt": ("DARTS-space", ["train.py", *DT, "--data_on_device", "on"]),
        "dt_amp": ("DARTS-space", ["train.py", *DT, "--amp", "--data_on_device", "off"]),
        "dt_compile": ("DARTS-space", ["train.py", *DT, "--compile"]),
        "dt_amp_compile": ("DARTS-space", ["train.py", *DT, "--amp", "--compile"]),
        # Deterministic kernels: adaptive pooling's backward has none on CUDA and must warn, not stop the run.
        "dt_deterministic": ("DARTS-space", ["train.py", *DT, "--deterministic"]),
        "dt_resumed": ("DARTS-space", ["-c", INTERRUPTED, "train", "1", "--", *DT, "--data_on_device", "on"]),
        "dt_torchrun": ("DARTS-space", [*TORCHRUN, "train.py", *DT, "--epochs", "1", "--max_steps_per_epoch", "3"]),
        "collectives": ("DARTS-space", [*TORCHRUN, collectives, DEVICE]),
    }


class Run:
    """A script in a subprocess (cwd = its folder), output in files; `--save` is its own folder under `root`."""

    def __init__(self, root, name, space, args, deadline):
        self.name, self.dir, self.deadline = name, root / name, deadline
        self.out, self.err = root / f"{name}.stdout", root / f"{name}.stderr"
        args = list(args)
        if name != "collectives":
            args += ["--save", self.dir]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, *map(str, args)],
                cwd=SPACES[space],
                stdout=out,
                stderr=err,
                text=True,
                env=script_env(),
            )

    def ok(self):
        """Wait for the run; assert it ended well; return self."""
        try:
            self.proc.wait(timeout=max(self.deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} ran past {RUN_TIMEOUT} s\n{self.tail()}") from None
        assert self.proc.returncode == 0, f"{self.name} exited {self.proc.returncode}\n{self.tail()}"
        assert "Traceback" not in self.err.read_text(), self.tail()
        return self

    def tail(self):
        return f"stdout: ...{self.out.read_text()[-2000:]}\nstderr: ...{self.err.read_text()[-4000:]}"

    def log(self):
        return (self.dir / "log.txt").read_text()

    def history(self):
        return [json.loads(line) for line in (self.dir / "history.jsonl").read_text().splitlines() if line.strip()]

    def checkpoint(self, name="checkpoint.pt"):
        """The checkpoint as saved: tensors load onto the device they were saved from."""
        return torch.load(self.dir / name, weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda_runs")
    deadline = time.monotonic() + RUN_TIMEOUT
    started = {name: Run(root, name, space, args, deadline) for name, (space, args) in _script_runs(root).items()}
    yield started
    for run in started.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


# ---------------------------------------------------------------- checks of a run


def on_the_device(tensors, what):
    """Every tensor of a (nested) state lies on the tier's device and is finite; returns how many there are."""
    count = 0
    for key, value in _tensors(tensors):
        assert value.device.type == torch.device(DEVICE).type, f"{what}: {key} was saved from {value.device}"
        if value.is_floating_point():
            assert torch.isfinite(value).all(), f"{what}: {key} is not finite"
        count += 1
    assert count, f"{what}: no tensors"
    return count


def _tensors(obj, prefix=""):
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}[{i}]")


def ran_on_the_device(run, epochs):
    """The common facts of a finished run on the GPU: its epochs recorded on it, its log says so; the history."""
    run.ok()
    history = run.history()
    assert [h["epoch"] for h in history] == list(range(epochs)), history
    for record in history:
        assert record["device"] == torch.device(DEVICE).type, record
        assert all(v == v and abs(v) != float("inf") for v in record.values() if isinstance(v, float)), record
    log = run.log()
    assert re.search(rf"device {DEVICE}(:\d+)?\b", log), "the log names another device"
    # Where the batches came from, as --data_on_device asked: held on the device (auto: for an in-memory
    # set on CUDA) or through a DataLoader (image folders always).
    args = json.loads((run.dir / "args.json").read_text())
    mode = args.get("data_on_device", "off")
    held = args.get("dataset") == "synthetic" and (mode == "on" or (mode == "auto" and DEVICE.startswith("cuda")))
    where = f"data held on {DEVICE}" if held else "data through a DataLoader"
    assert where in log, f"{run.name}: the log lacks '{where}' (--data_on_device {mode})"
    return history


def adam_steps(task):
    """Steps the architecture's Adam took (from a checkpoint's task state)."""
    return [int(state["step"]) for state in task["architect"]["state"].values()]


# ---------------------------------------------------------------- the 201 search


def test_201_search_on_the_device_with_data_on_the_device(runs, load_space):
    """DrNAS, 2 epochs, data held on the GPU: both epochs recorded on it, weights and momentum finite on it,
    one Adam step of beta per batch, a cell, the cosine schedule. First in the file, and fast: the tests below
    run while the slower background runs go on."""
    genotypes = load_space("201-space", "genotypes")
    run = runs["s201"]
    history = ran_on_the_device(run, 2)
    ckpt = run.checkpoint()
    on_the_device(ckpt["task"]["model"], "model")
    on_the_device(ckpt["task"]["optimizer"]["state"], "SGD momentum")
    assert adam_steps(ckpt["task"]) == [2 * S201_STEPS], "one architecture step per batch"
    arch = json.loads((run.dir / "genotype.json").read_text())["arch"]
    assert str(genotypes.Structure.from_str(arch)) == arch == history[-1]["genotype"]
    assert history[1]["lr"] < history[0]["lr"]
    assert "concentrations" in run.log()


def test_darts_train_imagenet_on_an_image_folder(tiny_imagenet, tmp_path):
    """train_imagenet.py on 3 classes of 32-pixel images (2 epochs of 3 steps, batch 6), in fp32 and with
    --amp --compile, side by side: both epochs recorded on the GPU, finite, the checkpoints finite and on the GPU
    (too few steps to expect learning).
    Second in the file: both runs overlap the background runs, and the tests below overlap theirs."""
    deadline = time.monotonic() + RUN_TIMEOUT
    imagenet = [
        *("train_imagenet.py", "--data", tiny_imagenet, "--image_size", "32", "--layers", "5"),
        *("--init_channels", "8", "--batch_size", "6", "--learning_rate", "0.05", "--epochs", "2"),
        *("--device", DEVICE, "--workers", "0", "--report_freq", "1"),
    ]
    started = [
        Run(tmp_path, name, "DARTS-space", [*imagenet, *flags], deadline)
        for name, flags in (("fp32", []), ("amp_compile", ["--amp", "--compile"]))
    ]
    try:
        for run in started:
            history = ran_on_the_device(run, 2)
            assert all(0 <= h["valid_acc"] <= 100 and h["lr"] > 0 for h in history), (run.name, history)
            assert "18 training and 9 validation images in 3 classes" in run.log()
            assert (run.dir / "best.pt").is_file()
            on_the_device(run.checkpoint()["task"]["model"], f"{run.name} model")
    finally:
        for run in started:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()


# ---------------------------------------------------------------- the first search step against the CPU


@pytest.fixture
def fp32_exact():
    """Full fp32 on the GPU (no TF32 in matmuls and convolutions), as on the CPU; restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def assert_near(actual, expected, rel, what):
    """max |actual - expected| <= rel * max |expected| (+ 1e-7): a tolerance on the tensor's own scale."""
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert actual.shape == expected.shape, what
    error, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert error <= rel * scale + 1e-7, f"{what}: max error {error:.3g} on a scale of {scale:.3g} (rel {rel})"


# Tolerances of GPU against CPU in fp32, relative to each tensor's largest entry: the loss and logits,
# the architecture gradient, the weights and BatchNorm statistics after the step.
LOSS_REL, GRAD_REL, STATE_REL = 1e-4, 1e-3, 1e-4


def _batches(n, size, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, size, size, generator=gen), torch.randint(10, (n,), generator=gen)) for _ in range(2)]


def _compare_states(results, skip=()):
    cpu, gpu = results["cpu"], results[DEVICE]
    for key in ("arch_loss", "loss", "logits"):
        assert_near(gpu[key], cpu[key], LOSS_REL, key)
    for i, (g, c) in enumerate(zip(gpu["arch_grads"], cpu["arch_grads"])):
        assert_near(g, c, GRAD_REL, f"architecture gradient {i}")
        assert c.abs().max() > 0
    for key, value in cpu["state"].items():
        if key not in skip and value.is_floating_point():
            assert_near(gpu["state"][key], value, STATE_REL, key)


@pytest.mark.parametrize("method", ["darts", "dirichlet"])
def test_201_first_search_step_matches_the_cpu(load_space, fp32_exact, method):
    """The architecture loss and beta's gradient as `Architect.step` forms them, then a whole search step:
    its loss and logits, the weights and BatchNorm statistics after it. darts: softmax(beta). dirichlet: the
    draw differs between devices, so both take one draw made on the CPU, passed straight through to beta
    (its value, with d weights / d beta = 1: beta's gradient is the mixing weights' gradient). beta itself
    moves by Adam's first step, about lr * sign(gradient): compared through its gradient only."""
    model_search, search, architect_module, utils = load_space(
        "201-space", "model_search", "search", "architect", "utils"
    )
    args = search.get_parser().parse_args(["--method", method])
    torch.manual_seed(0)
    reference = model_search.Network(8, 1, 10, 1, method)
    mixing = reference.arch_weights().detach() if method == "dirichlet" else None
    train_batch, valid_batch = _batches(16, 16)
    results = {}
    for device in ("cpu", DEVICE):
        model = copy.deepcopy(reference).to(device, memory_format=torch.channels_last).train()
        if mixing is not None:  # the same draw on both devices, in every forward of the step
            fixed = mixing.to(device)
            model.arch_weights = lambda m=model, w=fixed: w + (m.beta - m.beta.detach())
        architect = architect_module.Architect(model, args)
        optimizer, _ = search.make_weight_optimizer(model, args, args.epochs)
        train, valid = utils.to_device(train_batch, device), utils.to_device(valid_batch, device)
        with architect_module.batch_stats_only(model):
            arch_loss = architect.loss(*valid)
            arch_grads = torch.autograd.grad(arch_loss, model.arch_parameters())
        logits, loss = search.search_step(model, architect, optimizer, model.weights(), train, valid, 0.025, 5.0)
        results[device] = dict(
            arch_loss=arch_loss, arch_grads=arch_grads, loss=loss, logits=logits, state=model.state_dict()
        )
    _compare_states(results, skip=("beta",))


def test_darts_first_search_step_matches_the_cpu(load_space, fp32_exact):
    """The DARTS supernet (lean ops, partial channels k=4, both reductions): the architecture loss and both
    betas' gradients with the weights frozen (the lean functions' shortcut), then an architecture and a weight
    step (the lean functions' weight gradients): weights and BatchNorm statistics after it. The Dirichlet draw
    differs between devices, so both take the Dirichlet mean alpha / sum(alpha), a function of beta alike."""
    model_search, search, architect_module, distributed = load_space(
        "DARTS-space", "model_search", "search", "architect", "distributed"
    )
    torch.manual_seed(0)
    reference = model_search.Network(8, 10, 3, k=4)
    args = _darts_search_args(search)
    train_batch, valid_batch = _batches(8, 16)
    results = {}
    for device in ("cpu", DEVICE):
        model = copy.deepcopy(reference).to(device).train()
        model.arch_weights = lambda model=model: _dirichlet_mean(model)
        architect = architect_module.Architect(model, args)
        weights = model.weights()
        optimizer = torch.optim.SGD(weights, 0.1, momentum=0.9, weight_decay=3e-4)
        dist = distributed.Dist(rank=0, local_rank=0, world_size=1, device=torch.device(device))
        (x, y), (xv, yv) = [tuple(t.to(device) for t in batch) for batch in (train_batch, valid_batch)]
        with architect_module.frozen(weights):
            arch_loss = F.cross_entropy(model(xv), yv)
            arch_grads = torch.autograd.grad(arch_loss, model.arch_parameters())
        architect.step(x, y, xv, yv, 0.1, optimizer)
        logits, loss = search.weight_step(model, optimizer, weights, x, y, 5.0, dist)
        results[device] = dict(
            arch_loss=arch_loss, arch_grads=arch_grads, loss=loss, logits=logits.detach(), state=model.state_dict()
        )
    _compare_states(results, skip=("beta_normal", "beta_reduce"))


def _darts_search_args(search, *argv):
    """The DARTS searches' flags, parsed (defaults: first order, l2, Adam lr 6e-4, momentum 0.9, ...)."""
    parser = argparse.ArgumentParser()
    search.add_arguments(parser)
    return parser.parse_args(list(argv))


def _dirichlet_mean(model):
    alpha = model.kept_concentrations()
    return alpha / alpha.sum(-1, keepdim=True)


# ---------------------------------------------------------------- the lean autograd functions on the GPU

# Lean against plain, relative to each tensor's largest entry: fp32 (the same kernels, recomputed), and
# bf16 autocast (both round to bf16 in places that differ: BatchNorm in or outside the fused function).
LEAN_REL = {"fp32": 1e-4, "bf16": 3e-2}


def autocast(precision):
    return torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _input(precision, *shape, seed=0):
    """A cell state as the supernet hands it to an op: bf16 under autocast (the convs' and BatchNorms' output)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    return x.to(torch.bfloat16 if precision == "bf16" else torch.float32).requires_grad_()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name,stride", [("sep_conv_3x3", 1), ("sep_conv_5x5", 2), ("dil_conv_3x3", 1)])
def test_depthwise_pointwise_matches_plain_ops(load_space, name, stride, precision):
    """`DepthwisePointwise` (SepConv's fused BatchNorm-ReLU-convs, DilConv) against the same op with
    `lean = False`: output, gradients of the input, the mixing weight and every weight, BatchNorm statistics;
    then with frozen weights (the architecture step's path, no recomputation). Gradients keep the dtypes of
    what they belong to (fp32 weights, the input's dtype)."""
    operations = load_space("DARTS-space", "operations")
    torch.manual_seed(0)
    lean = operations.search_op(name, 8, stride).to(DEVICE)
    plain = copy.deepcopy(lean)
    for module in plain.modules():
        if isinstance(module, operations.DilConv):
            module.lean = False
    assert any(getattr(m, "lean", False) for m in lean.modules())
    x = _input(precision, 4, 8, 12, 12)
    scale = torch.tensor(0.3, device=DEVICE, requires_grad=True)
    rel = LEAN_REL[precision]

    def run(op, params):
        with autocast(precision):
            out = op(F.relu(x), scale)  # the edge's shared ReLU
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
        return out, torch.autograd.grad(out, [x, scale, *params], grad_out)

    out_lean, grads_lean = run(lean, list(lean.parameters()))
    out_plain, grads_plain = run(plain, list(plain.parameters()))
    assert out_lean.dtype == out_plain.dtype
    assert_near(out_lean, out_plain, rel, f"{name} output")
    names = ["input", "scale", *(n for n, _ in lean.named_parameters())]
    for what, a, b, p in zip(names, grads_lean, grads_plain, [x, scale, *lean.parameters()]):
        assert a.dtype == p.dtype, f"{what}: gradient in {a.dtype}, tensor in {p.dtype}"
        assert_near(a, b, rel, f"{name} gradient of {what}")
    for key, value in plain.state_dict().items():
        assert_near(lean.state_dict()[key], value, rel, f"{name} {key}")
    for p in [*lean.parameters(), *plain.parameters()]:
        p.requires_grad_(False)
    (_, grads_lean), (_, grads_plain) = run(lean, []), run(plain, [])
    for what, a, b in zip(("input", "scale"), grads_lean, grads_plain):
        assert_near(a, b, rel, f"{name} frozen weights, gradient of {what}")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (2, 2, 0)])
def test_lean_max_pool_matches_max_pool(load_space, kernel, stride, padding, precision):
    """`_LeanMaxPool` (argmax recomputed in the backward pass) equals max pooling exactly, gradient included."""
    lean_ops = load_space("DARTS-space", "lean_ops")
    x = _input(precision, 4, 8, 12, 12)
    lean = lean_ops.LeanMaxPool(kernel, stride, padding)
    assert lean.lean
    with autocast(precision):
        out_lean, out_plain = lean(x), F.max_pool2d(x, kernel, stride, padding)
    torch.testing.assert_close(out_lean, out_plain, rtol=0, atol=0)
    g = torch.randn(out_plain.shape, generator=torch.Generator().manual_seed(1)).to(out_plain)
    (grad_lean,), (grad_plain,) = torch.autograd.grad(out_lean, x, g), torch.autograd.grad(out_plain, x, g)
    assert grad_lean.dtype == x.dtype
    torch.testing.assert_close(grad_lean, grad_plain, rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mix_batch_norm_with_scale_matches_scaled_batch_norm(load_space, precision):
    """`MixBatchNorm(x, w)` (the mixing weight as BatchNorm's affine weight) against w * BatchNorm(x):
    output, gradients of x and w, running statistics."""
    lean_ops = load_space("DARTS-space", "lean_ops")
    mix = lean_ops.MixBatchNorm(8).to(DEVICE)
    plain = torch.nn.BatchNorm2d(8, affine=False).to(DEVICE)
    x = _input(precision, 4, 8, 6, 6)
    w = torch.tensor(0.3, device=DEVICE, requires_grad=True)
    with autocast(precision):
        out_mix, out_plain = mix(x, w), w * plain(x)
    rel = LEAN_REL[precision]
    assert_near(out_mix, out_plain, rel, "output")
    g = torch.randn(out_plain.shape, generator=torch.Generator().manual_seed(1)).to(out_plain)
    grads_mix, grads_plain = torch.autograd.grad(out_mix, [x, w], g), torch.autograd.grad(out_plain, [x, w], g)
    for what, a, b in zip(("x", "w"), grads_mix, grads_plain):
        assert_near(a, b, rel, f"gradient of {what}")
    assert grads_mix[1].dtype == torch.float32
    for key in ("running_mean", "running_var"):
        assert_near(getattr(mix, key), getattr(plain, key), 1e-5 if precision == "fp32" else rel, key)
    assert int(mix.num_batches_tracked) == int(plain.num_batches_tracked) == 1


def test_amp_runs_the_cells_in_bf16_and_keeps_fp32_outside(load_space):
    """With `amp` on, both supernets' convolutions compute in bf16, while the logits, beta and its
    gradient stay fp32 (and finite)."""
    for space, build in (
        ("201-space", lambda m: m.Network(8, 1, 10, 1)),
        ("DARTS-space", lambda m: m.Network(8, 10, 3, k=4)),
    ):
        model_search = load_space(space, "model_search")
        torch.manual_seed(0)
        model = build(model_search).to(DEVICE).train()
        model.amp = True
        dtypes = set()
        hooks = [
            m.register_forward_hook(lambda mod, inp, out, seen=dtypes: seen.add(out.dtype))
            for m in model.modules()
            if isinstance(m, torch.nn.Conv2d)
        ]
        x, y = _batches(8, 16)[0]
        logits = model(x.to(DEVICE))
        for hook in hooks:
            hook.remove()
        assert dtypes == {torch.bfloat16}, f"{space}: convolutions computed in {dtypes}"
        assert logits.dtype == torch.float32
        grads = torch.autograd.grad(F.cross_entropy(logits, y.to(DEVICE)), model.arch_parameters())
        for beta, grad in zip(model.arch_parameters(), grads):
            assert beta.dtype == grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().max() > 0


# ---------------------------------------------------------------- no host synchronisation inside a step


def flag_id(flags):
    return "-".join(f.lstrip("-") for f in flags) or "default"


def synchronisations(step, times=3):
    """Warnings of CUDA's sync debug mode during `times` calls of `step()` (after the caller's warm-up)."""
    if torch.device(DEVICE).type != "cuda":  # nothing to watch off the GPU: the steps just run
        for _ in range(times):
            step()
        return []
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(times):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "synchroniz" in str(w.message).lower()]


@pytest.mark.parametrize(
    "flags", [[], ["--amp"], ["--unrolled"], ["--method", "gdas"], ["--reg_type", "kl"]], ids=flag_id
)
def test_201_search_step_never_waits_for_the_device(load_space, flags):
    model_search, search, architect_module, utils = load_space(
        "201-space", "model_search", "search", "architect", "utils"
    )
    args = search.get_parser().parse_args(flags)
    torch.manual_seed(0)
    model = model_search.Network(8, 1, 10, 1, args.method).to(DEVICE, memory_format=torch.channels_last).train()
    model.amp = args.amp
    architect = architect_module.Architect(model, args)
    optimizer, _ = search.make_weight_optimizer(model, args, args.epochs)
    weights = model.weights()
    train, valid = (utils.to_device(batch, torch.device(DEVICE)) for batch in _batches(16, 16))

    def step():
        search.search_step(model, architect, optimizer, weights, train, valid, 0.025, args.grad_clip)

    step()  # warm-up: optimizer states, cuDNN plans, the cached index of the kept ops
    assert synchronisations(step) == []


@pytest.mark.parametrize("flags", [[], ["--amp"], ["--unrolled"], ["--lean_ops", "off"]], ids=flag_id)
def test_darts_search_step_never_waits_for_the_device(load_space, flags):
    model_search, search, architect_module, distributed = load_space(
        "DARTS-space", "model_search", "search", "architect", "distributed"
    )
    args = _darts_search_args(search, *flags)
    torch.manual_seed(0)
    model = model_search.Network(8, 10, 3, k=4).to(DEVICE).train()
    model.amp = args.amp
    model.use_lean_ops(args.lean_ops == "on")
    architect = architect_module.Architect(model, args)
    weights = model.weights()
    optimizer = torch.optim.SGD(weights, 0.1, momentum=args.momentum, weight_decay=args.weight_decay)
    dist = distributed.Dist(rank=0, local_rank=0, world_size=1, device=torch.device(DEVICE))
    (x, y), (xv, yv) = [tuple(t.to(DEVICE) for t in batch) for batch in _batches(8, 16)]

    def step():  # as search.Search.step: beta on a held-out batch, then the weights
        architect.step(x, y, xv, yv, 0.1, optimizer)
        search.weight_step(model, optimizer, weights, x, y, args.grad_clip, dist)

    step()
    assert synchronisations(step) == []


@pytest.mark.parametrize("flags", [[], ["--amp"]], ids=flag_id)
def test_darts_training_step_never_waits_for_the_device(load_space, flags):
    """train.py's step (training.Training.step: auxiliary head, drop path, clipping, the loss scaler) on
    batches already on the device."""
    train, training, genotypes, model_module, distributed, datasets = load_space(
        "DARTS-space", "train", "training", "genotypes", "model", "distributed", "datasets"
    )
    args = train.get_parser().parse_args([*DT, *flags])
    dist = distributed.Dist(rank=0, local_rank=0, world_size=1, device=torch.device(DEVICE))
    torch.manual_seed(0)
    model = model_module.NetworkCIFAR(8, 10, 5, True, genotypes.DrNAS_cifar10).to(DEVICE)
    train_set, test_set, _ = datasets.get_datasets("synthetic", "unused")
    task = training.Training(
        args,
        dist,
        model,
        train_set,
        test_set,
        torch.nn.CrossEntropyLoss(),
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs),
    )
    task.begin_epoch(1)  # drop path on
    assert model.drop_path_prob > 0
    x, y = (t.to(DEVICE) for t in _batches(16, 32)[0])
    task.streams = {"train": iter(lambda: (x, y), None)}  # batches already on the device

    def step():
        task.step(1, 0)

    step()
    assert synchronisations(step) == []


@pytest.mark.parametrize("flags", [[], ["--amp"]], ids=flag_id)
def test_201_training_step_never_waits_for_the_device(load_space, flags):
    """201 train.py's step (train.Train.step: Nesterov SGD, --amp) on batches already on the device."""
    train, model_module, genotypes = load_space("201-space", "train", "model", "genotypes")
    args = train.get_parser().parse_args([*T201, *flags])
    torch.manual_seed(0)
    structure = genotypes.load_arch(args.arch)
    model = model_module.Network(4, 1, structure, 10)
    model = model.to(DEVICE, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    x, y = (t.to(DEVICE) for t in _batches(32, 32)[0])
    batches = iter(lambda: (x, y), None)  # batches already on the device
    task = train.Train(model, optimizer, scheduler, batches, None, structure, amp=args.amp)
    task.begin_epoch(0)

    def step():
        task.step(0, 0)

    step()
    assert synchronisations(step) == []


def test_per_step_bookkeeping_never_waits_for_the_device(load_space):
    """What the run engine does after every step (`Meter.update` with the batch's logits, targets and loss;
    the watch for a non-finite loss) and a batch of the device data stream (mid-pass): no synchronisation
    either. (The engine reads values on the host only at progress lines and checkpoints.)"""
    progress, divergence, device_data, datasets = load_space(
        "201-space", "progress", "divergence", "device_data", "datasets"
    )
    device = torch.device(DEVICE)
    meter = progress.Meter(device)
    watch = divergence.Divergence(device, 16)
    logits = torch.randn(32, 10, device=device)
    targets = torch.randint(10, (32,), device=device)
    loss = F.cross_entropy(logits, targets)
    train_set, _, _ = datasets.get_datasets("synthetic", "unused")
    stream = device_data.stream(train_set, 16, 0, device, True)  # 16 batches per pass

    def step():
        next(stream)
        meter.update(logits, targets, loss)
        watch.watch(loss, 7)

    step()
    assert synchronisations(step) == []
    assert meter.result()["loss"] == pytest.approx(loss.item())


# ---------------------------------------------------------------- the other scripts


@pytest.mark.parametrize(
    "name",
    [
        "s201_darts",
        "s201_snas",
        "s201_gdas",
        "s201_unrolled",
        "s201_amp",
        "s201_off",
        "s201_compile",
        "s201_unrolled_compile",
    ],
)
def test_201_search_variants(runs, load_space, name):
    """Each method, second order with the KL prior, bf16, data left on the host: a cell, finite tensors on the
    GPU, one Adam step of beta per batch."""
    genotypes = load_space("201-space", "genotypes")
    run = runs[name]
    epochs = 2 if name == "s201_amp" else 1
    history = ran_on_the_device(run, epochs)
    genotypes.Structure.from_str(json.loads((run.dir / "genotype.json").read_text())["arch"])
    task = run.checkpoint()["task"]
    on_the_device(task["model"], "model")
    assert adam_steps(task) == [epochs * S201_STEPS]
    assert task["model"]["beta"].dtype == torch.float32
    args = json.loads((run.dir / "args.json").read_text())
    assert (args["amp"], args["compile"]) == (name in ("s201_amp", "s201_compile"), name.endswith("_compile"))
    assert args["unrolled"] == name.startswith("s201_unrolled")
    if name == "s201_amp":  # the same batches and draws as the fp32 run s201: bf16 follows it closely
        fp32 = ran_on_the_device(runs["s201"], 2)
        assert abs(history[-1]["train_loss"] - fp32[-1]["train_loss"]) < 0.25, (history, fp32)


def test_201_search_resumed_on_the_device_continues_exactly(runs):
    """Killed after its first epoch and resumed (data on the device): the same data positions, random states
    (CPU and GPU) and, up to GPU rounding, the same tensors as the straight run `s201`."""
    straight, resumed = runs["s201"].ok(), runs["s201_resumed"].ok()
    assert_resumed_like(straight, resumed, rtol=1e-3, atol=1e-4)
    assert [h["genotype"] for h in resumed.history()] == [h["genotype"] for h in straight.history()]


def assert_resumed_like(straight, resumed, rtol, atol):
    """The resumed run ends where the straight one does: epoch, data positions, random states, tensors."""
    assert "resumed from" in resumed.log()
    a, b = straight.checkpoint(), resumed.checkpoint()
    assert a["epoch"] == b["epoch"] == 2 and a["streams"] == b["streams"]
    for key in ("torch", "cuda"):
        for x, y in zip(_list(a["rng"][0].get(key)), _list(b["rng"][0].get(key))):
            assert torch.equal(x.cpu(), y.cpu()), f"{key} random state differs after the resume"
    on_the_device(b["task"]["model"], "resumed model")
    for key, value in a["task"]["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(b["task"]["model"][key], value, rtol=rtol, atol=atol, msg=key)


def _list(value):
    return [] if value is None else value if isinstance(value, list) else [value]


@pytest.mark.parametrize("name", ["p201", "p201_amp"])
def test_201_progressive_search_switches_stage_on_the_device(runs, name):
    """Stage 1 at k=4 with 5 ops, stage 2 at k=2 with 3 ops: pruned and widened on the GPU, momentum carried."""
    run = runs[name]
    history = ran_on_the_device(run, 2)
    assert [h["stage"] for h in history] == [0, 1]
    assert "stage 2/2: k=2, 3 ops kept per edge" in run.log()
    task = run.checkpoint()["task"]
    on_the_device(task["model"], "model")
    on_the_device(task["optimizer"]["state"], "SGD momentum after widening")
    widths = {v.shape[0] for k, v in task["model"].items() if ".edges." in k and k.endswith("running_mean")}
    assert widths == {2, 4, 8}, "every op runs on C/2 channels in stage 2 (C = 4, 8, 16 per stage)"
    assert task["k"] == 2 and all(len(kept) == 3 for kept in task["kept"])
    assert adam_steps(task) == [2 * S201_STEPS]


@pytest.mark.parametrize("name", ["t201", "t201_amp", "t201_compile"])
def test_201_train_learns_on_the_device(runs, load_space, name):
    """201 train.py, 2 epochs: the loss falls, accuracy above chance; the checkpoint (the bare network, never
    the compiled wrapper) loads into a fresh network on the GPU, which reproduces the recorded test accuracy."""
    model, genotypes, datasets = load_space("201-space", "model", "genotypes", "datasets")
    run = runs[name]
    history = ran_on_the_device(run, 2)
    assert history[1]["train_loss"] < history[0]["train_loss"], history
    assert history[-1]["test_acc"] > 20.0, history  # chance: 10 %
    state = run.checkpoint()["task"]["model"]
    on_the_device(state, "model")
    assert json.loads((run.dir / "args.json").read_text())["compile"] == (name == "t201_compile")
    net = model.Network(4, 1, genotypes.Structure.from_str(history[-1]["arch"]), 10)
    net = net.to(DEVICE, memory_format=torch.channels_last)
    net.load_state_dict(state)  # strict: the same keys (no "_orig_mod." of a compiled module)
    if name != "t201_amp":  # the run evaluated in fp32: the same accuracy, up to a rounding flip or two
        _, test, _ = datasets.get_datasets("synthetic", "unused", True)
        assert abs(_accuracy(net, test) - history[-1]["test_acc"]) <= 2 * 100 / len(test)


@torch.no_grad()
def _accuracy(net, dataset, batch=32):
    net.eval()
    hits = 0
    for i in range(0, len(dataset), batch):
        x, y = zip(*(dataset[j] for j in range(i, min(i + batch, len(dataset)))))
        out = net(torch.stack(x).to(DEVICE, memory_format=torch.channels_last))
        logits = out[0] if isinstance(out, tuple) else out
        hits += int((logits.argmax(1).cpu() == torch.as_tensor(y)).sum())
    return 100.0 * hits / len(dataset)


# ---------------------------------------------------------------- DARTS


@pytest.mark.parametrize("name", ["ds", "ds_unrolled", "ds_amp", "ds_plain_ops"])
def test_darts_search_through_both_stages_on_the_device(runs, load_space, name):
    """Stage 1 (k=4, 7 ops) and stage 2 (k=2, 3 ops) with one architecture step per batch: a genotype, finite
    tensors on the GPU, momentum carried over the widening."""
    genotypes = load_space("DARTS-space", "genotypes")
    run = runs[name]
    history = ran_on_the_device(run, 2)
    assert [h["stage"] for h in history] == [0, 1] and [h["k"] for h in history] == [4, 2]
    assert "stage 2/2: kept 3 ops per edge, k=2" in run.log()
    genotype = genotypes.load_genotype(str(run.dir / "genotype.json"))
    assert len(genotype.normal) == len(genotype.reduce) == 8
    task = run.checkpoint()["task"]
    on_the_device(task["model"], "model")
    on_the_device(task["optimizer"]["state"], "SGD momentum")
    assert task["stage"] == 1 and task["k"] == 2
    assert all(len(edge) == 3 for edges in task["kept"].values() for edge in edges)
    assert adam_steps(task) == [2 * DS_STEPS] * 2, "both betas, one step per batch of both epochs"
    assert re.search(r"peak memory \d+ MB", run.log())


@pytest.mark.parametrize("name", ["dt", "dt_amp", "dt_compile", "dt_amp_compile", "dt_deterministic"])
def test_darts_train_learns_on_the_device(runs, load_space, name):
    """DARTS train.py, 2 epochs with the auxiliary head, cutout and drop path: above chance, the loss falls;
    the checkpoint loads into a fresh network on the GPU, which reproduces the recorded accuracy (fp32 runs)."""
    model, genotypes, datasets = load_space("DARTS-space", "model", "genotypes", "datasets")
    run = runs[name]
    history = ran_on_the_device(run, 2)
    assert history[1]["train_loss"] < history[0]["train_loss"], history
    assert history[-1]["valid_acc"] > 40.0, history  # chance: 10 %; the CPU run of the same settings passes it
    state = run.checkpoint()["task"]["model"]
    on_the_device(state, "model")
    assert json.loads((run.dir / "args.json").read_text())["compile"] == name.endswith("compile")
    net = model.NetworkCIFAR(8, 10, 5, True, genotypes.load_genotype(str(run.dir / "genotype.json"))).to(DEVICE)
    net.load_state_dict(state)
    if "amp" not in name:
        _, test, _ = datasets.get_datasets("synthetic", "unused")
        assert abs(_accuracy(net, test) - history[-1]["valid_acc"]) <= 2 * 100 / len(test)


def test_darts_train_resumed_on_the_device_continues_exactly(runs):
    """train.py killed after its first epoch and resumed (data on the device): the same data positions and
    random states (drop path and cutout draw on them) and, up to GPU rounding, the same weights as `dt`."""
    straight, resumed = runs["dt"].ok(), runs["dt_resumed"].ok()
    assert_resumed_like(straight, resumed, rtol=1e-2, atol=1e-3)
    on_the_device(resumed.checkpoint()["task"], "resumed task")


def test_darts_train_under_torchrun_and_nccl(runs):
    """train.py under torchrun (one process on the GPU), and NCCL's collectives in a group of one: all-reduce,
    broadcast, all-gather of objects and barrier, as the engine uses them."""
    run = runs["dt_torchrun"]
    ran_on_the_device(run, 1)
    assert "1 process(es)" in run.log()
    on_the_device(run.checkpoint()["task"]["model"], "model")
    collectives = runs["collectives"].ok()
    backend = "nccl" if torch.device(DEVICE).type == "cuda" else "gloo"
    assert f"collectives ok {backend} 1" in collectives.out.read_text(), collectives.tail()


@pytest.mark.parametrize("kernel, padding, dilation", [(5, 4, 2), (3, 2, 2), (5, 2, 1)])
def test_compiled_bf16_depthwise_conv_weight_gradient_matches_eager(kernel, padding, dilation):
    """On CPUs (torch 2.14) inductor's bf16 kernels return NaN or wrong weight gradients for dilated depthwise
    convs, so the scripts refuse --amp with --compile there; on the GPU the compiled gradient must be the eager one."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, kernel, 1, padding, dilation, groups=8, bias=False).to(DEVICE)
    x = torch.randn(16, 8, 32, 32, device=DEVICE)

    def loss(x):
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
            return conv(torch.relu(x)).float().square().mean()

    eager = torch.autograd.grad(loss(x), conv.weight)[0]
    compiled = torch.autograd.grad(torch.compile(loss, dynamic=False)(x), conv.weight)[0]
    assert torch.isfinite(compiled).all()
    torch.testing.assert_close(compiled, eager, rtol=3e-2, atol=1e-3 * eager.abs().max().item())
