"""Runs that survive what a cluster and a hurried user do to them, run as a user does."""

import json
import os
import signal
import time
from argparse import Namespace

import pytest
import torch

from conftest import TINY_201, assert_one_line_error, load_ckpt, main_in_process, popen_script, run_script, wait_for_log

TIMEOUT = 300
# A DARTS training of 2 x 32 steps, data through 2 DataLoader workers (the default).
DARTS_TRAIN = "train.py --dataset synthetic --layers 3 --init_channels 8 --batch_size 8 --device cpu --report_freq 4"
DARTS_TRAIN = DARTS_TRAIN.split()
# A 201 search of 2 x 16 steps, data through 2 DataLoader workers (no benchmark: no look-ups, no figure).
S201 = ["train_search.py", *TINY_201, "--batch_size", "8", "--epochs", "2", "--workers", "2", "--report_freq", "2"]
S201 += ["--benchmark", "none"]


def _finish(proc):
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err


def _epochs(run_dir):
    return [json.loads(line)["epoch"] for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    ("space", "argv", "marker", "sig"),
    [("DARTS-space", [*DARTS_TRAIN, "--epochs", "2", "--image_size", "16"], "epoch 1/2 step 8/32 ", signal.SIGTERM),
     ("201-space", S201, "epoch 1/2 step 4/16 ", signal.SIGINT)],
    ids=["darts-train-sigterm", "201-search-sigint"],
)  # fmt: skip
def test_a_stop_signal_to_the_process_group_checkpoints_and_resumes(tmp_path, space, argv, marker, sig):
    """Signalled with workers mid-epoch: exit 0, mid-epoch checkpoint, no tmp file; resumed, each epoch once."""
    run_dir = tmp_path / "run"
    proc = popen_script(space, *argv, "--save", run_dir, new_session=True)
    wait_for_log(proc, run_dir / "log.txt", marker, time.monotonic() + TIMEOUT)
    assert "data through a DataLoader with 2 workers" in (run_dir / "log.txt").read_text()
    os.killpg(proc.pid, sig)
    code, err = _finish(proc)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    ckpt = load_ckpt(run_dir / "checkpoint.pt")
    assert ckpt["epoch"] == 0 and ckpt["step"] > 0 and not list(run_dir.glob("*.tmp")), (ckpt["epoch"], ckpt["step"])
    # The preemption line gives the command that continues the run: the script and the run folder, nothing else.
    command, log = f"continue with: python {argv[0]} --resume {run_dir}", (run_dir / "log.txt").read_text()
    assert "preempted: checkpoint written" in log and log.splitlines()[-1].endswith(command)

    resumed = popen_script(space, *command.split()[3:], new_session=True)
    code, err = _finish(resumed)
    assert code == 0, err[-3000:]
    assert _epochs(run_dir) == [0, 1] and load_ckpt(run_dir / "checkpoint.pt")["epoch"] == 2


def _signalled_in_evaluation(run, epochs):
    """A loop of two steps an epoch whose evaluation receives SIGTERM."""
    for _ in run.epochs(epochs, 2, state=dict):
        for _ in run.steps():
            run.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.tensor(1.0))
        os.kill(os.getpid(), signal.SIGTERM)  # the handler only notes it; the epoch is finished first
        run.end_epoch({**run.train_metrics(), "valid_acc": 50.0})


