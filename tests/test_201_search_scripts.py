"""201-space/train_search.py end to end: as a user runs it (subprocesses, cwd=201-space) where the test is about the
command line, signals or exact resume; its main() in this process where it is about what a run does."""

import json
import random
import time

import pytest
import torch

from conftest import assert_one_line_error, load_ckpt, main_in_process, popen_script, run_script, wait_for_log

TINY = (
    "--dataset synthetic --init_channels 4 --layers 1 --batch_size 16 --workers 0 --device cpu --report_freq 1"
).split()
TIMEOUT = 300


class Run:
    """A train_search.py subprocess with its output in files (pipes could fill and block)."""

    def __init__(self, root, name, args):
        self.dir, self.out, self.err = root / name, root / f"{name}.stdout", root / f"{name}.stderr"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = popen_script("201-space", "train_search.py", *args, "--save", self.dir, stdout=out, stderr=err)

    def wait(self):
        self.proc.wait(timeout=TIMEOUT)
        return self

    returncode = property(lambda self: self.wait().proc.returncode)
    stdout = property(lambda self: self.wait().out.read_text())
    stderr = property(lambda self: self.wait().err.read_text())

    def history(self):
        return [json.loads(line) for line in (self.dir / "history.jsonl").read_text().splitlines() if line.strip()]


METHOD_RUNS = {
    "darts": ["--method", "darts"], "snas": ["--method", "snas"], "gdas": ["--method", "gdas"],
    "unrolled": ["--unrolled"], "kl": ["--reg_type", "kl"],
}  # fmt: skip
LEARN = (
    "--dataset synthetic --init_channels 8 --layers 1 --batch_size 16 --workers 0 "
    "--device cpu --report_freq 100 --method darts --epochs 3 --learning_rate 0.1 "
    "--benchmark none"
).split()
# The smoke run, smallest: synthetic, 1 epoch, the default benchmark (the shipped table).
DEFAULT_BENCHMARK = "--dataset synthetic --epochs 1 --layers 1 --batch_size 64 --workers 0 --device cpu".split()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_runs")
    started = {"two_epochs": Run(root, "two_epochs", [*TINY, "--epochs", "2"])}
    started["root"] = root
    yield started
    for run in started.values():
        if isinstance(run, Run) and run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def _ok(run):
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stderr[-3000:]}"


def _search(run_dir, argv):
    """train_search.py's main() in this process on `run_dir`: its history."""
    main_in_process("201-space", "train_search", [*argv, "--save", run_dir])
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]


