"""The NAS-Bench-201 evaluation network and train.py."""

import json
import re

import pytest
import torch

from conftest import TINY_201, load_ckpt, read_history, refusal, run_script

CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
RESNET = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
DRNAS = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
MIXED = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|none~1|nor_conv_3x3~2|"
TINY = [*TINY_201, "--report_freq", "4"]


# NAS-Bench-201's own cost numbers (params in MB = 1e6, FLOPs in M) at C=16, N=5:
# all-conv3x3 1.531546 MB / 220.11969 M on CIFAR-10 and 1.537396 MB / 220.12554 M on
# CIFAR-100, all-none 0.073306 MB / 7.78305 M, ResNet 0.559386 MB / 78.56193 M.
@pytest.mark.parametrize(
    "arch, classes, params, flops",
    [(CONV3, 10, 1531546, 220119690), (CONV3, 100, 1537396, 220125540), (CONV3, 120, 1538696, None),
     (NONE, 10, 73306, 7783050), (RESNET, 10, 559386, 78561930), (DRNAS, 10, 1288506, None)],
)  # fmt: skip
def test_golden_counts(load_space, arch, classes, params, flops):
    model, genotypes, utils, budget = load_space("201-space", "model", "genotypes", "runkit.utils", "runkit.budget")
    net = model.Network(16, 5, genotypes.Structure.from_str(arch), classes)
    assert utils.count_parameters(net.parameters()) == params
    if flops is not None:
        assert budget.count_flops(net, (3, 32, 32)) == flops


def test_infer_cell(load_space):
    model, genotypes = load_space("201-space", "model", "genotypes")
    torch.manual_seed(0)
    x, cell = torch.randn(2, 8, 6, 6), model.InferCell(genotypes.Structure.from_str(MIXED), 8)
    assert len(cell.edges) == 5  # the 'none' edge has no module
    assert cell(x).shape == x.shape
    e = cell.edges  # node 1 = pool(x); node 2 = conv1x1(x) + node1; node 3 = conv1x1(x) + conv3x3(node2)
    n1 = e["1_from_0"](x)
    n2 = e["2_from_0"](x) + n1
    assert torch.allclose(cell(x), e["3_from_0"](x) + e["3_from_2"](n2), atol=1e-6)
    assert torch.count_nonzero(model.InferCell(genotypes.Structure.from_str(NONE), 8)(x)) == 0


def test_train_learns_and_logs_param_count(load_space, tmp_path):
    result = run_script("201-space", "train.py", *TINY, "--arch", DRNAS, "--epochs", "2", "--save", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "run"
    for name in ("log.txt", "args.json", "checkpoint.pt", "best.pt", "history.jsonl", "tb", "genotype.json"):
        assert (run / name).exists(), name
    history = read_history(run)
    assert [r["epoch"] for r in history] == [0, 1]
    assert history[-1]["test_acc"] > 20.0  # 10 classes: chance is 10 %
    assert json.loads((run / "genotype.json").read_text())["arch"] == DRNAS  # the cell trained
    model, genotypes, utils = load_space("201-space", "model", "genotypes", "runkit.utils")
    expected = utils.count_parameters(model.Network(4, 1, genotypes.DrNAS, 10).parameters())
    logged = re.search(r"param count = (\d+)", (run / "log.txt").read_text())
    assert logged and int(logged.group(1)) == expected


class Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def test_exact_resume_with_genotype_json(load_space, tmp_path, monkeypatch, restore_logging):
    train, genotypes, utils = load_space("201-space", "train", "genotypes", "runkit.utils")
    genotype = tmp_path / "genotype.json"
    genotypes.save_genotype(genotypes.Structure.from_str(MIXED), genotype)
    args = [*TINY, "--arch", str(genotype), "--epochs", "2"]
    train.main([*args, "--save", str(tmp_path / "whole")])
    assert MIXED in (tmp_path / "whole" / "log.txt").read_text()

    save_checkpoint = utils.save_checkpoint

    def dies_after_first_checkpoint(state, path):
        save_checkpoint(state, path)
        raise Killed

    monkeypatch.setattr(utils, "save_checkpoint", dies_after_first_checkpoint)
    with pytest.raises(Killed):
        train.main([*args, "--save", str(tmp_path / "split")])
    monkeypatch.setattr(utils, "save_checkpoint", save_checkpoint)
    train.main([*args, "--resume", str(tmp_path / "split" / "checkpoint.pt")])

    whole, split = (load_ckpt(tmp_path / name / "checkpoint.pt") for name in ("whole", "split"))
    assert whole["epoch"] == split["epoch"] == 2 and whole["streams"] == split["streams"]
    assert split["task"]["arch"] == MIXED
    for key, value in whole["task"]["model"].items():
        assert torch.allclose(value.float(), split["task"]["model"][key].float(), atol=1e-6), key
    for index, state in whole["task"]["optimizer"]["state"].items():
        other = split["task"]["optimizer"]["state"][index]["momentum_buffer"]
        assert torch.allclose(state["momentum_buffer"], other, atol=1e-6)
    lines, reference = read_history(tmp_path / "split"), read_history(tmp_path / "whole")
    assert [r["epoch"] for r in lines] == [0, 1]
    assert [r["test_acc"] for r in lines] == pytest.approx([r["test_acc"] for r in reference], abs=1e-6)


def test_bad_arch_one_line(load_space, tmp_path, capsys):
    """In process and as a user runs it: one line naming the fault, no traceback, no run folder."""
    train = load_space("201-space", "train")
    unknown_op = "|nor_conv_3x3~0|+|nor_conv_5x5~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
    for arch, message in [(unknown_op, "unknown op"), ("missing_genotype.json", "neither a named cell")]:
        assert message in refusal(capsys, train.main, *TINY, "--arch", arch, "--save", tmp_path / "run")
        assert not (tmp_path / "run").exists()  # nothing created for a run that cannot start
    arch = "|nor_conv_3x3~0|+|bogus~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
    result = run_script("201-space", "train.py", *TINY, "--arch", arch, "--save", tmp_path / "run")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "unknown op" in result.stderr
