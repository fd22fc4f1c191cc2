"""NAS-Bench-201's data sets: CIFAR-10/100 (downloaded when absent), ImageNet16-120 (pickled batches), a synthetic
set (in memory) and your own images (`imagefolder`). The shared parts are in runkit/data_common.py.
"""

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from runkit import data_common
from runkit.image_files import ImageFiles, image_stats, scan_split
from runkit.utils import UserError
from torch.utils.data import Dataset

DATASETS = ("cifar10", "cifar100", "imagenet16-120", "synthetic", "imagefolder")


def add_arguments(parser, verb):
    """The data flags (`data_common.add_arguments`) with this space's data sets as the `--dataset` choices."""
    return data_common.add_arguments(parser, verb, DATASETS)


# name: (folder, train files, test files, label key, classes kept, image size, mean, std)
SOURCES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10, 32,
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100, 32,
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    # ImageNet16-120 keeps classes 1..120 of the 1000 (labels in the files are 1-based).
    "imagenet16-120": ("", [f"train_data_batch_{i}" for i in range(1, 11)], ["val_data"], "labels", 120, 16,
                       tuple(x / 255 for x in (122.68, 116.66, 104.01)), tuple(x / 255 for x in (63.22, 61.26, 65.09))),
}  # fmt: skip
IMAGENET16_HELP = "get the ImageNet16 pickles linked from the NAS-Bench-201 README (github.com/D-X-Y/NAS-Bench-201)"


class PickledImages(Dataset):
    """Images stored as pickled dicts {'data': (N, 3*S*S) uint8, label_key: [...]}."""

    def __init__(self, folder, files, label_key, num_classes, size, one_based, transform):
        images, labels = [], []
        for path in (Path(folder) / name for name in files):
            try:
                with open(path, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, size, size))
                labels.append(np.asarray(entry[label_key], dtype=np.int64) - int(one_based))
            except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
                why = f"{type(err).__name__}: {err}"
                raise UserError(f"{path} is damaged ({why}); delete it and fetch it again") from None
        images, labels = np.concatenate(images), np.concatenate(labels)
        keep = labels < num_classes
        self.images = images[keep].transpose(0, 2, 3, 1)  # (N, H, W, C) for PIL
        self.labels = labels[keep].tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def _transforms(size, mean, std, augment, resize=False):
    import torchvision.transforms as T  # here: torchvision imports in seconds, and synthetic data needs none

    ops = [T.Resize((size, size))] if resize else []
    ops += [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()] if augment else []
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


# Your own images (files, statistics: image_files.py); imagefolder stays per folder, as DARTS-space's adds cutout.
def imagefolder(root, image_size=32, seed=0, train_augment=True):
    """`(train, test, num_classes)` from `root/train/<class>/*` and `root/val/<class>/*` (or test/), resized, normalised
    with the training images' statistics; training in a `seed` order with crop and flip; `train.summary`: a log line."""
    root = Path(root)
    layout = f"--dataset imagefolder expects {root}/train/<class>/* and {root}/val/<class>/* (or test/)"
    if not root.is_dir():
        raise UserError(f"--data {root}: no such folder; {layout}")
    if not (root / "train").is_dir():
        raise UserError(f"{root} has no train/ folder; {layout}")
    test_dir = next((root / sub for sub in ("val", "test") if (root / sub).is_dir()), None)
    if test_dir is None:
        raise UserError(f"{root} has neither val/ nor test/; {layout}")
    if image_size % 4 or image_size < 8:
        raise UserError(f"--image_size {image_size}: the networks halve the images twice; give a multiple of 4, >= 8")
    classes, train_samples = scan_split(root / "train")
    test_classes, test_samples = scan_split(test_dir)
    if test_classes != classes:
        only = ", ".join(sorted(set(classes) ^ set(test_classes))[:5])
        counts, same = f"{len(classes)} vs {len(test_classes)}", "both need one folder per class, with the same names"
        raise UserError(f"{root}/train and {test_dir} hold different classes ({counts}; not in both: {only}); {same}")
    if len(classes) < 2:
        raise UserError(f"{root}/train holds one class ({classes[0]}); a classifier needs two or more")
    mean, std = image_stats(train_samples, image_size)
    order = torch.randperm(len(train_samples), generator=torch.Generator().manual_seed(seed)).tolist()
    train_tf = _transforms(image_size, mean, std, train_augment, resize=True)
    train = ImageFiles([train_samples[i] for i in order], classes, train_tf)
    test = ImageFiles(test_samples, classes, _transforms(image_size, mean, std, False, resize=True))
    images = f"{len(train)} training and {len(test)} {test_dir.name} images at {image_size}x{image_size}"
    train.summary = f"imagefolder {root}: {len(classes)} classes, {images}, normalised with mean {mean} std {std}"
    return train, test, len(classes)


def get_datasets(name, root, train_augment=True, image_size=32, seed=0):
    """Return `(train, test, num_classes)` for `name` in `DATASETS`; `image_size` and `seed` serve imagefolder only."""
    if name == "imagefolder":
        return imagefolder(root, image_size, seed, train_augment)
    if name == "synthetic":
        return data_common.synthetic(256, seed=1), data_common.synthetic(128, seed=2), 10
    if name not in SOURCES:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    subdir, train_files, test_files, label_key, classes, size, mean, std = SOURCES[name]
    folder = Path(root) / subdir
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing and name in data_common.DOWNLOADS:
        data_common.download(name, Path(root), folder)
        missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing:
        how = IMAGENET16_HELP if name == "imagenet16-120" else f"delete {folder} and run again to download it"
        lacks = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise UserError(f"{name} not found: {folder} lacks {lacks}; {how}, or try the code with --dataset synthetic")
    kept = (label_key, classes, size, name == "imagenet16-120")  # ImageNet16's labels are 1-based
    train = PickledImages(folder, train_files, *kept, _transforms(size, mean, std, train_augment))
    test = PickledImages(folder, test_files, *kept, _transforms(size, mean, std, False))
    for data, augment in ((train, train_augment), (test, False)):  # the same steps as `_transforms`
        data_common.record_device_recipe(data, data.images, data.labels, mean, std, augment, padding=size // 8)
    return train, test, classes
