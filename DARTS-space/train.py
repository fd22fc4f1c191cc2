"""Train a searched cell from scratch on CIFAR-10/100 (or your images): the paper's evaluation (DrNAS sec. 4).

    python train.py --cutout --auxiliary                       # DrNAS_cifar10, 600 epochs: 2.46 +- 0.03 % error
    python train.py --cutout --auxiliary --arch experiments/train_search-.../genotype.json
    torchrun --nproc_per_node 4 train.py --cutout --auxiliary  # same total batch, split over 4 GPUs
    python train.py --cutout --auxiliary --resume RUN/checkpoint.pt   # continue a run (also a preempted one)
    python train.py --cutout --auxiliary --amp --compile       # GPU: bf16, CUDA graphs, data on the device
    python train.py --dataset synthetic --layers 5 --init_channels 8 --epochs 2 --device cpu  # CPU smoke run
    python train.py --arch RUN/genotype.json --dataset imagefolder --data DIR --cutout   # your images

The run directory (`--save`, or experiments/train-<time>) receives log.txt, args.json, genotype.json, scripts/,
tb/, history.jsonl, checkpoint.pt and best.pt. SIGTERM or SIGINT checkpoints the step in progress and exits 0;
`--resume` continues from there. A cell searched on other data, or at another image size, says so in one log line.
"""

import argparse
import logging

import torch
import torch.nn as nn
from runkit import accel, data_common, device_data, distributed, engine, run_flags, utils
from runkit.budget import count_flops
from runkit.progress import infer
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

import datasets
import genotypes
from genotypes import SPACE
from model import NetworkCIFAR, NetworkImageNet, param_count

logger = logging.getLogger(__name__)

# Valid ranges of the numeric flags only the training scripts of this folder have (run_flags.RANGES holds the rest).
FLAG_RANGES = {
    "cutout_length": (1, None, True, True),
    "auxiliary_weight": (0, None, True, True),
    "drop_path_prob": (0, 1, True, False),
    "label_smoothing": (0, 1, True, False),
}


def add_arguments(parser):
    """Flags shared by train.py and train_imagenet.py, with train.py's defaults (train_imagenet.py sets its own)."""
    model = parser.add_argument_group("model")
    cells = f"a genotype name ({', '.join(genotypes.NAMED)}) or a genotype.json from a search"
    model.add_argument("--arch", type=str, default="DrNAS_cifar10", help=cells)
    model.add_argument("--init_channels", type=int, default=36, help="channels C of the first cells")
    model.add_argument("--layers", type=int, default=20, help="number of cells")
    model.add_argument("--auxiliary", action="store_true", help="train with the auxiliary head")
    model.add_argument("--auxiliary_weight", type=float, default=0.4, help="weight of the auxiliary loss")
    model.add_argument("--drop_path_prob", type=float, default=0.3, help="drop path probability, ramped up from 0")
    opt = parser.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, default=600, help="training epochs")
    opt.add_argument("--batch_size", type=int, default=64, help="total batch size, split over torchrun processes")
    opt.add_argument("--learning_rate", type=float, default=0.025, help="initial SGD learning rate")
    opt.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    opt.add_argument("--weight_decay", type=float, default=3e-4, help="SGD weight decay")
    opt.add_argument("--grad_clip", type=float, default=5.0, help="gradient norm clipping")
    system = run_flags.add_run_arguments(parser, seed=0, workers=2)
    system.add_argument("--amp", action="store_true", help="mixed precision: bf16 autocast where supported, else fp16")
    accel.add_compile_argument(system)
    device_data.add_argument(system)


def training_loss(criterion, logits, logits_aux, targets, aux_weight):
    """CE(main) + aux_weight * CE(auxiliary head), or CE(main) alone without the head (DARTS)."""
    loss = criterion(logits, targets)
    if logits_aux is not None:
        loss = loss + aux_weight * criterion(logits_aux, targets)
    return loss


def train_step(net, optimizer, scaler, criterion, batch, amp_dtype, args):
    """One SGD step on a training batch (auxiliary loss, gradient clipping, --amp); returns (logits, loss)."""
    x, y = batch
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=args.amp):
        logits, logits_aux = net(x)
        loss = training_loss(criterion, logits, logits_aux, y, args.auxiliary_weight)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return logits, loss


