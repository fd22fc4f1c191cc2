"""Progressive DrNAS search in the DARTS space on CIFAR-10 / CIFAR-100 (or synthetic data).

The paper's run: the full evaluation-size network (C=36, 20 cells) in two stages, partial channels k=6 with all 7
ops, then k=4 with the 4 best ops per edge, 25 + 25 epochs, the first 10 epochs of each stage training the weights only:

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

`--train_portion` of the training images train the weights, the rest the architecture (and give the held-out
accuracy). The run directory (`--save`, or experiments/train_search-<time>) receives log.txt, args.json, scripts/,
tb/, history.jsonl, genotype.json (for train.py --arch) and checkpoint.pt. SIGTERM or SIGINT checkpoints the step in
progress and exits 0; `--resume` continues exactly. Under torchrun there is no DDP (its hooks would fire in the
architecture backward): the gradients are averaged over the ranks after each backward.
"""

import argparse
import logging
from itertools import islice

import torch
import torch.nn as nn
import torch.nn.functional as F
from runkit import accel, budget, data_common, device_data, distributed, engine, run_flags, streams, utils
from runkit.net2wider import carry_momentum
from runkit.progress import infer
from runkit.run_flags import Stage, check_warmup, stage_at
from torch.utils.data import Subset

import datasets
from architect import REGULARIZERS, Architect
from genotypes import EDGES, PRIMITIVES, SPACE, genotype_to_dict, save_genotype
from model import cost_model, cost_rows
from model_search import SAMPLERS, Network, check_k, gumbel_tau

logger = logging.getLogger(__name__)

# Valid ranges of the numeric flags only the searches of this folder have (run_flags.RANGES holds the rest).
FLAG_RANGES = {
    "lr_warmup_epochs": (0, None, True, True),
    "tau_max": (0, None, False, True),
    "tau_min": (0, None, False, True),
}


def add_arguments(parser):
    """The model, optimization, search and system flags of both search scripts (CIFAR defaults)."""
    model = parser.add_argument_group("model")
    model.add_argument("--init_channels", type=int, default=36, help="channels C of the first cells")
    model.add_argument("--layers", type=int, default=20, help="number of cells")
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--batch_size", type=int, default=64, help="batch size, split over torchrun processes")
    optim.add_argument("--learning_rate", type=float, default=0.1, help="initial SGD learning rate of the weights")
    optim.add_argument("--learning_rate_min", type=float, default=0.0, help="final learning rate of the cosine")
    optim.add_argument("--lr_warmup_epochs", type=int, default=0, help="linear lr warm-up epochs if --batch_size > 256")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--weight_decay", type=float, default=3e-4, help="SGD weight decay")
    clip = "gradient-norm clip of the weights (and, on ImageNet, of beta's gradient)"
    optim.add_argument("--grad_clip", type=float, default=5.0, help=clip)
    search = parser.add_argument_group("search")
    search.add_argument("--method", default="dirichlet", choices=tuple(SAMPLERS), help="mixing weights from beta")
    search.add_argument("--arch_learning_rate", type=float, default=6e-4, help="Adam learning rate of beta")
    search.add_argument("--unrolled", action="store_true", help="second-order architecture gradient (DARTS)")
    reg = "regulariser of beta, added to its loss: ||beta||^2 / 2 (l2, the paper's Adam weight decay) or KL to Dir(1)"
    search.add_argument("--reg_type", default="l2", choices=tuple(REGULARIZERS), help=reg)
    search.add_argument("--reg_scale", type=float, default=1e-3, help="strength of the regulariser")
    search.add_argument("--tau_max", type=float, default=10.0, help="initial Gumbel temperature (snas, gdas)")
    search.add_argument("--tau_min", type=float, default=1.0, help="final Gumbel temperature (snas, gdas)")
    budget.add_arguments(search)
    search.add_argument("--stage_epochs", type=int, nargs="+", default=[25, 25], help="epochs of each stage")
    search.add_argument("--stage_k", type=int, nargs="+", default=[6, 4], help="partial-channel k of each stage")
    keep = "ops kept per edge in each stage (stage 1 keeps those with the largest initial beta, set by --seed)"
    search.add_argument("--stage_keep", type=int, nargs="+", default=[len(PRIMITIVES), 4], help=keep)
    search.add_argument("--warmup_epochs", type=int, default=10, help="weight-only epochs at the start of each stage")
    system = run_flags.add_run_arguments(parser, seed=2)
    accel.add_amp_argument(system)
    device_data.add_argument(system)
    add_lean_ops_argument(system)


def add_lean_ops_argument(group):  # also bench.py's
    lean = "memory-saving ops that recompute activations in the backward pass (off: plain ops, faster, more memory)"
    group.add_argument("--lean_ops", type=str, default="on", choices=("on", "off"), help=lean)


