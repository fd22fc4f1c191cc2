"""Data on the device (`device_data.py`), on the CPU device."""

import argparse
import pickle
from itertools import islice

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Subset, TensorDataset

from conftest import SPACES, forbid_host_reads, write_tiny_cifar

SPACE_NAMES = sorted(SPACES)


def _numbered_set(n=40, size=8):
    """Float images labelled 0..n-1, so labels name the samples."""
    return TensorDataset(torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)), torch.arange(n))


def _pickled_sets(datasets, space, root, name="cifar10", augment=True, cutout=0):
    """`(train, test)` of a tiny tree read by the space's own `get_datasets`."""
    if name == "imagenet16-120":
        rng = np.random.default_rng(0)
        for file in [] if (root / "in16").exists() else [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
            (root / "in16").mkdir(parents=True, exist_ok=True)
            data = {"data": rng.integers(0, 256, (2, 768), np.uint8), "labels": rng.integers(1, 121, 2).tolist()}
            (root / "in16" / file).write_bytes(pickle.dumps(data))
        return datasets.get_datasets(name, root / "in16", train_augment=augment)[:2]
    if not (root / "cifar-10-batches-py").exists():
        write_tiny_cifar(root, name, per_batch=4)
    if space == "201-space":
        return datasets.get_datasets(name, root, train_augment=augment)[:2]
    return datasets.get_datasets(name, root, cutout=bool(cutout), cutout_length=cutout, train_augment=augment)[:2]


ORDERS = [dict(), dict(shuffle=False), dict(rank=1, world_size=3), dict(rank=2, world_size=3, shuffle=False)]


@pytest.mark.parametrize("space", SPACE_NAMES)
@pytest.mark.parametrize("sharding", ORDERS, ids=str)
@pytest.mark.parametrize("subset", [False, True])
def test_same_samples_in_the_same_order_as_stream(load_space, space, sharding, subset):
    device_data, streams = load_space(space, "runkit.device_data", "runkit.streams")
    data = _numbered_set()
    if subset:  # the searches' split, split again
        data = Subset(Subset(data, range(5, 37)), [3, 1, 4, 15, 9, 2, 6, 5, 30, 25, 8, 7, 11, 0, 31])
    stream, reference = device_data.DeviceStream(data, 4, 3, "cpu", **sharding), streams.Stream(data, 4, 3, **sharding)
    assert len(stream) == len(reference)
    for _ in range(3 * len(stream) + 1):  # three passes and a bit, partial batches included
        x, y = next(stream)
        x_ref, y_ref = next(reference)
        assert torch.equal(y, y_ref) and torch.equal(x, x_ref) and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last) and stream.position() == reference.position()


@pytest.mark.parametrize("space", SPACE_NAMES)
def test_device_loader_equals_the_dataloader_no_batch_reads_the_host_and_resume_is_exact(load_space, tmp_path, space):
    device_data, datasets = load_space(space, "runkit.device_data", "datasets")
    train, test = _pickled_sets(datasets, space, tmp_path, cutout=16)
    plain, _ = _pickled_sets(datasets, space, tmp_path, augment=False)
    split = Subset(Subset(plain, range(3, 19)), [5, 0, 7, 2, 9])
    for data in (test, plain, split, _numbered_set()):  # sets whose transforms do not augment
        loader = device_data.DeviceLoader(data, 3, "cpu")
        batches, reference = list(loader), list(DataLoader(data, 3))
        assert len(loader) == len(batches) == len(reference)
        for (x, y), (x_ref, y_ref) in zip(batches, reference):
            assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-6)
            assert torch.equal(y, y_ref)
    # No host reads per batch.
    stream = device_data.DeviceStream(Subset(train, range(2, 19)), 4, 0, "cpu")
    loader = device_data.DeviceLoader(test, 3, "cpu")
    next(stream)  # the first batch of a pass uploads the pass's order: not a per-batch cost
    with forbid_host_reads():
        for _ in range(len(stream) - 1):
            next(stream)
        assert len(list(loader)) == len(loader)
    # Resuming from a position and the RNG state is exact.
    torch.manual_seed(1)
    stream = device_data.DeviceStream(train, 7, 2, "cpu", rank=1, world_size=2)  # 10 samples: 2 batches a pass
    for _ in range(3):
        next(stream)
    position, state = stream.position(), torch.get_rng_state()
    later = list(islice(stream, 5))  # across two pass boundaries
    torch.set_rng_state(state)
    resumed = device_data.DeviceStream(train, 7, 2, "cpu", rank=1, world_size=2, position=position)
    sought = device_data.DeviceStream(train, 7, 2, "cpu", rank=1, world_size=2)
    next(sought)  # a batch of pass 0 first, so seek has an order to drop
    sought.seek(position)
    for other in (resumed, sought):
        torch.set_rng_state(state)
        for (x, y), (x_b, y_b) in zip(later, islice(other, 5)):
            assert torch.equal(x, x_b) and torch.equal(y, y_b)
    sought.seek(position)  # the augmentation comes from the global RNG: the same position with other draws differs
    x_c, y_c = next(sought)
    assert torch.equal(y_c, later[0][1]) and not torch.equal(x_c, later[0][0])