def train(run, model, train_set, test_set, criterion, learning_rate, args):
    """The training loop, then the test set, each epoch. Returns the last epoch's record (None when a resumed run had
    no epoch left); `run.best` holds the best epoch, chosen on the test set (there is no other) for best.pt."""
    dist, device, resumed = run.dist, run.dist.device, run.task_state()
    # Parameters without the auxiliary head (as papers give them), multiply-adds (NAS-Bench-201's FLOPs): for report.py.
    counts = {"param_count": param_count(model), "flops": count_flops(model, tuple(test_set[0][0].shape))}
    params, flops, head = counts["param_count"], counts["flops"], utils.count_parameters(model.parameters())
    shown = (params, params / 1e6, head - params, flops, flops / 1e6)
    logger.info("param count = %d (%.2fM), auxiliary head %d more; multiply-adds (FLOPs) = %d (%.2fM)", *shown)
    amp_dtype = accel.amp_dtype(device)
    # The loss scaler only matters for fp16, whose small range underflows gradients.
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16)
    sgd = dict(momentum=args.momentum, weight_decay=args.weight_decay)
    optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, **sgd)
    if resumed is not None:  # the model's tensors were loaded (and checked) before the run folder existed
        optimizer.load_state_dict(resumed["optimizer"])
        scaler.load_state_dict(resumed["scaler"])
    if args.compile:  # in place: the model, DDP's and the checkpoints' tensors stay the same
        accel.compile_model(model, device, dist.world_size)
    # DDP averages the gradients in the backward pass; every rank steps the same weights.
    net = model
    if dist.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    per_rank, pin = args.batch_size // dist.world_size, device.type == "cuda"
    on_device = device_data.use_device(args.data_on_device, train_set, device)
    # One seeded permutation per pass, cut into per-rank shards: any rank count sees the same order.
    shard = (True, dist.rank, dist.world_size, pin)
    batches = device_data.stream(train_set, per_rank, args.seed, device, on_device, args.workers, *shard)
    # Test shards without padding, so the summed counts cover each test image once.
    test_shard = Subset(test_set, range(dist.rank, len(test_set), dist.world_size))
    test_loader = device_data.loader(test_shard, per_rank, device, on_device, args.workers)
    logger.info("%s", device_data.describe(batches))

    def state():  # the script's part of every checkpoint
        optimizers = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}
        return {"model": model.state_dict(), **optimizers, **counts}

    record = None
    for epoch in run.epochs(args.epochs, len(batches), state, {"train": batches}, best="test_acc"):
        # From the epoch number alone, so a resumed run uses the same value (DARTS ramp).
        model.drop_path_prob = args.drop_path_prob * epoch / args.epochs
        lr = learning_rate(epoch)
        utils.set_lr(optimizer, lr)
        net.train()  # once per epoch: evaluation switches it off at the end of the last one
        for _ in run.steps():
            x, y = (t.to(device, non_blocking=True) for t in next(batches))
            accel.begin_step(device, dist.world_size, args.compile)
            logits, loss = train_step(net, optimizer, scaler, criterion, (x, y), amp_dtype, args)
            run.update(logits, y, loss)
        # The bare model, not DDP: ranks hold unequal numbers of test batches, and DDP would wait for finished ranks.
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            test = infer(model, test_loader, device).result(dist)
        record = {"lr": lr, "drop_path_prob": model.drop_path_prob, **run.train_metrics()}
        test_fields = {"test_acc": test["acc"], "test_top5": test["top5"], "test_loss": test["loss"]}
        record = run.end_epoch({**record, **test_fields})
    return record


def finish(run, model, last):
    """The last lines: replica agreement under torchrun, the last epoch's test accuracy (`last`) and the best's."""
    dist, best = run.dist, run.best
    if dist.world_size > 1:
        diff = distributed.max_parameter_difference(model, dist)
        logger.info("rank consistency: max |w - w_rank0| over %d ranks = %.3e", dist.world_size, diff)
    final = f"all {run.args.epochs} epochs had run before this --resume (history.jsonl has the last one)"
    if last is not None:
        epochs = last["epoch"] + 1
        final = f"test acc {last['test_acc']:.2f} % after {epochs} epochs (the paper's figure: the last epoch)"
    shown = (final, best["value"] or 0.0, best["epoch"] + 1, utils.peak_memory_mb(dist.device))
    logger.info("done: %s; best test acc %.2f %% (epoch %d, chosen on the test set), peak memory %.0f MB", *shown)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=run_flags.HelpFormatter)
    data = datasets.add_arguments(parser, "train on")
    data.add_argument("--cutout", action="store_true", help="cutout augmentation on the training images")
    data.add_argument("--cutout_length", type=int, default=16, help="side of the cutout square")
    add_arguments(parser)
    return parser


