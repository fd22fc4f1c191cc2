"""DARTS train.py/train_imagenet.py on a genotype.json: one log line when the data differs from the search's."""

import argparse

import pytest

from conftest import TINY_DARTS_TRAIN, run_script

NOTE = "was searched on"
TRAIN = ["train.py", *TINY_DARTS_TRAIN, "--dataset", "synthetic", "--layers", "3"]
TRAIN_IMAGENET = ["train_imagenet.py", *TINY_DARTS_TRAIN, *"--dataset synthetic --image_size 32 --layers 3".split()]


def _write_genotype(load_space, path, data):
    """A genotype.json as a search writes it: the DrNAS CIFAR-10 cell and the record `data` of its data."""
    genotypes = load_space("DARTS-space", "genotypes")
    genotypes.save_genotype(genotypes.DrNAS_cifar10, path, data)
    return path


def _train_notes(tmp_path, genotype, script):
    """Run `script` (a command line) on `genotype`; the lines of its log about the cell's data."""
    result = run_script("DARTS-space", *script, "--arch", genotype, "--save", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "run" / "log.txt").read_text()
    return [line.split(" ", 2)[2] for line in log.splitlines() if NOTE in line]  # without the time stamp


def test_other_data_set_and_size_says_so_in_one_line(load_space, tmp_path):
    record = {"dataset": "cifar100", "data": "/data/cifar", "image_size": 28, "num_classes": 100}
    genotype = _write_genotype(load_space, tmp_path / "genotype.json", record)
    assert _train_notes(tmp_path, genotype, TRAIN) == [
        f"--arch {genotype} was searched on cifar100 at 28 px; this run trains on synthetic at 32 px"
    ]


def test_train_imagenet_at_another_size_names_the_searched_size(load_space, tmp_path):
    record = {"dataset": "synthetic", "data": "/data", "image_size": 64, "num_classes": 10}
    genotype = _write_genotype(load_space, tmp_path / "genotype.json", record)
    assert _train_notes(tmp_path, genotype, TRAIN_IMAGENET) == [
        f"--arch {genotype} was searched on synthetic at 64 px; this run trains on synthetic at 32 px; "
        "--image_size 64 trains at the searched size"
    ]


def test_matching_data_says_nothing(load_space, tmp_path):
    """The record a search on the synthetic set writes (`data_common.data_record`, as train_search.py makes it)."""
    datasets, data_common = load_space("DARTS-space", "datasets", "runkit.data_common")
    full, _, classes = datasets.get_datasets("synthetic", "../data")
    record = data_common.data_record(argparse.Namespace(dataset="synthetic", data="../data"), full, classes)
    genotype = _write_genotype(load_space, tmp_path / "genotype.json", record)
    assert _train_notes(tmp_path, genotype, TRAIN) == []


@pytest.mark.parametrize("spec", ["DrNAS_cifar10", "genotype.json"])
def test_only_a_genotype_json_with_a_record_has_one(load_space, tmp_path, spec):
    genotypes = load_space("DARTS-space", "genotypes")
    if spec == "genotype.json":  # written without a record, as train.py writes the cell it trained
        spec = str(_write_genotype(load_space, tmp_path / spec, None))
    genotype, record = genotypes.load_genotype_and_data(spec)
    assert genotype == genotypes.DrNAS_cifar10 and record is None