def _crops(image, pad_value, padding):
    """Every crop (offsets 0..2*padding) of `image` padded with `pad_value`, flipped or not, and their keys."""
    c, h, w = image.shape
    padded = pad_value.view(c, 1, 1).repeat(1, h + 2 * padding, w + 2 * padding)
    padded[:, padding : padding + h, padding : padding + w] = image
    crops, keys = [], []
    for oy in range(2 * padding + 1):
        for ox in range(2 * padding + 1):
            for flip in (False, True):
                crop = padded[:, oy : oy + h, ox : ox + w]
                crops.append(crop.flip(-1) if flip else crop)
                keys.append((oy, ox, flip))
    return torch.stack(crops), keys


def _which(out, candidates):
    """(index of the candidate that `out` equals outside its all-zero pixels, the (H, W) mask of those)."""
    cut = (out == 0).all(0)
    close = ((candidates - out).abs() <= 1e-6) | cut
    hits = close.flatten(1).all(1).nonzero().flatten().tolist()
    assert hits, "the image is none of the crops and flips of its source"
    return hits[0], cut


def _padding(train, plain):
    """What the DataLoader path does: its padding, and the normalised value of a zero (padding) pixel."""
    padding = next(t.padding for t in train.transform.transforms if isinstance(t, T.RandomCrop))
    return padding, plain.transform(Image.fromarray(np.zeros((*plain.images.shape[1:3], 3), np.uint8)))[:, 0, 0]


def _augmented_samples(load_space, tmp_path, space, name, cutout=0, batches=20):
    """Yield (output image, its source transformed without augmentation, pad value, padding, datasets)."""
    device_data, streams, datasets = load_space(space, "runkit.device_data", "runkit.streams", "datasets")
    train, _ = _pickled_sets(datasets, space, tmp_path, name, cutout=cutout)
    plain, _ = _pickled_sets(datasets, space, tmp_path, name, augment=False)
    padding, pad_value = _padding(train, plain)
    torch.manual_seed(0)
    stream = device_data.DeviceStream(train, 20, 5, "cpu")
    reference = streams.Stream(plain, 20, 5)  # the same order, without augmentation
    for _ in range(batches):
        (x, y), (x_ref, y_ref) = next(stream), next(reference)
        assert torch.equal(y, y_ref)
        for out, source in zip(x, x_ref):
            yield out, source, pad_value, padding, datasets


@pytest.mark.parametrize(
    "space, name", [("201-space", "cifar10"), ("201-space", "imagenet16-120"), (SPACE_NAMES[1], "cifar10")]
)
def test_augmented_images_are_crops_and_flips_of_their_source(load_space, tmp_path, space, name):
    seen = set()
    for out, source, pad_value, padding, _ in _augmented_samples(load_space, tmp_path, space, name):
        candidates, keys = _crops(source, pad_value, padding)
        index, cut = _which(out, candidates)
        assert not cut.any(), "no cutout without --cutout"
        seen.add(keys[index])
    assert padding == {"cifar10": 4, "imagenet16-120": 2}[name]
    assert {oy for oy, _, _ in seen} == {ox for _, ox, _ in seen} == set(range(2 * padding + 1))
    assert {flip for _, _, flip in seen} == {False, True}


@pytest.mark.parametrize("space", SPACE_NAMES)
def test_device_loader_augments_what_its_dataloader_would(load_space, tmp_path, space):
    """The search's held-out images are training images: augmented, as the paper's code evaluates them."""
    device_data, datasets = load_space(space, "runkit.device_data", "datasets")
    train, _ = _pickled_sets(datasets, space, tmp_path)
    plain, _ = _pickled_sets(datasets, space, tmp_path, augment=False)
    held_out = range(6, len(train))  # as `split_search_data` makes it
    padding, pad_value = _padding(train, plain)
    torch.manual_seed(0)
    batches = list(device_data.DeviceLoader(Subset(train, held_out), 4, "cpu"))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert len(x) == len(held_out) == 14
    moved = 0
    for out, label, i in zip(x, y, held_out):
        source, source_label = plain[i]
        assert int(label) == source_label
        candidates, keys = _crops(source, pad_value, padding)
        index, cut = _which(out, candidates)
        assert not cut.any(), "no cutout without --cutout"
        moved += keys[index] != (padding, padding, False)
    assert moved >= 10, "the crops and flips are random, most images move"


