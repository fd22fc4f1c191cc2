"""The trajectory figure of a search run with a benchmark."""

import json

import pytest

from conftest import refusal, run_script

DATASETS = ("cifar10", "cifar100", "ImageNet16-120")


def _records(epochs=6):
    records = []
    for epoch in range(epochs):
        medians = {dataset: 60.0 - 10 * i + 4 * epoch for i, dataset in enumerate(DATASETS)}
        trajectory = {dataset: {"min": m - 20, "median": m, "max": m + 3} for dataset, m in medians.items()}
        benchmark = {**{dataset: m + 2 for dataset, m in medians.items()}, "cifar10-valid": 80.0}
        records.append({"epoch": epoch, "lr": 0.025, "benchmark": benchmark, "trajectory": trajectory})
    return records


def _is_png(path):
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _history_file(tmp_path, records):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_plot_writes_png_with_or_without_sampled_cells_and_refuses_records_without_benchmark(load_space, tmp_path):
    plot, utils = load_space("201-space", "plot_trajectory", "runkit.utils")
    assert _is_png(plot.plot_trajectory(_records(), tmp_path / "fig" / "trajectory.png"))
    assert _is_png(plot.plot_trajectory(_records(1), tmp_path / "one.png")), "one epoch still draws"
    # --trajectory_samples 0 records the derived cell only: no band, no median, still a figure.
    records = [{k: v for k, v in r.items() if k != "trajectory"} for r in _records(3)]
    for ax in plot.draw_trajectory(records).axes:
        assert [line.get_label() for line in ax.get_lines()] == ["derived architecture"] and not ax.collections
    assert _is_png(plot.plot_trajectory(records, tmp_path / "derived.png"))
    with pytest.raises(utils.UserError, match="--benchmark"):
        plot.plot_trajectory([{"epoch": 0, "lr": 0.025, "train_acc": 50.0}], tmp_path / "x.png")
    broken = _records(2)
    del broken[1]["trajectory"]["cifar100"]
    with pytest.raises(utils.UserError, match="cifar100"):
        plot.plot_trajectory(broken, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_redraws_from_history(load_space, tmp_path, capsys):
    run = _history_file(tmp_path, _records())
    result = run_script("201-space", "plot_trajectory.py", run, "--out", tmp_path / "redrawn.png")
    assert result.returncode == 0 and _is_png(tmp_path / "redrawn.png"), result.stderr
    _history_file(tmp_path, [{"epoch": 0, "train_acc": 1.0}])
    line = refusal(capsys, load_space("201-space", "plot_trajectory").main, run)
    assert line.startswith("error: the history has no benchmark")
    assert not (run / "trajectory.png").exists()


def test_epochs_count_from_one_like_the_log_an_unmeasured_data_set_is_named_a_stage_switch_marked(load_space, tmp_path):
    plot = load_space("201-space", "plot_trajectory")
    records = plot.read_history(_history_file(tmp_path, _records(4)))
    data = plot.trajectory_series(records)
    assert data["epochs"] == data["sampled_epochs"] == [1, 2, 3, 4]
    assert data["stage_starts"] == [] and data["note"] is None
    fig = plot.draw_trajectory(records)
    assert len(fig.axes) == 3 and "not measured" not in fig._suptitle.get_text()
    for ax, dataset in zip(fig.axes, DATASETS):
        (line,) = [line for line in ax.get_lines() if line.get_label() == "derived architecture"]
        assert list(line.get_xdata()) == [1, 2, 3, 4] and ax.get_xlabel() == "search epoch"
        assert list(line.get_ydata()) == [r["benchmark"][dataset] for r in records]
    note = "the benchmark's figures for the cell, not measured on synthetic"
    fig = plot.draw_trajectory([dict(r, benchmark_note=note) for r in _records(3)])
    assert fig._suptitle.get_text().endswith("\n" + note)
    # A progressive search: the stage switch is marked.
    records = [dict(r, stage=int(r["epoch"] >= 4)) for r in _records(6)]  # stage 2 begins at epoch 5 (log numbering)
    records = plot.read_history(_history_file(tmp_path, records))
    assert plot.trajectory_series(records)["stage_starts"] == [(4.5, 2)]
    for ax in plot.draw_trajectory(records).axes:
        marks = [line for line in ax.get_lines() if list(line.get_xdata()) == [4.5, 4.5]]
        assert len(marks) == 1, "one vertical line between epochs 4 and 5"
        assert [t.get_text() for t in ax.texts] == ["stage 2"]
    assert _is_png(plot.plot_trajectory(records, tmp_path / "progressive.png"))
