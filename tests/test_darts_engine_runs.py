"""DARTS-space scripts on the run engine, run as a user would."""

import importlib
import signal
import time

import pytest
import torch
from torch.utils.data import TensorDataset

from conftest import assert_one_line_error, forbid_host_reads, load_ckpt, popen_script, read_history, tensors
from loop_run import LoopRun

TINY = ["--dataset", "synthetic", "--layers", "3", "--device", "cpu", "--workers", "0"]
# 4 steps per epoch, cutout and drop path draw random numbers.
TRAIN = "--init_channels 8 --batch_size 16 --epochs 2 --cutout --auxiliary --report_freq 1 --max_steps_per_epoch 4"
TRAIN = ["train.py", *TINY, *TRAIN.split()]
# Two stages of one epoch each, 4 steps per epoch on 16-pixel images, architecture steps from the start.
SEARCH = "--init_channels 8 --batch_size 8 --stage_epochs 1 1 --stage_k 4 2 --warmup_epochs 0 --max_steps_per_epoch 4"
SEARCH = ["train_search.py", *TINY, *SEARCH.split(), "--report_freq", "1", "--image_size", "16"]
# One epoch of one step: the smallest run that writes a checkpoint.
SHORT = {"train": ["train.py", *TINY, *"--init_channels 4 --batch_size 8 --epochs 1 --max_steps_per_epoch 1".split()]}
SHORT["train_search"] = "--init_channels 8 --batch_size 8 --stage_epochs 1 --stage_k 4 --stage_keep 7 --warmup_epochs 0"
SHORT["train_search"] = ["train_search.py", *TINY, *SHORT["train_search"].split(), "--max_steps_per_epoch", "1"]
SHORT["train_search"] += ["--image_size", "16"]


def _wait(proc, timeout=300):
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _finish(proc):
    returncode, err = _wait(proc)
    assert returncode == 0, err[-3000:]


def _assert_same(a, b, where="task"):
    """Two nested states agree: tensors to 1e-6, everything else exactly."""
    if torch.is_tensor(a):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-6, rtol=0, msg=where)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _preempt(proc, run_dir, marker, timeout=300):
    """SIGTERM `proc` as soon as its log shows `marker` (a progress line inside epoch 2)."""
    log, deadline = run_dir / "log.txt", time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if log.is_file() and marker in log.read_text():
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    return _wait(proc)


def _preempted_run_resumes_exactly(tmp_path, argv, marker):
    """A straight run and one preempted inside epoch 2 (then resumed) end in the same state and history."""
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    reference = popen_script("DARTS-space", *argv, "--save", straight)
    preempted = popen_script("DARTS-space", *argv, "--save", broken)
    returncode, err = _preempt(preempted, broken, marker)
    assert returncode == 0, err[-3000:]
    ckpt = load_ckpt(broken / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] > 0, "not stopped inside epoch 2"
    assert "preempted: checkpoint written" in (broken / "log.txt").read_text()
    # Without --save the run continues in its checkpoint's folder:
    _finish(popen_script("DARTS-space", *argv, "--resume", broken / "checkpoint.pt"))
    _finish(reference)
    a, b = load_ckpt(straight / "checkpoint.pt"), load_ckpt(broken / "checkpoint.pt")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 0)
    _assert_same(a["task"], b["task"])
    assert read_history(broken) == read_history(straight)
    return a


@pytest.mark.parametrize("script", ["train", "search"])
def test_preempted_mid_epoch_resumes_exactly(tmp_path, script):
    """train.py (step 2 of epoch 2) and train_search.py (stage 2, after the switch to k=2)."""
    if script == "train":
        ckpt = _preempted_run_resumes_exactly(tmp_path, TRAIN, "epoch 2/2 step 2/4 ")
        assert ckpt["task"].keys() >= {"model", "optimizer", "scaler"}  # the learning rate follows from the epoch
    else:
        ckpt = _preempted_run_resumes_exactly(tmp_path, SEARCH, "epoch 2/2 step 1/4 ")
        assert ckpt["task"]["stage"] == 1 and ckpt["task"]["k"] == 2


