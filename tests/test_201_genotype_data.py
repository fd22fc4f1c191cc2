"""201-space train.py on a search's genotype.json, which records the data the cell was searched on."""

import pytest

from conftest import TINY_201, run_script

DRNAS = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def _write_genotype(load_space, path, data):
    """A genotype.json as a search writes it: the DrNAS cell and the record `data` of its data."""
    genotypes = load_space("201-space", "genotypes")
    genotypes.save_genotype(genotypes.Structure.from_str(DRNAS), path, data)
    return path


def test_same_images_at_another_size_name_the_searched_size(load_space, tmp_path, tiny_imagenet):
    """A cell searched on an image folder at 28 px, trained at the default 32 px: the line names the flag to match."""
    folder = tiny_imagenet.resolve()
    record = {"dataset": "imagefolder", "data": str(folder), "image_size": 28, "num_classes": 3}
    genotype = _write_genotype(load_space, tmp_path / "genotype.json", record)
    argv = ["train.py", *TINY_201, "--epochs", "1", "--arch", genotype, "--save", tmp_path / "run"]
    result = run_script("201-space", *argv, "--dataset", "imagefolder", "--data", folder)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "run" / "log.txt").read_text()
    notes = [line.split(" ", 2)[2] for line in log.splitlines() if "was searched on" in line]  # without the time
    assert notes == [
        f"--arch {genotype} was searched on imagefolder {folder} at 28 px; this run trains on imagefolder "
        f"{folder} at 32 px; --image_size 28 trains at the searched size"
    ]


@pytest.mark.parametrize("spec", ["DrNAS", DRNAS, "genotype.json"])
def test_only_a_genotype_json_with_a_record_has_one(load_space, tmp_path, spec):
    genotypes = load_space("201-space", "genotypes")
    if spec == "genotype.json":  # written without a record, as train.py writes the cell it trained
        spec = str(_write_genotype(load_space, tmp_path / spec, None))
    structure, record = genotypes.load_arch_and_data(spec)
    assert str(structure) == DRNAS and record is None
