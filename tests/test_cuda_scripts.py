"""The CUDA tier's script runs."""

import json
import re

import pytest
import torch

from conftest import tensors
from cuda_jobs import DEVICE, DS_STEPS, S201_STEPS

pytestmark = pytest.mark.cuda


def on_the_device(state, what):
    """Every tensor of a (nested) state lies on the tier's device and is finite; returns how many there are."""
    count = 0
    for key, value in tensors(state).items():
        assert value.device.type == torch.device(DEVICE).type, f"{what}: {key} was saved from {value.device}"
        if value.is_floating_point():
            assert torch.isfinite(value).all(), f"{what}: {key} is not finite"
        count += 1
    assert count, f"{what}: no tensors"
    return count


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
    # Where the batches came from, as --data_on_device asked (auto: in-memory sets on CUDA; image folders never).
    args = json.loads((run.dir / "args.json").read_text())
    mode = args.get("data_on_device", "off")
    held = args.get("dataset") == "synthetic" and (mode == "on" or (mode == "auto" and DEVICE.startswith("cuda")))
    where = f"data held on {DEVICE}" if held else "data through a DataLoader"
    assert where in log, f"{run.name}: the log lacks '{where}' (--data_on_device {mode})"
    return history


def adam_steps(task):
    """Steps the architecture's Adam took (from a checkpoint's task state)."""
    return [int(state["step"]) for state in task["architect"]["state"].values()]


def test_201_search_on_the_device_with_data_on_the_device(cuda_runs, load_space):
    """DrNAS, 2 epochs, data held on the GPU."""
    genotypes = load_space("201-space", "genotypes")
    run = cuda_runs["s201"]
    history = ran_on_the_device(run, 2)
    ckpt = run.checkpoint()
    on_the_device(ckpt["task"]["model"], "model")
    on_the_device(ckpt["task"]["optimizer"]["state"], "SGD momentum")
    assert adam_steps(ckpt["task"]) == [2 * S201_STEPS], "one architecture step per batch"
    arch = json.loads((run.dir / "genotype.json").read_text())["arch"]
    assert str(genotypes.Structure.from_str(arch)) == arch == history[-1]["genotype"]
    assert history[1]["lr"] < history[0]["lr"] and "concentrations" in run.log()


@pytest.mark.parametrize("name", ["imagenet_fp32", "imagenet_amp_compile"])
def test_darts_train_imagenet_on_an_image_folder(cuda_runs, name):
    """train_imagenet.py on 3 classes, fp32 and --amp --compile: both epochs on the GPU, finite checkpoints."""
    run = cuda_runs[name]
    history = ran_on_the_device(run, 2)
    assert all(0 <= h["test_acc"] <= 100 and h["lr"] > 0 for h in history), (run.name, history)
    assert "18 training and 9 test (val/) images in 3 classes" in run.log() and (run.dir / "best.pt").is_file()
    on_the_device(run.checkpoint()["task"]["model"], f"{run.name} model")


@pytest.mark.parametrize("name", "darts snas gdas unrolled amp off compile unrolled_compile".split())
def test_201_search_variants(cuda_runs, load_space, name):
    """Each method, second order, KL prior, bf16, host data: a cell, finite GPU tensors, one Adam step per batch."""
    genotypes, name = load_space("201-space", "genotypes"), f"s201_{name}"
    run = cuda_runs[name]
    epochs = 2 if name == "s201_amp" else 1
    history = ran_on_the_device(run, epochs)
    genotypes.Structure.from_str(json.loads((run.dir / "genotype.json").read_text())["arch"])
    task = run.checkpoint()["task"]
    on_the_device(task["model"], "model")
    assert adam_steps(task) == [epochs * S201_STEPS] and task["model"]["beta"].dtype == torch.float32
    args = json.loads((run.dir / "args.json").read_text())
    assert (args["amp"], args["compile"]) == (name in ("s201_amp", "s201_compile"), name.endswith("_compile"))
    assert args["unrolled"] == name.startswith("s201_unrolled")
    if name == "s201_amp":  # the same batches and draws as the fp32 run s201: bf16 follows it closely
        fp32 = ran_on_the_device(cuda_runs["s201"], 2)
        assert abs(history[-1]["train_loss"] - fp32[-1]["train_loss"]) < 0.25, (history, fp32)


@pytest.mark.parametrize("name, rtol, atol", [("s201", 1e-3, 1e-4), ("dt", 1e-2, 1e-3)])
def test_resumed_on_the_device_continues_exactly(cuda_runs, name, rtol, atol):
    """Killed after its first epoch and resumed (data on the device): epoch, data positions, RNG, tensors."""
    straight, resumed = cuda_runs[name].ok(), cuda_runs[f"{name}_resumed"].ok()
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
    if name == "s201":
        assert [h["genotype"] for h in resumed.history()] == [h["genotype"] for h in straight.history()]
    else:
        on_the_device(resumed.checkpoint()["task"], "resumed task")


