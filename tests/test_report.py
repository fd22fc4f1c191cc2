"""report.py of both folders on real tiny runs, and the wall time and device-hours every run records."""

import csv
import json
import re
import statistics
import time
from argparse import Namespace

import pytest
import torch

from conftest import TINY_201, TINY_DARTS_TRAIN, assert_one_line_error, main_in_process, run_script

SEARCH_201 = "--batch_size 16 --epochs 1 --max_steps_per_epoch 2 --trajectory_samples 0 --benchmark none"
SEARCH_201 = [*TINY_201, *SEARCH_201.split(), "--report_freq", "100"]
TRAIN_DARTS = ["--dataset", "synthetic", "--layers", "3", *TINY_DARTS_TRAIN]
# A cell that is none of the named genotypes: the report names it "cell <8 hex digits>".
CELL = {
    "normal": [["sep_conv_3x3", i % 2] for i in range(8)], "normal_concat": [2, 3, 4, 5],
    "reduce": [["max_pool_3x3", i % 2] for i in range(8)], "reduce_concat": [2, 3, 4, 5],
}  # fmt: skip


def _write_search(run_dir):
    """A finished DARTS search of two epochs (1 + 1 stages) on one GPU, 1.2 device-hours."""
    run_dir.mkdir()
    args = {"script": "train_search", "seed": 5, "dataset": "synthetic", "stage_epochs": [1, 1]}
    (run_dir / "args.json").write_text(json.dumps(args))
    records = [{"epoch": 0, "wall_s": 1800.0, "device_hours": 0.5}, {"epoch": 1, "wall_s": 4320.0, "device_hours": 1.2}]
    records[1].update(cell_params=3.349342, cell_flops=528.35905)  # the cell's size in train.py's network
    (run_dir / "history.jsonl").write_text("".join(json.dumps({**r, "device": "cuda"}) + "\n" for r in records))
    (run_dir / "genotype.json").write_text(json.dumps(CELL))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three 201 searches and three DARTS trainings, each its script's main() in this process."""
    root = tmp_path_factory.mktemp("report")
    _write_search(root / "search")
    for seed in (1, 2, 3):
        main_in_process("201-space", "train_search", [*SEARCH_201, "--seed", seed, "--save", root / f"s{seed}"])
    for name, extra in (
        ("e1", ["--seed", "1"]),
        ("e2", ["--seed", "2"]),
        ("cell", ["--arch", root / "search/genotype.json"]),
    ):
        main_in_process("DARTS-space", "train", [*TRAIN_DARTS, *extra, "--save", root / name])
    return root


def _history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def _report(load_space, capsys, space, *args):
    """report.py's main() in this process: its stdout (the refusals below run it as a user does)."""
    capsys.readouterr()
    load_space(space, "report").main([str(arg) for arg in args])
    return capsys.readouterr().out


def test_every_run_records_wall_time_and_device_hours(runs):
    for name in ("s1", "s2", "s3", "e1", "e2", "cell"):
        last = _history(runs / name)[-1]
        assert last["device"] == "cpu" and last["wall_s"] >= last["time_s"] > 0, (name, last)
        assert last["device_hours"] == pytest.approx(last["wall_s"] / 3600, abs=5e-6), "one process"
        usage = torch.load(runs / name / "checkpoint.pt", weights_only=True)["usage"]
        assert usage["wall_s"] >= last["wall_s"] and set(usage) == {"wall_s", "device_hours"}


