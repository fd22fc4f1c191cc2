"""Data of both folders: the pickled-batch readers on tiny CIFAR / ImageNet16 trees made here, cutout, offline
errors."""

import pickle
import urllib.error
from subprocess import PIPE

import numpy as np
import pytest
import torch

from conftest import TINY_DARTS_TRAIN, popen_script, write_tiny_cifar


def _write_batches(folder, files, label_key, size, labels_per_file, rng):
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        labels = list(labels_per_file)
        data = rng.integers(0, 256, size=(len(labels), 3 * size * size), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, label_key: labels}, f)


def test_cifar10_tree_is_read(load_space, tmp_path):
    datasets = load_space("201-space", "datasets")
    write_tiny_cifar(tmp_path, per_batch=8, labels=list(range(8)))
    train, test, classes = datasets.get_datasets("cifar10", tmp_path, train_augment=True)
    assert classes == 10 and len(train) == 40 and len(test) == 8
    x, y = train[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 3
    # The test transform is deterministic (no crop or flip) and normalised.
    raw = torch.from_numpy(test.images[5].astype(np.float32) / 255).permute(2, 0, 1)  # from (H, W, C)
    mean, std = (torch.tensor(datasets.SOURCES["cifar10"][i]).view(3, 1, 1) for i in (6, 7))
    expected = (raw - mean) / std
    torch.testing.assert_close(test[5][0], expected, rtol=0, atol=1e-5)


def test_cifar100_and_imagenet16_trees(load_space, tmp_path):
    datasets, rng = load_space("201-space", "datasets"), np.random.default_rng(1)
    _write_batches(tmp_path / "c100" / "cifar-100-python", ["train", "test"], "fine_labels", 32, [0, 99, 50], rng)
    train, test, classes = datasets.get_datasets("cifar100", tmp_path / "c100")
    assert classes == 100 and sorted(train.labels) == [0, 50, 99]
    # ImageNet16: 1-based labels over 1000 classes, only 1..120 kept (as 0..119).
    files = [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]
    _write_batches(tmp_path / "in16", files, "labels", 16, [1, 120, 121, 1000], rng)
    train, test, classes = datasets.get_datasets("imagenet16-120", tmp_path / "in16")
    assert classes == 120 and len(train) == 20 and sorted(set(test.labels)) == [0, 119]
    assert train[0][0].shape == (3, 16, 16)


def test_missing_imagenet16_names_files_and_alternative(load_space, tmp_path):
    datasets, utils = load_space("201-space", "datasets", "runkit.utils")
    with pytest.raises(utils.UserError, match="train_data_batch_1.*--dataset synthetic"):
        datasets.get_datasets("imagenet16-120", tmp_path)


@pytest.mark.parametrize("space, name", [("201-space", "cifar100"), ("DARTS-space", "cifar10")])
def test_failed_download_is_one_clear_error_and_leaves_nothing(load_space, tmp_path, monkeypatch, space, name):
    datasets, utils = load_space(space, "datasets", "runkit.utils")
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    root = tmp_path / "not_yet"
    with pytest.raises(utils.UserError) as err:
        datasets.get_datasets(name, root)
    message = str(err.value)
    assert "\n" not in message and "--dataset synthetic" in message
    assert space == "DARTS-space" or "cifar-100-python" in message
    assert not root.exists(), "a folder made only for the failed download is removed"


def test_darts_cifar10_tree_with_cutout(load_space, tmp_path):
    datasets = load_space("DARTS-space", "datasets")
    write_tiny_cifar(tmp_path, per_batch=8, labels=list(range(8)))
    train, test, classes = datasets.get_datasets("cifar10", tmp_path, cutout=True, cutout_length=16)
    assert classes == 10 and len(train) == 40 and len(test) == 8
    torch.manual_seed(0)
    x, y = train[13]
    assert x.shape == (3, 32, 32) and y == 13 % 8  # labels 0..7 in each batch file
    assert (x == 0).sum() >= 8 * 8 * 3, "cutout zeroes a square (at least a quarter of it inside the image)"
    x_test, _ = test[2]
    assert torch.equal(x_test, test[2][0]), "the test transform is deterministic"


def test_201_search_and_darts_train_run_on_a_cifar_tree(tmp_path):
    write_tiny_cifar(tmp_path / "data", per_batch=8, labels=list(range(8)))
    data = ["--dataset", "cifar10", "--data", tmp_path / "data"]
    argv = "--epochs 1 --init_channels 4 --layers 1 --batch_size 10 --workers 0 --device cpu".split()
    search = popen_script("201-space", "train_search.py", *data, *argv, "--save", tmp_path / "s", stdout=PIPE)
    argv = [*data, "--cutout", "--layers", "3", *TINY_DARTS_TRAIN, "--save", tmp_path / "t"]
    train = popen_script("DARTS-space", "train.py", *argv)
    out, err = search.communicate(timeout=600)
    assert search.returncode == 0, err
    assert "step 2/2 " in out  # 20 of the 40 images train the weights, 2 batches of 10
    _, err = train.communicate(timeout=600)
    assert train.returncode == 0, err
    assert (tmp_path / "t" / "checkpoint.pt").is_file()
