"""DARTS-space evaluation scripts run as a user would."""

import json
import math
import re
import time

import pytest
import torch

from conftest import TINY_DARTS_TRAIN, load_ckpt, popen_script, read_history, run_script

# A small network that learns the synthetic set in two epochs on a busy CPU.
TINY = "--dataset synthetic --cutout --auxiliary --layers 3 --init_channels 8 --batch_size 16 --learning_rate 0.05"
TINY = [*TINY.split(), *"--epochs 2 --device cpu --workers 0 --seed 3 --report_freq 8".split()]
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def _start(run_dir, *extra):
    return popen_script("DARTS-space", "train.py", *TINY, "--save", run_dir, *extra)


def test_train_learns_and_resumes_exactly(tmp_path):
    """2 epochs straight vs. killed after its first checkpoint and resumed: the same end state."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    reference, killed = _start(straight), _start(resumed)
    deadline = time.time() + 300
    while not (resumed / "checkpoint.pt").exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.kill()
    killed.wait()
    assert load_ckpt(resumed / "checkpoint.pt")["epoch"] == 1, "the run was not stopped after its first epoch"
    result = run_script("DARTS-space", "train.py", *TINY, "--save", resumed, "--resume", resumed / "checkpoint.pt")
    assert result.returncode == 0, result.stderr
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    log = (straight / "log.txt").read_text()
    assert re.search(r"param count = \d+ \(", log)
    history = read_history(straight)
    assert [h["epoch"] for h in history] == [0, 1]
    # DARTS' drop-path ramp drop_path_prob * epoch / epochs (default 0.3) and the cosine learning rate to 0.
    assert [h["drop_path_prob"] for h in history] == pytest.approx([0.0, 0.3 * 1 / 2])
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.05 * (1 + math.cos(math.pi * 1 / 2)) / 2])
    assert history[-1]["test_acc"] > 40.0  # chance is 10 %
    assert "best test acc" in log and (straight / "best.pt").is_file() and (straight / "tb").is_dir()

    a, b = load_ckpt(straight / "checkpoint.pt"), load_ckpt(resumed / "checkpoint.pt")
    assert b["epoch"] == 2
    a, b = a["task"], b["task"]
    _assert_same_state(a["model"], b["model"])
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.allclose(state_a["momentum_buffer"], state_b["momentum_buffer"], atol=1e-6)
    assert [h["test_acc"] for h in read_history(resumed)] == [h["test_acc"] for h in history]
    assert "resumed from" in (resumed / "log.txt").read_text()


def test_arch_path_from_a_search(load_space, tmp_path, monkeypatch, restore_logging):
    genotypes, model, train = load_space("DARTS-space", "genotypes", "model", "train")
    path = tmp_path / "genotype.json"
    genotypes.save_genotype(genotypes.PC_DARTS_cifar, path)  # what train_search.py writes
    expected = model.param_count(model.NetworkCIFAR(4, 10, 5, False, genotypes.PC_DARTS_cifar))
    run_dir = tmp_path / "run"
    argv = ["--dataset", "synthetic", "--arch", str(path), "--layers", "5", *TINY_DARTS_TRAIN, "--deterministic"]
    # In this process: --deterministic's global settings are put back afterwards.
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        train.main([*argv, "--save", str(run_dir)])
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    log = (run_dir / "log.txt").read_text()
    assert f"param count = {expected} (" in log and "--deterministic: deterministic kernels" in log
    args = json.loads((run_dir / "args.json").read_text())
    assert args["arch"] == str(path) and args["deterministic"] is True
    # The run keeps its cell, so `--arch RUN/genotype.json` and visualize.py can reuse it.
    assert json.loads((run_dir / "genotype.json").read_text()) == genotypes.genotype_to_dict(genotypes.PC_DARTS_cifar)


TORCHRUN_ARGS = {
    "train.py": "--dataset synthetic --cutout --auxiliary --layers 3 --init_channels 4 --batch_size 8".split(),
    "train_imagenet.py": "--image_size 32 --layers 3 --init_channels 8 --batch_size 4".split(),
}


@pytest.mark.parametrize("script", sorted(TORCHRUN_ARGS))
def test_train_under_torchrun(tmp_path, tiny_imagenet, script):
    run_dir, data = tmp_path / "run", ["--data", tiny_imagenet] if script == "train_imagenet.py" else []
    argv = [*TORCHRUN, script, *TORCHRUN_ARGS[script], *data, "--device", "cpu", "--workers", "0", "--epochs", "1"]
    result = run_script("DARTS-space", *argv, "--max_steps_per_epoch", "3", "--save", run_dir, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (run_dir / "log.txt").read_text()
    # Every rank compares its weights with rank 0's after training: identical replicas.
    match = re.search(r"rank consistency: max \|w - w_rank0\| over 2 ranks = (\S+)", log)
    assert match and float(match.group(1)) == 0.0, log
    files = "args.json best.pt checkpoint.pt genotype.json history.jsonl log.txt run.lock scripts tb"
    assert sorted(p.name for p in run_dir.iterdir()) == files.split(), "one set of files, written once (by rank 0)"
    # The epoch's summary line (its progress lines are "epoch 1/1 step ..."), once.
    assert log.count("epoch 1/1 lr ") == 1 and log.count("param count") == 1 and len(read_history(run_dir)) == 1
    assert "2 process(es)" in log and "param count = " in log


def test_visualize_writes_a_png(load_space, tmp_path, restore_logging):
    out = tmp_path / "cell.png"
    load_space("DARTS-space", "visualize").main(["DrNAS_cifar10", "--out", str(out)])  # in this process
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
