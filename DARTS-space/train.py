"""Train a searched cell from scratch on CIFAR-10/100: the paper's evaluation (DrNAS section 4).

    python train.py --cutout --auxiliary                       # DrNAS_cifar10, 600 epochs: 2.46 +- 0.03 % error
    python train.py --cutout --auxiliary --arch experiments/search-.../genotype.json
    torchrun --nproc_per_node 4 train.py --cutout --auxiliary  # same total batch, split over 4 GPUs
    python train.py --cutout --auxiliary --save RUN --resume RUN/checkpoint.pt   # continue a run
    python train.py --dataset synthetic --layers 5 --init_channels 8 --epochs 2 --device cpu  # CPU smoke run

The run directory (`--save`, or experiments/eval-<time>) receives log.txt, args.json,
genotype.json, scripts/, tb/, history.jsonl, checkpoint.pt (every epoch, atomic) and
best.pt. `--max_steps_per_epoch` caps an epoch for smoke runs. This file also holds the
epoch loop that `train_imagenet.py` shares (`check_args`, `join`, `open_run_dir`, `fit`, ...).
"""

import argparse
import logging
import shutil
import time
from pathlib import Path

import datasets
import distributed
import genotypes
import torch
import torch.nn as nn
import utils
from model import NetworkCIFAR, param_count
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from utils import UserError

logger = logging.getLogger(__name__)

# Settings that define the run; `--resume` refuses a checkpoint made with others.
RESUME_KEYS = (
    "dataset", "arch", "layers", "init_channels", "auxiliary", "auxiliary_weight", "cutout", "cutout_length",
    "drop_path_prob", "epochs", "batch_size", "learning_rate", "momentum", "weight_decay", "seed",
    "max_steps_per_epoch", "lr_scheduler", "warmup_epochs", "label_smoothing", "image_size",
)


def add_common_arguments(parser, *, epochs, batch_size, learning_rate, weight_decay, init_channels, layers,
                         drop_path_prob, arch, workers):
    """Flags shared by train.py and train_imagenet.py (the defaults differ per script)."""
    model = parser.add_argument_group("model")
    model.add_argument("--arch", type=str, default=arch,
                       help=f"a genotype name ({', '.join(genotypes.NAMED)}) or a genotype.json from a search")
    model.add_argument("--init_channels", type=int, default=init_channels, help="channels C of the first cells")
    model.add_argument("--layers", type=int, default=layers, help="number of cells")
    model.add_argument("--auxiliary", action="store_true", help="train with the auxiliary head")
    model.add_argument("--auxiliary_weight", type=float, default=0.4, help="weight of the auxiliary loss")
    model.add_argument("--drop_path_prob", type=float, default=drop_path_prob,
                       help="drop path probability, ramped linearly from 0 at epoch 0 to this at the end")
    opt = parser.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    opt.add_argument("--batch_size", type=int, default=batch_size,
                     help="total batch size, split evenly over the torchrun processes")
    opt.add_argument("--learning_rate", type=float, default=learning_rate, help="initial SGD learning rate")
    opt.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    opt.add_argument("--weight_decay", type=float, default=weight_decay, help="SGD weight decay")
    opt.add_argument("--grad_clip", type=float, default=5.0, help="gradient norm clipping")
    opt.add_argument("--max_steps_per_epoch", type=int, default=0,
                     help="cap on training steps per epoch for smoke runs (0: full passes over the data)")
    system = parser.add_argument_group("system")
    system.add_argument("--device", type=str, default="auto", choices=("auto", "cuda", "mps", "cpu"),
                        help="device; under torchrun each process takes GPU LOCAL_RANK")
    system.add_argument("--gpu", type=int, default=0, help="CUDA device index for a single-process run")
    system.add_argument("--amp", action="store_true", help="mixed precision: bf16 autocast where supported, else fp16")
    system.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms and no cuDNN benchmark (slower)")
    system.add_argument("--workers", type=int, default=workers, help="data loading worker processes")
    system.add_argument("--seed", type=int, default=0, help="random seed (processes use seed + rank)")
    system.add_argument("--report_freq", type=int, default=50, help="log a progress line every N steps")
    system.add_argument("--save", type=str, default="",
                        help="run directory (default: the --resume checkpoint's folder, else experiments/eval-<time>)")
    system.add_argument("--resume", type=str, default="", help="checkpoint.pt of a run to continue")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", type=str, default="cifar10", choices=datasets.DATASETS, help="dataset")
    data.add_argument("--data", type=str, default="../data", help="dataset folder (CIFAR downloads itself here)")
    data.add_argument("--cutout", action="store_true", help="cutout augmentation on the training images")
    data.add_argument("--cutout_length", type=int, default=16, help="side of the cutout square")
    add_common_arguments(parser, epochs=600, batch_size=64, learning_rate=0.025, weight_decay=3e-4,
                         init_channels=36, layers=20, drop_path_prob=0.3, arch="DrNAS_cifar10", workers=2)
    return parser


