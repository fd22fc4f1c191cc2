"""DARTS-space search scripts run as a user would."""

import json
import re

import pytest
import torch

from conftest import assert_one_line_error, popen_script
from interrupted_run import interrupted

# A tiny search: 3 cells of 8 channels, 2 + 2 epochs of 2 steps, k 4 -> 2, 7 -> 3 ops.
TINY = (
    "--dataset synthetic --layers 3 --init_channels 8 --batch_size 4 --stage_epochs 2 "
    "2 --stage_k 4 2 --stage_keep 7 3 --warmup_epochs 1 --max_steps_per_epoch 2 "
    "--report_freq 1 --device cpu --workers 0"
).split()


def finish(proc, timeout=400):
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def test_bad_input_is_refused_with_one_line(tmp_path):
    """A --k that does not split C=16 and an ImageNet folder without train/ and val/: one line, nothing written."""
    argv = "train_search.py --dataset synthetic --init_channels 16 --layers 8 --stage_k 6 4 --device cpu --save"
    bad_k = popen_script("DARTS-space", *argv.split(), tmp_path / "k")
    argv = ["train_search_imagenet.py", "--data", tmp_path, "--device", "cpu", "--save", tmp_path / "run"]
    bad_data = popen_script("DARTS-space", *argv)
    for proc, expected in ((bad_k, ("--stage_k 6", "valid values: 1, 2, 4, 8")), (bad_data, ("train/", "val/"))):
        _, err = proc.communicate(timeout=300)
        assert_one_line_error(proc.returncode, err, *expected)
    assert not (tmp_path / "k").exists() and not (tmp_path / "run").exists()  # nothing written


def test_search_smoke_and_exact_resume_across_stages(load_space, tmp_path, restore_logging):
    """Straight vs. killed after epochs 2 and 3 (stage boundary, inside stage 2) and resumed: the same end state.
    Both in this process: the search's main(), its checkpoints read back as a new process would."""
    train_search, utils = load_space("DARTS-space", "train_search", "runkit.utils")
    train_search.main([*TINY, "--save", str(tmp_path / "straight")])
    interrupted(utils, train_search.main, [*TINY, "--save", str(tmp_path / "resumed")], stops={2, 3})
    run = tmp_path / "straight"
    for name in ("log.txt", "args.json", "checkpoint.pt", "history.jsonl", "genotype.json"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3] and [h["stage"] for h in history] == [0, 0, 1, 1]
    log = (run / "log.txt").read_text()
    assert "genotype = Genotype(" in log and "concentration normal" in log and "img/s, ETA" in log
    genotypes, utils = load_space("DARTS-space", "genotypes", "runkit.utils")
    genotype = genotypes.load_genotype(str(run / "genotype.json"))
    assert len(genotype.normal) == 8

    a = utils.load_checkpoint(run / "checkpoint.pt")
    b = utils.load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 4 and a["step"] == b["step"] == 0
    a, b = a["task"], b["task"]
    assert a["stage"] == b["stage"] == 1 and a["kept"] == b["kept"] and a["k"] == b["k"] == 2
    assert len(a["kept"]) == 28 and all(len(edge) == 3 for edge in a["kept"]) and a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], atol=1e-6, rtol=0, msg=key)
    for s_a, s_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(s_a["momentum_buffer"], s_b["momentum_buffer"], atol=1e-6, rtol=0)
    torch.testing.assert_close(a["architect"]["state"][0]["exp_avg"], b["architect"]["state"][0]["exp_avg"])
    assert [float(s["step"]) for s in a["architect"]["state"].values()] == [2 * 2] * 2  # epochs 1, 3: 2 steps each
    resumed_log = (tmp_path / "resumed" / "log.txt").read_text()
    assert resumed_log.count("resumed from") == 2
    assert len((tmp_path / "resumed" / "history.jsonl").read_text().splitlines()) == 4


def _image_tree(root, classes=3, n=4, size=40):
    """`n` random training and `n` validation images per class (12 each: whole batches of 2 on both ranks)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, c, i in ((split, c, i) for split in ("train", "val") for c in range(classes) for i in range(n)):
        (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(size, size, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / split / f"class{c}" / f"img{i}.png")


def test_imagenet_search_one_process_and_torchrun(load_space, tmp_path, restore_logging):
    _image_tree(tmp_path / "tiny")
    flags = "--image_size 32 --layers 3 --init_channels 8 --batch_size 4 --stage_epochs 1 1 --stage_k 4 2"
    flags += " --stage_keep 7 2 --warmup_epochs 0 --max_steps_per_epoch 2 --device cpu --workers 0"
    flags = ["--data", str(tmp_path / "tiny"), *flags.split()]
    torchrun = "-m torch.distributed.run --standalone --nproc_per_node 2 train_search_imagenet.py".split()
    ddp = popen_script("DARTS-space", *torchrun, *flags, "--save", tmp_path / "two")
    try:  # the one-process run in this process meanwhile
        load_space("DARTS-space", "train_search_imagenet").main([*flags, "--save", str(tmp_path / "one")])
    finally:
        finish(ddp)
    for run in ("one", "two"):
        assert (tmp_path / run / "genotype.json").is_file() and (tmp_path / run / "checkpoint.pt").is_file()
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "2 process(es)" in log  # every rank ends with rank 0's weights and beta, exactly
    diff = re.search(r"max \|param - rank 0 param\| = (\S+)", log)
    assert diff is not None and float(diff.group(1)) == 0.0
    history = [json.loads(line) for line in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in history] == [0, 1], "history.jsonl counts stages from 0, the log from 1"
    assert "stage 2/2: k=2, 2 ops kept per edge" in log and "epoch 2: stage 2, lr" in log
    assert "epoch 2/2 stage 2 " in log


def test_prepare_imagenet_subset(load_space, tmp_path, capsys):
    prepare = load_space("DARTS-space", "prepare_imagenet_subset")
    for c in range(3):
        folder = tmp_path / "imagenet" / "train" / f"n0{c}"
        folder.mkdir(parents=True)
        for i in range(40):
            (folder / f"n0{c}_{i}.JPEG").write_bytes(b"")
    out = tmp_path / "subset"
    argv = ["--imagenet", str(tmp_path / "imagenet"), "--out", str(out), "--seed", "1"]
    argv += "--train_fraction 0.1 --val_fraction 0.05".split()
    prepare.main(argv)

    def listing():
        return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_symlink())

    first = listing()
    assert len(first) == 3 * (4 + 2)
    for c in range(3):
        train = {p.name for p in (out / "train" / f"n0{c}").iterdir()}
        val = {p.name for p in (out / "val" / f"n0{c}").iterdir()}
        assert len(train) == 4 and len(val) == 2 and not train & val
    link = next((out / "train" / "n00").iterdir())
    assert link.resolve().parent == (tmp_path / "imagenet" / "train" / "n00").resolve()
    prepare.main(argv)  # idempotent
    assert listing() == first
    with pytest.raises(SystemExit):
        prepare.main(argv[:-6] + ["--seed", "2"] + argv[-4:])  # other settings: refused
    with pytest.raises(SystemExit):
        prepare.main(["--imagenet", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "other settings" in err[0] and "no class folders" in err[1]
