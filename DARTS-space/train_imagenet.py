"""Train a searched cell from scratch on ImageNet (DrNAS section 4: 23.7 % top-1 error, 5.7M parameters).

    torchrun --nproc_per_node 8 train_imagenet.py --auxiliary --data /data/imagenet   # the paper: 250 epochs, batch 768
    python train_imagenet.py --auxiliary --data /data/imagenet --batch_size 128 --learning_rate 0.0833  # one GPU
    python train_imagenet.py --auxiliary --data /data/imagenet --amp --compile   # bf16, torch.compile
    torchrun --nproc_per_node 8 train_imagenet.py --auxiliary --data /data/imagenet --resume RUN/checkpoint.pt
    python train_imagenet.py --dataset synthetic --image_size 32 --layers 5 --init_channels 8 --epochs 1 --device cpu

`--data` holds `train/` and `val/` with one sub-folder of images per class. The run directory
(experiments/train_imagenet-<time>), checkpoints, preemption and resume are those of `train.py`; a cell searched on
other data (a CIFAR search's genotype.json) says so in one log line, as there.
"""

import argparse
import math

import train
from runkit import run_flags

import datasets


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=run_flags.HelpFormatter)
    datasets.add_imagenet_arguments(parser, "../data/imagenet", "ImageFolder root with train/ and val/")
    paper = dict(epochs=250, batch_size=768, learning_rate=0.5, weight_decay=3e-5, init_channels=48, layers=14)
    train.add_arguments(parser)
    parser.set_defaults(**paper, drop_path_prob=0.0, arch="DrNAS_imagenet", workers=8)  # the paper's ImageNet run
    opt = parser.add_argument_group("schedule")
    opt.add_argument("--label_smoothing", type=float, default=0.1, help="label smoothing of the training loss")
    decay = "decay of the learning rate to 0 (linear: smaller slope in the last 5 epochs)"
    opt.add_argument("--lr_scheduler", type=str, default="linear", choices=("linear", "cosine"), help=decay)
    opt.add_argument("--warmup_epochs", type=int, default=5, help="linear lr warm-up epochs if --batch_size > 256")
    return parser


def lr_factor(epoch, args):
    """Multiplier of --learning_rate in `epoch` (0-based), as in the paper's code: the warm-up (batch above 256), then
    `cosine`, or `linear` to 0 with a smaller slope in the last 5 epochs (at most E - 1)."""
    if epoch < args.warmup_epochs and args.batch_size > 256:
        return (epoch + 1) / args.warmup_epochs
    E = args.epochs
    if args.lr_scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / E))
    tail = min(5, E - 1)
    if E - epoch > tail:
        return (E - tail - epoch) / (E - tail)
    return (E - epoch) / (tail * (E - tail))


def main(argv=None):
    train.main(argv, get_parser(), "train_imagenet", lr_factor)


if __name__ == "__main__":
    main()