def check_args(args, imagenet):
    """One line for a network the images cannot take, before anything is read or written."""
    if imagenet and args.image_size % 32:  # five stride-2 stages; the factorized reduce needs even maps
        raise utils.UserError(
            f"--image_size {args.image_size} is not a multiple of 32 (the network halves it five times); "
            "give 224 (ImageNet), or 32, 64, ... for small runs"
        )
    if not imagenet and args.layers < 3:
        raise utils.UserError(f"--layers {args.layers}: the network needs at least 3 cells (two reduction cells)")
    least, pooled = (224, "the 7x7 map of 224 pixels") if imagenet else (32, "5x5 windows of the 1/4-size maps")
    if args.auxiliary and (imagenet or args.dataset == "imagefolder") and args.image_size < least:
        raise utils.UserError(
            f"--auxiliary needs --image_size {least} or more (its head pools {pooled}), not {args.image_size}; "
            "drop --auxiliary or raise --image_size"
        )


@utils.exits_cleanly
def main(argv=None, parser=None, script="train", lr_factor=None):
    """Train a cell on CIFAR or your images; with `script` train_imagenet (its `parser`, `lr_factor`), on ImageNet."""
    imagenet = script == "train_imagenet"
    args = engine.parse_args(parser or get_parser(), SPACE, script, argv)
    check_args(args, imagenet)  # flags, --arch, the checkpoint and the data: all checked before any write
    genotype, searched = genotypes.load_genotype_and_data(args.arch)
    if imagenet:  # val/ is the test set the paper reports on, so its records are test_acc, test_top5, ...
        train_set, test_set, num_classes = datasets.imagenet_or_synthetic(args)
    run = engine.Run(args, SPACE, script, join=distributed.setup, ranges=FLAG_RANGES)
    try:
        accel.check_flags(args, run.dist.device, amp_needs_bf16=False)  # fp16 with a loss scaler without bf16
        utils.set_seed(args.seed + run.dist.rank)
        if not imagenet:
            data = (args.dataset, args.data, args.cutout, args.cutout_length)
            train_set, test_set, num_classes = run.first_on_rank0(
                lambda: datasets.get_datasets(*data, image_size=args.image_size, seed=args.seed)
            )
        # On the device before the optimizer exists, so resumed momentum lands there too.
        network = NetworkImageNet if imagenet else NetworkCIFAR
        model = network(args.init_channels, num_classes, args.layers, args.auxiliary, genotype).to(run.dist.device)
        state = run.task_state()
        if state is not None:
            utils.load_model_state(model, state["model"], args.resume)
        run.open(files={"genotype.json": lambda path: genotypes.save_genotype(genotype, path)})
        logger.info("genotype = %s", genotype)
        # A cell searched on other data, or at another size, says so. Measured on the test set, whose images are not
        # randomly cropped: reading one draws no random number.
        this_data = data_common.data_record(args, test_set, num_classes)
        other_data = data_common.data_difference(args.arch, searched, this_data)
        if other_data:
            logger.info("%s", other_data)
        if imagenet:
            sizes = (len(train_set), len(test_set), num_classes)
            logger.info("%d training and %d test (val/) images in %d classes", *sizes)
        elif args.dataset == "imagefolder":  # classes, image counts, normalisation
            logger.info("%s", train_set.summary)
        # ImageNet: label smoothing in training only (the test set reports the plain cross-entropy), the paper's
        # schedule; otherwise a cosine from the initial rate to 0. Functions of the epoch: resume is exact.
        criterion = nn.CrossEntropyLoss(label_smoothing=getattr(args, "label_smoothing", 0.0))

        def learning_rate(epoch):
            if lr_factor is not None:
                return args.learning_rate * lr_factor(epoch, args)
            return utils.cosine_lr(epoch, args.epochs, args.learning_rate)

        finish(run, model, train(run, model, train_set, test_set, criterion, learning_rate, args))
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
