"""Datasets of the DARTS space: CIFAR-10/100 (downloaded when absent), a synthetic set (in memory, no network: for
laptops and tests), your own images, and ImageNet folders (the full ImageNet, or prepare_imagenet_subset.py's subset).
Missing or broken data ends with one clear line; what both spaces share is in runkit/data_common.py.
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

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

DATASETS = ("cifar10", "cifar100", "synthetic", "imagefolder")


def add_arguments(parser, verb):
    """The data flags (`data_common.add_arguments`) with this space's data sets as the `--dataset` choices."""
    return data_common.add_arguments(parser, verb, DATASETS)


def add_imagenet_arguments(parser, folder, folder_help):
    """The data flags of the ImageNet scripts: `--dataset imagenet|synthetic`, `--data`, `--image_size`."""
    data = parser.add_argument_group("data")
    text = "ImageNet folders (--data), or an in-memory synthetic set for smoke runs"
    data.add_argument("--dataset", type=str, default="imagenet", choices=("imagenet", "synthetic"), help=text)
    data.add_argument("--data", type=str, default=folder, help=folder_help)
    data.add_argument("--image_size", type=int, default=224, help="crop side (the paper: 224; smaller for tests)")
    return data


class Cutout:
    """Zero a random `length` x `length` square (clipped at the border; torch's RNG) of a (C, H, W) tensor."""

    def __init__(self, length):
        self.length = length

    def __call__(self, img):
        half, (h, w) = self.length // 2, img.shape[-2:]
        cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
        img = img.clone()
        img[..., max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half] = 0.0
        return img


def _transforms(mean, std, augment, cutout_length, resize=None):
    """[Resize ->] random crop (padding side // 8: CIFAR's 4) and flip when `augment` -> tensor [-> Cutout]."""
    import torchvision.transforms as T  # here: torchvision imports in seconds, and synthetic data needs none

    size = resize or 32
    ops = [T.Resize((size, size))] if resize else []
    ops += [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()] if augment else []
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops + ([Cutout(cutout_length)] if cutout_length else []))


CIFAR = {  # name: (folder, train files, test files, label key, classes, mean, std)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10,
                CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100, CIFAR100_MEAN, CIFAR100_STD),
}  # fmt: skip


class PickledImages(Dataset):
    """CIFAR's pickled batches: dicts {'data': (N, 3*32*32) uint8, label_key: [...]}."""

    def __init__(self, folder, files, label_key, transform):
        images, labels = [], []
        for name in files:
            try:
                with open(Path(folder) / name, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(entry[label_key], dtype=np.int64))
            except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
                why = f"{type(err).__name__}: {err}"
                raise UserError(f"{Path(folder) / name} is damaged ({why}); delete it and fetch it again") from None
        self.images = np.concatenate(images).transpose(0, 2, 3, 1)  # (N, H, W, C) for PIL
        self.labels = np.concatenate(labels).tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


class Transformed(Dataset):
    """Apply a tensor transform to the images of an in-memory `(image, label)` dataset."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return self.transform(image), label


def imagefolder(root, image_size=32, seed=0, train_augment=True, cutout_length=0):
    """`(train, test, num_classes)` from `root/train/<class>/*` and `root/val/<class>/*` (or test/), resized and
    normalised with the training images' statistics; training in a `seed` order, with crop, flip and cutout."""
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
    train_tf = _transforms(mean, std, train_augment, cutout_length, image_size)
    train = ImageFiles([train_samples[i] for i in order], classes, train_tf)
    test = ImageFiles(test_samples, classes, _transforms(mean, std, False, 0, image_size))
    images = f"{len(train)} training and {len(test)} {test_dir.name} images at {image_size}x{image_size}"
    train.summary = f"imagefolder {root}: {len(classes)} classes, {images}, normalised with mean {mean} std {std}"
    return train, test, len(classes)


