"""The trajectory figure of a search run with a benchmark."""

import json

import pytest

from conftest import run_script

DATASETS = ("cifar10", "cifar100", "ImageNet16-120")


def _records(epochs=6):
    records = []
    for epoch in range(epochs):
        record = {"epoch": epoch, "lr": 0.025, "benchmark": {}, "trajectory": {}}
        for i, dataset in enumerate(DATASETS):
            median = 60.0 - 10 * i + 4 * epoch
            record["trajectory"][dataset] = {"min": median - 20, "median": median, "max": median + 3}
            record["benchmark"][dataset] = median + 2
        record["benchmark"]["cifar10-valid"] = 80.0
        records.append(record)
    return records


def _is_png(path):
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_writes_png(load_space, tmp_path):
    plot = load_space("201-space", "plot_trajectory")
    out = plot.plot_trajectory(_records(), tmp_path / "fig" / "trajectory.png")
    assert _is_png(out)
    single = plot.plot_trajectory(_records(1), tmp_path / "one.png")  # one epoch still draws
    assert _is_png(single)


def test_plot_refuses_records_without_benchmark(load_space, tmp_path):
    plot, utils = load_space("201-space", "plot_trajectory", "utils")
    plain = [{"epoch": 0, "lr": 0.025, "train_acc": 50.0}]
    with pytest.raises(utils.UserError, match="--benchmark"):
        plot.plot_trajectory(plain, tmp_path / "x.png")
    broken = _records(2)
    del broken[1]["trajectory"]["cifar100"]
    with pytest.raises(utils.UserError, match="cifar100"):
        plot.plot_trajectory(broken, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_redraws_from_history(load_space, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    result = run_script("201-space", "plot_trajectory.py", run, "--out", tmp_path / "redrawn.png")
    assert result.returncode == 0, result.stderr
    assert _is_png(tmp_path / "redrawn.png")
    (run / "history.jsonl").write_text(json.dumps({"epoch": 0, "train_acc": 1.0}) + "\n")
    plot = load_space("201-space", "plot_trajectory")
    with pytest.raises(SystemExit) as exit_info:
        plot.main([str(run)])
    assert exit_info.value.code != 0
    assert capsys.readouterr().err.startswith("error: the history has no benchmark")
    assert not (run / "trajectory.png").exists()
