"""DrNAS search on the NAS-Bench-201 space (paper Sec. 4.2, Table 3).

    cd 201-space && python train_search.py                      # CIFAR-10, paper settings
    python train_search.py --dataset synthetic --epochs 2 --device cpu    # a CPU smoke run
    python train_search.py --benchmark ../../shared/data/nb201_test_accuracy.csv
    python train_search.py --resume experiments/train_search-.../checkpoint.pt

Each iteration takes an architecture step on a batch of the held-out half of the
training set, then a weight step on a batch of the other half. The run directory gets
log.txt, args.json, tb/, checkpoint.pt (every epoch), history.jsonl and genotype.json.
The search loop here also drives `train_search_progressive.py`, which passes its stages.
"""

import argparse
import logging
from collections import namedtuple

import numpy as np
import torch
import torch.nn.functional as F
import utils
from architect import Architect
from benchmark import load_benchmark, summarize
from datasets import DATASETS, get_datasets
from genotypes import PRIMITIVES, Structure, save_genotype
from model_search import METHODS, Network, concentration
from operations import widen_like
from plot_trajectory import plot_trajectory, read_history
from torch.utils.data import DataLoader, Subset

logger = logging.getLogger("search")

# One stage of the search: its epochs, partial-channel k, ops kept per edge, warm-up epochs.
Stage = namedtuple("Stage", "epochs k keep warmup")

# Flags that change what a run computes: a resumed run must keep them.
RUN_DEFINING = (
    "dataset", "method", "batch_size", "learning_rate", "learning_rate_min", "momentum", "weight_decay",
    "epochs", "init_channels", "layers", "seed", "grad_clip", "train_portion", "unrolled",
    "arch_learning_rate", "reg_type", "reg_scale", "tau_max", "tau_min", "k",
    "stage_epochs", "stage_k", "stage_keep", "warmup_epochs",
)


