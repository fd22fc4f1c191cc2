"""The run engine as the 201-space scripts use it (subprocesses, cwd=201-space)."""

import importlib
import json
import signal
import time

import pytest
import torch
from torch.utils.data import TensorDataset

import conftest
from conftest import assert_one_line_error, forbid_host_reads, load_ckpt, popen_script, tensors, wait_for_log
from loop_run import LoopRun

TIMEOUT = 300
PREEMPT = "--dataset synthetic --epochs 2 --init_channels 8 --layers 2 --batch_size 16 --device cpu --workers 0"
PREEMPT = [*PREEMPT.split(), "--report_freq", "1"]


def _start(root, name, script, args):
    """A script's subprocess, its output in files (pipes could fill and block)."""
    with open(root / f"{name}.out", "w") as out, open(root / f"{name}.err", "w") as err:
        return popen_script("201-space", script, *args, stdout=out, stderr=err)


def _finish(proc, root, name):
    """(exit code, stderr) of a started process."""
    try:
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, (root / f"{name}.err").read_text()


def test_sigterm_mid_epoch_checkpoints_and_the_resumed_run_is_exact(tmp_path):
    """SIGTERM in epoch 2: checkpoint, exit 0; resumed, it ends as the uninterrupted run (1e-6, same history)."""
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    a = _start(tmp_path, "a", "train_search.py", [*PREEMPT, "--save", a_dir])
    b = _start(tmp_path, "b", "train_search.py", [*PREEMPT, "--save", b_dir])
    try:
        # Epoch 1 is checkpointed and epoch 2 has taken its first of 8 steps.
        wait_for_log(a, a_dir / "log.txt", "epoch 2/2 step 1/8", time.monotonic() + TIMEOUT)
        assert load_ckpt(a_dir / "checkpoint.pt")["epoch"] == 1
        a.send_signal(signal.SIGTERM)
        code, err = _finish(a, tmp_path, "a")
    finally:
        if a.poll() is None:
            a.kill()
    assert code == 0, err[-3000:]
    stopped = load_ckpt(a_dir / "checkpoint.pt")
    assert stopped["epoch"] == 1 and 0 < stopped["step"] <= 8, (stopped["epoch"], stopped["step"])
    # The training stream stands after the stopped step (pass 1 is epoch 2), the meter holds its sums.
    assert stopped["streams"]["train"] == ([1, stopped["step"]] if stopped["step"] < 8 else [2, 0])
    assert stopped["meter"] is not None and not (a_dir / "trajectory.png").exists(), "the preempted run did not finish"
    # It leaves the cell of its last finished epoch, as history.jsonl records it.
    epoch_1 = json.loads((a_dir / "history.jsonl").read_text().splitlines()[0])
    assert json.loads((a_dir / "genotype.json").read_text())["arch"] == epoch_1["genotype"]
    assert "preempted" in (a_dir / "log.txt").read_text()

    resumed = _start(tmp_path, "resumed", "train_search.py", [*PREEMPT, "--resume", a_dir / "checkpoint.pt"])
    for proc, name in ((resumed, "resumed"), (b, "b")):
        code, err = _finish(proc, tmp_path, name)
        assert code == 0, err[-3000:]

    ca, cb = load_ckpt(a_dir / "checkpoint.pt"), load_ckpt(b_dir / "checkpoint.pt")
    assert ca["epoch"] == cb["epoch"] == 2 and ca["step"] == cb["step"] == 0 and ca["streams"] == cb["streams"]
    ta, tb = tensors(ca["task"]), tensors(cb["task"])
    assert ta.keys() == tb.keys() and any(key.startswith("/optimizer/") for key in ta)
    assert any(key.startswith("/architect/") for key in ta) and any(key.startswith("/model/") for key in ta)
    for key, value in tb.items():
        torch.testing.assert_close(ta[key], value, rtol=0, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
    assert ca["task"]["genotype"] == cb["task"]["genotype"]
    assert conftest.read_history(a_dir) == conftest.read_history(b_dir)
    assert (a_dir / "genotype.json").read_text() == (b_dir / "genotype.json").read_text()


def test_divergence_stops_with_one_line_and_keeps_only_finite_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    flags = "--epochs 3 --learning_rate 1e12 --grad_clip 1e30 --layers 1 --batch_size 8 --device cpu --workers 0"
    small = ["--init_channels", "4", "--max_steps_per_epoch", "4"]
    argv = ["--dataset", "synthetic", *flags.split(), *small, "--save", run_dir]
    proc = _start(tmp_path, "div", "train_search.py", argv)
    assert_one_line_error(*_finish(proc, tmp_path, "div"), "not finite")
    if (run_dir / "checkpoint.pt").exists():
        for key, value in tensors(load_ckpt(run_dir / "checkpoint.pt")).items():
            if value.is_floating_point():
                assert torch.isfinite(value).all(), key


@pytest.mark.parametrize("script", ["train_search.py", "train.py"])
def test_bad_epochs_a_file_as_save_and_an_old_checkpoint_are_one_line_and_write_nothing(tmp_path, script):
    existing = tmp_path / "existing_file"
    existing.write_text("keep me\n")
    old = tmp_path / "old" / "checkpoint.pt"  # the layout before the engine: no version, no task part
    old.parent.mkdir()
    torch.save({"epoch": 1, "model": {}, "optimizer": {}, "args": {}}, old)
    tiny = "--dataset synthetic --init_channels 4 --layers 1 --device cpu --workers 0".split()
    cases = {"epochs": ([*tiny, "--epochs", "-1", "--save", tmp_path / "run"], "--epochs -1")}
    cases |= {"save": ([*tiny, "--epochs", "1", "--save", existing], "is a file")}
    cases |= {"old_checkpoint": ([*tiny, "--epochs", "2", "--resume", old], "earlier version")}
    procs = {name: _start(tmp_path, name, script, argv) for name, (argv, _) in cases.items()}
    for name, (_, needle) in cases.items():
        assert_one_line_error(*_finish(procs[name], tmp_path, name), needle)
    assert not (tmp_path / "run").exists() and existing.read_text() == "keep me\n"
    logs = {f"{name}.{ext}" for name in cases for ext in ("out", "err")}
    assert {p.name for p in tmp_path.iterdir()} == {"existing_file", "old", *logs}
    assert [p.name for p in old.parent.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize("flags", [["--method", "dirichlet"], ["--method", "gdas", "--unrolled"], ["--reg_type", "kl"]])
def test_search_and_train_steps_read_no_tensor_on_the_host(load_space, monkeypatch, flags):
    """A step only queues device work: the engine's Meter reads the metrics once per progress line."""
    search, model_search, architect, train, genotypes, streams = load_space(
        "201-space", "train_search", "model_search", "architect", "train", "genotypes", "runkit.streams"
    )
    # Adam keeps its step count on the CPU by design (no device sync); read it without `.item()`.
    get_value = lambda x: x.numpy().item() if torch.is_tensor(x) else x  # noqa: E731
    monkeypatch.setattr(importlib.import_module("torch.optim.adam"), "_get_value", get_value)
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 8, 8), torch.randint(10, (32,)))
    argv = [*"--init_channels 4 --layers 1 --batch_size 4 --epochs 2 --workers 0".split(), *flags]
    args = search.get_parser().parse_args(argv)
    batches, loader = search.search_data(data, args, torch.device("cpu"))
    model = model_search.Network(4, 1, 10, 1, args.method)
    optimizer = search.sgd(model, args, args.learning_rate)
    # Epoch 2 of the search loop, 3 steps: the first starts the streams' loaders, not a per-step cost.
    run = LoopRun(only=[1], steps=3, guard=forbid_host_reads)
    search.search(run, model, architect.Architect(model, args), optimizer, batches, loader, args)
    assert len(run.updates) == 3

    args = train.get_parser().parse_args("--epochs 2 --batch_size 4 --workers 0".split())
    net = train.Network(4, 1, genotypes.DrNAS, 10)
    run = LoopRun(only=[0], steps=3, guard=forbid_host_reads)
    train.train(run, net, data, data, torch.nn.CrossEntropyLoss(), lambda epoch: 0.1, args)
    assert len(run.updates) == 3
