"""Datasets of the NAS-Bench-201 space: CIFAR-10/100, ImageNet16-120 and a synthetic set.

`get_datasets(name, root, train_augment)` returns `(train, test, num_classes)`.
CIFAR-10/100 and ImageNet16-120 come as pickled batches of uint8 images; one reader
(`PickledImages`) serves all three. CIFAR downloads itself into `root` when absent;
ImageNet16-120 is the NAS-Bench-201 authors' download. `synthetic` lives in memory,
needs no network and is learnable, for laptops and tests. Missing data ends with one
clear line saying where the data should be and how to get it.
"""

import pickle
import shutil
import socket
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from torch.utils.data import Dataset, TensorDataset

from utils import UserError

DATASETS = ("cifar10", "cifar100", "imagenet16-120", "synthetic")

# name: (folder, train files, test files, label key, classes kept, image size, mean, std)
SOURCES = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        10,
        32,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        ["test"],
        "fine_labels",
        100,
        32,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
    # ImageNet16-120 keeps classes 1..120 of the 1000 (labels in the files are 1-based).
    "imagenet16-120": (
        "",
        [f"train_data_batch_{i}" for i in range(1, 11)],
        ["val_data"],
        "labels",
        120,
        16,
        tuple(x / 255 for x in (122.68, 116.66, 104.01)),
        tuple(x / 255 for x in (63.22, 61.26, 65.09)),
    ),
}
DOWNLOADS = {  # archive URL and MD5 (the files' publishers' figures)
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}
IMAGENET16_HELP = "get the ImageNet16 pickles linked from the NAS-Bench-201 README (github.com/D-X-Y/NAS-Bench-201)"


class PickledImages(Dataset):
    """Images stored as pickled dicts {'data': (N, 3*S*S) uint8, label_key: [...]}."""

    def __init__(self, folder, files, label_key, num_classes, size, one_based, transform=None):
        images, labels = [], []
        for name in files:
            try:
                with open(Path(folder) / name, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, size, size))
                labels.append(np.asarray(entry[label_key], dtype=np.int64) - int(one_based))
            except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
                raise UserError(
                    f"{Path(folder) / name} is damaged ({type(err).__name__}: {err}); delete it and fetch it again"
                ) from None
        images, labels = np.concatenate(images), np.concatenate(labels)
        keep = labels < num_classes
        self.images = images[keep].transpose(0, 2, 3, 1)  # (N, H, W, C) for PIL
        self.labels = labels[keep].tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image

        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def _download(name, root):
    """Fetch a CIFAR archive into `root`, failing within seconds (not minutes) without a network."""
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
            f"{name} not found in {root} (expected {root / SOURCES[name][0]}/) and the download failed "
            f"({type(err).__name__}); download {url} and unpack it into --data {root}, "
            "or try the code with --dataset synthetic"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _transforms(size, mean, std, augment):
    ops = [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()] if augment else []
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


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


def get_datasets(name, root, train_augment=True):
    """Return `(train, test, num_classes)` for `name` in `DATASETS`."""
    if name == "synthetic":
        return synthetic(256, seed=1), synthetic(128, seed=2), 10
    if name not in SOURCES:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    subdir, train_files, test_files, label_key, classes, size, mean, std = SOURCES[name]
    folder = Path(root) / subdir
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing and name in DOWNLOADS:
        _download(name, Path(root))
        missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing:
        how = IMAGENET16_HELP if name == "imagenet16-120" else f"delete {folder} and run again to download it"
        raise UserError(
            f"{name} not found: {folder} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
            f"{how}, or try the code with --dataset synthetic"
        )
    one_based = name == "imagenet16-120"
    train = PickledImages(
        folder, train_files, label_key, classes, size, one_based, _transforms(size, mean, std, train_augment)
    )
    test = PickledImages(folder, test_files, label_key, classes, size, one_based, _transforms(size, mean, std, False))
    return train, test, classes