def test_a_signal_during_evaluation_ends_after_the_epochs_checkpoint(load_space, tmp_path, restore_logging):
    engine = load_space("201-space", "runkit.engine")
    args = Namespace(resume=None, save=str(tmp_path / "run"), device="cpu", batch_size=2, report_freq=100)
    run = engine.Run(args, "test", "tiny")
    run.open()
    with pytest.raises(SystemExit) as stopped:
        _signalled_in_evaluation(run, 3)
    assert stopped.value.code == 0
    ckpt = load_ckpt(tmp_path / "run" / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step"], _epochs(tmp_path / "run")) == (1, 0, [0]), "epoch 2 not begun"


def test_one_writer_per_run_folder(tmp_path):
    """Two runs on one --save: one trains, one is refused; resume and report.py name the live pid; epochs once."""
    run_dir = tmp_path / "run"
    argv = [*DARTS_TRAIN, "--epochs", "3", "--workers", "0", "--image_size", "16", "--save", run_dir]
    first, second = popen_script("DARTS-space", *argv), popen_script("DARTS-space", *argv)
    deadline = time.monotonic() + TIMEOUT
    while first.poll() is None and second.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    refused, live = (first, second) if first.poll() is not None else (second, first)
    try:
        assert_one_line_error(refused.returncode, refused.stderr.read(), "a live run (process", str(live.pid))
        wait_for_log(live, run_dir / "log.txt", "epoch 1/3 lr ", time.monotonic() + TIMEOUT)  # epoch 1 is checkpointed
        os.kill(live.pid, signal.SIGSTOP)  # alive, holding its folder, however slow the checks below start
        resume = run_script("DARTS-space", *argv[:-2], "--resume", run_dir / "checkpoint.pt", timeout=60)
        assert_one_line_error(resume.returncode, resume.stderr, f"a live run (process {live.pid})")
        report = run_script("DARTS-space", "report.py", run_dir, timeout=60)
        assert_one_line_error(report.returncode, report.stderr, f"still running (process {live.pid}")
    finally:
        os.kill(live.pid, signal.SIGCONT)
        code, err = _finish(live)
    assert code == 0, err[-3000:]
    assert _epochs(run_dir) == [0, 1, 2]


def test_a_killed_run_leaves_its_folder_free_to_resume(tmp_path):
    """The lock goes with the process: after SIGKILL (no chance to clean up) --resume continues the run."""
    run_dir = tmp_path / "run"
    argv = [*DARTS_TRAIN, "--epochs", "2", "--workers", "0", "--image_size", "16", "--max_steps_per_epoch", "16"]
    proc = popen_script("DARTS-space", *argv, "--save", run_dir, new_session=True)
    wait_for_log(proc, run_dir / "log.txt", "epoch 2/2 step 4/16 ", time.monotonic() + TIMEOUT)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert (run_dir / "run.lock").exists()
    resumed = run_script("DARTS-space", *argv, "--resume", run_dir / "checkpoint.pt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _epochs(run_dir) == [0, 1]


@pytest.mark.parametrize(
    ("space", "script"), [("201-space", "train_search_progressive.py"), ("DARTS-space", "train_search.py")]
)
def test_a_warm_up_covering_a_stage_is_refused(tmp_path, space, script):
    """--stage_epochs 2 2 with the default --warmup_epochs 10 would never train the architecture."""
    tiny = "--dataset synthetic --device cpu --workers 0".split()
    result = run_script(space, script, *tiny, "--stage_epochs", "2", "2", "--save", tmp_path / "run", timeout=120)
    assert_one_line_error(result.returncode, result.stderr, "--warmup_epochs 10", "--stage_epochs 2 2", "1 or less")
    assert not (tmp_path / "run").exists()


def test_another_space_or_scripts_checkpoint_is_refused_before_the_flags(tmp_path, load_space, restore_logging):
    """A 201 search checkpoint given to the DARTS search (both are train_search.py) or to 201's train.py."""
    run_dir = tmp_path / "s201"
    argv = [*TINY_201, "--epochs", "1", "--max_steps_per_epoch", "1", "--benchmark", "none", "--save", str(run_dir)]
    main_in_process("201-space", "train_search", argv)  # the checkpoint is what matters, the refusals are commands
    ckpt = run_dir / "checkpoint.pt"
    darts = run_script("DARTS-space", "train_search.py", "--dataset", "synthetic", "--resume", ckpt, timeout=120)
    assert_one_line_error(darts.returncode, darts.stderr, "train_search.py in the NAS-Bench-201 space", "DARTS space")
    train = run_script("201-space", "train.py", *TINY_201, "--resume", ckpt, timeout=120)
    assert_one_line_error(train.returncode, train.stderr, "a checkpoint of train_search.py", "not of this train.py")
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix == ".tmp") == []


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(["--gpu", "3"], "--gpu 3 picks a CUDA GPU, but this run is on cpu"),
     (["--learning_rate", "inf"], "--learning_rate inf is not a finite number; give a number > 0"),
     (["--momentum", "1"], "--momentum 1.0 is out of range: give a number in [0, 1)")],
)  # fmt: skip
def test_flags_that_cannot_mean_what_they_say_are_refused(tmp_path, flags, expected):
    argv = [*TINY_201, "--epochs", "1", "--save", tmp_path / "run", *flags]
    result = run_script("201-space", "train_search.py", *argv, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, expected)
    assert not (tmp_path / "run").exists()


def test_amp_and_compile_say_what_they_do_and_amp_is_logged_with_its_dtype(tmp_path, load_space):
    """Where the CPU has bf16 units; where it has none, --amp is refused in one line before any write."""
    accel = load_space("201-space", "runkit.accel")
    lines = accel.describe(Namespace(amp=True, compile=True), torch.device("cpu"))
    assert lines[0].startswith("--amp: bfloat16 autocast (") and "loss scaler" not in lines[0]
    assert lines[1].startswith("--compile: compiling the network; the first steps take about a minute")
    assert accel.describe(Namespace(amp=False), torch.device("cpu")) == []
    run_dir = tmp_path / "run"
    short = ["--epochs", "1", "--max_steps_per_epoch", "1", "--benchmark", "none"]
    result = run_script("201-space", "train_search.py", *TINY_201, *short, "--amp", "--save", run_dir)
    if not accel.cpu_has_bf16():
        assert_one_line_error(result.returncode, result.stderr, "--amp on a CPU without bf16 units")
        assert not run_dir.exists()
        return
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--amp: bfloat16 autocast" in (run_dir / "log.txt").read_text()
