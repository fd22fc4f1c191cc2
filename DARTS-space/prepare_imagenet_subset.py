"""Write the ImageNet search subsets of DrNAS / PC-DARTS as a tree of symlinks.

From every class it draws (seeded) 10 % of the images for the weights (`OUT/train/<class>/`) and a disjoint 2.5 %
for the architecture (`OUT/val/<class>/`). A rerun with the same settings completes the tree; others are refused.

    python prepare_imagenet_subset.py --imagenet /data/imagenet --out /data/imagenet_search
    python train_search_imagenet.py --data /data/imagenet_search
"""

import argparse
import json
import logging
import os
import random
from pathlib import Path

from runkit import run_flags, utils

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=run_flags.HelpFormatter)
    text = "ImageNet root holding train/<class>/<image> (or that train/ folder itself)"
    parser.add_argument("--imagenet", type=str, required=True, help=text)
    parser.add_argument("--out", type=str, required=True, help="folder to write train/ and val/ into")
    parser.add_argument("--train_fraction", type=float, default=0.1, help="share of each class for the weights")
    text = "share of each class for the architecture (disjoint from the train share)"
    parser.add_argument("--val_fraction", type=float, default=0.025, help=text)
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-class shuffle")
    return parser


def class_images(train_dir):
    """{class: sorted image names} of an ImageFolder training tree; UserError if it is not one."""
    classes = sorted(d for d in train_dir.iterdir() if d.is_dir()) if train_dir.is_dir() else []
    images = {c.name: sorted(f.name for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    images = {name: files for name, files in images.items() if files}
    if not images:
        root = "the ImageNet root with train/<class>/<image>.JPEG (e.g. train/n01440764/n01440764_10026.JPEG)"
        raise utils.UserError(f"{train_dir} holds no class folders with images; --imagenet must be {root}")
    return images


def link(target, path):
    """Create symlink `path` -> `target`, or check the one already there."""
    if path.is_symlink():
        if Path(os.readlink(path)) != target:
            raise utils.UserError(f"{path} links to {os.readlink(path)}, not {target}; delete --out and run again")
        return False
    path.symlink_to(target)
    return True


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%m/%d %H:%M:%S")
    if not (0 < args.train_fraction and 0 < args.val_fraction and args.train_fraction + args.val_fraction <= 1):
        raise utils.UserError("--train_fraction and --val_fraction must be positive and sum to at most 1")
    source = Path(args.imagenet).resolve()
    train_dir = source if source.name == "train" and not (source / "train").is_dir() else source / "train"
    images = class_images(train_dir)
    out = Path(args.out)
    # The settings that define the subset; an existing tree must have been made with the same.
    fractions = dict(train_fraction=args.train_fraction, val_fraction=args.val_fraction)
    manifest = dict(source=str(train_dir), **fractions, seed=args.seed, classes=len(images))
    manifest_path = out / "subset.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else manifest
    if previous != manifest:
        other = f"{out} holds a subset made with other settings ({previous})"
        raise utils.UserError(f"{other}; choose another --out or delete it")
    if not manifest_path.is_file() and out.exists() and any(out.iterdir()):
        raise utils.UserError(f"--out {out} exists and is not a subset written by this script; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    utils.write_json(manifest_path, manifest)

    created = counts = 0
    for name, files in images.items():
        # A shuffle seeded by (seed, class): the same draw whatever the other classes are.
        order = list(files)
        random.Random(f"{args.seed}-{name}").shuffle(order)
        n_train = max(1, round(args.train_fraction * len(order)))
        n_val = max(1, round(args.val_fraction * len(order)))
        for split, chosen in (("train", order[:n_train]), ("val", order[n_train : n_train + n_val])):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for file in chosen:
                created += link(train_dir / name / file, folder / file)
                counts += 1
    logger.info("%d classes: %d links in %s/train and %s/val (%d new)", len(images), counts, out, out, created)


if __name__ == "__main__":
    main()