def get_datasets(name, root, cutout=False, cutout_length=16, train_augment=True, image_size=32, seed=0):
    """`(train, test, num_classes)` for `name` in `DATASETS`; cutout on train only; `seed` serves imagefolder only."""
    length = cutout_length if cutout else 0
    if name == "imagefolder":
        return imagefolder(root, image_size, seed, train_augment, length)
    if name in CIFAR:
        folder_name, train_files, test_files, label_key, classes, mean, std = CIFAR[name]
        folder = Path(root) / folder_name
        if not all((folder / f).is_file() for f in train_files + test_files):
            data_common.download(name, Path(root), folder)
        train = PickledImages(folder, train_files, label_key, _transforms(mean, std, train_augment, length))
        test = PickledImages(folder, test_files, label_key, _transforms(mean, std, False, 0))
        # The same steps as `_transforms`, for device_data.py.
        data_common.record_device_recipe(train, train.images, train.labels, mean, std, train_augment, 4, length)
        data_common.record_device_recipe(test, test.images, test.labels, mean, std)
        return train, test, classes
    if name == "synthetic":
        train = data_common.synthetic(256, seed=1, size=image_size)
        test = data_common.synthetic(128, seed=2, size=image_size)
        if length:
            images, labels = train.tensors
            train = Transformed(train, Cutout(length))
            data_common.record_device_recipe(train, images.permute(0, 2, 3, 1), labels, None, None, cutout=length)
        return train, test, 10
    raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def imagenet_or_synthetic(args, search=False):
    """`(train, val, classes)` of the ImageNet scripts: the ImageFolder tree `--data`, or `--dataset synthetic`."""
    if args.dataset == "synthetic":  # smoke runs at --image_size
        return get_datasets("synthetic", args.data, image_size=args.image_size)
    return imagenet_datasets(args.data, args.image_size, search)


def imagenet_transforms(image_size=224, search=False):
    """`(train, val)` transforms of the paper's ImageNet runs: a search trains on both splits (random resized crop
    and flip); an evaluation adds colour jitter for training, and validates on a centre crop of the image resized."""
    import torchvision.transforms as T  # here: torchvision imports in seconds, and synthetic data needs none

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    crop_flip = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    if search:
        search_tf = T.Compose([*crop_flip, T.ToTensor(), normalize])
        return search_tf, search_tf
    jitter = T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)
    train_tf = T.Compose([*crop_flip, jitter, T.ToTensor(), normalize])
    val_tf = T.Compose([T.Resize(image_size * 256 // 224), T.CenterCrop(image_size), T.ToTensor(), normalize])
    return train_tf, val_tf


def imagenet_datasets(root, image_size=224, search=False):
    """`(train, val, num_classes)` from the `ImageFolder` trees `root/train` and `root/val` (`imagenet_transforms`)."""
    from torchvision.datasets import ImageFolder

    root = Path(root)
    missing = [str(root / sub) + "/" for sub in ("train", "val") if not (root / sub).is_dir()]
    if missing:
        lacks = f"ImageNet not found: {root} lacks {' and '.join(missing)}"
        fix = "point --data at a folder holding train/ and val/ with one sub-folder of images per class"
        raise UserError(f"{lacks}; {fix} (prepare_imagenet_subset.py writes one)")
    train_tf, val_tf = imagenet_transforms(image_size, search)
    try:
        train = ImageFolder(str(root / "train"), transform=train_tf)
        val = ImageFolder(str(root / "val"), transform=val_tf)
    except (FileNotFoundError, RuntimeError) as err:  # a class folder without images
        reason = str(err).splitlines()[0]
        raise UserError(f"ImageNet folder {root} is not a valid ImageFolder tree ({reason})") from None
    if val.classes != train.classes:
        counts = f"{len(train.classes)} vs {len(val.classes)}"
        same = "both need one sub-folder per class with the same names"
        raise UserError(f"{root}/train and {root}/val hold different classes ({counts}); {same}")
    return train, val, len(train.classes)
