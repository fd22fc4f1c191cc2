"""Train a searched cell from scratch on ImageNet (DrNAS section 4: 23.7 % top-1 error, 5.7M parameters).

    torchrun --nproc_per_node 8 train_imagenet.py --auxiliary --data /data/imagenet   # the paper: 250 epochs, batch 768
    python train_imagenet.py --auxiliary --data /data/imagenet --batch_size 128 --learning_rate 0.0833  # one GPU
    python train_imagenet.py --auxiliary --data /data/imagenet --amp --compile   # bf16, torch.compile
    torchrun --nproc_per_node 8 train_imagenet.py --auxiliary --data /data/imagenet --resume RUN/checkpoint.pt
    python train_imagenet.py --dataset synthetic --image_size 32 --layers 5 --init_channels 8 --epochs 1 --device cpu

`--data` holds `train/` and `val/` with one sub-folder of images per class. The run
directory (experiments/train_imagenet-<time>) is that of `train.py`: log.txt, args.json,
genotype.json, scripts/, tb/, history.jsonl, checkpoint.pt (atomic, every epoch and every
`--checkpoint_minutes`; SIGTERM checkpoints the step in progress) and best.pt. A cell
searched on other data (a CIFAR search's genotype.json) says so in one log line, as in train.py.
"""

import argparse
import logging
import math

import torch.nn as nn
from runkit import accel, distributed, engine, run_flags, utils
from train import FLAG_RANGES, add_arguments, finish, log_model, log_searched_data, train

import datasets
import genotypes
from genotypes import SPACE
from model import NetworkImageNet

logger = logging.getLogger(__name__)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=run_flags.HelpFormatter)
    datasets.add_imagenet_arguments(parser, "../data/imagenet", "ImageFolder root with train/ and val/")
    add_arguments(
        parser,
        epochs=250,
        batch_size=768,
        learning_rate=0.5,
        weight_decay=3e-5,
        init_channels=48,
        layers=14,
        drop_path_prob=0.0,
        arch="DrNAS_imagenet",
        workers=8,
        seed=0,
    )
    opt = parser.add_argument_group("schedule")
    opt.add_argument("--label_smoothing", type=float, default=0.1, help="label smoothing of the training loss")
    opt.add_argument(
        "--lr_scheduler",
        type=str,
        default="linear",
        choices=("linear", "cosine"),
        help="decay of the learning rate to 0 (linear: smaller slope in the last 5 epochs)",
    )
    opt.add_argument(
        "--warmup_epochs",
        type=int,
        default=5,
        help="epochs of linear learning-rate warm-up, applied when --batch_size > 256 (as in the paper)",
    )
    return parser


# The paper's linear decay takes a smaller slope over its last epochs, "because lr * 1/250
# is relatively large" at the end of a straight line to 0.
TAIL_EPOCHS = 5


def lr_factor(epoch, args):
    """Multiplier of --learning_rate in `epoch` (0-based), as in the paper's code.

    Warm-up (only for a batch above 256): (e + 1) / W for e < W. Then `linear`:
    (E - 5 - e) / (E - 5) while E - e > 5, and (E - e) / (5 (E - 5)) in the last 5 epochs;
    or `cosine`: (1 + cos(pi e / E)) / 2. Runs of 5 epochs or fewer shorten the tail to E - 1.
    """
    if epoch < args.warmup_epochs and args.batch_size > 256:
        return (epoch + 1) / args.warmup_epochs
    E = args.epochs
    if args.lr_scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / E))
    tail = min(TAIL_EPOCHS, E - 1)
    if E - epoch > tail:
        return (E - tail - epoch) / (E - tail)
    return (E - epoch) / (tail * (E - tail))


@utils.exits_cleanly
def main(argv=None):
    parser = get_parser()
    args = engine.parse_args(parser, SPACE, "train_imagenet", argv)
    # Five stride-2 stages (stems, two reductions) take 224 pixels to 7x7. The factorized
    # reduce needs even maps at each reduction, and the auxiliary head pools a 7x7 map.
    # One line, not argparse's usage block (which every torchrun process would print).
    if args.image_size % 32:
        raise utils.UserError(
            f"--image_size {args.image_size} is not a multiple of 32 (the network halves it five times); "
            "give 224 (ImageNet), or 32, 64, ... for small runs"
        )
    if args.auxiliary and args.image_size < 224:
        raise utils.UserError(
            f"--auxiliary needs --image_size 224 or more (its head pools the 7x7 map of 224 pixels), not "
            f"{args.image_size}; drop --auxiliary or raise --image_size"
        )
    # Flags, --arch, the checkpoint and the data are all checked before the run writes anything.
    genotype, searched = genotypes.load_genotype_and_data(args.arch)
    # ImageNet's val/ folder is the test set (the paper reports on it), so its records are test_acc, test_top5, ...
    train_set, test_set, num_classes = datasets.imagenet_or_synthetic(args)
    run = engine.Run(args, SPACE, "train_imagenet", join=distributed.setup, ranges=FLAG_RANGES)
    try:
        accel.check_flags(args, run.dist.device, amp_needs_bf16=False)  # fp16 with a loss scaler without bf16
        utils.set_seed(args.seed + run.dist.rank)
        model = NetworkImageNet(args.init_channels, num_classes, args.layers, args.auxiliary, genotype)
        model.to(run.dist.device)
        state = run.task_state()
        if state is not None:
            utils.load_model_state(model, state["model"], args.resume)
        run.open(files={"genotype.json": lambda path: genotypes.save_genotype(genotype, path)})
        logger.info("genotype = %s", genotype)
        log_searched_data(args, searched, test_set, num_classes)
        logger.info("%d training and %d test (val/) images in %d classes", len(train_set), len(test_set), num_classes)
        log_model(model)
        # Label smoothing in training only; the test set reports the plain cross-entropy.
        criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

        # A function of the epoch alone, so resume is exact.
        def learning_rate(epoch):
            return args.learning_rate * lr_factor(epoch, args)

        last = train(run, model, train_set, test_set, criterion, learning_rate, args)
        finish(run, model, last)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
