"""Train one NAS-Bench-201 cell from scratch with the benchmark's protocol.

NAS-Bench-201 trains every cell at C=16, N=5 for 200 epochs: SGD with Nesterov
momentum 0.9, learning rate 0.1 cosine-annealed to 0, weight decay 5e-4, batch 256,
random crop and flip. These are the defaults here.

    cd 201-space
    python train.py --arch DrNAS --dataset cifar10        # benchmark: 94.36 % test accuracy
    python train.py --arch experiments/train_search-.../genotype.json --dataset cifar100
    python train.py --arch '|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|' \
        --dataset imagenet16-120 --data ~/data/ImageNet16
    python train.py --dataset synthetic --epochs 2 --batch_size 32 --device cpu   # CPU smoke run
    python train.py --arch DrNAS --resume experiments/train-.../checkpoint.pt     # continue a run

The run directory gets log.txt, args.json, tb/, checkpoint.pt (every epoch), best.pt
(best test accuracy so far) and history.jsonl.
"""

import argparse
import logging
import time
from pathlib import Path

import torch
import torch.nn as nn
import utils
from datasets import DATASETS, get_datasets
from genotypes import NAMED, load_arch
from model import Network, count_flops
from torch.utils.data import DataLoader

logger = logging.getLogger("train")

# Flags that change what a run computes: a resumed run must keep them.
RUN_DEFINING = ("dataset", "init_channels", "layers", "epochs", "batch_size", "learning_rate",
                "momentum", "weight_decay", "seed")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", type=str, default="cifar10", choices=DATASETS, help="dataset to train on")
    data.add_argument("--data", type=str, default="../data", help="dataset folder (CIFAR downloads itself here)")
    data.add_argument("--workers", type=int, default=2, help="data loading processes (0 for an exactly resumable run)")
    model = parser.add_argument_group("model")
    model.add_argument("--arch", type=str, default="DrNAS",
                       help=f"cell: a named one ({', '.join(NAMED)}), an architecture string, or a search's genotype.json")
    model.add_argument("--init_channels", type=int, default=16, help="channels C of the first stage")
    model.add_argument("--layers", type=int, default=5, help="cells N per stage")
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--epochs", type=int, default=200, help="training epochs")
    optim.add_argument("--batch_size", type=int, default=256, help="batch size")
    optim.add_argument("--learning_rate", type=float, default=0.1, help="initial learning rate (cosine to 0)")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD Nesterov momentum")
    optim.add_argument("--weight_decay", type=float, default=5e-4, help="weight decay")
    system = parser.add_argument_group("system")
    system.add_argument("--seed", type=int, default=0, help="random seed")
    system.add_argument("--device", type=str, default="auto", choices=("auto", "cuda", "mps", "cpu"), help="where to run")
    system.add_argument("--gpu", type=int, default=0, help="CUDA device index")
    system.add_argument("--save", type=str, default=None, help="run directory; without it a new experiments/train-<time>")
    system.add_argument("--resume", type=str, default=None, help="checkpoint.pt of a run to continue")
    system.add_argument("--report_freq", type=int, default=50, help="steps between progress lines")
    return parser


def train(stream, steps, model, criterion, optimizer, device, args, progress, epoch):
    """Epoch `epoch`: `steps` batches from `stream`; returns (top-1 accuracy, loss)."""
    model.train()
    acc_meter, loss_meter = utils.AverageMeter(), utils.AverageMeter()
    for step, batch in enumerate(stream.take(steps), start=1):
        inputs, targets = utils.to_device(batch, device)
        logits = model(inputs)  # (B, classes)
        loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        (acc,) = utils.accuracy(logits.detach(), targets)
        n = inputs.size(0)
        loss_meter.update(loss.detach(), n)
        acc_meter.update(acc, n)
        if step % args.report_freq == 0 or step == steps:
            logger.info("train %03d/%03d loss %.4f acc %.2f%% | %s", step, steps, loss_meter.avg, acc_meter.avg,
                        progress.line(epoch * steps + step, args.batch_size))
    return acc_meter.avg, loss_meter.avg


