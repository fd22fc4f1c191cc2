"""The data helpers both spaces share: the data flags, the synthetic set, the CIFAR download and two records.

`add_arguments(parser, verb, choices)` adds `--dataset`, `--data` and `--image_size` (each
folder's `datasets.add_arguments` names its own data sets); `synthetic` is the in-memory,
learnable set for laptops and tests; `download` fetches a CIFAR archive, failing in one
line within seconds without a network; `record_device_recipe` tells `device_data.py` how a
data set's transform is redone on the device; `data_record` is what a search's
genotype.json says about its data, and `data_difference` the log line of a training run on
other data; `read_genotype_json` reads a genotype.json and refuses one of the other space
(`genotype_space` tells the two apart). The same file in both folders (a test keeps them so).
"""

import json
import shutil
import socket
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from .utils import UserError

DOWNLOADS = {  # archive URL and MD5 (the files' publishers' figures)
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def add_arguments(parser, verb, choices):
    """The data flags of the CIFAR-style scripts (`--dataset`, `--data`, `--image_size`); returns their group.

    `verb`: what the script does with the data set ("search on", "train on"), for the help text;
    `choices`: the `--dataset` names of the folder (its `datasets.DATASETS`).
    """
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", type=str, default="cifar10", choices=choices, help=f"dataset to {verb}")
    folder = "dataset folder (CIFAR downloads itself here; imagefolder: DIR with train/<class>/ and val/<class>/)"
    data.add_argument("--data", type=str, default="../data", help=folder)
    size = "imagefolder: images are resized to this many pixels square"
    data.add_argument("--image_size", type=int, default=32, help=size)
    return data


def download(name, root, folder):
    """Fetch the CIFAR archive `name` (a key of `DOWNLOADS`) into `root`, where it unpacks to `folder`.

    Fails within seconds (not minutes) without a network, in one line, leaving no folder it made.
    """
    from torchvision.datasets.utils import download_and_extract_archive

    url, md5 = DOWNLOADS[name]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    created = not root.exists()
    try:
        download_and_extract_archive(url, str(root), md5=md5)
    except Exception as err:  # URLError, timeouts, permission errors, bad archives
        if created:  # leave no half-made folder behind
            shutil.rmtree(root, ignore_errors=True)
        raise UserError(
            f"{name} not found in {root} (expected {folder}/) and the download failed "
            f"({type(err).__name__}); download {url} and unpack it into --data {root}, "
            "or try the code with --dataset synthetic"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def record_device_recipe(dataset, images, labels, mean, std, augment=False, padding=0, cutout=0):
    """Record on `dataset` what `device_data.py` needs to redo its transform on the GPU, batch by batch.

    `images` (N, H, W, C) are uint8 pixels, normalised with `mean` and `std` (or, with `mean`
    None, float values used as they are); `augment` adds the random crop (zero padding
    `padding`) and horizontal flip; `cutout` > 0 zeroes a square of that side after normalising.
    """
    dataset.device_recipe = dict(
        images=images, labels=labels, mean=mean, std=std, augment=augment, padding=padding, cutout=cutout
    )
    return dataset


def synthetic(num_samples, seed, num_classes=10, size=32, noise=0.6):
    """Images = a fixed smooth pattern per class + Gaussian noise: learnable in a few steps.

    The class patterns are the same for every call; `seed` only draws the samples, so
    a train and a test set made with different seeds share their classes.
    """
    templates = torch.randn(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    templates = torch.nn.functional.interpolate(templates, size=size, mode="bilinear", align_corners=False)
    data_gen = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(num_classes, (num_samples,), generator=data_gen)
    images = templates[labels] + noise * torch.randn(num_samples, 3, size, size, generator=data_gen)
    return TensorDataset(images, labels)


def data_record(args, train_data, num_classes):
    """What a search's genotype.json records about its data, so train.py can train the cell on the same."""
    return {
        "dataset": args.dataset,
        "data": str(Path(args.data).resolve()),
        "image_size": int(train_data[0][0].shape[-1]),  # (C, H, W) of one training image
        "num_classes": num_classes,
    }


# What a search's genotype.json records about its data besides the cell (`data_record`).
DATA_KEYS = ("dataset", "data", "image_size", "num_classes")
# Data sets that are whatever folder --data holds: their folder, not their name, tells two apart.
FOLDER_DATASETS = ("imagefolder", "imagenet")


def data_difference(spec, searched, trained):
    """The log line saying that the cell `spec` was searched on other data or at another size, else None.

    `searched`: the data record of its genotype.json (None: nothing to compare); `trained`: this run's.
    Training a cell on other data is legitimate (CIFAR cells on ImageNet): the line informs, it does not refuse.
    """
    if searched is None:
        return None
    (data, size), (run_data, run_size) = _data_and_size(searched), _data_and_size(trained)
    if (data, size) == (run_data, run_size):
        return None
    line = f"--arch {spec} was searched on {data} at {size} px; this run trains on {run_data} at {run_size} px"
    if data == run_data:  # the same images at another size: only --image_size makes that difference
        line += f"; --image_size {size} trains at the searched size"
    return line


def _data_and_size(record):
    """A data record as `("cifar10", 32)`; a data set of `FOLDER_DATASETS` is named with its folder."""
    folder = f" {record['data']}" if record["dataset"] in FOLDER_DATASETS else ""
    return f"{record['dataset']}{folder}", record["image_size"]


# The folder of each search space in this repository, keyed by the space's name as checkpoints record it
# (`genotypes.SPACE`).
FOLDERS = {"NAS-Bench-201": "201-space", "DARTS": "DARTS-space"}


def genotype_space(saved):
    """The space (a key of `FOLDERS`) whose cell the parsed genotype.json `saved` holds, or None for neither.

    Told by content, which genotype.json files of every version have: a 201 cell is an "arch" string
    (`|op~0|+|...|`), a DARTS cell has "normal" and "reduce" edge lists (at the top, or under "genotype").
    """
    if not isinstance(saved, dict):
        return None
    if isinstance(saved.get("arch"), str) and saved["arch"].lstrip().startswith("|"):
        return "NAS-Bench-201"
    cell = saved["genotype"] if isinstance(saved.get("genotype"), dict) else saved
    return "DARTS" if "normal" in cell and "reduce" in cell else None


def read_genotype_json(path, where, space):
    """The parsed JSON of the genotype.json `path`, for a folder of `space` (`genotypes.SPACE`).

    Refused in one line, starting with `where` (`--arch PATH`), if it is not JSON, or if it holds a
    cell of the other space: that folder's scripts take it, and the line says which one.
    """
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UserError(f"{where}: not valid JSON ({err}); give a genotype.json written by train_search.py") from None
    other = genotype_space(saved)
    if other not in (None, space):
        raise UserError(
            f"{where}: a {FOLDERS[other]} genotype.json, not a {FOLDERS[space]} one; "
            f"train it with {FOLDERS[other]}/train.py"
        )
    return saved
