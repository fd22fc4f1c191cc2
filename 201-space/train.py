"""Train one NAS-Bench-201 cell from scratch with the benchmark's protocol.

The defaults are NAS-Bench-201's: C=16, N=5, 200 epochs of SGD (Nesterov momentum 0.9, learning rate 0.1 cosine to 0,
weight decay 5e-4), batch 256, random crop and flip.

    cd 201-space && python train.py --arch DrNAS --dataset cifar10   # benchmark: 94.36 % test accuracy
    python train.py --arch experiments/train_search-.../genotype.json --dataset cifar100
    python train.py --arch '|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|' \
        --dataset imagenet16-120 --data ~/data/ImageNet16
    python train.py --arch RUN/genotype.json --dataset imagefolder --data DIR   # your images (as the search's)
    python train.py --dataset synthetic --epochs 2 --batch_size 32 --device cpu   # CPU smoke run
    python train.py --arch DrNAS --amp --compile   # bf16 and torch.compile (CUDA graphs on one GPU)
    python train.py --arch DrNAS --resume experiments/train-.../checkpoint.pt     # continue a run

The run directory (`--save`, or experiments/train-<time>) gets log.txt, args.json, genotype.json, scripts/, tb/,
history.jsonl, checkpoint.pt and best.pt (best test accuracy). SIGTERM or SIGINT checkpoints the step in progress and
exits 0; `--resume` continues. A cell searched on other data or at another image size says so in one log line.
"""

import argparse
import functools
import logging

import torch
import torch.nn as nn
from runkit import accel, device_data, engine, run_flags, utils
from runkit.budget import count_flops
from runkit.data_common import data_difference, data_record
from runkit.progress import infer

from datasets import add_arguments as add_data_arguments
from datasets import get_datasets
from genotypes import NAMED, SPACE, load_arch_and_data, save_genotype
from model import Network

logger = logging.getLogger(__name__)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=run_flags.HelpFormatter)
    data = add_data_arguments(parser, "train on")
    device_data.add_argument(data)
    model = parser.add_argument_group("model")
    cell = f"cell: a named one ({', '.join(NAMED)}), an architecture string, or a search's genotype.json"
    model.add_argument("--arch", type=str, default="DrNAS", help=cell)
    model.add_argument("--init_channels", type=int, default=16, help="channels C of the first stage")
    model.add_argument("--layers", type=int, default=5, help="cells N per stage")
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--epochs", type=int, default=200, help="training epochs")
    optim.add_argument("--batch_size", type=int, default=256, help="batch size")
    optim.add_argument("--learning_rate", type=float, default=0.1, help="initial learning rate (cosine to 0)")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD Nesterov momentum")
    optim.add_argument("--weight_decay", type=float, default=5e-4, help="weight decay")
    system = run_flags.add_run_arguments(parser, seed=0)
    system.add_argument("--amp", action="store_true", help="bf16 autocast (the loss and the optimiser stay fp32)")
    accel.add_compile_argument(system)
    return parser


def train(run, model, train_set, test_set, criterion, learning_rate, args):
    """Per epoch `learning_rate(epoch)`, SGD steps, the test set; returns the last record (None if no epoch left)."""
    device, resumed = run.dist.device, run.task_state()
    sgd = dict(momentum=args.momentum, weight_decay=args.weight_decay, nesterov=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, **sgd)
    if resumed is not None:  # the model's tensors were loaded (and checked) before the run folder existed
        optimizer.load_state_dict(resumed["optimizer"])
    if args.compile:  # in place: the optimiser and the checkpoints keep the same tensors
        accel.compile_model(model, device)
    pin, on_device = device.type == "cuda", device_data.use_device(args.data_on_device, train_set, device)
    batches = device_data.stream(train_set, args.batch_size, args.seed, device, on_device, args.workers, pin_memory=pin)
    test_loader = device_data.loader(test_set, args.batch_size, device, on_device, args.workers, pin)
    logger.info("%s", device_data.describe(batches))
    arch = str(model.genotype)

    def state():  # the script's part of every checkpoint
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "arch": arch}

    record = None
    for epoch in run.epochs(args.epochs, len(batches), state, streams={"train": batches}, best="test_acc"):
        lr = learning_rate(epoch)
        utils.set_lr(optimizer, lr)
        model.train()
        for _ in run.steps():
            inputs, targets = utils.to_device(next(batches), device)
            accel.begin_step(device, 1, args.compile)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                logits = model(inputs).float()  # (B, classes); the loss in fp32
            loss = criterion(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.update(logits, targets, loss)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            test = infer(model, test_loader, device).result()
        test_fields = {"test_acc": test["acc"], "test_loss": test["loss"]}
        record = run.end_epoch({"lr": lr, **run.train_metrics(), **test_fields, "arch": arch})
    return record


def finish(run, model, last):
    """The last line: the last epoch's test accuracy (NAS-Bench-201's figure), then the best, picked on the test set."""
    best = run.best
    if last is None:  # a resumed run that had finished: its history.jsonl holds the last epoch
        final = f"all {run.args.epochs} epochs had run before this --resume (history.jsonl has the last one)"
    else:
        final = f"test acc {last['test_acc']:.2f} % after {last['epoch'] + 1} epochs (NAS-Bench-201's figure)"
    shown = (model.genotype, utils.count_parameters(model.parameters()), final, best["value"], best["epoch"] + 1)
    logger.info("done: %s, %d params, %s; best test acc %.2f %% (epoch %d, chosen on the test set)", *shown)


@utils.exits_cleanly
def main(argv=None):
    args = engine.parse_args(get_parser(), SPACE, "train", argv)
    structure, searched = load_arch_and_data(args.arch)  # a bad --arch fails before anything is created
    run = engine.Run(args, SPACE, "train")  # checks the flags and --resume; writes nothing
    state = run.task_state()
    if state is not None and state["arch"] != str(structure):
        raise utils.UserError(
            f"--resume: the checkpoint trains {state['arch']}, not {structure}; resume with the run's own --arch"
        )
    device = run.dist.device
    accel.check_flags(args, device)
    utils.set_seed(args.seed)
    train_data, test_data, num_classes = run.first_on_rank0(
        lambda: get_datasets(args.dataset, args.data, True, image_size=args.image_size, seed=args.seed)
    )
    model = Network(args.init_channels, args.layers, structure, num_classes)
    model = model.to(device, memory_format=torch.channels_last)
    params = utils.count_parameters(model.parameters())
    flops = count_flops(model, tuple(test_data[0][0].shape))
    if state is not None:  # the resumed run's model
        utils.load_model_state(model, state["model"], args.resume)
    run.open(files={"genotype.json": lambda path: save_genotype(structure, path)})
    logger.info("arch = %s", structure)
    # Measured on the test set, whose images are not randomly cropped: reading one draws no random number.
    other_data = data_difference(args.arch, searched, data_record(args, test_data, num_classes))
    if other_data:
        logger.info("%s", other_data)
    if args.dataset == "imagefolder":  # classes, image counts, normalisation
        logger.info("%s", train_data.summary)
    shown = (params, params / 1e6, flops, flops / 1e6)
    logger.info("param count = %d (%.6fM), multiply-adds (FLOPs) = %d (%.5fM)", *shown)
    learning_rate = functools.partial(utils.cosine_lr, epochs=args.epochs, lr=args.learning_rate)  # NB201: cosine to 0
    finish(run, model, train(run, model, train_data, test_data, nn.CrossEntropyLoss(), learning_rate, args))


if __name__ == "__main__":
    main()