def test_divergence_stops_with_one_line_and_keeps_only_finite_checkpoints(tmp_path):
    """--learning_rate 1e12: the weights overflow within a few steps and the run stops, exit 2, one line."""
    blow_up = ["--learning_rate", "1e12", "--grad_clip", "1e30"]
    runs = {"train": [*SHORT["train"], "--epochs", "3"]}
    runs["train_search"] = [*SHORT["train_search"], *"--stage_epochs 2 1 --stage_k 4 2 --stage_keep 7 4".split()]
    procs = {n: popen_script("DARTS-space", *argv, *blow_up, "--save", tmp_path / n) for n, argv in runs.items()}
    kept = 0
    for name, proc in procs.items():
        assert_one_line_error(*_wait(proc), "not finite")
        if (tmp_path / name / "checkpoint.pt").exists():
            kept += 1
            state = load_ckpt(tmp_path / name / "checkpoint.pt")["task"]
            assert all(torch.isfinite(t).all() for t in tensors(state).values() if t.is_floating_point()), name
    assert kept > 0  # one step per epoch: the first epoch's weights are still finite and are kept


def test_bad_flags_a_file_as_save_and_an_old_checkpoint_are_refused_before_writing(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file, not a run folder\n")
    old = tmp_path / "old" / "checkpoint.pt"  # the layout before the engine: no version, no "task"
    old.parent.mkdir()
    torch.save({"epoch": 1, "stage": 0, "model": {}, "args": {}}, old)
    stages = "--stage_epochs -1 1 --stage_k 4 2 --stage_keep 7 4".split()
    cases = [([*SHORT["train"], "--epochs", "-1", "--save", tmp_path / "a"], "--epochs -1")]
    cases += [([*SHORT["train_search"], *stages, "--save", tmp_path / "b"], "--stage_epochs -1")]
    cases += [([*SHORT["train"], "--save", taken], "is a file")]
    cases += [([*SHORT["train_search"], "--resume", old], "earlier version")]
    procs = [(popen_script("DARTS-space", *argv), expected) for argv, expected in cases]
    for proc, expected in procs:
        assert_one_line_error(*_wait(proc), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "taken"]
    assert taken.read_text() == "a file, not a run folder\n" and [p.name for p in old.parent.iterdir()] == [old.name]


def test_every_script_writes_the_engines_checkpoint_layout(load_space, tmp_path, restore_logging):
    """Each script's main() in this process (what it writes, not how it is started, is the point here)."""
    engine, *scripts = load_space("DARTS-space", "runkit.engine", *SHORT)
    for (name, argv), script in zip(SHORT.items(), scripts):
        script.main([*argv[1:], "--save", str(tmp_path / name)])
        ckpt = load_ckpt(tmp_path / name / "checkpoint.pt")
        assert set(ckpt) == set(engine.CHECKPOINT_KEYS), name
        assert ckpt["version"] == engine.CHECKPOINT_VERSION and ckpt["args"]["script"] == name
    task = load_ckpt(tmp_path / "train_search" / "checkpoint.pt")["task"]
    assert set(task) == {"model", "optimizer", "architect", "stage", "k", "kept", "genotype"}


@pytest.mark.parametrize("flags", [[], ["--unrolled"], ["--reg_type", "kl"]])
def test_search_and_train_steps_read_no_tensor_on_the_host(load_space, monkeypatch, flags):
    """A step only queues device work: the engine's Meter reads the metrics once per progress line."""
    train_search, search, train, training, model, genotypes, distributed = load_space(
        "DARTS-space", "train_search", "train_search", "train", "train", "model", "genotypes", "runkit.distributed"
    )
    # Adam keeps its step count on the CPU by design (no device sync); read it without `.item()`.
    get_value = lambda x: x.numpy().item() if torch.is_tensor(x) else x  # noqa: E731
    monkeypatch.setattr(importlib.import_module("torch.optim.adam"), "_get_value", get_value)
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(10, (32,)))
    dist = distributed.setup("cpu")
    tiny = ["--dataset", "synthetic", "--layers", "3", "--init_channels", "4", "--batch_size", "4", "--workers", "0"]
    args = train_search.get_parser().parse_args([*tiny, "--stage_k", "2", "1", "--warmup_epochs", "0", *flags])
    # Epoch 1 of the search loop, 3 steps: the first starts the streams' loaders, not a per-step cost.
    run = LoopRun(only=[0], steps=3, guard=forbid_host_reads)
    net = search.build_model(args, 10, dist.device)
    optimizer, architect = search.optimizers(net, args, dist)
    search.search(run, net, architect, optimizer, *search.search_data(data, data, args, dist), args)
    assert len(run.updates) == 3

    args = train.get_parser().parse_args([*tiny, "--auxiliary"])
    net = model.NetworkCIFAR(4, 10, 3, True, genotypes.DrNAS_cifar10).to(dist.device)
    run = LoopRun(only=[1], steps=3, guard=forbid_host_reads)  # epoch 2: drop path on
    training.train(run, net, data, data, torch.nn.CrossEntropyLoss(), lambda epoch: 0.025, args)
    assert len(run.updates) == 3
