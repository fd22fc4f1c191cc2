"""DrNAS search on the NAS-Bench-201 space (paper Sec. 4.2, Table 3).

    cd 201-space && python train_search.py                      # CIFAR-10, paper settings
    python train_search.py --dataset synthetic --epochs 2 --device cpu    # a CPU smoke run
    python train_search.py --benchmark none                     # no NAS-Bench-201 look-ups
    python train_search.py --amp --compile                      # GPU: bf16 cells, torch.compile
    python train_search.py --dataset imagefolder --data DIR   # your images: DIR/train/<class>/*, DIR/val/<class>/*
    python train_search.py --resume experiments/train_search-.../checkpoint.pt

Each iteration: an architecture step on a held-out batch, then a weight step. The run directory (`--save`, or
experiments/train_search-<time>) gets log.txt, args.json, scripts/, tb/, history.jsonl, checkpoint.pt, genotype.json
and, with a benchmark, trajectory.png. SIGTERM or SIGINT checkpoints the step and exits 0; `--resume` continues.
"""

import argparse
import logging
from itertools import islice

import torch
import torch.nn.functional as F
from runkit import accel, budget, device_data, engine, run_flags, utils
from runkit.data_common import data_record
from runkit.net2wider import carry_momentum
from runkit.progress import infer
from runkit.run_flags import Stage, check_warmup, stage_at
from torch.utils.data import Subset

from architect import REGULARIZERS, Architect
from benchmark import DEFAULT_TABLE, log_benchmark, open_benchmark, query_benchmark
from datasets import add_arguments as add_data_arguments
from datasets import get_datasets
from genotypes import PRIMITIVES, SPACE, save_genotype
from model import cost_model, cost_rows
from model_search import SAMPLERS, Network, gumbel_tau
from plot_trajectory import plot_trajectory, read_history

logger = logging.getLogger(__name__)

# Valid ranges of the numeric flags only the searches of this folder have (run_flags.RANGES holds the rest).
FLAG_RANGES = {
    "k": (1, None, True, True), "tau_max": (0, None, False, True), "tau_min": (0, None, False, True),
    "trajectory_samples": (0, None, True, True),
}  # fmt: skip