def test_two_epoch_search_leaves_the_run_directory_that_a_new_run_may_not_take(runs, load_space):
    gt = load_space("201-space", "genotypes")
    run = runs["two_epochs"]
    _ok(run)
    for name in ("log.txt", "args.json", "checkpoint.pt", "history.jsonl", "genotype.json"):
        assert (run.dir / name).is_file(), name
    assert not list(run.dir.glob("*.tmp"))
    assert (run.dir / "tb").is_dir() and any(p.stat().st_size > 0 for p in (run.dir / "tb").rglob("*") if p.is_file())
    args = json.loads((run.dir / "args.json").read_text())
    assert args["epochs"] == 2 and args["dataset"] == "synthetic"
    history = run.history()
    assert [h["epoch"] for h in history] == [0, 1]
    for h in history:
        assert {"epoch", "lr", "train_acc", "valid_acc", "genotype"} <= set(h)
        assert 0 <= h["train_acc"] <= 100 and 0 <= h["valid_acc"] <= 100
        gt.Structure.from_str(h["genotype"])
    assert history[1]["lr"] < history[0]["lr"]  # cosine schedule
    arch = json.loads((run.dir / "genotype.json").read_text())["arch"]
    structure = gt.Structure.from_str(arch)
    assert str(structure) == arch and all(op in gt.PRIMITIVES for op in structure.edge_ops())
    assert arch == history[-1]["genotype"]
    ckpt = load_ckpt(run.dir / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 0 and ckpt["task"]["genotype"] == arch
    # No warm-up in train_search.py: one architecture step per batch of every epoch (128 samples, batch 16).
    assert int(ckpt["task"]["architect"]["state"][0]["step"]) == 2 * 8
    assert [h["lr"] for h in history] == pytest.approx([0.025, 0.013], rel=1e-9), "cosine 0.025 -> 0.001 over 2 epochs"
    log = (run.dir / "log.txt").read_text()
    assert "final genotype" in log and "img/s" in log and "ETA" in log and "concentrations" in log
    assert "Traceback" not in run.stderr
    before = (run.dir / "checkpoint.pt").read_bytes()  # --save refuses the folder now that it holds a run
    again = run_script("201-space", "train_search.py", *TINY, "--epochs", "1", "--save", run.dir, timeout=TIMEOUT)
    _one_line_error(again, "already holds a run")
    assert (run.dir / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("name", list(METHOD_RUNS))
def test_each_method_and_option_runs(load_space, tmp_path, restore_logging, name):
    """One epoch of two steps each, in this process (no benchmark: its look-ups are tested below)."""
    run_dir = tmp_path / "run"
    short = ["--epochs", "1", "--max_steps_per_epoch", "2", "--benchmark", "none"]
    history = _search(run_dir, [*TINY, *short, *METHOD_RUNS[name]])
    gt = load_space("201-space", "genotypes")
    assert len(history) == 1
    gt.Structure.from_str(json.loads((run_dir / "genotype.json").read_text())["arch"])
    task = load_ckpt(run_dir / "checkpoint.pt")["task"]
    assert torch.isfinite(task["model"]["beta"]).all()
    assert task["architect"]["state"], "the architecture optimizer never stepped"


def test_resume_after_a_kill_is_exact(runs):
    """2 epochs in one go vs. killed (SIGKILL) after epoch 1 and --resume d: final states agree to 1e-6."""
    b = Run(runs["root"], "resume_b", [*TINY, "--epochs", "2"])
    try:
        wait_for_log(b.proc, b.dir / "log.txt", "epoch 2/2 step 1/8", time.monotonic() + TIMEOUT)
    finally:
        b.proc.kill()  # SIGKILL
        b.proc.wait()
    killed_at = load_ckpt(b.dir / "checkpoint.pt")["epoch"]
    assert killed_at == 1, killed_at
    assert not (b.dir / "trajectory.png").exists()  # it really did not finish, but left its current cell
    assert json.loads((b.dir / "genotype.json").read_text())["arch"].startswith("|")
    argv = [*TINY, "--epochs", "2", "--save", b.dir, "--resume", b.dir / "checkpoint.pt"]
    resumed = run_script("201-space", "train_search.py", *argv, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in (b.dir / "log.txt").read_text()

    a = runs["two_epochs"]
    _ok(a)
    ca, cb = load_ckpt(a.dir / "checkpoint.pt"), load_ckpt(b.dir / "checkpoint.pt")
    assert ca["epoch"] == cb["epoch"] == 2
    ta, tb = ca["task"], cb["task"]
    assert ta["model"].keys() == tb["model"].keys()
    for key, value in ta["model"].items():
        torch.testing.assert_close(tb["model"][key], value, atol=1e-6, rtol=0, msg=lambda m, k=key: f"{k}: {m}")
    torch.testing.assert_close(tb["architect"], ta["architect"], atol=1e-6, rtol=0)
    torch.testing.assert_close(tb["optimizer"]["state"], ta["optimizer"]["state"], atol=1e-6, rtol=0)
    assert tb["genotype"] == ta["genotype"]
    assert cb["streams"] == ca["streams"] and set(ca["streams"]) == {"train", "valid"}
    assert [h["epoch"] for h in b.history()] == [0, 1]
    for ha, hb in zip(a.history(), b.history()):
        assert hb["train_acc"] == pytest.approx(ha["train_acc"], abs=1e-4)
        assert hb["valid_acc"] == pytest.approx(ha["valid_acc"], abs=1e-4) and hb["genotype"] == ha["genotype"]


def test_short_search_learns_and_benchmark_none_makes_no_queries(load_space, tmp_path, restore_logging):
    run_dir = tmp_path / "learn"
    history = _search(run_dir, LEARN)  # --benchmark none
    assert len(history) == 3
    final = history[-1]  # chance is 10 %; this run measured about 84 % train and 74 % valid accuracy
    assert final["train_acc"] > 45 and final["valid_acc"] > 35, history
    assert final["train_loss"] < history[0]["train_loss"]
    for record in history:
        assert not {"benchmark", "trajectory", "benchmark_note"} & set(record)
        assert not any(key.startswith("nb201_") for key in record)
    assert not (run_dir / "trajectory.png").exists()
    assert "NAS-Bench-201 look-ups off (--benchmark none)" in (run_dir / "log.txt").read_text()


def test_default_benchmark_labels_its_figures_and_draws_the_trajectory(load_space, tmp_path, restore_logging):
    run_dir = tmp_path / "default_benchmark"
    (record,) = _search(run_dir, DEFAULT_BENCHMARK)
    benchmark = load_space("201-space", "benchmark")
    bench = benchmark.open_benchmark(benchmark.DEFAULT_TABLE)
    assert record["benchmark"] == bench.query(record["genotype"])
    assert record["nb201_cifar10"] == record["benchmark"]["cifar10"]
    assert set(record["trajectory"]) == set(benchmark.DATASETS)
    note = "the benchmark's figures for the cell, not measured on synthetic"
    assert record["benchmark_note"] == note
    log = (run_dir / "log.txt").read_text()
    assert f"NAS-Bench-201 ({note}): cifar10 {record['nb201_cifar10']:.2f}" in log
    png = run_dir / "trajectory.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _one_line_error(proc, *needles):
    assert "Traceback" not in proc.stdout
    assert assert_one_line_error(proc.returncode, proc.stderr, *needles).startswith("error:")


def test_missing_dataset_is_one_line_and_leaves_no_run_behind(runs):
    """A CIFAR-10 search on a missing folder (no download: timeout 60): one line, no args.json or checkpoint."""
    for run in runs.values():  # on its own, after the other runs
        getattr(run, "wait", lambda: None)()
    save = runs["root"] / "bad_data"
    argv = "--dataset cifar10 --data /nonexistent_dir_xyz --epochs 1 --device cpu --workers 0 --save".split()
    proc = run_script("201-space", "train_search.py", *argv, save, timeout=60)
    _one_line_error(proc, "/nonexistent_dir_xyz", "--dataset synthetic")
    assert not (save / "args.json").exists() and not (save / "checkpoint.pt").exists()


def test_bad_resume_and_k_are_one_line(tmp_path):
    garbage = tmp_path / "garbage" / "checkpoint.pt"
    garbage.parent.mkdir()
    garbage.write_bytes(b"\x80\xe3" + random.Random(0).randbytes(510))  # reads as pickle protocol 227
    refused = {"bad_resume_missing": ["--resume", "/missing.pt"], "bad_resume_corrupt": ["--resume", garbage]}
    argvs = {n: [*TINY, "--epochs", "1", *flags] for n, flags in {**refused, "bad_k": ["--k", "3"]}.items()}
    runs = {name: Run(tmp_path, name, argv) for name, argv in argvs.items()}  # side by side
    _one_line_error(runs["bad_resume_missing"], "/missing.pt")
    _one_line_error(runs["bad_k"], "--k 3")
    _one_line_error(runs["bad_resume_corrupt"], "checkpoint.pt", "not a readable checkpoint")