def check_args(args, min_image_size=32):
    """Refuse a flag out of range, inconsistent stages or an --image_size below `min_image_size`, in one line."""
    run_flags.check_ranges(args, FLAG_RANGES)
    counts = f"{len(args.stage_epochs)}, {len(args.stage_k)}, {len(args.stage_keep)}"
    if not (len(args.stage_k) == len(args.stage_keep) == len(args.stage_epochs)):
        raise utils.UserError(f"--stage_epochs, --stage_k and --stage_keep need one value per stage (got {counts})")
    keep, n_ops = args.stage_keep, len(PRIMITIVES)
    if any(not 1 <= count <= n_ops for count in keep) or keep != sorted(keep, reverse=True):
        raise utils.UserError(
            f"--stage_keep {keep}: each stage keeps 1..{n_ops} ops (the space has {n_ops}), never more than before"
        )
    if args.stage_k != sorted(args.stage_k, reverse=True):
        raise utils.UserError(f"--stage_k {args.stage_k}: k may only shrink from stage to stage (ops only widen)")
    check_warmup(get_stages(args))
    for k in args.stage_k:
        check_k(args.init_channels, args.layers, k, flag="--stage_k")
    if getattr(args, "image_size", 32) < min_image_size:
        raise utils.UserError(
            f"--image_size {args.image_size}: the stems and two reductions need at least {min_image_size} px"
        )


def learning_rate(epoch, args):
    """Cosine over all stages, continuous across them; a linear warm-up first for batches over 256 (ImageNet)."""
    if epoch < args.lr_warmup_epochs and args.batch_size > 256:
        return args.learning_rate * (epoch + 1) / args.lr_warmup_epochs
    return utils.cosine_lr(epoch, sum(args.stage_epochs), args.learning_rate, args.learning_rate_min)


def get_stages(args):
    """The stages the flags ask for (DrNAS Sec. 3.3): epochs, k, ops kept and warm-up epochs of each."""
    return [Stage(*s, args.warmup_epochs) for s in zip(args.stage_epochs, args.stage_k, args.stage_keep)]


def sgd(model, args, lr):
    """The weight optimizer: SGD with momentum and weight decay over `weights()` (never beta)."""
    return torch.optim.SGD(model.weights(), lr, momentum=args.momentum, weight_decay=args.weight_decay)


def enter_stage(model, optimizer, stage, args):
    """Enter stage `stage` (an index): prune, widen, and a new SGD whose momentum follows the copied channels."""
    target = get_stages(args)[stage]
    model.prune(target.keep)
    # A private generator: the same channels on every rank and in a resumed run.
    moved = model.widen(target.k, torch.Generator().manual_seed(args.seed + stage))
    new = sgd(model, args, optimizer.param_groups[0]["lr"])
    carry_momentum(optimizer, new, moved)
    return new


def weight_step(model, optimizer, weights, x, y, grad_clip, dist=None):
    """One SGD step of the weights, gradient norm clipped; returns (logits, loss)."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    torch.autograd.backward(loss, inputs=weights)  # weights only: beta is the architect's
    distributed.average_gradients(weights, dist)  # torchrun: the mean over the ranks
    nn.utils.clip_grad_norm_(weights, grad_clip)
    optimizer.step()
    return logits, loss


def search_step(model, architect, optimizer, weights, train_batch, valid_batch, lr, grad_clip, dist=None):
    """One search iteration: an architecture step (when `valid_batch` is given), then a weight step."""
    x, y = train_batch
    if valid_batch is not None:  # beta first, on a held-out batch (DrNAS Algorithm 1), then the weights
        architect.step(x, y, *valid_batch, lr, optimizer)
    return weight_step(model, optimizer, weights, x, y, grad_clip, dist)


def build_model(args, num_classes, device, state=None, imagenet=False):
    """The supernet (--amp, --lean_ops) of the first stage, or of a resumed checkpoint's (k, kept ops, tensors)."""
    accel.check_flags(args, device)
    k, kept = (state["k"], state["kept"]) if state is not None else (args.stage_k[0], None)
    model = Network(args.init_channels, num_classes, args.layers, k=k, imagenet=imagenet, kept=kept, method=args.method)
    if state is None:  # a resumed run's kept ops are the checkpoint's
        model.prune(args.stage_keep[0])
    model = model.to(device)
    model.amp = args.amp
    model.use_lean_ops(args.lean_ops == "on")
    if state is not None:
        utils.load_model_state(model, state["model"], args.resume)
    return model


