"""Data held on the device: each batch one gather, its crop, flip and cutout drawn there (resumed exactly)."""

import weakref

import torch
from torch.utils.data import Subset, TensorDataset

from . import streams, utils

_HELD = weakref.WeakKeyDictionary()  # dataset -> {device: (images, labels)}: a split's parts share one copy


def add_argument(group):
    on = "hold the data set on the device, augmented there (auto: on CUDA for cifar10/100, imagenet16-120, synthetic)"
    group.add_argument("--data_on_device", choices=("auto", "on", "off"), default="auto", help=on)


def _unwrap(dataset):
    """(the dataset under any `Subset`s, their composed indices or None, its transform's recipe or None)."""
    indices = None
    while isinstance(dataset, Subset):
        outer = torch.as_tensor(dataset.indices, dtype=torch.int64)
        indices = outer if indices is None else outer[indices]
        dataset = dataset.dataset
    recipe = getattr(dataset, "device_recipe", None)
    if recipe is None and isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        images, labels = dataset.tensors
        if images.dim() == 4 and images.is_floating_point():
            recipe = dict(images=images.permute(0, 2, 3, 1), labels=labels, mean=None, std=None)
    return dataset, indices, recipe


def supported(dataset):
    """Whether `dataset` (or a possibly nested `Subset` of it) can be held on the device."""
    return _unwrap(dataset)[2] is not None


def use_device(mode, dataset, device):
    """Resolve `--data_on_device` (`auto`, `on` or `off`) for `dataset` on `device`."""
    if mode == "on" and not supported(dataset):
        files = "this data set is read from image files and cannot be held on the device"
        raise utils.UserError(f"--data_on_device on: {files}; use --data_on_device auto or off")
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda" and supported(dataset))


class DeviceLoader:
    """A dataset's images (uint8 or float, (N, H, W, C)) and labels held on the device; iterated, batches in order."""

    def __init__(self, dataset, batch_size, device):
        base, indices, recipe = _unwrap(dataset)
        if recipe is None:
            raise utils.UserError(f"{type(base).__name__} cannot be held on the device; use --data_on_device off")
        self.device = torch.device(device)
        held = _HELD.setdefault(base, {})
        if self.device not in held:
            images = torch.as_tensor(recipe["images"]).to(self.device).contiguous()
            held[self.device] = images, torch.as_tensor(recipe["labels"], dtype=torch.int64).to(self.device)
        self.images, self.labels = held[self.device]
        self.indices = None if indices is None else indices.to(self.device)
        self.size = len(self.images) if indices is None else len(indices)
        self.mean = self.std = None
        if recipe["mean"] is not None:
            self.mean, self.std = (torch.tensor(recipe[k], device=self.device).float() for k in ("mean", "std"))
        self.augment, self.padding, self.cutout = (recipe.get(k, 0) for k in ("augment", "padding", "cutout"))
        self.rows, self.cols = (torch.arange(n, device=self.device) for n in self.images.shape[1:3])
        self.batches = torch.arange(self.size, device=self.device).split(batch_size) if self.size else ()

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return (self.batch(positions) for positions in self.batches)

    def batch(self, positions):
        """`(images, labels)` at `positions` (a device tensor) as the dataset's transform makes them, channels-last."""
        index = positions if self.indices is None else self.indices[positions]
        x = self._crop_flip(index) if self.augment else self.images[index]
        if self.mean is not None:  # the arithmetic of ToTensor and Normalize, so the values match the DataLoader's
            x = x.float().div_(255).sub_(self.mean).div_(self.std)
        if self.cutout:
            x = self._cutout(x)
        return x.permute(0, 3, 1, 2), self.labels[index]

    def _crop_flip(self, index):
        """`RandomCrop(size, padding)` then `RandomHorizontalFlip()`: one gather of source pixels per batch."""
        b, p = len(index), self.padding
        height, width = len(self.rows), len(self.cols)
        shift = torch.randint(0, 2 * p + 1, (2, b, 1), device=self.device) - p  # crop offset minus padding
        flip = torch.rand(b, 1, device=self.device) < 0.5
        rows = self.rows + shift[0]  # (B, H) source rows; out of range = padding
        cols = torch.where(flip, self.cols.flip(0), self.cols) + shift[1]  # (B, W)
        source_rows, source_cols = rows.clamp(0, height - 1)[:, :, None], cols.clamp(0, width - 1)[:, None, :]
        pixels = self.images[index[:, None, None], source_rows, source_cols]
        inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        return pixels.masked_fill_(~inside[..., None], 0)

    def _cutout(self, x):
        """`datasets.Cutout`: zero the square [c - length // 2, c + length // 2) around a random pixel, clipped."""
        b, half = len(x), self.cutout // 2
        cy, cx = (torch.randint(0, len(n), (b, 1), device=self.device) for n in (self.rows, self.cols))
        in_rows = (self.rows >= cy - half) & (self.rows < cy + half)
        in_cols = (self.cols >= cx - half) & (self.cols < cx + half)
        return x.masked_fill_((in_rows[:, :, None] & in_cols[:, None, :])[..., None], 0)


class DeviceStream(streams.Stream):
    """A `streams.Stream` of a dataset held on the device: the same samples in the same order, augmented there."""

    def __init__(self, dataset, batch_size, seed, device, shuffle=True, rank=0, world_size=1, position=(0, 0)):
        self.held = DeviceLoader(dataset, batch_size, device)
        super().__init__(dataset, batch_size, seed, 0, shuffle, rank, world_size, position=position)
        self._pass = None

    def __next__(self):
        if self._pass != self.pass_index:  # this rank's samples of the pass, copied to the device once
            self.sampler.set_position(self.pass_index)
            order = torch.tensor(self.sampler.order(), dtype=torch.int64, pin_memory=self.held.device.type == "cuda")
            self._batches = order.to(self.held.device, non_blocking=True).split(self.batch_size)
            self._pass = self.pass_index
        batch = self.held.batch(self._batches[self.batch_index])
        self._advance()
        return batch


def describe(batches):
    """One line for the log: where a `stream()`'s batches come from."""
    if isinstance(batches, DeviceStream):
        return f"data held on {batches.held.device}, augmented there per batch"
    return f"data through a DataLoader with {batches.loader_kwargs['num_workers']} workers"


def stream(dataset, batch_size, seed, device, on_device, workers=0, shuffle=True, rank=0, world_size=1,
           pin_memory=False):  # fmt: skip
    """A `DeviceStream` when `on_device`, else a `streams.Stream` (which ignores `device`)."""
    if on_device:
        return DeviceStream(dataset, batch_size, seed, device, shuffle, rank, world_size)
    return streams.Stream(dataset, batch_size, seed, workers, shuffle, rank, world_size, pin_memory)


def loader(dataset, batch_size, device, on_device, workers=0, pin_memory=False):
    """A `DeviceLoader` when `on_device`, else the `DataLoader` of the evaluation passes."""
    if on_device:
        return DeviceLoader(dataset, batch_size, device)
    return streams.Loader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory)
