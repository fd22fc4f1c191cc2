"""Train a searched cell from scratch on CIFAR-10/100 (or your images): the paper's evaluation (DrNAS sec. 4).

    python train.py --cutout --auxiliary                       # DrNAS_cifar10, 600 epochs: 2.46 +- 0.03 % error
    python train.py --cutout --auxiliary --arch experiments/train_search-.../genotype.json
    torchrun --nproc_per_node 4 train.py --cutout --auxiliary  # same total batch, split over 4 GPUs
    python train.py --cutout --auxiliary --resume RUN/checkpoint.pt   # continue a run (also a preempted one)
    python train.py --cutout --auxiliary --amp --compile       # GPU: bf16, CUDA graphs, data on the device
    python train.py --dataset synthetic --layers 5 --init_channels 8 --epochs 2 --device cpu  # CPU smoke run
    python train.py --arch RUN/genotype.json --dataset imagefolder --data DIR --cutout   # your images

The run directory (`--save`, or experiments/train-<time>) receives log.txt, args.json,
genotype.json, scripts/, tb/, history.jsonl, checkpoint.pt (every epoch and every
`--checkpoint_minutes`, atomic) and best.pt. SIGTERM or SIGINT checkpoints the step in
progress and exits 0; `--resume` continues from there. `--max_steps_per_epoch` caps an
epoch for smoke runs. A search's genotype.json records the data it searched on: a run on
other data, or at another image size, says so in one log line (and trains as it was told).
"""

import argparse
import logging

import torch.nn as nn
from runkit import accel, distributed, engine, run_flags, utils

import datasets
import genotypes
from genotypes import SPACE
from model import NetworkCIFAR
from training import FLAG_RANGES, add_arguments, finish, log_model, log_searched_data, train

logger = logging.getLogger(__name__)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=run_flags.HelpFormatter)
    data = datasets.add_arguments(parser, "train on")
    data.add_argument("--cutout", action="store_true", help="cutout augmentation on the training images")
    data.add_argument("--cutout_length", type=int, default=16, help="side of the cutout square")
    add_arguments(
        parser,
        epochs=600,
        batch_size=64,
        learning_rate=0.025,
        weight_decay=3e-4,
        init_channels=36,
        layers=20,
        drop_path_prob=0.3,
        arch="DrNAS_cifar10",
        workers=2,
        seed=0,
    )
    return parser


@utils.exits_cleanly
def main(argv=None):
    args = engine.parse_args(get_parser(), SPACE, "train", argv)
    # Flags, --arch, the checkpoint and the data are all checked before the run writes anything.
    genotype, searched = genotypes.load_genotype_and_data(args.arch)
    if args.layers < 3:
        raise utils.UserError(f"--layers {args.layers}: the network needs at least 3 cells (two reduction cells)")
    if args.auxiliary and args.dataset == "imagefolder" and args.image_size < 32:
        raise utils.UserError(
            f"--auxiliary needs --image_size 32 or more (its head pools 5x5 windows of the 1/4-size maps), "
            f"not {args.image_size}; drop --auxiliary or raise --image_size"
        )
    run = engine.Run(args, SPACE, "train", join=distributed.setup, ranges=FLAG_RANGES)
    try:
        accel.check_flags(args, run.dist.device, amp_needs_bf16=False)  # fp16 with a loss scaler without bf16
        utils.set_seed(args.seed + run.dist.rank)
        train_set, test_set, num_classes = run.first_on_rank0(
            lambda: datasets.get_datasets(
                args.dataset, args.data, args.cutout, args.cutout_length, image_size=args.image_size, seed=args.seed
            )
        )
        # On the device before the optimizer exists, so resumed momentum lands there too.
        model = NetworkCIFAR(args.init_channels, num_classes, args.layers, args.auxiliary, genotype)
        model = model.to(run.dist.device)
        state = run.task_state()
        if state is not None:
            utils.load_model_state(model, state["model"], args.resume)
        run.open(files={"genotype.json": lambda path: genotypes.save_genotype(genotype, path)})
        logger.info("genotype = %s", genotype)
        log_searched_data(args, searched, test_set, num_classes)
        if args.dataset == "imagefolder":  # classes, image counts, normalisation
            logger.info("%s", train_set.summary)
        log_model(model)

        # Cosine from the initial rate to 0 over all epochs, set once per epoch.
        def learning_rate(epoch):
            return utils.cosine_lr(epoch, args.epochs, args.learning_rate)

        last = train(run, model, train_set, test_set, nn.CrossEntropyLoss(), learning_rate, args)
        finish(run, model, last)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
