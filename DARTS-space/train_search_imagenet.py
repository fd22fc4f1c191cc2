"""Progressive DrNAS search in the DARTS space directly on ImageNet (DrNAS section 4).

The paper's defaults: 14 cells, C=48, on 10 % (weights) and 2.5 % (architecture) of ImageNet's training images,
batch 512, lr 0.5 with a 5-epoch warm-up, beta's gradient clipped, k=6 then k=3, 25 + 25 epochs, seed 0:

    python prepare_imagenet_subset.py --imagenet /data/imagenet --out /data/imagenet_search
    torchrun --nproc_per_node 8 train_search_imagenet.py --data /data/imagenet_search
    python train_search_imagenet.py --data /data/imagenet_search --batch_size 64   # one GPU
    # CPU smoke run, two processes (gloo), on in-memory synthetic images:
    torchrun --nproc_per_node 2 train_search_imagenet.py --dataset synthetic --image_size 32 --layers 5 \\
        --init_channels 8 --batch_size 8 --stage_epochs 1 1 --stage_k 4 2 --warmup_epochs 0 \\
        --max_steps_per_epoch 2 --device cpu --workers 0

`--data` holds `train/` (weights) and `val/` (architecture, reported accuracy), one sub-folder per class;
`--dataset synthetic`: in-memory images for smoke runs. Everything else is train_search.py's.
"""

import argparse

import train_search
from runkit import run_flags

import datasets


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=run_flags.HelpFormatter)
    folder = "folder with train/ (weights) and val/ (architecture) class folders"
    datasets.add_imagenet_arguments(parser, "../data/imagenet_search", folder)
    train_search.add_arguments(parser)
    paper = dict(batch_size=512, learning_rate=0.5, lr_warmup_epochs=5, arch_learning_rate=6e-3, stage_k=[6, 3])
    parser.set_defaults(**paper, init_channels=48, layers=14, workers=8, seed=0)  # the paper's ImageNet search
    return parser


def main(argv=None):
    train_search.main(argv, get_parser(), "train_search_imagenet")


if __name__ == "__main__":
    main()
