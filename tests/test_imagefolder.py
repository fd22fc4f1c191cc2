"""Your own images (`--dataset imagefolder --data DIR`) in both spaces, as a user runs them."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from conftest import assert_one_line_error, run_script

COLOURS = {"cat": (200, 40, 40), "dog": (40, 180, 60), "fox": (50, 70, 210)}
SYSTEM = ["--device", "cpu", "--workers", "0", "--report_freq", "1"]
SEARCH_201 = "train_search.py --init_channels 4 --layers 1 --batch_size 16 --epochs 1 --benchmark none".split()
TRAIN_201 = "train.py --init_channels 4 --layers 1 --batch_size 12 --epochs 6".split()
SEARCH_DARTS = "train_search.py --layers 3 --init_channels 8 --batch_size 4 --max_steps_per_epoch 2 --stage_epochs 1 1"
SEARCH_DARTS = [*SEARCH_DARTS.split(), *"--stage_k 4 2 --stage_keep 7 3 --warmup_epochs 0".split()]
TRAIN_DARTS = "train.py --layers 3 --init_channels 8 --batch_size 6 --learning_rate 0.05 --epochs 6 --drop_path_prob 0"
TRAIN_DARTS = [*TRAIN_DARTS.split(), "--cutout", "--cutout_length", "8", "--auxiliary"]
SEARCH_THEN_TRAIN = {"201-space": (SEARCH_201, TRAIN_201), "DARTS-space": (SEARCH_DARTS, TRAIN_DARTS)}


def write_image_folder(root, train=12, test=6, test_split="val", seed=0):
    """`root/train/<class>/*` and `root/<test_split>/<class>/*`: a colour and a darker stripe per class."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), (test_split, test)):
        for label, (name, colour) in enumerate(COLOURS.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = (16, 16) if i % 3 else (20, 28)  # resized to --image_size whatever the shape
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                pixels[:, label * w // 3 : (label + 1) * w // 3] //= 2
                image = Image.fromarray(pixels)
                if i == 0:  # grey and RGBA files become RGB on loading
                    image = image.convert("L" if label == 0 else "RGBA")
                image.save(folder / f"{i}.{'jpg' if i % 4 == 1 else 'png'}")
    return root


def _bad_trees(good, tmp):
    """The broken copies of `good`: (name, space, script arguments, expected words in the error line)."""
    trees = {name: tmp / name for name in ("no_val", "empty_class", "corrupt", "mismatch")}
    for tree in trees.values():
        shutil.copytree(good, tree)
    shutil.rmtree(trees["no_val"] / "val")
    for path in (trees["empty_class"] / "train" / "dog").iterdir():
        path.unlink()
    (trees["empty_class"] / "train" / "dog" / "notes.txt").write_text("not an image")
    (trees["corrupt"] / "val" / "cat" / "0.png").write_bytes(b"this is no PNG")
    (trees["mismatch"] / "val" / "fox").rename(trees["mismatch"] / "val" / "wolf")
    return [
        ("no_val", "201-space", [*SEARCH_201, "--data", trees["no_val"]], ["has neither val/ nor test/"]),
        ("empty_class", "DARTS-space", [*SEARCH_DARTS, "--data", trees["empty_class"]], ["dog holds no images"]),
        ("corrupt", "201-space", [*TRAIN_201, "--data", trees["corrupt"]], ["cat/0.png is not a readable image"]),
        ("mismatch", "DARTS-space", [*TRAIN_DARTS, "--data", trees["mismatch"]], ["different classes", "wolf"]),
        ("small_auxiliary", "DARTS-space", [*TRAIN_DARTS, "--data", good, "--image_size", "16"], ["--auxiliary"]),
    ]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """The good image trees and the refused runs on the broken ones: name -> (space, arguments, expected words)."""
    tmp = tmp_path_factory.mktemp("imagefolder")
    good = write_image_folder(tmp / "images")
    with_test = write_image_folder(tmp / "images_test", test_split="test", seed=1)  # test/ instead of val/
    return good, with_test, {name: (space, args, expected) for name, space, args, expected in _bad_trees(good, tmp)}


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_search_then_train_learns_the_folder(trees, load_space, capsys, restore_logging, tmp_path, space):
    """Search on the tree, then train the genotype.json it wrote: both scripts' main() in this process."""
    good, with_test, _ = trees
    tree = good if space == "201-space" else with_test
    (search, *search_args), (train, *train_args) = SEARCH_THEN_TRAIN[space]
    search, train = load_space(space, search.removesuffix(".py"), train.removesuffix(".py"))
    common = ["--dataset", "imagefolder", "--data", str(tree), *SYSTEM]
    capsys.readouterr()
    search.main([*search_args, *common, "--save", str(tmp_path / "search")])
    found = capsys.readouterr().out
    split = "val" if space == "201-space" else "test"
    summary = f"imagefolder {tree}: 3 classes, 36 training and 18 {split} images at 32x32, normalised with mean"
    assert summary in found
    genotype_json = tmp_path / "search" / "genotype.json"
    train.main([*train_args, *common, "--arch", str(genotype_json), "--save", str(tmp_path / "train")])
    trained = capsys.readouterr().out
    genotype = json.loads(genotype_json.read_text())
    accs = [json.loads(line)["test_acc"] for line in (tmp_path / "train" / "history.jsonl").read_text().splitlines()]
    # What train.py needs besides the cell; the genotype loaders ignore these keys.
    assert {k: genotype[k] for k in ("dataset", "data", "image_size", "num_classes")} == {
        "dataset": "imagefolder", "data": str(tree.resolve()), "image_size": 32, "num_classes": 3,
    }  # fmt: skip
    assert summary in trained
    assert len(accs) == 6 and max(accs) >= 75.0, accs  # chance is 33 %


@pytest.mark.parametrize("name", ["no_val", "empty_class", "corrupt", "mismatch", "small_auxiliary"])
def test_bad_folder_is_one_line_and_writes_nothing(trees, tmp_path, name):
    space, args, expected = trees[2][name]
    save = tmp_path / "run"
    result = run_script(space, *args, "--dataset", "imagefolder", *SYSTEM, "--save", save)
    assert_one_line_error(result.returncode, result.stderr, *expected)
    assert not save.exists()


def test_split_order_is_seeded_and_mixes_classes(load_space, tmp_path):
    """The searches split the training set at --train_portion: both halves must hold every class."""
    datasets = load_space("201-space", "datasets")
    tree = write_image_folder(tmp_path / "images")
    labels = {seed: [y for _, y in datasets.get_datasets("imagefolder", tree, seed=seed)[0].samples] for seed in (0, 1)}
    assert labels[0] == [y for _, y in datasets.get_datasets("imagefolder", tree, seed=0)[0].samples]
    assert labels[0] != labels[1] and sorted(labels[0]) == sorted(labels[1])
    assert set(labels[0][:18]) == set(labels[0][18:]) == {0, 1, 2}
    train, test, classes = datasets.get_datasets("imagefolder", tree, train_augment=False, image_size=24)
    assert classes == 3 and train[0][0].shape == test[0][0].shape == (3, 24, 24)
    assert abs(float(train[0][0].mean())) < 3  # normalised with the folder's own statistics


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_image_that_breaks_later_is_one_line_from_a_worker(load_space, tmp_path, space):
    """A file whose header reads but whose pixels do not: one line naming it, also via a DataLoader worker."""
    datasets, utils = load_space(space, "datasets", "runkit.utils")
    tree = write_image_folder(tmp_path / "images")
    broken = tree / "val" / "dog" / "3.png"
    broken.write_bytes(broken.read_bytes()[:100])  # header intact, pixel data cut
    _, test, _ = datasets.get_datasets("imagefolder", tree)
    with pytest.raises(utils.UserError) as err:
        list(DataLoader(test, batch_size=6, num_workers=1))
    assert str(err.value).startswith(f"{broken} is not a readable image (") and "\n" not in str(err.value)
    with pytest.raises(utils.UserError, match="multiple of 4"):
        datasets.get_datasets("imagefolder", tree, image_size=30)
