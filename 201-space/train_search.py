"""DrNAS search on the NAS-Bench-201 space (paper Sec. 4.2, Table 3).

    cd 201-space && python train_search.py                      # CIFAR-10, paper settings
    python train_search.py --dataset synthetic --epochs 2 --device cpu    # a CPU smoke run
    python train_search.py --benchmark none                     # no NAS-Bench-201 look-ups
    python train_search.py --dataset imagefolder --data DIR   # your images: DIR/train/<class>/*, DIR/val/<class>/*
    python train_search.py --resume experiments/train_search-.../checkpoint.pt

Each iteration takes an architecture step on a batch of the held-out half of the
training set, then a weight step on a batch of the other half. The run directory
(`--save`, or experiments/train_search-<time>) gets log.txt, args.json, scripts/, tb/,
history.jsonl, checkpoint.pt (every epoch and every `--checkpoint_minutes`, atomic) and,
at the end, genotype.json and trajectory.png (the NAS-Bench-201 accuracy of the cells over
the epochs, looked up in the shipped table unless `--benchmark` says otherwise). SIGTERM
or SIGINT checkpoints the step in progress and exits 0; `--resume` continues from there.
The search itself lives in search.py.
"""

import logging

import torch

import engine
import search
import utils
from architect import Architect
from benchmark import open_benchmark
from datasets import data_record, get_datasets
from search import RESUME_KEYS

logger = logging.getLogger(__name__)


def get_parser():
    return search.get_parser(progressive=False, description=__doc__)


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    run = engine.Run(args, "train_search", RESUME_KEYS)  # checks the flags and --resume; writes nothing
    stages, state = search.get_stages(args), run.task_state()
    benchmark = open_benchmark(args.benchmark)  # the shipped table unless --benchmark says otherwise
    # A missing dataset fails here, before the run writes anything.
    train_data, _, num_classes = run.first_on_rank0(
        lambda: get_datasets(args.dataset, args.data, image_size=args.image_size, seed=args.seed)
    )
    utils.set_seed(args.seed)
    device = run.dist.device
    streams, valid_loader = search.search_data(train_data, args, device)
    model = search.build_model(args, stages, num_classes, state).to(device, memory_format=torch.channels_last)
    architect = Architect(model, args)
    epochs = sum(s.epochs for s in stages)
    optimizer, scheduler = search.make_weight_optimizer(model, args, epochs)
    task = search.Search(model, architect, optimizer, scheduler, streams, valid_loader, args, benchmark)
    if state is not None:
        task.load_state_dict(state, args.resume)
    run_dir = run.open()
    if args.dataset == "imagefolder":  # classes, image counts, normalisation
        logger.info("%s", train_data.summary)
    search.log_benchmark(benchmark, args)
    logger.info(
        "param count = %d weights + %d architecture", utils.count_parameters(model.weights()), model.beta.numel()
    )
    run.fit(task, epochs, len(streams["train"]))
    search.finish(model, run_dir, benchmark, data_record(args, train_data, num_classes))


if __name__ == "__main__":
    main()
