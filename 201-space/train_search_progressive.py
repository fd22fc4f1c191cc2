"""Progressive DrNAS search on the NAS-Bench-201 space (paper Sec. 3.3).

    cd 201-space && python train_search_progressive.py      # CIFAR-10: k 4 -> 2, 5 -> 3 ops, 50 + 50 epochs
    python train_search_progressive.py --dataset synthetic --device cpu \\
        --stage_epochs 2 2 --warmup_epochs 1                 # a CPU smoke run of both stages
    python train_search_progressive.py --dataset imagefolder --data DIR   # your images (see train_search.py)

Stage 1 searches all 5 ops on 1/k1 of the channels. Between the stages every edge keeps
its `N2` ops with the largest beta, and every op is widened from C/k1 to C/k2 channels
(net2wider, SGD momentum carried along, Adam state of beta and the cosine schedule
kept). Each stage starts with `--warmup_epochs` epochs that train the weights only.
The run directory is experiments/train_search_progressive-<time> (or `--save`), with the
outputs of `train_search.py`; checkpoints, preemption and `--resume` work the same way.
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
    return search.get_parser(progressive=True, description=__doc__)


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    run = engine.Run(args, "train_search_progressive", RESUME_KEYS)  # checks the flags and --resume
    stages, state = search.get_stages(args), run.task_state()  # two stages, checked
    benchmark = open_benchmark(args.benchmark)  # the shipped table unless --benchmark says otherwise
    # A missing dataset fails here, before the run writes anything.
    train_data, _, num_classes = run.first_on_rank0(
        lambda: get_datasets(args.dataset, args.data, image_size=args.image_size, seed=args.seed)
    )
    utils.set_seed(args.seed)
    device = run.dist.device
    streams, valid_loader = search.search_data(train_data, args, device)
    # Stage 1's supernet, or the saved stage's (pruned and widened) when resuming.
    model = search.build_model(args, stages, num_classes, state).to(device, memory_format=torch.channels_last)
    architect = Architect(model, args)
    epochs = sum(s.epochs for s in stages)  # one cosine schedule over both stages
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
