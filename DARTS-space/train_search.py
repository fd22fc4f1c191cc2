"""Progressive DrNAS search in the DARTS space on CIFAR-10 / CIFAR-100 (or synthetic data).

The paper's run: the full evaluation-size network (C=36, 20 cells)
in two stages, partial channels k=6 with all 7 ops, then k=4 with the 4 best ops per
edge, 25 + 25 epochs, the first 10 epochs of each stage training the weights only:

    python train_search.py                                  # CIFAR-10, paper settings
    python train_search.py --dataset cifar100 --unrolled --reg_type kl
    python train_search.py --resume experiments/train_search-.../checkpoint.pt
    # CPU smoke run (about a minute): tiny network, 2 + 2 epochs, capped epochs
    python train_search.py --dataset synthetic --layers 5 --init_channels 8 --batch_size 8 \\
        --stage_epochs 2 2 --stage_k 4 2 --warmup_epochs 1 --max_steps 4 --device cpu --workers 0

The run directory (--save, or experiments/train_search-<time>) receives log.txt,
args.json, tb/, checkpoint.pt (every epoch, atomically; --resume continues exactly,
across the stage boundary too), history.jsonl and genotype.json (for train.py --arch).
Also runs under `torchrun --nproc_per_node N` (see train_search_imagenet.py for how).
"""

import argparse
import logging
import math
import shutil
import time
from pathlib import Path

import distributed
import torch
import torch.nn as nn
import utils
from architect import Architect
from datasets import DATASETS, get_datasets, imagenet_datasets
from genotypes import genotype_to_dict, save_genotype
from model_search import Network, check_k
from operations import expand
from torch.utils.data import DataLoader, Subset

logger = logging.getLogger(__name__)

# Settings that must not change when a run is resumed.
RESUME_KEYS = ("dataset", "layers", "init_channels", "batch_size", "learning_rate", "stage_epochs",
               "stage_k", "stage_keep", "warmup_epochs", "unrolled", "reg_type", "reg_scale", "seed",
               "train_portion", "max_steps", "image_size")