def check_args(args):
    """Refuse bad settings and an unusable `--resume` before anything is written; return the checkpoint."""
    if args.batch_size <= 0 or args.epochs <= 0 or args.layers < 3:
        raise UserError("--batch_size and --epochs must be positive and --layers at least 3 (two reduction cells)")
    if not args.resume:
        return None
    ckpt = utils.load_checkpoint(args.resume)
    utils.check_resume_args(ckpt["args"], args, [key for key in RESUME_KEYS if hasattr(args, key)])
    return ckpt


def join(args):
    """Join torchrun's group (or run alone) with the batch split evenly; return `dist`."""
    dist = distributed.setup(args.device, args.gpu)
    if args.batch_size % dist.world_size:
        raise UserError(f"--batch_size {args.batch_size} does not split over {dist.world_size} processes")
    if args.deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    return dist


def open_run_dir(args, dist, script, genotype):
    """Make the run directory and logging on rank 0 (the first write of a run); return it (None elsewhere)."""
    run_dir, error = None, None
    if distributed.is_main(dist):
        try:
            # A resumed run continues in its own folder unless --save says otherwise.
            save = args.save or (str(Path(args.resume).parent) if args.resume else "")
            run_dir = utils.prepare_run_dir(save, script, args.resume)
        except UserError as err:
            error = str(err)
    # Every rank learns of rank 0's refusal, so that no process waits for the others forever.
    error = distributed.broadcast_object(error, dist)
    if error:
        raise UserError(error)
    if run_dir is not None:
        utils.setup_logging(run_dir)
        if not args.resume:
            utils.save_args(args, run_dir)
            # The code of the run next to its results (DARTS' scripts/ folder).
            (run_dir / "scripts").mkdir(exist_ok=True)
            for source in Path(__file__).resolve().parent.glob("*.py"):
                shutil.copy(source, run_dir / "scripts" / source.name)
        # The checkpoint's --arch was checked: on resume this rewrites the same cell.
        genotypes.save_genotype(genotype, run_dir / "genotype.json")  # for visualize.py and --arch
    else:
        logging.basicConfig(level=logging.WARNING)
    utils.log_environment(args, dist.device)
    if args.deterministic:
        logger.info("deterministic algorithms on: slower, and some GPU kernels may still vary")
    logger.info("processes = %d, batch per process = %d", dist.world_size, args.batch_size // dist.world_size)
    logger.info("genotype = %s", genotype)
    return run_dir


def fit(args, dist, run_dir, model, train_set, test_set, criterion, optimizer, scheduler, ckpt=None):
    """Continue from `ckpt` (its model already loaded) if given; train and evaluate every epoch, checkpointing."""
    device, main = dist.device, distributed.is_main(dist)
    use_bf16 = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    amp_dtype = torch.bfloat16 if use_bf16 else torch.float16
    # The loss scaler only matters for fp16, whose small range underflows gradients.
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16)
    start_epoch, best_acc, best_epoch, position = 0, 0.0, -1, (0, 0)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_acc, best_epoch = ckpt["epoch"], ckpt["best_acc"], ckpt["best_epoch"]
        position = tuple(ckpt["data_position"])
        if len(ckpt["rng"]) == dist.world_size:
            utils.set_rng_state(ckpt["rng"][dist.rank])
        else:
            logger.info("resuming on %d processes, not %d: random draws will differ", dist.world_size, len(ckpt["rng"]))
        logger.info("resumed from %s at epoch %d (best valid acc %.2f)", args.resume, start_epoch, best_acc)
    net = model
    if dist.world_size > 1:
        # DDP averages the gradients in the backward pass; every rank steps the same weights.
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    per_rank = args.batch_size // dist.world_size
    # One seeded permutation per epoch, cut into per-rank shards: a resumed run (and any
    # rank count) sees the same order; `data_position` continues a capped epoch exactly.
    stream = utils.Stream(train_set, per_rank, args.seed, args.workers, rank=dist.rank, world_size=dist.world_size,
                          pin_memory=device.type == "cuda", position=position)
    # Test shards without padding, so the summed counts cover each test image once.
    test_loader = DataLoader(Subset(test_set, range(dist.rank, len(test_set), dist.world_size)), batch_size=per_rank,
                             num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed))
    steps = min(len(stream), args.max_steps_per_epoch) if args.max_steps_per_epoch > 0 else len(stream)
    progress = utils.Progress(args.epochs * steps, start_epoch * steps)
    writer = history = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_epoch)
        history = utils.History(run_dir, start_epoch)
    valid_acc = ckpt["last_acc"] if ckpt is not None else 0.0
    try:
        for epoch in range(start_epoch, args.epochs):
            # From the epoch number alone, so a resumed run uses the same value (DARTS ramp).
            model.drop_path_prob = args.drop_path_prob * epoch / args.epochs
            lr = scheduler.get_last_lr()[0]
            tic = time.time()
            train_acc, train_loss = train(stream, steps, net, criterion, optimizer, scaler, amp_dtype, args, dist,
                                          progress, epoch)
            # The bare model, not DDP: ranks hold different numbers of test batches, and
            # DDP's forward would wait for buffers from ranks that have finished.
            valid_acc, valid_top5, valid_loss = infer(test_loader, model, amp_dtype, args, dist)
            scheduler.step()
            if valid_acc > best_acc or best_epoch < 0:  # the first epoch is the best so far, even at 0 %
                best_acc, best_epoch = valid_acc, epoch
            rng = distributed.all_gather_object(utils.rng_state(), dist)
            if main:
                record = {
                    "epoch": epoch, "lr": lr, "drop_path_prob": model.drop_path_prob, "train_acc": train_acc,
                    "train_loss": train_loss, "valid_acc": valid_acc, "valid_top5": valid_top5,
                    "valid_loss": valid_loss, "best_acc": best_acc, "time_s": round(time.time() - tic, 2),
                }
                logger.info(
                    "epoch %d/%d lr %.3e drop_path %.3f | train acc %.2f loss %.4f | valid acc %.2f top5 %.2f "
                    "loss %.4f | best %.2f | %.1fs",
                    epoch + 1, args.epochs, lr, model.drop_path_prob, train_acc, train_loss, valid_acc, valid_top5,
                    valid_loss, best_acc, record["time_s"],
                )
                # Log, history and TensorBoard first, the checkpoint last: a run killed in
                # between repeats this epoch on resume, and History drops the repeated line.
                history.append(record)
                for key in ("train_acc", "train_loss", "valid_acc", "valid_top5", "valid_loss"):
                    writer.add_scalar(key.replace("_", "/", 1), record[key], epoch)  # train/acc, valid/top5, ...
                writer.add_scalar("lr", lr, epoch)
                writer.flush()
                state = {
                    "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "best_acc": best_acc,
                    "best_epoch": best_epoch, "last_acc": valid_acc, "args": vars(args), "rng": rng,
                    "data_position": stream.position(), "param_count": param_count(model),
                }
                if best_epoch == epoch:
                    utils.save_checkpoint(state, run_dir / "best.pt")
                utils.save_checkpoint(state, run_dir / "checkpoint.pt")
    finally:
        if writer is not None:
            writer.close()
    if dist.world_size > 1:
        diff = distributed.max_parameter_difference(model, dist)
        logger.info("rank consistency: max |w - w_rank0| over %d ranks = %.3e", dist.world_size, diff)
    logger.info("done: best valid acc %.2f (epoch %d), last valid acc %.2f, peak memory %.0f MB",
                best_acc, best_epoch + 1, valid_acc, utils.peak_memory_mb(device))
    return best_acc, valid_acc


