"""Datasets of the NAS-Bench-201 space: CIFAR-10/100, ImageNet16-120 and a synthetic set.

`get_datasets(name, root, train_augment)` returns `(train, test, num_classes)`. CIFAR
downloads itself through torchvision when absent; ImageNet16-120 is read from the
NAS-Bench-201 authors' pickled batches; `synthetic` lives in memory, needs no network
and is learnable, for laptops and tests. Missing data ends with one clear line.
"""

import pickle
import socket
from pathlib import Path

import torch
import torchvision.transforms as T
from torch.utils.data import Dataset, TensorDataset
from utils import UserError

# Channel means and standard deviations used by the NAS-Bench-201 protocol.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET16_MEAN = tuple(x / 255 for x in (122.68, 116.66, 104.01))
IMAGENET16_STD = tuple(x / 255 for x in (63.22, 61.26, 65.09))

DATASETS = ("cifar10", "cifar100", "imagenet16-120", "synthetic")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGENET16_URL = "https://github.com/D-X-Y/NAS-Bench-201 (ImageNet16 download link in its README)"


def _transforms(size, pad, mean, std, augment):
    ops = [T.RandomCrop(size, padding=pad), T.RandomHorizontalFlip()] if augment else []
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


def _cifar(name, root, train_augment):
    from torchvision import datasets

    cls, folder, mean, std = {
        "cifar10": (datasets.CIFAR10, "cifar-10-batches-py", CIFAR10_MEAN, CIFAR10_STD),
        "cifar100": (datasets.CIFAR100, "cifar-100-python", CIFAR100_MEAN, CIFAR100_STD),
    }[name]
    root = Path(root)
    if not (root / folder).is_dir():
        _download(cls, name, root, folder)
    try:
        train = cls(str(root), train=True, download=False, transform=_transforms(32, 4, mean, std, train_augment))
        test = cls(str(root), train=False, download=False, transform=_transforms(32, 4, mean, std, False))
    except (RuntimeError, OSError, pickle.UnpicklingError, KeyError) as err:
        raise UserError(f"{name} under {root / folder} is incomplete or damaged ({err}); delete it and run again")
    return train, test, len(train.classes)


def _download(cls, name, root, folder):
    """Fetch CIFAR into `root`, failing within seconds (not minutes) without a network."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        cls(str(root), train=True, download=True)
    except Exception as err:  # URLError, timeouts, permission errors, bad archives
        raise UserError(
            f"{name} not found in {root} (expected {root / folder}/) and the download failed "
            f"({type(err).__name__}); download it from {CIFAR_URL} into --data {root}, "
            "or try the code with --dataset synthetic"
        )
    finally:
        socket.setdefaulttimeout(previous)


class ImageNet16(Dataset):
    """ImageNet 16x16 from the NAS-Bench-201 pickles, keeping classes 1..`num_classes`."""

    train_files = [f"train_data_batch_{i}" for i in range(1, 11)]
    test_files = ["val_data"]

    def __init__(self, root, train, num_classes=120, transform=None):
        root = Path(root)
        files = self.train_files if train else self.test_files
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise UserError(
                f"ImageNet16-120 not found: {root} lacks {', '.join(missing[:3])}"
                f"{' ...' if len(missing) > 3 else ''}; get the ImageNet16 pickles from {IMAGENET16_URL} "
                "and point --data at their folder, or try the code with --dataset synthetic"
            )
        images, labels = [], []
        for f in files:
            with open(root / f, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            images.append(torch.as_tensor(entry["data"], dtype=torch.uint8))
            labels.append(torch.as_tensor(entry["labels"], dtype=torch.long))
        images, labels = torch.cat(images), torch.cat(labels)
        keep = labels <= num_classes  # labels are 1-based
        self.images = images[keep].view(-1, 3, 16, 16).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
        self.labels = (labels[keep] - 1).tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image

        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


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
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root, train_augment)
    if name == "imagenet16-120":
        train_tf = _transforms(16, 2, IMAGENET16_MEAN, IMAGENET16_STD, train_augment)
        test_tf = _transforms(16, 2, IMAGENET16_MEAN, IMAGENET16_STD, False)
        return ImageNet16(root, True, 120, train_tf), ImageNet16(root, False, 120, test_tf), 120
    if name == "synthetic":
        return synthetic(256, seed=1), synthetic(128, seed=2), 10
    raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