def get_parser(progressive=False):
    """The search's flags; `progressive=True` swaps --epochs/--k for the stage schedule."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", type=str, default="cifar10", choices=DATASETS, help="dataset to search on")
    data.add_argument("--data", type=str, default="../data", help="dataset folder (CIFAR downloads itself here)")
    data.add_argument("--train_portion", type=float, default=0.5, help="share of the training set for weights; the rest trains the architecture")
    data.add_argument("--workers", type=int, default=2, help="data loading processes (0 for an exactly resumable run)")
    model = parser.add_argument_group("model")
    model.add_argument("--init_channels", type=int, default=16, help="channels C of the first stage")
    model.add_argument("--layers", type=int, default=5, help="search cells N per stage")
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--batch_size", type=int, default=64, help="batch size")
    optim.add_argument("--learning_rate", type=float, default=0.025, help="initial weight learning rate")
    optim.add_argument("--learning_rate_min", type=float, default=0.001, help="final learning rate of the cosine schedule")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--weight_decay", type=float, default=3e-4, help="weight decay of the weights")
    optim.add_argument("--grad_clip", type=float, default=5.0, help="gradient norm clip of the weights")
    if not progressive:
        optim.add_argument("--epochs", type=int, default=100, help="search epochs")
    search = parser.add_argument_group("search")
    search.add_argument("--method", type=str, default="dirichlet", choices=METHODS, help="how mixing weights come from beta")
    if progressive:  # DrNAS Sec. 3.3: two stages, pruning and widening in between
        search.add_argument("--stage_epochs", type=int, nargs=2, default=[50, 50], metavar=("E1", "E2"), help="epochs of each stage")
        search.add_argument("--stage_k", type=int, nargs=2, default=[4, 2], metavar=("K1", "K2"), help="partial channels k of each stage")
        search.add_argument("--stage_keep", type=int, nargs=2, default=[5, 3], metavar=("N1", "N2"), help="ops kept per edge in each stage")
        search.add_argument("--warmup_epochs", type=int, default=10, help="weight-only epochs at the start of each stage")
    else:
        search.add_argument("--k", type=int, default=1, help="partial channels: 1/k of the channels go through each edge")
    search.add_argument("--arch_learning_rate", type=float, default=3e-4, help="Adam learning rate of beta")
    search.add_argument("--unrolled", action="store_true", help="second-order architecture gradient")
    search.add_argument("--reg_type", type=str, default="l2", choices=("l2", "kl"), help="regulariser of beta")
    search.add_argument("--reg_scale", type=float, default=1e-3, help="weight of the regulariser")
    search.add_argument("--tau_max", type=float, default=10.0, help="initial Gumbel temperature (snas, gdas)")
    search.add_argument("--tau_min", type=float, default=1.0, help="final Gumbel temperature (snas, gdas)")
    search.add_argument("--benchmark", type=str, default=None, help="NAS-Bench-201 .pth file or compact CSV table to query each epoch")
    search.add_argument("--trajectory_samples", type=int, default=100, help="architectures drawn from the Dirichlet each epoch (needs --benchmark)")
    system = parser.add_argument_group("system")
    system.add_argument("--seed", type=int, default=2, help="random seed")
    system.add_argument("--device", type=str, default="auto", choices=("auto", "cuda", "mps", "cpu"), help="where to run")
    system.add_argument("--gpu", type=int, default=0, help="CUDA device index")
    system.add_argument("--save", type=str, default=None, help="run directory (default: experiments/<script>-<time>)")
    system.add_argument("--resume", type=str, default=None, help="checkpoint.pt of a run to continue")
    system.add_argument("--report_freq", type=int, default=50, help="steps between progress lines")
    return parser


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    run_search(args, [Stage(args.epochs, args.k, len(PRIMITIVES), 0)], "train_search")


def run_search(args, stages, script):
    """The whole search: `stages` run one after another with pruning and widening between."""
    ckpt = utils.load_checkpoint(args.resume) if args.resume else None
    for stage in stages:
        if args.init_channels % stage.k:
            valid = [k for k in range(1, args.init_channels + 1) if args.init_channels % k == 0]
            raise utils.UserError(f"--k {stage.k} does not divide the {args.init_channels} channels; use one of {valid}")
    if ckpt is not None:
        utils.check_resume_args(ckpt["args"], args, [key for key in RUN_DEFINING if hasattr(args, key)])
    benchmark = load_benchmark(args.benchmark) if args.benchmark else None
    device = utils.resolve_device(args.device, args.gpu)
    train_data, _, num_classes = get_datasets(args.dataset, args.data)  # bad input fails before any file is written
    run_dir = utils.prepare_run_dir(args.save, script, args.resume)
    utils.setup_logging(run_dir)
    utils.save_args(args, run_dir)
    utils.log_environment(args, device)
    utils.set_seed(args.seed)

    train_part, valid_part = split_search_data(train_data, args.train_portion)
    stream_args = dict(batch_size=args.batch_size, workers=args.workers, pin_memory=device.type == "cuda")
    train_stream = utils.Stream(train_part, seed=args.seed,
                                position=ckpt["train_stream"] if ckpt else (0, 0), **stream_args)
    valid_stream = utils.Stream(valid_part, seed=args.seed + 1,
                                position=ckpt["valid_stream"] if ckpt else (0, 0), **stream_args)
    valid_loader = DataLoader(valid_part, batch_size=args.batch_size, num_workers=args.workers)

    total_epochs = sum(s.epochs for s in stages)
    stage_index, start_epoch = (ckpt["stage"], ckpt["epoch"]) if ckpt else (0, 0)
    model = Network(args.init_channels, args.layers, num_classes, stages[0].k, args.method)
    if ckpt is not None:  # rebuild the saved stage's ops and widths before loading its tensors
        model.set_kept(ckpt["kept"])
        if stages[stage_index].k != model.k:
            model.widen(stages[stage_index].k, torch.Generator())
    else:
        model.prune(stages[0].keep)
    model = model.to(device, memory_format=torch.channels_last)
    architect = Architect(model, args)
    w_optimizer, scheduler = make_weight_optimizer(model, args, total_epochs)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        w_optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        architect.optimizer.load_state_dict(ckpt["architect"])
        utils.set_rng_state(ckpt["rng"])
        logger.info("resumed from %s at epoch %d (stage %d)", args.resume, start_epoch, stage_index)
    logger.info("param count = %d weights + %d architecture", utils.count_parameters(model.weights()), model.beta.numel())

    history = utils.History(run_dir, start_epoch)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(run_dir / "tb", purge_step=start_epoch)
    progress = utils.Progress(total_epochs * len(train_stream), start_epoch * len(train_stream))
    try:
        for epoch in range(start_epoch, total_epochs):
            index = stage_of(stages, epoch)
            if index != stage_index:  # stage boundary: prune, widen, hand the momentum over
                stage_index = index
                w_optimizer, scheduler = next_stage(model, stages[index], args, index, w_optimizer, scheduler, total_epochs)
                logger.info("stage %d: k=%d, %d ops kept per edge, %d weights", index, model.k, stages[index].keep, utils.count_parameters(model.weights()))
            warm = is_warmup(stages, epoch)
            model.tau = gumbel_tau(args, epoch, total_epochs)
            lr = scheduler.get_last_lr()[0]
            train_acc, train_loss = train(model, architect, w_optimizer, train_stream, valid_stream, lr, not warm, args, device, progress, epoch)
            valid_acc, valid_loss = infer(model, valid_loader, device)
            scheduler.step()
            record = dict(epoch=epoch, stage=index, lr=lr, train_acc=train_acc, train_loss=train_loss,
                          valid_acc=valid_acc, valid_loss=valid_loss, genotype=str(model.genotype()))
            logger.info("epoch %d/%d lr %.5f%s train acc %.2f loss %.4f valid acc %.2f loss %.4f", epoch + 1, total_epochs, lr,
                        " (warm-up: weights only)" if warm else "", train_acc, train_loss, valid_acc, valid_loss)
            logger.info("genotype = %s", record["genotype"])
            logger.info("concentrations (edges x %s) = %s", "/".join(PRIMITIVES), model.concentrations())
            if benchmark is not None:
                record.update(query_benchmark(model, benchmark, args, epoch))
            for key in ("lr", "train_acc", "train_loss", "valid_acc", "valid_loss"):
                writer.add_scalar(key.replace("_", "/", 1), record[key], epoch)
            for dataset, acc in record.get("benchmark", {}).items():
                writer.add_scalar(f"nb201/{dataset}", acc, epoch)
            history.append(record)
            utils.save_checkpoint(
                dict(epoch=epoch + 1, stage=stage_index, kept=model.kept, model=model.state_dict(), optimizer=w_optimizer.state_dict(),
                     scheduler=scheduler.state_dict(), architect=architect.optimizer.state_dict(),
                     genotype=record["genotype"], args=vars(args), rng=utils.rng_state(),
                     train_stream=train_stream.position(), valid_stream=valid_stream.position()),
                run_dir / "checkpoint.pt",
            )
    finally:
        writer.close()
    save_genotype(model.genotype(), run_dir / "genotype.json")
    logger.info("final genotype = %s (written to %s)", model.genotype(), run_dir / "genotype.json")
    if benchmark is not None:
        plot_trajectory(read_history(run_dir), run_dir / "trajectory.png")
    return model


def train(model, architect, w_optimizer, train_stream, valid_stream, lr, arch_step, args, device, progress, epoch):
    """One epoch: (architecture step, weight step) per training batch; returns (acc, loss)."""
    model.train()
    loss_meter, acc_meter = utils.AverageMeter(), utils.AverageMeter()
    weights = model.weights()
    steps = len(train_stream)
    for step, batch in enumerate(train_stream.take(steps)):
        x, y = utils.to_device(batch, device)
        valid_batch = utils.to_device(next(valid_stream), device) if arch_step else None
        logits, loss = search_step(model, architect, w_optimizer, weights, (x, y), valid_batch, lr, args.grad_clip)
        loss_meter.update(loss, x.size(0))
        acc_meter.update(utils.accuracy(logits, y)[0], x.size(0))
        if (step + 1) % args.report_freq == 0 or step + 1 == steps:
            logger.info("train %03d/%03d loss %.4f acc %.2f | %s", step + 1, steps, loss_meter.avg, acc_meter.avg,
                        progress.line(epoch * steps + step + 1, x.size(0)))
    return acc_meter.avg, loss_meter.avg


def search_step(model, architect, w_optimizer, weights, train_batch, valid_batch, lr, grad_clip):
    """One search iteration: an architecture step (when `valid_batch` is given), then a weight step."""
    x, y = train_batch
    if valid_batch is not None:
        architect.step(x, y, *valid_batch, lr, w_optimizer)
    w_optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward(inputs=weights)  # beta never receives the weight loss
    torch.nn.utils.clip_grad_norm_(weights, grad_clip)
    w_optimizer.step()
    return logits.detach(), loss.detach()


@torch.no_grad()
def infer(model, loader, device):
    """Accuracy and loss of the supernet on `loader`."""
    model.eval()
    loss_meter, acc_meter = utils.AverageMeter(), utils.AverageMeter()
    for batch in loader:
        x, y = utils.to_device(batch, device)
        logits = model(x)
        loss_meter.update(F.cross_entropy(logits, y), x.size(0))
        acc_meter.update(utils.accuracy(logits, y)[0], x.size(0))
    return acc_meter.avg, loss_meter.avg


# ---------------------------------------------------------------- stages


def stage_of(stages, epoch):
    """Index of the stage that `epoch` belongs to."""
    end = 0
    for index, stage in enumerate(stages):
        end += stage.epochs
        if epoch < end:
            return index
    return len(stages) - 1


def is_warmup(stages, epoch):
    """Whether `epoch` is a weight-only warm-up epoch: one of the first `warmup` epochs of its stage."""
    index = stage_of(stages, epoch)
    return epoch - sum(s.epochs for s in stages[:index]) < stages[index].warmup


def gumbel_tau(args, epoch, total_epochs):
    """Gumbel temperature of snas/gdas in `epoch`: linear from tau_max (first) to tau_min (last epoch)."""
    return args.tau_max - (args.tau_max - args.tau_min) * epoch / max(total_epochs - 1, 1)


def split_search_data(train_data, train_portion):
    """(weights' part, architecture's part): the first `train_portion` of the training set, and the rest."""
    split = int(len(train_data) * train_portion)
    return Subset(train_data, range(split)), Subset(train_data, range(split, len(train_data)))


def make_weight_optimizer(model, args, total_epochs, lr=None):
    """SGD over `weights()` and a cosine schedule over all epochs of all stages."""
    optimizer = torch.optim.SGD(model.weights(), lr or args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_epochs, eta_min=args.learning_rate_min)
    return optimizer, scheduler


def enter_stage(model, stage, args, index):
    """Prune to `stage.keep` ops per edge and widen to `stage.k`; returns the channel maps."""
    model.prune(stage.keep)
    if stage.k == model.k:
        return {}
    return model.widen(stage.k, torch.Generator().manual_seed(args.seed + index))


def next_stage(model, stage, args, index, w_optimizer, scheduler, total_epochs):
    """Enter the next stage; the SGD momentum follows each weight's copied channels."""
    momentum = {
        name: w_optimizer.state[p]["momentum_buffer"]
        for name, p in model.named_parameters()
        if "momentum_buffer" in w_optimizer.state.get(p, {})
    }
    channel_maps = enter_stage(model, stage, args, index)
    model.to(memory_format=torch.channels_last)  # the widened convs are new modules
    new_optimizer, new_scheduler = make_weight_optimizer(model, args, total_epochs, lr=scheduler.get_last_lr()[0])
    new_scheduler.load_state_dict(scheduler.state_dict())  # the cosine schedule carries on
    for name, p in model.named_parameters():
        if name in momentum:
            edge = name.split(".ops.")[0]
            buf = momentum[name]
            if buf.shape != p.shape:
                buf = widen_like(buf, p.shape, channel_maps[edge])
            new_optimizer.state[p]["momentum_buffer"] = buf
    return new_optimizer, new_scheduler


