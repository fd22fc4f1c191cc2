"""Your own images on disk: a split's class folders (every file checked up front), the images, their statistics."""

import torch
from PIL import Image
from torch.utils.data import Dataset

from .utils import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")
STATS_IMAGES = 2000  # images sampled (seed 0) for the per-channel mean and std


class BadImage(UserError):
    """An image file that does not decode (of a DataLoader worker's copy, "Caught BadImage ...", the last line)."""

    def __init__(self, message):
        super().__init__(message.strip().splitlines()[-1].split("BadImage: ", 1)[-1])


def load_image(path, header_only=False):
    """The RGB image at `path` (with `header_only`, just opened); `BadImage` naming the file when it does not decode."""
    try:
        with Image.open(path) as image:
            return None if header_only else image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BadImage(f"{path} is not a readable image ({reason}); replace or delete it") from None


class ImageFiles(Dataset):
    """`(path, label)` samples read from disk; the image goes through `transform`."""

    summary = ""  # a line for the log, set by `imagefolder`

    def __init__(self, samples, classes, transform):
        self.samples, self.classes, self.transform = samples, classes, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        return self.transform(load_image(path)), label


def scan_split(folder):
    """`(classes, samples)` of `folder/<class>/*` (sub-folders included); `UserError` when a class has no image."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{folder} holds no class folders; put the images of each class in {folder}/<class>/")
    samples = []
    for label, name in enumerate(classes):
        found = [p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS]
        files = sorted(p for p in found if not p.name.startswith(".") and p.is_file())
        if not files:
            kinds = ", ".join(IMAGE_EXTENSIONS[:3])
            raise UserError(f"class folder {folder / name} holds no images ({kinds}, ...); add some or remove it")
        samples += [(str(p), label) for p in files]
    for path, _ in samples:  # headers only: a file that is no image fails now, not hours into a run
        load_image(path, header_only=True)
    return classes, samples


def image_stats(samples, image_size):
    """Per-channel mean and std of up to `STATS_IMAGES` resized images (a fixed seed: the same in every run)."""
    import torchvision.transforms as T  # here: torchvision imports in seconds

    pick = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))[:STATS_IMAGES].tolist()
    to_tensor = T.Compose([T.Resize((image_size, image_size)), T.ToTensor()])
    sums = torch.zeros(2, 3, dtype=torch.float64)  # per channel: sum of x, sum of x^2
    for i in pick:
        pixels = to_tensor(load_image(samples[i][0])).double().flatten(1)  # (3, S*S)
        sums += torch.stack([pixels.sum(1), pixels.square().sum(1)])
    mean, square = sums / (len(pick) * image_size**2)
    std = (square - mean.square()).clamp_min(1e-6).sqrt()  # one-colour images: no division by zero
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())