def _list(value):
    return [] if value is None else value if isinstance(value, list) else [value]


@pytest.mark.parametrize("name", ["p201", "p201_amp"])
def test_201_progressive_search_switches_stage_on_the_device(cuda_runs, name):
    """Stage 1 at k=4 with 5 ops, stage 2 at k=2 with 3 ops: pruned and widened on the GPU, momentum carried."""
    run = cuda_runs[name]
    history = ran_on_the_device(run, 2)
    assert [h["stage"] for h in history] == [0, 1] and "stage 2/2: k=2, 3 ops kept per edge" in run.log()
    task = run.checkpoint()["task"]
    on_the_device(task["model"], "model")
    on_the_device(task["optimizer"]["state"], "SGD momentum after widening")
    widths = {v.shape[0] for k, v in task["model"].items() if ".edges." in k and k.endswith("running_mean")}
    assert widths == {2, 4, 8}, "every op cuda_runs on C/2 channels in stage 2 (C = 4, 8, 16 per stage)"
    assert task["k"] == 2 and all(len(kept) == 3 for kept in task["kept"]) and adam_steps(task) == [2 * S201_STEPS]


@pytest.mark.parametrize("name", ["t201", "t201_amp", "t201_compile"])
def test_201_train_learns_on_the_device(cuda_runs, load_space, name):
    """201 train.py, 2 epochs."""
    model, genotypes, datasets = load_space("201-space", "model", "genotypes", "datasets")
    run = cuda_runs[name]
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


@pytest.mark.parametrize("name", ["ds", "ds_unrolled", "ds_amp", "ds_plain_ops"])
def test_darts_search_through_both_stages_on_the_device(cuda_runs, load_space, name):
    """Both stages, one arch step per batch: a genotype, finite GPU tensors, momentum carried over widening."""
    genotypes = load_space("DARTS-space", "genotypes")
    run = cuda_runs[name]
    history = ran_on_the_device(run, 2)
    assert [h["stage"] for h in history] == [0, 1] and [h["k"] for h in history] == [4, 2]
    assert "stage 2/2: k=2, 3 ops kept per edge" in run.log()
    genotype = genotypes.load_genotype(str(run.dir / "genotype.json"))
    assert len(genotype.normal) == len(genotype.reduce) == 8
    task = run.checkpoint()["task"]
    on_the_device(task["model"], "model")
    on_the_device(task["optimizer"]["state"], "SGD momentum")
    assert task["stage"] == 1 and task["k"] == 2
    assert len(task["kept"]) == 28 and all(len(edge) == 3 for edge in task["kept"])
    assert adam_steps(task) == [2 * DS_STEPS] * 2, "both betas, one step per batch of both epochs"
    assert re.search(r"peak memory \d+ MB", run.log())


@pytest.mark.parametrize("name", ["dt", "dt_amp", "dt_compile", "dt_amp_compile", "dt_deterministic"])
def test_darts_train_learns_on_the_device(cuda_runs, load_space, name):
    """DARTS train.py, 2 epochs with the auxiliary head, cutout and drop path."""
    model, genotypes, datasets = load_space("DARTS-space", "model", "genotypes", "datasets")
    run = cuda_runs[name]
    history = ran_on_the_device(run, 2)
    assert history[1]["train_loss"] < history[0]["train_loss"], history
    assert history[-1]["test_acc"] > 40.0, history  # chance: 10 %; the CPU run of the same settings passes it
    state = run.checkpoint()["task"]["model"]
    on_the_device(state, "model")
    assert json.loads((run.dir / "args.json").read_text())["compile"] == name.endswith("compile")
    net = model.NetworkCIFAR(8, 10, 5, True, genotypes.load_genotype(str(run.dir / "genotype.json"))).to(DEVICE)
    net.load_state_dict(state)
    if "amp" not in name:
        _, test, _ = datasets.get_datasets("synthetic", "unused")
        assert abs(_accuracy(net, test) - history[-1]["test_acc"]) <= 2 * 100 / len(test)


def test_darts_train_under_torchrun_and_nccl(cuda_runs):
    """train.py under torchrun (one process on the GPU), and NCCL's collectives in a group of one."""
    run = cuda_runs["dt_torchrun"]
    ran_on_the_device(run, 1)
    assert "1 process(es)" in run.log()
    on_the_device(run.checkpoint()["task"]["model"], "model")
    collectives = cuda_runs["collectives"].ok()
    backend = "nccl" if torch.device(DEVICE).type == "cuda" else "gloo"
    assert f"collectives ok {backend} 1" in collectives.out.read_text(), collectives.tail()