def log_concentrations(model):
    """Log per cell type every edge (`input>node`) with each kept op's concentration (else softmax(beta))."""
    if model.method == "dirichlet":
        name, values = "concentration", model.kept_concentrations().detach().cpu()  # (2, 14, n_kept)
    else:  # no concentration to show: beta read as softmax weights, the same layout
        name, values = "softmax(beta)", F.softmax(model.kept_beta().detach(), dim=-1).cpu()
    short = [op.replace("_conv_", "").replace("_pool_3x3", "pool").replace("_connect", "") for op in PRIMITIVES]
    for t, cell_type in enumerate(("normal", "reduce")):
        parts = []
        for e, (node, j) in enumerate(EDGES):
            pairs = zip(model.kept[t * len(EDGES) + e], values[t, e].tolist())
            parts.append(f"{j}>{node + 2} " + " ".join(f"{short[op]}={a:.3f}" for op, a in pairs))
        logger.info("%s %s: %s", name, cell_type, " | ".join(parts))


def search_data(train_data, valid_data, args, dist):
    """This rank's streams of the weights' ("train") and architecture's ("valid") batches, and its held-out loader."""
    batch, device = args.batch_size // dist.world_size, dist.device
    on_device = device_data.use_device(args.data_on_device, train_data, device)
    shard = (device, on_device, args.workers, True, dist.rank, dist.world_size, device.type == "cuda")
    # Weights and architecture see disjoint images, each from a resumable stream of its own.
    data = {"train": device_data.stream(train_data, batch, args.seed, *shard)}
    data["valid"] = device_data.stream(valid_data, batch, args.seed + 1, *shard)
    # This rank's shard of the held-out images, in order (padded to equal shards).
    order = streams.EpochSampler(len(valid_data), args.seed, False, dist.rank, dist.world_size).order()
    return data, device_data.loader(Subset(valid_data, order), batch, device, on_device, args.workers)


def optimizers(model, args, dist, state=None, arch_grad_clip=None, term=None):
    """SGD over the weights and the `Architect` (Adam over beta, with the `--cost` term), with a resumed run's state."""
    optimizer = sgd(model, args, args.learning_rate)
    reduce = (lambda params: distributed.average_gradients(params, dist)) if dist.world_size > 1 else None
    architect = Architect(model, args, term, reduce_grads=reduce, grad_clip=arch_grad_clip)
    if state is not None:  # the model's tensors were loaded (and checked) by build_model
        optimizer.load_state_dict(state["optimizer"])
        architect.optimizer.load_state_dict(state["architect"])
    return optimizer, architect


def search(run, model, architect, optimizer, streams, valid_loader, args, data=None, costs=None):
    """The progressive search (DrNAS Algorithm 1, Sec. 3.3), epoch by epoch. `data` goes into genotype.json beside
    the cell; with `costs` (a `budget.CostModel`), the cell's exact and expected cost in train.py's network."""
    dist, device, stages, resumed = run.dist, run.dist.device, get_stages(args), run.task_state()
    stage = 0 if resumed is None else resumed["stage"]

    def state():  # the script's part of every checkpoint
        optimizers = {"optimizer": optimizer.state_dict(), "architect": architect.optimizer.state_dict()}
        cell = {"stage": stage, "k": model.k, "kept": model.kept, "genotype": genotype_to_dict(model.genotype())}
        return {"model": model.state_dict(), **optimizers, **cell}

    epochs = sum(s.epochs for s in stages)
    announced = None  # the stage whose line the log has
    for epoch in run.epochs(epochs, len(streams["train"]), state, streams, watched=model.arch_parameters()):
        index, arch_on = stage_at(stages, epoch)
        if index != stage:  # stage boundary: prune, widen, hand the momentum over
            stage, optimizer = index, enter_stage(model, optimizer, index, args)
        if stage != announced:  # the first epoch this process runs in the stage: stage 1, a resumed or a new one
            announced = stage
            shape = (stage + 1, len(stages), model.k, len(model.kept[0]), utils.count_parameters(model.weights()))
            logger.info("stage %d/%d: k=%d, %d ops kept per edge, %d weights", *shape)
        lr = learning_rate(epoch, args)
        utils.set_lr(optimizer, lr)
        model.tau = gumbel_tau(epoch, epochs, args.tau_max, args.tau_min)
        weights = model.weights()
        model.train()
        warm = "" if arch_on else ", weights only (warm-up)"
        logger.info("epoch %d: stage %d, lr %.5f%s", epoch + 1, stage + 1, lr, warm)
        for _ in run.steps():
            x, y = (t.to(device, non_blocking=True) for t in next(streams["train"]))
            valid_batch = tuple(t.to(device, non_blocking=True) for t in next(streams["valid"])) if arch_on else None
            logits, loss = search_step(
                model, architect, optimizer, weights, (x, y), valid_batch, lr, args.grad_clip, dist
            )
            run.update(logits, y, loss)
        valid = infer(model, islice(valid_loader, args.max_steps_per_epoch or None), device).result(dist)
        distributed.broadcast_parameters(model, dist)  # BatchNorm statistics of rank 0
        genotype = model.genotype()
        logger.info("genotype = %s", genotype)
        log_concentrations(model)
        record = {"stage": stage, "k": model.k, "lr": lr, **run.train_metrics()}
        record.update(valid_acc=valid["acc"], valid_top5=valid["top5"], valid_loss=valid["loss"])
        record.update(genotype=genotype_to_dict(genotype), alpha_max=float(model.kept_concentrations().detach().max()))
        saved = dict(data or {})
        if costs is not None:  # exact figures of the derived cell and the surrogate's, in millions
            rows = cost_rows(genotype)
            record.update(budget.report(costs, rows, model))
            saved["cost"] = costs.of(rows)
        if run.main:
            save_genotype(genotype, run.run_dir / "genotype.json", saved)
        run.end_epoch(record)


