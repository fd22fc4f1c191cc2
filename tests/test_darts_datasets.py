"""DARTS-space data: CIFAR's pickled batches on a tiny tree made here, cutout, offline errors."""

import pickle
import urllib.error

import numpy as np
import pytest
import torch

from conftest import TINY_DARTS_TRAIN, run_script


def make_cifar10(root, per_file=8):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_file, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [i % 10 for i in range(per_file)]}, f)


def test_cifar10_tree_with_cutout(load_space, tmp_path):
    datasets = load_space("DARTS-space", "datasets")
    make_cifar10(tmp_path)
    train, test, classes = datasets.get_datasets("cifar10", tmp_path, cutout=True, cutout_length=16)
    assert classes == 10 and len(train) == 40 and len(test) == 8
    torch.manual_seed(0)
    x, y = train[13]
    assert x.shape == (3, 32, 32) and y == 13 % 8  # labels 0..7 in each batch file
    assert (x == 0).sum() >= 8 * 8 * 3, "cutout zeroes a square (at least a quarter of it inside the image)"
    x_test, _ = test[2]
    assert torch.equal(x_test, test[2][0]), "the test transform is deterministic"


def test_offline_download_is_one_line_and_leaves_nothing(load_space, tmp_path, monkeypatch):
    datasets, utils = load_space("DARTS-space", "datasets", "runkit.utils")
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(utils.UserError) as err:
        datasets.get_datasets("cifar10", tmp_path / "absent")
    assert "\n" not in str(err.value) and "--dataset synthetic" in str(err.value)
    assert not (tmp_path / "absent").exists()


def test_train_runs_on_a_cifar_tree(tmp_path):
    make_cifar10(tmp_path / "data")
    result = run_script(
        *"DARTS-space train.py --dataset cifar10 --data".split(),
        tmp_path / "data",
        *"--cutout --layers 3".split(),
        *TINY_DARTS_TRAIN,
        "--save",
        tmp_path / "run",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