def get_parser(imagenet=False, description=__doc__):
    """The search flags; `imagenet=True` gives train_search_imagenet.py's data flags and defaults."""
    parser = argparse.ArgumentParser(description=description.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    if imagenet:
        data.add_argument("--data", type=str, default="../data/imagenet_search",
                          help="folder with train/ (weights) and val/ (architecture) class folders")
        data.add_argument("--image_size", type=int, default=224, help="crop size of the images")
    else:
        data.add_argument("--dataset", type=str, default="cifar10", choices=DATASETS, help="dataset to search on")
        data.add_argument("--data", type=str, default="../data", help="dataset folder (CIFAR downloads into it)")
        data.add_argument("--train_portion", type=float, default=0.5,
                          help="share of the training images for the weights; the rest updates the architecture")
    model = parser.add_argument_group("model")
    model.add_argument("--init_channels", type=int, default=36, help="channels C of the first cells")
    model.add_argument("--layers", type=int, default=20, help="number of cells")
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--batch_size", type=int, default=64, help="batch size (in total: torchrun processes take equal shares)")
    optim.add_argument("--learning_rate", type=float, default=0.1, help="initial SGD learning rate of the weights")
    optim.add_argument("--learning_rate_min", type=float, default=0.0, help="final learning rate of the cosine")
    optim.add_argument("--lr_warmup_epochs", type=int, default=0,
                       help="linear learning-rate warm-up epochs, applied when --batch_size > 256 (as in the paper)")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--weight_decay", type=float, default=3e-4, help="SGD weight decay")
    optim.add_argument("--grad_clip", type=float, default=5.0,
                       help="gradient-norm clip of the weights (and, on ImageNet, of beta's gradient)")
    search = parser.add_argument_group("search")
    search.add_argument("--arch_learning_rate", type=float, default=6e-4, help="Adam learning rate of beta")
    search.add_argument("--unrolled", action="store_true", help="second-order architecture gradient (DARTS)")
    search.add_argument("--reg_type", type=str, default="l2", choices=("l2", "kl"),
                        help="regulariser of beta: Adam weight decay (l2) or KL to Dir(1) (kl)")
    search.add_argument("--reg_scale", type=float, default=1e-3, help="strength of the regulariser")
    search.add_argument("--stage_epochs", type=int, nargs="+", default=[25, 25], help="epochs of each stage")
    search.add_argument("--stage_k", type=int, nargs="+", default=[6, 4], help="partial-channel k of each stage")
    search.add_argument("--stage_keep", type=int, nargs="+", default=[7, 4], help="ops kept per edge in each stage")
    search.add_argument("--warmup_epochs", type=int, default=10,
                        help="epochs at the start of each stage that train the weights only")
    system = parser.add_argument_group("system")
    system.add_argument("--save", type=str, default=None, help="run directory (default experiments/<script>-<time>)")
    system.add_argument("--resume", type=str, default=None, help="checkpoint.pt of a run to continue")
    system.add_argument("--device", type=str, default="auto", choices=("auto", "cuda", "mps", "cpu"), help="device")
    system.add_argument("--gpu", type=int, default=0, help="CUDA device index (one process)")
    system.add_argument("--workers", type=int, default=2, help="data loading worker processes")
    system.add_argument("--seed", type=int, default=2, help="random seed")
    system.add_argument("--report_freq", type=int, default=50, help="log a progress line every N steps")
    system.add_argument("--max_steps", type=int, default=0,
                        help="cap on training and evaluation steps per epoch, for smoke runs only (0 = whole epochs)")
    if imagenet:
        # The paper's ImageNet search.
        parser.set_defaults(batch_size=512, learning_rate=0.5, lr_warmup_epochs=5, arch_learning_rate=6e-3,
                            init_channels=48, layers=14, stage_k=[6, 3], workers=8, seed=0)
    return parser


def check_args(args):
    """Refuse inconsistent stage settings with one clear line, before any work is done."""
    n = len(args.stage_epochs)
    if not (len(args.stage_k) == len(args.stage_keep) == n):
        raise utils.UserError(f"--stage_epochs, --stage_k and --stage_keep need one value per stage (got "
                              f"{n}, {len(args.stage_k)}, {len(args.stage_keep)})")
    if any(not 1 <= keep <= 7 for keep in args.stage_keep) or args.stage_keep != sorted(args.stage_keep, reverse=True):
        raise utils.UserError(f"--stage_keep {args.stage_keep}: each stage keeps 1..7 ops, never more than before")
    if any(e < 1 for e in args.stage_epochs) or not 0 < getattr(args, "train_portion", 0.5) < 1:
        raise utils.UserError("--stage_epochs must be >= 1 and --train_portion in (0, 1)")
    if args.stage_k != sorted(args.stage_k, reverse=True):
        raise utils.UserError(f"--stage_k {args.stage_k}: k may only shrink from stage to stage (ops only widen)")
    for k in args.stage_k:
        check_k(args.init_channels, args.layers, k, flag="--stage_k")
    if getattr(args, "image_size", 32) < 32:
        raise utils.UserError(f"--image_size {args.image_size}: the stems and two reductions need at least 32 px")


def learning_rate(epoch, args):
    """Cosine over all stages, continuous across them; optional linear warm-up first."""
    if epoch < args.lr_warmup_epochs and args.batch_size > 256:
        return args.learning_rate * (epoch + 1) / args.lr_warmup_epochs
    total = sum(args.stage_epochs)
    cos = (1 + math.cos(math.pi * epoch / total)) / 2
    return args.learning_rate_min + (args.learning_rate - args.learning_rate_min) * cos


def enter_stage(model, optimizer, stage, args):
    """Prune to the stage's top ops, net2wider to its k, rebuild SGD carrying the momentum."""
    model.prune(args.stage_keep[stage])
    # A private generator: the same channels on every rank and in a resumed run.
    moved = model.widen(args.stage_k[stage], torch.Generator().manual_seed(args.seed + stage))
    new = torch.optim.SGD(model.weights(), lr=optimizer.param_groups[0]["lr"], momentum=args.momentum,
                          weight_decay=args.weight_decay)
    # Momentum follows the parameters: unchanged ones keep theirs, widened ones get
    # theirs expanded with the same channel copies; pruned ops' state is dropped.
    for p in model.weights():
        if p in optimizer.state:
            new.state[p] = optimizer.state[p]
    for m in moved:
        buf = optimizer.state.get(m.old, {}).get("momentum_buffer")
        if buf is not None:
            new.state[m.new] = {"momentum_buffer": expand(buf, m.plan)}
    return new


def stage_schedule(epoch, args):
    """(stage, arch_on) of an epoch: its stage, and False in the stage's warm-up (weights only)."""
    starts = [sum(args.stage_epochs[:s]) for s in range(len(args.stage_epochs))]
    stage = max(s for s, first in enumerate(starts) if first <= epoch)
    return stage, epoch - starts[stage] >= args.warmup_epochs


def weight_step(model, optimizer, weights, x, y, grad_clip, dist):
    """One SGD step of the weights on a training batch, gradient norm clipped; returns (logits, loss)."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    torch.autograd.backward(loss, inputs=weights)  # weights only: beta is the architect's
    distributed.average_gradients(weights, dist)
    nn.utils.clip_grad_norm_(weights, grad_clip)
    optimizer.step()
    return logits, loss


def train(model, architect, streams, optimizer, steps, arch_on, args, dist, progress, done):
    """One epoch of search steps; returns (top-1 %, loss) over this rank's batches."""
    model.train()
    weights = model.weights()
    lr = optimizer.param_groups[0]["lr"]
    totals = torch.zeros(3, device=dist.device)  # loss sum, correct sum, samples
    for step in range(steps):
        x, y = (t.to(dist.device, non_blocking=True) for t in next(streams["train"]))
        if arch_on:
            xv, yv = (t.to(dist.device, non_blocking=True) for t in next(streams["arch"]))
            architect.step(x, y, xv, yv, lr, optimizer)
        logits, loss = weight_step(model, optimizer, weights, x, y, args.grad_clip, dist)
        (top1,) = utils.accuracy(logits.detach(), y)
        totals += torch.stack([loss.detach() * len(y), top1 * len(y) / 100, totals.new_tensor(len(y))])
        if (step + 1) % args.report_freq == 0 or step + 1 == steps:
            loss_avg, acc = (totals[0] / totals[2]).item(), (100 * totals[1] / totals[2]).item()
            logger.info("  step %d/%d loss %.4f top1 %.2f%% | %s", step + 1, steps, loss_avg, acc,
                        progress.line(done + step + 1, len(y) * dist.world_size))
    totals = distributed.reduce_sum(totals, dist)
    return (100 * totals[1] / totals[2]).item(), (totals[0] / totals[2]).item()


def infer(model, loader, max_steps, dist):
    """Top-1 % and loss on the held-out split with the Dirichlet-mean architecture."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    totals = torch.zeros(3, device=dist.device)
    with torch.no_grad():
        for step, (x, y) in enumerate(loader):
            if max_steps and step == max_steps:
                break
            x, y = x.to(dist.device), y.to(dist.device)
            logits = model(x)
            (top1,) = utils.accuracy(logits, y)
            totals += torch.stack([criterion(logits, y), top1 * len(y) / 100, totals.new_tensor(len(y))])
    totals = distributed.reduce_sum(totals, dist)
    return (100 * totals[1] / totals[2]).item(), (totals[0] / totals[2]).item()


def search(args, script, imagenet=False):
    """The whole search run, shared by this script and train_search_imagenet.py."""
    # Bad input is refused before the run directory is made.
    ckpt = utils.load_checkpoint(args.resume) if args.resume else None
    if ckpt:
        utils.check_resume_args(ckpt["args"], args, [k for k in RESUME_KEYS if hasattr(args, k)])
    # Data: weights and architecture see disjoint images.
    if imagenet:
        train_data, arch_data, num_classes = imagenet_datasets(args.data, args.image_size, search=True)
    else:
        full, _, num_classes = get_datasets(args.dataset, args.data)
        split = int(len(full) * args.train_portion)
        train_data, arch_data = Subset(full, range(split)), Subset(full, range(split, len(full)))
    dist = distributed.setup(args.device, args.gpu)
    main_rank = distributed.is_main(dist)
    # --batch_size is the total batch (the paper's, whatever the number of processes).
    if args.batch_size % dist.world_size:
        raise utils.UserError(f"--batch_size {args.batch_size} does not split over {dist.world_size} processes")
    run_dir, writer = None, None
    if main_rank:
        run_dir = utils.prepare_run_dir(args.save or (args.resume and Path(args.resume).parent),
                                        script, args.resume)
        utils.setup_logging(run_dir)
        utils.save_args(args, run_dir)
        scripts = run_dir / "scripts"  # the code of the run, next to its results (DARTS)
        scripts.mkdir(exist_ok=True)
        for source in Path(__file__).resolve().parent.glob("*.py"):
            shutil.copy(source, scripts / source.name)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    else:
        logging.basicConfig(level=logging.WARNING)
    try:
        utils.log_environment(args, dist.device)
        logger.info("run directory %s, %d process(es)", run_dir, dist.world_size)
        utils.set_seed(args.seed)

        positions = ckpt["streams"] if ckpt else {"train": (0, 0), "arch": (0, 0)}
        batch = args.batch_size // dist.world_size
        shard = dict(workers=args.workers, rank=dist.rank, world_size=dist.world_size,
                     pin_memory=dist.device.type == "cuda")
        streams = {
            "train": utils.Stream(train_data, batch, args.seed, position=positions["train"], **shard),
            "arch": utils.Stream(arch_data, batch, args.seed + 1, position=positions["arch"], **shard),
        }
        eval_sampler = utils.EpochSampler(len(arch_data), args.seed, False, dist.rank, dist.world_size)
        eval_loader = DataLoader(arch_data, batch, sampler=eval_sampler, num_workers=args.workers)

        # Model at the checkpoint's stage (its k and kept ops), optimisers, architect.
        stage = ckpt["stage"] if ckpt else 0
        model = Network(args.init_channels, num_classes, args.layers, k=ckpt["k"] if ckpt else args.stage_k[0],
                        imagenet=imagenet, kept=ckpt["kept"] if ckpt else None).to(dist.device)
        optimizer = torch.optim.SGD(model.weights(), args.learning_rate, momentum=args.momentum,
                                    weight_decay=args.weight_decay)
        reduce = (lambda params: distributed.average_gradients(params, dist)) if dist.world_size > 1 else None
        # The paper's ImageNet search clips the architecture gradient too; its CIFAR search does not.
        architect = Architect(model, args, reduce_grads=reduce, grad_clip=args.grad_clip if imagenet else None)
        start_epoch = 0
        if ckpt:
            utils.load_model_state(model, ckpt["model"], args.resume)
            optimizer.load_state_dict(ckpt["optimizer"])
            architect.optimizer.load_state_dict(ckpt["architect"])
            utils.set_rng_state(ckpt["rng"])
            start_epoch = ckpt["epoch"]
            logger.info("resumed from %s at epoch %d (stage %d)", args.resume, start_epoch, stage)
        distributed.broadcast_parameters(model, dist)  # same start on every rank
        logger.info("param size = %.6f MB (%d weights)", utils.count_parameters(model.weights()) / 1e6,
                    utils.count_parameters(model.weights()))

        total = sum(args.stage_epochs)
        steps = min(len(streams["train"]), args.max_steps or len(streams["train"]))
        progress = utils.Progress(total * steps, start_epoch * steps)
        history = utils.History(run_dir, start_epoch) if main_rank else None
        for epoch in range(start_epoch, total):
            tic = time.time()
            epoch_stage, arch_on = stage_schedule(epoch, args)
            if epoch_stage > stage:
                optimizer = enter_stage(model, optimizer, epoch_stage, args)
                stage = epoch_stage
                logger.info("stage %d: kept %d ops per edge, k=%d, %d weights", stage, args.stage_keep[stage],
                            model.k, utils.count_parameters(model.weights()))
            lr = learning_rate(epoch, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logger.info("epoch %d/%d stage %d lr %.5f%s", epoch + 1, total, stage, lr,
                        "" if arch_on else " (weights only: warm-up)")
            train_acc, train_loss = train(model, architect, streams, optimizer, steps, arch_on, args, dist,
                                          progress, epoch * steps)
            valid_acc, valid_loss = infer(model, eval_loader, args.max_steps, dist)
            distributed.broadcast_parameters(model, dist)  # BatchNorm statistics of rank 0
            genotype = model.genotype()
            alpha = model.kept_concentrations().detach().cpu()
            logger.info("train acc %.2f%% loss %.4f | valid acc %.2f%% loss %.4f | %.0f s", train_acc, train_loss,
                        valid_acc, valid_loss, time.time() - tic)
            logger.info("genotype = %s", genotype)
            for name, a in zip(("normal", "reduce"), alpha):
                logger.info("concentration %s (edges x kept ops):\n%s", name,
                            "\n".join(" ".join(f"{v:.3f}" for v in row) for row in a.tolist()))
            if main_rank:
                record = dict(epoch=epoch, stage=stage, k=model.k, lr=lr, train_acc=train_acc, train_loss=train_loss,
                              valid_acc=valid_acc, valid_loss=valid_loss, genotype=genotype_to_dict(genotype))
                history.append(record)
                for key in ("train_acc", "train_loss", "valid_acc", "valid_loss"):
                    writer.add_scalar(key.replace("_", "/"), record[key], epoch)
                writer.add_scalar("lr", lr, epoch)
                writer.add_scalar("search/stage", stage, epoch)
                writer.add_scalar("search/alpha_max", float(alpha.max()), epoch)
                save_genotype(genotype, run_dir / "genotype.json")
                utils.save_checkpoint(dict(
                    epoch=epoch + 1, stage=stage, k=model.k, kept=model.kept, model=model.state_dict(),
                    optimizer=optimizer.state_dict(), architect=architect.optimizer.state_dict(),
                    args=vars(args), genotype=genotype_to_dict(genotype), rng=utils.rng_state(),
                    streams={name: s.position() for name, s in streams.items()},
                ), run_dir / "checkpoint.pt")
        if dist.world_size > 1:
            logger.info("replicas agree: max |param - rank 0 param| = %.3e",
                        distributed.max_parameter_difference(model, dist))
        logger.info("final genotype = %s", model.genotype())
        if main_rank:
            logger.info("written to %s (genotype.json for train.py --arch)", run_dir)
    finally:
        if writer is not None:
            writer.close()
        distributed.cleanup()


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    check_args(args)
    search(args, "train_search")


if __name__ == "__main__":
    main()