def finish(run, model):
    """The last lines of a search: replica agreement under torchrun, the final genotype, where it is."""
    if run.dist.world_size > 1:
        diff = distributed.max_parameter_difference(model, run.dist)
        logger.info("replicas agree: max |param - rank 0 param| = %.3e", diff)
    logger.info("final genotype = %s", model.genotype())
    if run.main:
        memory = utils.peak_memory_mb(run.dist.device)
        logger.info("written to %s (genotype.json for train.py --arch), peak memory %.0f MB", run.run_dir, memory)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=run_flags.HelpFormatter)
    data = datasets.add_arguments(parser, "search on")
    portion = "share of the training images for the weights; the rest updates the architecture"
    data.add_argument("--train_portion", type=float, default=0.5, help=portion)
    add_arguments(parser)
    return parser


def load_data(args, imagenet):
    """(weights' images, architecture's images, classes, whole training set): ImageNet's train/ and val/, else the
    training set split at --train_portion (an imagefolder one comes in a seeded order: both parts hold every class)."""
    if imagenet:
        train_data, valid_data, num_classes = datasets.imagenet_or_synthetic(args, search=True)
        return train_data, valid_data, num_classes, train_data
    full, _, num_classes = datasets.get_datasets(args.dataset, args.data, image_size=args.image_size, seed=args.seed)
    split = int(len(full) * args.train_portion)
    return Subset(full, range(split)), Subset(full, range(split, len(full))), num_classes, full


@utils.exits_cleanly
def main(argv=None, parser=None, script="train_search"):
    """A whole search: flags, data, model, then the loop (`script` train_search_imagenet: its preset)."""
    imagenet = script == "train_search_imagenet"
    args = engine.parse_args(parser or get_parser(), SPACE, script, argv)
    # Flags, the checkpoint and the data are all checked before the run writes anything.
    check_args(args, min_image_size=32 if imagenet else 8)  # the CIFAR supernet's stem keeps the size
    run = engine.Run(args, SPACE, script, join=distributed.setup, ranges=FLAG_RANGES)
    try:
        dist, state = run.dist, run.task_state()
        utils.set_seed(args.seed)  # every rank alike: the same Dirichlet draws, rank 0's start broadcast
        train_data, valid_data, num_classes, full = run.first_on_rank0(lambda: load_data(args, imagenet))
        with torch.random.fork_rng(devices=[]):  # a random crop drawn for one image's size leaves the seed's stream
            image_size = int(full[0][0].shape[-1])
        costs = cost_model(num_classes, image_size, imagenet=imagenet)  # train.py's network for this data
        term = budget.make_budget(args, costs, dist.device)  # refuses a --cost_target out of reach
        model = build_model(args, num_classes, dist.device, state, imagenet=imagenet)
        optimizer, architect = optimizers(model, args, dist, state, args.grad_clip if imagenet else None, term)
        distributed.broadcast_parameters(model, dist)  # the same start on every rank
        streams, valid_loader = search_data(train_data, valid_data, args, dist)
        run.open()
        if imagenet:
            sizes = (len(train_data), len(valid_data), num_classes)
            logger.info("%d images for the weights, %d for the architecture, %d classes", *sizes)
        elif args.dataset == "imagefolder":  # classes, image counts, normalisation
            logger.info("%s", full.summary)
        logger.info("%s", device_data.describe(streams["train"]))
        weights = utils.count_parameters(model.weights())
        logger.info("param count = %d weights (%.2fM)", weights, weights / 1e6)
        data = data_common.data_record(args, full, num_classes)  # recorded in genotype.json, for train.py
        search(run, model, architect, optimizer, streams, valid_loader, args, data, costs)
        finish(run, model)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
