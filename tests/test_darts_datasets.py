"""DARTS-space data: CIFAR's pickled batches on a tiny tree made here, cutout, offline errors."""

import torch

from conftest import TINY_DARTS_TRAIN, run_script, write_tiny_cifar


def make_cifar10(root):
    write_tiny_cifar(root, per_batch=8, labels=list(range(8)))


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


def test_train_runs_on_a_cifar_tree(tmp_path):
    make_cifar10(tmp_path / "data")
    argv = ["--dataset", "cifar10", "--data", tmp_path / "data", "--cutout", "--layers", "3", *TINY_DARTS_TRAIN]
    result = run_script("DARTS-space", "train.py", *argv, "--save", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