# ---------------------------------------------------------------- NAS-Bench-201


def query_benchmark(model, benchmark, args, epoch):
    """Benchmark accuracies of the derived architecture and of architectures drawn from the Dirichlet."""
    record = {"benchmark": benchmark.query(str(model.genotype()))}
    logger.info("NAS-Bench-201 %s", " ".join(f"{k} {v:.2f}" for k, v in record["benchmark"].items()))
    if args.trajectory_samples > 0:
        archs = sample_architectures(model, args.trajectory_samples, np.random.default_rng(args.seed * 100003 + epoch))
        results = benchmark.query_many(archs)
        record["trajectory"] = {key: summarize([r[key] for r in results]) for key in results[0]}
        logger.info("sampled %d architectures: %s", len(archs), " ".join(
            f"{k} {s['min']:.2f}/{s['median']:.2f}/{s['max']:.2f}" for k, s in record["trajectory"].items()))
    return record


def sample_architectures(model, count, rng):
    """Architecture strings from `count` draws of the current distribution (argmax per edge)."""
    beta = model.beta.detach().cpu().double()
    archs = []
    for _ in range(count):
        ops = []
        for e, kept in enumerate(model.kept):
            if model.method == "dirichlet":
                w = rng.dirichlet(concentration(beta[e, kept]).numpy())
            else:  # the categorical distribution softmax(beta) of DARTS, SNAS and GDAS
                w = rng.gumbel(size=len(kept)) + beta[e, kept].numpy()
            ops.append(PRIMITIVES[kept[int(np.argmax(w))]])
        archs.append(str(Structure.from_edges(ops)))
    return archs


if __name__ == "__main__":
    main()