def _check_cutout(out, candidate, cut, length, datasets, monkeypatch):
    """`out` is `candidate` under `datasets.Cutout(length)` centred where the cut square says; its side."""
    rows, cols = cut.any(1).nonzero().flatten().tolist(), cut.any(0).nonzero().flatten().tolist()
    assert rows and cols, "cutout zeroed nothing"
    (y0, y1), (x0, x1) = (rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)
    assert cut[y0:y1, x0:x1].all() and int(cut.sum()) == (y1 - y0) * (x1 - x0), "the zeros are no rectangle"
    h, w = cut.shape
    cy = y0 + length // 2 if y0 > 0 else y1 - length // 2
    cx = x0 + length // 2 if x0 > 0 else x1 - length // 2
    assert 0 <= cy < h and 0 <= cx < w
    draws = iter([torch.tensor([cy]), torch.tensor([cx])])
    with monkeypatch.context() as patch:
        patch.setattr(torch, "randint", lambda *args, **kwargs: next(draws))
        expected = datasets.Cutout(length)(candidate)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    return y1 - y0, x1 - x0


def test_cutout_zeroes_the_square_datasets_cutout_would(load_space, tmp_path, monkeypatch):
    sides, samples = set(), _augmented_samples(load_space, tmp_path, "DARTS-space", "cifar10", cutout=16, batches=10)
    for out, source, pad_value, padding, datasets in samples:
        candidates, _ = _crops(source, pad_value, padding)
        index, cut = _which(out, candidates)
        sides.add(_check_cutout(out, candidates[index], cut, 16, datasets, monkeypatch))
    assert (16, 16) in sides and any(side != (16, 16) for side in sides), "whole and clipped squares"


def test_cutout_on_the_synthetic_set(load_space, monkeypatch):
    device_data, streams, datasets = load_space("DARTS-space", "runkit.device_data", "runkit.streams", "datasets")
    train, _, _ = datasets.get_datasets("synthetic", ".", cutout=True, cutout_length=10, image_size=16)
    assert device_data.supported(train)
    stream = device_data.DeviceStream(train, 32, 0, "cpu")
    reference = streams.Stream(train.dataset, 32, 0)  # the images before cutout
    for _ in range(len(stream)):
        (x, y), (x_ref, y_ref) = next(stream), next(reference)
        assert torch.equal(y, y_ref)
        for out, source in zip(x, x_ref):
            _, cut = _which(out, source[None])
            _check_cutout(out, source, cut, 10, datasets, monkeypatch)


def test_use_device_resolves_the_flag_and_stream_and_loader_pick_the_path(load_space, tmp_path, tiny_imagenet):
    device_data, datasets, utils, streams = load_space(
        "201-space", "runkit.device_data", "datasets", "runkit.utils", "runkit.streams"
    )
    data = _numbered_set()
    assert isinstance(device_data.stream(data, 4, 0, "cpu", True), device_data.DeviceStream)
    assert isinstance(device_data.stream(data, 4, 0, "cpu", False, shuffle=False), streams.Stream)
    assert isinstance(device_data.loader(data, 4, "cpu", True), device_data.DeviceLoader)
    assert isinstance(device_data.loader(data, 4, "cpu", False), DataLoader)
    parser = argparse.ArgumentParser()
    device_data.add_argument(parser)
    assert parser.parse_args([]).data_on_device == "auto"
    assert parser.parse_args(["--data_on_device", "on"]).data_on_device == "on"
    cifar, _ = _pickled_sets(datasets, "201-space", tmp_path / "cifar")
    folder, _, _ = datasets.get_datasets("imagefolder", tiny_imagenet, image_size=32)
    split = Subset(Subset(cifar, range(2, 15)), range(4))
    assert device_data.supported(split) and device_data.supported(data)
    assert not device_data.supported(folder) and not device_data.supported(Subset(folder, range(3)))
    assert not device_data.use_device("auto", split, torch.device("cpu")), "auto is off on CPUs"
    assert device_data.use_device("auto", split, torch.device("cuda"))
    assert not device_data.use_device("auto", folder, torch.device("cuda"))
    assert device_data.use_device("on", split, torch.device("cpu"))
    assert not device_data.use_device("off", split, torch.device("cuda"))
    with pytest.raises(utils.UserError) as err:
        device_data.use_device("on", Subset(folder, range(3)), torch.device("cuda"))
    assert "\n" not in str(err.value) and "--data_on_device" in str(err.value)