def test_201_report_averages_the_seeds_like_the_paper(runs, load_space, capsys, nb201_table):
    benchmark = load_space("201-space", "benchmark").load_benchmark(nb201_table)
    argv = [*(runs / f"s{seed}" for seed in (1, 2, 3)), "--csv", runs / "nb201.csv"]
    out = _report(load_space, capsys, "201-space", *argv)
    assert "mean ± std over 3 runs" in out and "sample std, ddof=1" in out, out
    summary = next(line for line in out.splitlines() if line.startswith("| mean ± std over 3 runs"))
    assert len(re.findall(r"\d+\.\d\d ± \d+\.\d\d", summary)) == 6, summary  # 3 data sets, params, MACs, cost
    with open(runs / "nb201.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows] == ["run", "run", "run", "mean", "std"]
    assert [int(r["seed"]) for r in rows[:3]] == [1, 2, 3]
    for row, seed in zip(rows, (1, 2, 3)):
        arch = json.loads((runs / f"s{seed}" / "genotype.json").read_text())["arch"]
        assert row["cell"] == arch and float(row["cifar100"]) == pytest.approx(benchmark.query(arch)["cifar100"])
        last = _history(runs / f"s{seed}")[-1]
        assert float(row["search (device-hours)"]) == pytest.approx(last["device_hours"])
        assert (float(row["params (M)"]), float(row["MACs (M)"])) == pytest.approx(
            (last["cell_params"], last["cell_flops"])
        )
    for name in ("cifar10", "cifar100", "ImageNet16-120", "search (device-hours)"):
        values = [float(r[name]) for r in rows[:3]]
        assert float(rows[3][name]) == pytest.approx(statistics.fmean(values))
        assert float(rows[4][name]) == pytest.approx(statistics.stdev(values))  # ddof=1
        assert f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" in summary


def test_darts_report_tabulates_searches_and_evaluations(runs, load_space, capsys):
    argv = [runs / "search", runs / "e1", runs / "e2", runs / "cell", "--csv", runs / "darts.csv"]
    out = _report(load_space, capsys, "DARTS-space", *argv)
    search_row = next(line for line in out.splitlines() if line.startswith(f"| {runs / 'search'} |"))
    cell = re.search(r"cell [0-9a-f]{8}", search_row).group(0)
    assert "| 0.05 | cuda |" in search_row, "1.2 GPU-hours = 0.05 GPU-days"
    assert "search (GPU-days)" in out and "search synthetic: mean ± std over 1 run " in out, out
    assert "eval synthetic, DrNAS_cifar10: mean ± std over 2 runs" in out, out
    assert f"| {runs / 'cell'} | 0 | synthetic | {cell} |" in out, "a search's cell keeps its name in training"
    with open(runs / "darts.csv") as f:
        table = list(csv.DictReader(f))
    rows, searched = [r for r in table if r["table"] == "eval"], _history(runs / "search")[-1]
    assert float(table[0]["MACs (M)"]) == pytest.approx(searched["cell_flops"]), "the searched cell's, in train.py"
    assert [(r["row"], r["cell"]) for r in rows] == [
        ("run", "DrNAS_cifar10"), ("run", "DrNAS_cifar10"), ("run", cell), ("mean", "DrNAS_cifar10"),
        ("std", "DrNAS_cifar10"), ("mean", cell), ("std", cell),
    ]  # fmt: skip
    # The paper's number (the last epoch's test error) leads; the best epoch, picked on the test set, comes after.
    errors = [column for column in rows[0] if "error (%" in column]
    assert errors == ["test error (%)", "test top-5 error (%)", "best-epoch error (%, chosen on test)"], errors
    header = next(line for line in out.splitlines() if "error (%" in line)  # the Markdown table's too
    assert header.index("error (%") == header.index("| test error (%) |") + 7, header
    assert header.index("| test error (%) |") < header.index("| best-epoch error (%, chosen on test) |"), header
    for row, name in zip(rows, ("e1", "e2")):
        history = _history(runs / name)
        task = torch.load(runs / name / "checkpoint.pt", weights_only=True)["task"]
        assert float(row["params (M)"]) == pytest.approx(task["param_count"] / 1e6)
        assert float(row["MACs (M)"]) == pytest.approx(task["flops"] / 1e6)
        assert float(row[errors[0]]) == pytest.approx(100 - history[-1]["test_acc"]), "the first error: last epoch"
        assert float(row["test top-5 error (%)"]) == pytest.approx(100 - history[-1]["test_top5"])
        assert float(row[errors[2]]) == pytest.approx(100 - max(h["test_acc"] for h in history))
    best = [float(r["best-epoch error (%, chosen on test)"]) for r in rows[:2]]
    assert float(rows[4]["best-epoch error (%, chosen on test)"]) == pytest.approx(statistics.stdev(best))
    assert float(rows[6]["best-epoch error (%, chosen on test)"]) == 0.0, "a single run's std"


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_a_folder_that_is_not_a_finished_run_is_one_line(runs, tmp_path, space):
    result = run_script(space, "report.py", tmp_path)
    assert_one_line_error(result.returncode, result.stderr, str(tmp_path), "not a run folder")
    run = "s1" if space == "201-space" else "e1"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("args.json", "genotype.json"):
        (unfinished / name).write_text((runs / run / name).read_text())
    result = run_script(space, "report.py", runs / run, unfinished)
    assert_one_line_error(result.returncode, result.stderr, str(unfinished), "unfinished (0 of 1 epochs)")


def test_an_evaluation_recorded_as_valid_reports_the_same_and_a_damaged_checkpoint_is_one_line(
    runs, load_space, capsys, tmp_path
):
    """Runs of train.py made before test_* was its name recorded the test set as valid_acc, valid_top5, ..."""
    old, damaged = tmp_path / "old", tmp_path / "damaged"
    for folder in (old, damaged):
        folder.mkdir()
        for name in ("args.json", "genotype.json", "checkpoint.pt"):
            (folder / name).write_bytes((runs / "e1" / name).read_bytes())
    history = (runs / "e1" / "history.jsonl").read_text()
    (old / "history.jsonl").write_text(history.replace('"test_', '"valid_'))
    rows = [
        [r for r in _report(load_space, capsys, "DARTS-space", run).splitlines() if r.startswith(f"| {run} |")]
        for run in (runs / "e1", old)
    ]
    new_row, old_row = (r[0].split(" | ") for r in rows)
    assert old_row[1:] == new_row[1:], (new_row, old_row)
    (damaged / "history.jsonl").write_text(history)
    (damaged / "checkpoint.pt").write_bytes(b"\x80\xe3" + b"garbage" * 20)  # torch would warn of pickle protocol 227
    result = run_script("DARTS-space", "report.py", runs / "e1", damaged)
    assert_one_line_error(result.returncode, result.stderr, str(damaged), "no readable checkpoint.pt")


def _tiny_loop(run, epochs):
    """The engine alone, as a script's loop calls it: two steps an epoch on a constant batch, 50 ms each."""
    for _ in run.epochs(epochs, 2, state=dict):
        for _ in run.steps():
            time.sleep(0.05)
            logits = torch.zeros(2, 3)
            run.update(logits, torch.zeros(2, dtype=torch.long), logits.sum())
        run.end_epoch(run.train_metrics())


def test_wall_time_continues_across_a_resume(load_space, tmp_path, restore_logging):
    """A resumed run's wall clock starts from the checkpoint's total, not from zero."""
    engine = load_space("201-space", "runkit.engine")
    args = Namespace(resume=None, save=str(tmp_path / "run"), device="cpu", batch_size=2, report_freq=100)
    run = engine.Run(args, "test", "tiny")
    run.open()
    _tiny_loop(run, 1)  # epoch 1 of 2, then the run "stops"
    first = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["usage"]
    args.resume = str(tmp_path / "run" / "checkpoint.pt")
    run = engine.Run(args, "test", "tiny")
    run.open()
    _tiny_loop(run, 2)
    records = _history(tmp_path / "run")
    assert [r["epoch"] for r in records] == [0, 1] and all(r["device"] == "cpu" for r in records)
    assert 0.1 <= records[0]["wall_s"] <= first["wall_s"] + 0.01, "two 50 ms steps, the checkpoint after the record"
    # Rounded to 0.01 s; without the carried total the difference would be time_s - first["wall_s"] (< time_s - 0.1).
    assert records[1]["wall_s"] - first["wall_s"] >= records[1]["time_s"] - 0.02, "the second session adds on"
    assert records[1]["device_hours"] == pytest.approx(records[1]["wall_s"] / 3600, abs=5e-6)  # both rounded
    assert set(torch.load(args.resume, weights_only=True)) == set(engine.CHECKPOINT_KEYS)