def infer(loader, model, criterion, device):
    """Evaluate on `loader`; returns (top-1 accuracy, loss)."""
    model.eval()
    acc_meter, loss_meter = utils.AverageMeter(), utils.AverageMeter()
    with torch.no_grad():
        for batch in loader:
            inputs, targets = utils.to_device(batch, device)
            logits = model(inputs)
            (acc,) = utils.accuracy(logits, targets)
            loss_meter.update(criterion(logits, targets), inputs.size(0))
            acc_meter.update(acc, inputs.size(0))
    return acc_meter.avg, loss_meter.avg


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    structure = load_arch(args.arch)  # a bad --arch fails before anything is created
    ckpt = utils.load_checkpoint(args.resume) if args.resume else None
    if ckpt is not None:
        utils.check_resume_args(ckpt["args"], args, RUN_DEFINING)
        if ckpt["arch"] != str(structure):
            raise utils.UserError(f"--resume: the checkpoint trains {ckpt['arch']}, not {structure}; "
                                  "resume with the run's own --arch")
    save = args.save or (str(Path(args.resume).parent) if args.resume else None)
    run_dir = utils.prepare_run_dir(save, "train", args.resume)
    utils.setup_logging(run_dir)
    utils.save_args(args, run_dir)
    device = utils.resolve_device(args.device, args.gpu)
    utils.log_environment(args, device)
    utils.set_seed(args.seed)

    train_data, test_data, num_classes = get_datasets(args.dataset, args.data, train_augment=True)
    model = Network(args.init_channels, args.layers, structure, num_classes).to(device, memory_format=torch.channels_last)
    params = utils.count_parameters(model.parameters())
    flops = count_flops(model, tuple(test_data[0][0].shape))
    logger.info("arch = %s", structure)
    logger.info("param count = %d (%.6f MB), FLOPs = %.5f M", params, params / 1e6, flops / 1e6)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=0.0)
    start_epoch, best_acc, position = 0, 0.0, (0, 0)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        utils.set_rng_state(ckpt["rng"])
        start_epoch, best_acc, position = ckpt["epoch"], ckpt["best_acc"], ckpt["train_stream"]
        logger.info("resumed from %s at epoch %d (best test acc %.2f%%)", args.resume, start_epoch, best_acc)

    pin = device.type == "cuda"
    train_stream = utils.Stream(train_data, args.batch_size, seed=args.seed, workers=args.workers,
                                pin_memory=pin, position=position)
    test_loader = DataLoader(test_data, batch_size=args.batch_size, num_workers=args.workers, pin_memory=pin)
    steps = len(train_stream)
    history = utils.History(run_dir, start_epoch)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(run_dir / "tb", purge_step=start_epoch)
    progress = utils.Progress(args.epochs * steps, start_epoch * steps)
    test_acc = float("nan")  # stays NaN when a finished run is resumed
    try:
        for epoch in range(start_epoch, args.epochs):
            started = time.time()
            lr = scheduler.get_last_lr()[0]
            logger.info("epoch %d/%d lr %.6f", epoch + 1, args.epochs, lr)
            train_acc, train_loss = train(train_stream, steps, model, criterion, optimizer, device, args, progress,
                                          epoch)
            test_acc, test_loss = infer(test_loader, model, criterion, device)
            scheduler.step()
            is_best = test_acc > best_acc
            best_acc = max(best_acc, test_acc)
            seconds = time.time() - started
            logger.info("epoch %d train acc %.2f%% loss %.4f | test acc %.2f%% loss %.4f | best %.2f%% | %.1f s",
                        epoch + 1, train_acc, train_loss, test_acc, test_loss, best_acc, seconds)
            history.append({"epoch": epoch, "lr": lr, "train_acc": train_acc, "train_loss": train_loss,
                            "test_acc": test_acc, "test_loss": test_loss, "best_acc": best_acc,
                            "arch": str(structure), "seconds": seconds})
            for tag, value in (("train/acc", train_acc), ("train/loss", train_loss), ("test/acc", test_acc),
                               ("test/loss", test_loss), ("lr", lr)):
                writer.add_scalar(tag, value, epoch)
            state = {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "best_acc": best_acc, "args": vars(args),
                     "arch": str(structure), "rng": utils.rng_state(), "train_stream": train_stream.position()}
            utils.save_checkpoint(state, run_dir / "checkpoint.pt")
            if is_best:
                utils.save_checkpoint(state, run_dir / "best.pt")
    finally:
        writer.close()
    logger.info("done: %s, %d params, final test acc %.2f%%, best %.2f%%", structure, params, test_acc, best_acc)


if __name__ == "__main__":
    main()