def get_parser(progressive=False, description=__doc__):
    """The search's flags; `progressive=True` swaps --epochs/--k for the stage schedule."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0], formatter_class=run_flags.HelpFormatter)
    data = add_data_arguments(parser, "search on")
    data.add_argument("--train_portion", type=float, default=0.5, help="weights' share of the train set (rest: beta)")
    device_data.add_argument(data)
    model = parser.add_argument_group("model")
    model.add_argument("--init_channels", type=int, default=16, help="channels C of the first stage")
    model.add_argument("--layers", type=int, default=5, help="search cells N per stage")
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--batch_size", type=int, default=64, help="batch size")
    optim.add_argument("--learning_rate", type=float, default=0.025, help="initial weight learning rate")
    optim.add_argument("--learning_rate_min", type=float, default=0.001, help="final learning rate of the cosine")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--weight_decay", type=float, default=3e-4, help="weight decay of the weights")
    optim.add_argument("--grad_clip", type=float, default=5.0, help="gradient norm clip of the weights")
    if not progressive:
        optim.add_argument("--epochs", type=int, default=100, help="search epochs")
    group = parser.add_argument_group("search")
    group.add_argument("--method", default="dirichlet", choices=tuple(SAMPLERS), help="mixing weights from beta")
    if progressive:  # DrNAS Sec. 3.3: two stages, pruning and widening in between
        stage = dict(type=int, nargs=2)
        group.add_argument("--stage_epochs", **stage, default=[50, 50], metavar=("E1", "E2"), help="epochs per stage")
        group.add_argument("--stage_k", **stage, default=[4, 2], metavar=("K1", "K2"), help="partial channels k")
        keep = "ops kept per edge (stage 1 keeps those with the largest initial beta, set by --seed)"
        group.add_argument("--stage_keep", **stage, default=[len(PRIMITIVES), 3], metavar=("N1", "N2"), help=keep)
        group.add_argument("--warmup_epochs", type=int, default=10, help="weight-only epochs at each stage's start")
    else:
        group.add_argument("--k", type=int, default=1, help="partial channels: 1/k of the channels pass each edge")
    group.add_argument("--arch_learning_rate", type=float, default=3e-4, help="Adam learning rate of beta")
    group.add_argument("--unrolled", action="store_true", help="second-order architecture gradient")
    reg = "regulariser of beta, added to its loss: ||beta||^2 / 2 (l2, the paper's Adam weight decay) or KL to Dir(1)"
    group.add_argument("--reg_type", type=str, default="l2", choices=tuple(REGULARIZERS), help=reg)
    group.add_argument("--reg_scale", type=float, default=1e-3, help="weight of the regulariser")
    group.add_argument("--tau_max", type=float, default=10.0, help="initial Gumbel temperature (snas, gdas)")
    group.add_argument("--tau_min", type=float, default=1.0, help="final Gumbel temperature (snas, gdas)")
    budget.add_arguments(group)
    benchmark = "NAS-Bench-201 .pth file or CSV table queried each epoch (default: the shipped table); none: no queries"
    group.add_argument("--benchmark", type=str, default=DEFAULT_TABLE, help=benchmark)
    group.add_argument("--trajectory_samples", type=int, default=100, help="cells drawn each epoch for the trajectory")
    system = run_flags.add_run_arguments(parser, seed=2)
    accel.add_amp_argument(system)
    accel.add_compile_argument(system)
    return parser


def get_stages(args):
    """The stages the flags ask for: one for train_search.py, two for the progressive search."""
    if not hasattr(args, "stage_epochs"):
        stages = [Stage(args.epochs, args.k, len(PRIMITIVES), 0)]
    else:
        stages = [Stage(*s, args.warmup_epochs) for s in zip(args.stage_epochs, args.stage_k, args.stage_keep)]
        k1, k2 = args.stage_k
        if not k1 > k2 or k1 % k2:
            raise utils.UserError(f"--stage_k {k1} {k2}: stage 2 widens, so K2 must divide K1 and be smaller")
        if not len(PRIMITIVES) >= stages[0].keep >= stages[1].keep >= 1:
            shrink = f"--stage_keep must shrink within {len(PRIMITIVES)}..1 (the space has {len(PRIMITIVES)} ops)"
            raise utils.UserError(f"{shrink}, got {args.stage_keep}")
        check_warmup(stages)
    channels = args.init_channels
    for stage in stages:
        if channels % stage.k:
            valid = [k for k in range(1, channels + 1) if channels % k == 0]
            flag = "--stage_k" if hasattr(args, "stage_k") else "--k"
            raise utils.UserError(f"{flag} {stage.k} does not divide the {channels} channels; use one of {valid}")
    return stages


def build_model(args, num_classes, device, state=None):
    """The supernet of the first stage (N1 ops per edge with the largest initial beta) or of a resumed checkpoint."""
    first = get_stages(args)[0]
    model = Network(args.init_channels, args.layers, num_classes, first.k, args.method)
    if state is None:
        model.prune(first.keep)
    else:  # rebuild the saved stage's ops and widths, then load its tensors
        model.set_kept(state["kept"])
        if state["k"] != model.k:
            model.widen(state["k"], torch.Generator())
    model = model.to(device, memory_format=torch.channels_last)
    model.amp = args.amp
    if state is not None:
        utils.load_model_state(model, state["model"], args.resume)
    return model


def sgd(model, args, lr):
    """The weight optimizer: SGD with momentum and weight decay over `weights()` (never beta)."""
    return torch.optim.SGD(model.weights(), lr, momentum=args.momentum, weight_decay=args.weight_decay)


def enter_stage(model, optimizer, stage, args):
    """Enter stage `stage` (an index): prune, widen, and a new SGD whose momentum follows the copied channels."""
    target = get_stages(args)[stage]
    model.prune(target.keep)
    moved = []
    if target.k != model.k:  # a private generator: the same channels in a resumed run
        moved = model.widen(target.k, torch.Generator().manual_seed(args.seed + stage))
    model.to(memory_format=torch.channels_last)  # the widened convs are new modules
    new = sgd(model, args, optimizer.param_groups[0]["lr"])
    carry_momentum(optimizer, new, moved)
    return new


def split_search_data(train_data, train_portion):
    """(weights' part, beta's part): the first `train_portion` of the set, the rest (imagefolder comes shuffled)."""
    split = int(len(train_data) * train_portion)
    return Subset(train_data, range(split)), Subset(train_data, range(split, len(train_data)))


def search_data(train_data, args, device):
    """Streams of the weights' ("train") and beta's ("valid") batches, and a loader of the latter (see device_data)."""
    train_part, valid_part = split_search_data(train_data, args.train_portion)
    on_device = device_data.use_device(args.data_on_device, train_data, device)
    kwargs = dict(device=device, on_device=on_device, workers=args.workers, pin_memory=device.type == "cuda")
    streams = {"train": device_data.stream(train_part, args.batch_size, args.seed, **kwargs)}
    streams["valid"] = device_data.stream(valid_part, args.batch_size, args.seed + 1, **kwargs)
    return streams, device_data.loader(valid_part, args.batch_size, device, on_device, args.workers)


def search_step(model, architect, optimizer, weights, train_batch, valid_batch, lr, grad_clip):
    """One search iteration: an architecture step (when `valid_batch` is given), then a weight step."""
    x, y = train_batch
    if valid_batch is not None:
        architect.step(x, y, *valid_batch, lr, optimizer)
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward(inputs=weights)  # beta never receives the weight loss
    torch.nn.utils.clip_grad_norm_(weights, grad_clip)
    optimizer.step()
    return logits.detach(), loss.detach()


def search(run, model, architect, optimizer, streams, valid_loader, args, data=None, costs=None, benchmark=None):
    """The search (DrNAS Algorithm 1); per epoch the held-out accuracy and the cell in genotype.json (with `data`)."""
    stages, device = get_stages(args), model.beta.device
    epochs = sum(s.epochs for s in stages)
    resumed = run.task_state()
    stage = 0 if resumed is None else resumed["stage"]
    announced = None  # the stage whose line the log has

    def state():  # the script's part of every checkpoint
        optimizers = {"optimizer": optimizer.state_dict(), "architect": architect.optimizer.state_dict()}
        cell = {"stage": stage, "kept": model.kept, "k": model.k, "genotype": str(model.genotype())}
        return {"model": model.state_dict(), **optimizers, **cell}

    for epoch in run.epochs(epochs, len(streams["train"]), state, streams, watched=[model.beta]):
        index, arch_on = stage_at(stages, epoch)
        if index != stage:  # stage boundary: prune, widen, hand the momentum over (DrNAS Sec. 3.3)
            stage, optimizer = index, enter_stage(model, optimizer, index, args)
        if stage != announced:  # the first epoch this process runs in the stage: stage 1, a resumed or a new one
            announced = stage
            shape = (stage + 1, len(stages), model.k, len(model.kept[0]), utils.count_parameters(model.weights()))
            logger.info("stage %d/%d: k=%d, %d ops kept per edge, %d weights", *shape)
        if not arch_on:
            logger.info("epoch %d/%d: warm-up, weights only", epoch + 1, epochs)
        model.tau = gumbel_tau(epoch, epochs, args.tau_max, args.tau_min)
        lr = utils.cosine_lr(epoch, epochs, args.learning_rate, args.learning_rate_min)
        utils.set_lr(optimizer, lr)
        weights = model.weights()
        model.train()
        for _ in run.steps():
            x, y = utils.to_device(next(streams["train"]), device)
            valid_batch = utils.to_device(next(streams["valid"]), device) if arch_on else None
            accel.begin_step(device, 1, args.compile)
            logits, loss = search_step(model, architect, optimizer, weights, (x, y), valid_batch, lr, args.grad_clip)
            run.update(logits, y, loss)
        valid = infer(model, islice(valid_loader, args.max_steps_per_epoch or None), device).result()
        cell = model.genotype()
        logger.info("genotype = %s", cell)
        name = "concentrations" if model.method == "dirichlet" else "softmax(beta)"  # darts, snas, gdas: no Dirichlet
        logger.info("%s (edges x %s) = %s", name, "/".join(PRIMITIVES), model.arch_values())
        record = {"stage": stage, "lr": lr, **run.train_metrics(), "valid_acc": valid["acc"]}
        record.update(valid_loss=valid["loss"], genotype=str(cell))
        saved = dict(data or {})
        if costs is not None:  # exact figures of the derived cell and the surrogate's, in millions
            rows = cost_rows(cell)
            record.update(budget.report(costs, rows, model))
            saved["cost"] = costs.of(rows)
        if run.main:
            save_genotype(cell, run.run_dir / "genotype.json", saved)
        if benchmark is not None:
            record.update(query_benchmark(model, benchmark, args, epoch))
        run.end_epoch(record)


def finish(run, model, benchmark=None):
    """After the last epoch: the final genotype in the log (genotype.json has it), with a benchmark trajectory.png."""
    logger.info("final genotype = %s (written to %s)", model.genotype(), run.run_dir / "genotype.json")
    if benchmark is not None:  # NAS-Bench-201 accuracy over the epochs
        plot_trajectory(read_history(run.run_dir), run.run_dir / "trajectory.png")
        logger.info("NAS-Bench-201 trajectory drawn in %s", run.run_dir / "trajectory.png")


@utils.exits_cleanly
def main(argv=None, parser=None, script="train_search"):
    args = engine.parse_args(parser or get_parser(), SPACE, script, argv)
    run = engine.Run(args, SPACE, script, ranges=FLAG_RANGES)  # checks the flags and --resume; writes nothing
    device = run.dist.device
    accel.check_flags(args, device)
    get_stages(args)  # refuses inconsistent stage flags before any work
    state = run.task_state()
    benchmark = open_benchmark(args.benchmark)
    # A missing dataset fails here, before the run writes anything.
    train_data, _, num_classes = run.first_on_rank0(
        lambda: get_datasets(args.dataset, args.data, image_size=args.image_size, seed=args.seed)
    )
    # What genotype.json records of the data, for train.py; before the seed, as reading an image may draw crops.
    data = data_record(args, train_data, num_classes)
    costs = cost_model(num_classes, data["image_size"])  # train.py's network for this data (its own seed)
    term = budget.make_budget(args, costs, device)  # refuses a --cost_target out of reach
    utils.set_seed(args.seed)
    streams, valid_loader = search_data(train_data, args, device)
    model = build_model(args, num_classes, device, state)
    if args.compile:  # in place, so the architect, the task and the checkpoints use the compiled network
        accel.compile_model(model, device)
    architect = Architect(model, args, term)
    optimizer = sgd(model, args, args.learning_rate)
    if state is not None:  # the resumed run's optimizer states
        optimizer.load_state_dict(state["optimizer"])
        architect.optimizer.load_state_dict(state["architect"])
    run.open()
    if args.dataset == "imagefolder":  # classes, image counts, normalisation
        logger.info("%s", train_data.summary)
    log_benchmark(benchmark, args)
    logger.info("%s", device_data.describe(streams["train"]))
    weights = utils.count_parameters(model.weights())
    logger.info("param count = %d weights + %d architecture", weights, model.beta.numel())
    search(run, model, architect, optimizer, streams, valid_loader, args, data, costs, benchmark)
    finish(run, model, benchmark)


if __name__ == "__main__":
    main()
