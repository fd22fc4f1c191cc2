"""train.py on a search's genotype.json (both folders; DARTS train_imagenet.py too): one log line when the data
differs from the search's."""

import argparse

import pytest

from conftest import TINY_201, TINY_DARTS_TRAIN, run_script

NOTE = "was searched on"
DRNAS_201 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
TRAIN = {"201-space": ["train.py", *TINY_201, "--epochs", "1"]}
TRAIN["DARTS-space"] = ["train.py", *TINY_DARTS_TRAIN, "--dataset", "synthetic", "--layers", "3"]
TRAIN_IMAGENET = ["train_imagenet.py", *TINY_DARTS_TRAIN, *"--dataset synthetic --image_size 32 --layers 3".split()]


def write_genotype(load_space, path, data, space="DARTS-space"):
    """A genotype.json as a search writes it: the DrNAS cell and the record `data` of its data."""
    genotypes = load_space(space, "genotypes")
    cell = genotypes.DrNAS_cifar10 if space == "DARTS-space" else genotypes.Structure.from_str(DRNAS_201)
    genotypes.save_genotype(cell, path, data)
    return path


def train_notes(tmp_path, genotype, script, space="DARTS-space", *args):
    """Run `script` (a command line) on `genotype`; the lines of its log about the cell's data."""
    result = run_script(space, *script, "--arch", genotype, "--save", tmp_path / "run", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "run" / "log.txt").read_text()
    return [line.split(" ", 2)[2] for line in log.splitlines() if NOTE in line]  # without the time stamp


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_other_data_set_and_size_says_so_in_one_line(load_space, tmp_path, space):
    record = {"dataset": "cifar100", "data": "/data/cifar", "image_size": 28, "num_classes": 100}
    genotype = write_genotype(load_space, tmp_path / "genotype.json", record, space)
    assert train_notes(tmp_path, genotype, TRAIN[space], space) == [
        f"--arch {genotype} was searched on cifar100 at 28 px; this run trains on synthetic at 32 px"
    ]


def test_same_images_at_another_size_name_the_searched_size(load_space, tmp_path, tiny_imagenet):
    """A 201 cell searched on an image folder at 28 px, trained at the default 32 px: the line names the flag."""
    folder = tiny_imagenet.resolve()
    record = {"dataset": "imagefolder", "data": str(folder), "image_size": 28, "num_classes": 3}
    genotype = write_genotype(load_space, tmp_path / "genotype.json", record, "201-space")
    argv = ["--dataset", "imagefolder", "--data", folder]
    assert train_notes(tmp_path, genotype, TRAIN["201-space"], "201-space", *argv) == [
        f"--arch {genotype} was searched on imagefolder {folder} at 28 px; this run trains on imagefolder "
        f"{folder} at 32 px; --image_size 28 trains at the searched size"
    ]


def test_train_imagenet_at_another_size_names_the_searched_size(load_space, tmp_path):
    record = {"dataset": "synthetic", "data": "/data", "image_size": 64, "num_classes": 10}
    genotype = write_genotype(load_space, tmp_path / "genotype.json", record)
    assert train_notes(tmp_path, genotype, TRAIN_IMAGENET) == [
        f"--arch {genotype} was searched on synthetic at 64 px; this run trains on synthetic at 32 px; "
        "--image_size 64 trains at the searched size"
    ]


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_matching_data_says_nothing(load_space, tmp_path, space):
    """The record a search on the synthetic set writes (`data_common.data_record`, as the search makes it)."""
    datasets, data_common = load_space(space, "datasets", "runkit.data_common")
    full, _, classes = datasets.get_datasets("synthetic", "../data")
    record = data_common.data_record(argparse.Namespace(dataset="synthetic", data="../data"), full, classes)
    genotype = write_genotype(load_space, tmp_path / "genotype.json", record, space)
    assert train_notes(tmp_path, genotype, TRAIN[space], space) == []


@pytest.mark.parametrize(
    "space, spec", [("DARTS-space", "DrNAS_cifar10"), ("DARTS-space", "genotype.json"), ("201-space", "DrNAS"),
                    ("201-space", DRNAS_201), ("201-space", "genotype.json")]
)  # fmt: skip
def test_only_a_genotype_json_with_a_record_has_one(load_space, tmp_path, space, spec):
    genotypes = load_space(space, "genotypes")
    if spec == "genotype.json":  # written without a record, as train.py writes the cell it trained
        spec = str(write_genotype(load_space, tmp_path / spec, None, space))
    if space == "201-space":
        structure, record = genotypes.load_arch_and_data(spec)
        assert str(structure) == DRNAS_201 and record is None
    else:
        genotype, record = genotypes.load_genotype_and_data(spec)
        assert genotype == genotypes.DrNAS_cifar10 and record is None