def training_loss(criterion, logits, logits_aux, y, aux_weight):
    """criterion(logits, y), plus aux_weight * criterion(logits_aux, y) with the auxiliary head."""
    loss = criterion(logits, y)
    if logits_aux is not None:
        loss = loss + aux_weight * criterion(logits_aux, y)
    return loss


def train(stream, steps, net, criterion, optimizer, scaler, amp_dtype, args, dist, progress, epoch):
    """One epoch of `steps` SGD steps; returns (top-1 accuracy %, loss) averaged over ranks."""
    net.train()
    device = dist.device
    # Running sums stay on the device: reading a value each step would stall the GPU.
    sums = torch.zeros(4, device=device)  # loss * n, top-1 hits, top-5 hits, n
    for step, (x, y) in enumerate(stream.take(steps), 1):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            logits, logits_aux = net(x)
            loss = training_loss(criterion, logits, logits_aux, y, args.auxiliary_weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        hits = logits.detach().topk(min(5, logits.size(1)), dim=1).indices.eq(y[:, None])  # (B, k)
        sums += torch.stack([loss.detach().float() * y.size(0), hits[:, 0].sum().float(), hits.any(1).sum().float(),
                             torch.tensor(float(y.size(0)), device=device)])
        if step % args.report_freq == 0 and distributed.is_main(dist):
            # Rank 0's own running averages; the epoch line reports all ranks together.
            loss_avg, top1, top5 = (float(v) for v in (sums[0] / sums[3], 100 * sums[1] / sums[3],
                                                        100 * sums[2] / sums[3]))
            logger.info("train epoch %d step %d/%d loss %.4f top1 %.2f top5 %.2f | %s", epoch + 1, step, steps,
                        loss_avg, top1, top5, progress.line(epoch * steps + step, args.batch_size))
    sums = distributed.reduce_sum(sums, dist)
    return float(100 * sums[1] / sums[3]), float(sums[0] / sums[3])


@torch.no_grad()
def infer(loader, model, amp_dtype, args, dist):
    """Top-1 and top-5 accuracy (%) and cross-entropy on this rank's shard, summed over ranks."""
    model.eval()
    device = dist.device
    criterion = nn.CrossEntropyLoss(reduction="sum")
    sums = torch.zeros(4, device=device)  # loss, top-1 hits, top-5 hits, n
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            logits, _ = model(x)
        hits = logits.topk(min(5, logits.size(1)), dim=1).indices.eq(y[:, None])  # (B, k)
        sums += torch.stack([criterion(logits.float(), y), hits[:, 0].sum().float(), hits.any(1).sum().float(),
                             torch.tensor(float(y.size(0)), device=device)])
    sums = distributed.reduce_sum(sums, dist)
    n = max(float(sums[3]), 1.0)
    return float(100 * sums[1] / n), float(100 * sums[2] / n), float(sums[0] / n)


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    # Arguments, --arch, the checkpoint and the data are all checked before the run writes anything.
    genotype = genotypes.load_genotype(args.arch)
    ckpt = check_args(args)
    dist = join(args)
    try:
        utils.set_seed(args.seed + dist.rank)
        if not distributed.is_main(dist):
            distributed.barrier(dist)  # rank 0 downloads CIFAR first, alone
        train_set, test_set, num_classes = datasets.get_datasets(args.dataset, args.data, args.cutout,
                                                                 args.cutout_length)
        if distributed.is_main(dist):
            distributed.barrier(dist)
        # On the device before the optimizer exists, so resumed momentum lands there too.
        model = NetworkCIFAR(args.init_channels, num_classes, args.layers, args.auxiliary, genotype).to(dist.device)
        if ckpt is not None:
            utils.load_model_state(model, ckpt["model"], args.resume)
        run_dir = open_run_dir(args, dist, "eval", genotype)
        count = param_count(model)
        logger.info("param count = %d (%.2f MB), auxiliary head %d more", count, count / 1e6,
                    utils.count_parameters(model.parameters()) - count)
        criterion = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                                    weight_decay=args.weight_decay)
        # Cosine from the initial rate to 0 over all epochs, stepped once per epoch.
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
        fit(args, dist, run_dir, model, train_set, test_set, criterion, optimizer, scheduler, ckpt)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
