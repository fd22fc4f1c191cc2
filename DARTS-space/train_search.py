"""Progressive DrNAS search in the DARTS space on CIFAR-10 / CIFAR-100 (or synthetic data).

The paper's run: the full evaluation-size network (C=36, 20 cells)
in two stages, partial channels k=6 with all 7 ops, then k=4 with the 4 best ops per
edge, 25 + 25 epochs, the first 10 epochs of each stage training the weights only:

    python train_search.py                                  # CIFAR-10, paper settings
    python train_search.py --dataset cifar100 --unrolled --reg_type kl
    python train_search.py --amp --lean_ops off              # GPU: bf16 cells, plain ops (more memory)
    python train_search.py --resume experiments/train_search-.../checkpoint.pt   # also a preempted run
    torchrun --nproc_per_node 4 train_search.py             # the same total batch, split over 4 GPUs
    # CPU smoke run (about a minute): tiny network, 2 + 2 epochs, capped epochs
    python train_search.py --dataset synthetic --layers 5 --init_channels 8 --batch_size 8 \\
        --stage_epochs 2 2 --stage_k 4 2 --warmup_epochs 1 --max_steps_per_epoch 4 --device cpu --workers 0
    # your own images: DIR/train/<class>/* (searched on) and DIR/val/<class>/* (for train.py)
    python train_search.py --dataset imagefolder --data DIR --image_size 32

`--train_portion` of the training images train the weights, the rest the architecture
(and give the reported held-out accuracy). The run directory (`--save`, or
experiments/train_search-<time>) receives log.txt, args.json, scripts/, tb/,
history.jsonl, genotype.json (for train.py --arch) and checkpoint.pt (every epoch and
every `--checkpoint_minutes`, atomic). SIGTERM or SIGINT checkpoints the step in progress
and exits 0; `--resume` continues exactly, across the stage boundary too.
"""

import argparse
import logging

from runkit import data_common, distributed, engine, run_flags, utils
from torch.utils.data import Subset

import datasets
import search
from genotypes import SPACE

logger = logging.getLogger(__name__)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=run_flags.HelpFormatter)
    data = datasets.add_arguments(parser, "search on")
    data.add_argument(
        "--train_portion",
        type=float,
        default=0.5,
        help="share of the training images for the weights; the rest updates the architecture",
    )
    search.add_arguments(parser)
    return parser


def load_data(args):
    """(weights' images, architecture's images, classes, whole training set), split at --train_portion.

    An imagefolder training set comes in a seeded random order, so both parts hold every class.
    """
    full, _, num_classes = datasets.get_datasets(args.dataset, args.data, image_size=args.image_size, seed=args.seed)
    split = int(len(full) * args.train_portion)
    return Subset(full, range(split)), Subset(full, range(split, len(full))), num_classes, full


@utils.exits_cleanly
def main(argv=None):
    args = engine.parse_args(get_parser(), SPACE, "train_search", argv)
    # Flags, the checkpoint and the data are all checked before the run writes anything.
    search.check_args(args, min_image_size=8)  # the CIFAR supernet's stem keeps the size
    run = engine.Run(args, SPACE, "train_search", join=distributed.setup, ranges=search.FLAG_RANGES)
    try:
        utils.set_seed(args.seed)  # every rank alike: the same Dirichlet draws, rank 0's start broadcast
        train_data, valid_data, num_classes, full = run.first_on_rank0(lambda: load_data(args))
        model = search.build_model(args, num_classes, run.dist.device, run.task_state())
        run.open()
        if args.dataset == "imagefolder":  # classes, image counts, normalisation
            logger.info("%s", full.summary)
        data = data_common.data_record(args, full, num_classes)  # recorded in genotype.json, for train.py
        search.search(run, model, train_data, valid_data, args, data=data)
        search.finish(run, model)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
