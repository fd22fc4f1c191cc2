"""What the README and the scripts promise, held."""

import json
import logging
from argparse import Namespace

import pytest
import torch

from conftest import TINY_201, TINY_DARTS_TRAIN, refusal, run_script

# A DARTS cell and a NAS-Bench-201 cell, as each folder's genotype.json holds them.
DARTS_CELL = "DrNAS_cifar10"
CELL_201 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
@pytest.mark.parametrize("amp_needs_bf16", [True, False])
def test_amp_is_refused_on_a_cpu_without_bf16_units(load_space, monkeypatch, space, amp_needs_bf16):
    accel = load_space(space, "runkit.accel")
    args, cpu = Namespace(amp=True, compile=False), torch.device("cpu")
    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: False)
    with pytest.raises(accel.UserError) as refused:
        accel.check_flags(args, cpu, amp_needs_bf16)
    line = str(refused.value)
    assert "\n" not in line and line.startswith("--amp on a CPU without bf16 units") and "run without --amp" in line
    accel.check_flags(Namespace(amp=False, compile=False), cpu, amp_needs_bf16)  # fp32 is never refused
    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: True)
    accel.check_flags(args, cpu, amp_needs_bf16)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(["--image_size", "48"], "--image_size 48 is not a multiple of 32"),
     (["--image_size", "64", "--auxiliary"], "--auxiliary needs --image_size 224 or more")],
)  # fmt: skip
def test_train_imagenet_image_size_ends_in_one_line(load_space, capsys, tmp_path, flags, expected):
    """Not argparse's usage block, which every torchrun process printed; nothing is made before."""
    train_imagenet, save = load_space("DARTS-space", "train_imagenet"), tmp_path / "run"
    argv = ["--dataset", "synthetic", "--layers", "5", "--init_channels", "8", "--device", "cpu", "--save", save]
    line = refusal(capsys, train_imagenet.main, *argv, *flags)
    assert expected in line and not save.exists()


@pytest.mark.parametrize(
    ("space", "flags"),
    [("201-space", [*TINY_201, "--epochs", "2"]),
     ("DARTS-space", [*TINY_DARTS_TRAIN, "--dataset", "synthetic", "--layers", "3", "--epochs", "2"])],
)  # fmt: skip
def test_training_closes_with_the_last_epochs_test_accuracy(tmp_path, space, flags):
    """The paper's figure (the last epoch) leads the `done:` line; the best epoch, chosen on test, follows."""
    save = tmp_path / "run"
    result = run_script(space, "train.py", *flags, "--save", save)
    assert result.returncode == 0, result.stderr[-3000:]
    history = [json.loads(line) for line in (save / "history.jsonl").read_text().splitlines()]
    last, best = history[-1], max(history, key=lambda record: record["test_acc"])
    closing = (save / "log.txt").read_text().strip().splitlines()[-1]
    assert "done: " in closing and f"test acc {last['test_acc']:.2f} % after {last['epoch'] + 1} epochs" in closing
    assert f"best test acc {best['test_acc']:.2f} % (epoch {best['epoch'] + 1}, chosen on the test set)" in closing
    assert closing.index("% after") < closing.index("best test acc")


def test_darts_closing_line_tells_the_last_epoch_from_the_best(load_space, caplog):
    training, dist = load_space("DARTS-space", "train"), Namespace(world_size=1, device=torch.device("cpu"))
    run = Namespace(dist=dist, best={"value": 91.35, "epoch": 579}, args=Namespace(epochs=600))
    with caplog.at_level(logging.INFO):
        training.finish(run, None, {"epoch": 599, "test_acc": 91.2})
    line = "done: test acc 91.20 % after 600 epochs (the paper's figure: the last epoch); best test acc 91.35 %"
    assert line + " (epoch 580, chosen on the test set)" in caplog.text


def genotype_json(load_space, path, space):
    """A genotype.json as a search of `space` writes it (the cell and its data record)."""
    genotypes = load_space(space, "genotypes")
    cell = genotypes.NAMED[DARTS_CELL] if space == "DARTS-space" else genotypes.Structure.from_str(CELL_201)
    genotypes.save_genotype(cell, path, {"dataset": "cifar10", "data": "/data", "image_size": 32, "num_classes": 10})
    return path


@pytest.mark.parametrize(
    ("space", "script", "argv", "flag"),
    [("201-space", "train", [*TINY_201, "--save", "{tmp}/run", "--arch"], "--arch"),
     ("201-space", "benchmark", ["query", "--arch"], "--arch"),
     ("DARTS-space", "train", [*TINY_DARTS_TRAIN, "--dataset", "synthetic", "--save", "{tmp}/run", "--arch"], "--arch"),
     ("DARTS-space", "train_imagenet", ["--dataset", "synthetic", "--device", "cpu", "--save", "{tmp}/run", "--arch"],
      "--arch"),
     ("DARTS-space", "visualize", ["--out", "{tmp}/cell.png"], "genotype")],
)  # fmt: skip
def test_scripts_name_a_genotype_json_of_the_other_space(load_space, capsys, tmp_path, space, script, argv, flag):
    other = "201-space" if space == "DARTS-space" else "DARTS-space"
    genotype, main = genotype_json(load_space, tmp_path / "genotype.json", other), load_space(space, script).main
    line = refusal(capsys, main, *[a.format(tmp=tmp_path) for a in argv], genotype)
    assert f"{flag} {genotype}: a {other} genotype.json" in line and f"{other}/train.py" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "cell.png").exists()


@pytest.mark.parametrize(("space", "other"), [("201-space", "DARTS-space"), ("DARTS-space", "201-space")])
@pytest.mark.parametrize("script", ["train_search", "train"])
def test_report_names_a_run_of_the_other_space(load_space, capsys, tmp_path, space, other, script):
    run_dir = tmp_path / "run"  # a finished one-epoch run of the other space, written by hand
    run_dir.mkdir()
    args = {"script": script, "seed": 0, "dataset": "synthetic", "epochs": 1, "method": "dirichlet"}
    (run_dir / "args.json").write_text(json.dumps(args))
    (run_dir / "history.jsonl").write_text(json.dumps({"epoch": 0, "test_acc": 50.0, "device": "cpu"}) + "\n")
    genotype_json(load_space, run_dir / "genotype.json", other)
    line = refusal(capsys, load_space(space, "report").main, run_dir)
    assert f"{run_dir}: a run of the {other} ({script}.py); report it with {other}/report.py" in line
