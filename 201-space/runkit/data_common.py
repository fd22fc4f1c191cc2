"""What both folders' datasets.py share: the data flags, the synthetic set, the CIFAR download, data records."""

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
# What a search's genotype.json records about its data besides the cell (`data_record`).
DATA_KEYS = ("dataset", "data", "image_size", "num_classes")
# The folder of each search space, keyed by the space's name as checkpoints record it (`genotypes.SPACE`).
FOLDERS = {"NAS-Bench-201": "201-space", "DARTS": "DARTS-space"}


def add_arguments(parser, verb, choices):
    """`--dataset` (`choices`: the folder's data sets; `verb`: "search on", "train on"), `--data`, `--image_size`."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", type=str, default="cifar10", choices=choices, help=f"dataset to {verb}")
    folder = "dataset folder (CIFAR downloads itself here; imagefolder: DIR with train/<class>/ and val/<class>/)"
    data.add_argument("--data", type=str, default="../data", help=folder)
    data.add_argument("--image_size", type=int, default=32, help="imagefolder: images are resized to N x N pixels")
    return data


def download(name, root, folder):
    """Fetch the CIFAR archive `name` into `root` (it unpacks to `folder`); without a network, one line in seconds."""
    from torchvision.datasets.utils import download_and_extract_archive  # here: torchvision imports in seconds

    url, md5 = DOWNLOADS[name]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    created = not root.exists()
    try:
        download_and_extract_archive(url, str(root), md5=md5)
    except Exception as err:  # URLError, timeouts, permission errors, bad archives
        if created:  # leave no half-made folder behind
            shutil.rmtree(root, ignore_errors=True)
        failed = f"{name} not found in {root} (expected {folder}/) and the download failed ({type(err).__name__})"
        fix = f"download {url} and unpack it into --data {root}, or try the code with --dataset synthetic"
        raise UserError(f"{failed}; {fix}") from None
    finally:
        socket.setdefaulttimeout(previous)


def record_device_recipe(dataset, images, labels, mean, std, augment=False, padding=0, cutout=0):
    """Record on `dataset` how `device_data` redoes its transform: uint8 `images` (N, H, W, C) normalised with `mean`
    and `std` (or floats used as they are, `mean` None), the random crop (`padding`) and flip, and `cutout`."""
    recipe = dict(images=images, labels=labels, mean=mean, std=std, augment=augment, padding=padding, cutout=cutout)
    dataset.device_recipe = recipe


def synthetic(num_samples, seed, num_classes=10, size=32, noise=0.6):
    """Images = a fixed smooth pattern per class (the same in every call) + Gaussian noise, drawn from `seed`."""
    templates = torch.randn(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    templates = torch.nn.functional.interpolate(templates, size=size, mode="bilinear", align_corners=False)
    data_gen = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(num_classes, (num_samples,), generator=data_gen)
    images = templates[labels] + noise * torch.randn(num_samples, 3, size, size, generator=data_gen)
    return TensorDataset(images, labels)


def data_record(args, train_data, num_classes):
    """What a search's genotype.json records about its data, so train.py can train the cell on the same."""
    image_size = int(train_data[0][0].shape[-1])  # (C, H, W) of one training image
    return dict(zip(DATA_KEYS, (args.dataset, str(Path(args.data).resolve()), image_size, num_classes)))


def data_difference(spec, searched, trained):
    """A log line if the cell `spec` was searched (`searched`: its data record, or None) on other data or size."""
    (data, size), (run_data, run_size) = _data_and_size(searched or trained), _data_and_size(trained)  # None: no line
    if (data, size) == (run_data, run_size):
        return None
    line = f"--arch {spec} was searched on {data} at {size} px; this run trains on {run_data} at {run_size} px"
    if data == run_data:  # the same images at another size: only --image_size makes that difference
        line += f"; --image_size {size} trains at the searched size"
    return line


def _data_and_size(record):
    """A data record as `("cifar10", 32)`; a data set that is whatever folder --data holds is named with its folder."""
    folder = f" {record['data']}" if record["dataset"] in ("imagefolder", "imagenet") else ""
    return f"{record['dataset']}{folder}", record["image_size"]


def genotype_space(saved):
    """The space (a key of `FOLDERS`) whose cell the parsed genotype.json `saved` holds, or None."""
    if not isinstance(saved, dict):
        return None
    if isinstance(saved.get("arch"), str) and saved["arch"].lstrip().startswith("|"):
        return "NAS-Bench-201"
    cell = saved["genotype"] if isinstance(saved.get("genotype"), dict) else saved
    return "DARTS" if "normal" in cell and "reduce" in cell else None


def read_genotype_json(path, where, space):
    """The parsed genotype.json `path`; refused in one line starting with `where` if not JSON or of another space."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UserError(f"{where}: not valid JSON ({err}); give a genotype.json written by train_search.py") from None
    other = genotype_space(saved)
    if other not in (None, space):
        folder, ours = FOLDERS[other], FOLDERS[space]
        raise UserError(f"{where}: a {folder} genotype.json, not a {ours} one; train it with {folder}/train.py")
    return saved
