"""DrNAS search on the NAS-Bench-201 space (paper Sec. 4.2, Table 3).

    cd 201-space && python train_search.py                      # CIFAR-10, paper settings
    python train_search.py --dataset synthetic --epochs 2 --device cpu    # a CPU smoke run
    python train_search.py --benchmark none                     # no NAS-Bench-201 look-ups
    python train_search.py --amp --compile                      # GPU: bf16 cells, torch.compile
    python train_search.py --dataset imagefolder --data DIR   # your images: DIR/train/<class>/*, DIR/val/<class>/*
    python train_search.py --resume experiments/train_search-.../checkpoint.pt

Each iteration takes an architecture step on a batch of the held-out half of the
training set, then a weight step on a batch of the other half. The run directory
(`--save`, or experiments/train_search-<time>) gets log.txt, args.json, scripts/, tb/,
history.jsonl, checkpoint.pt (every epoch and every `--checkpoint_minutes`, atomic),
genotype.json (the current cell, every epoch) and, at the end, trajectory.png (the
NAS-Bench-201 accuracy of the cells over the epochs, looked up in the shipped table
unless `--benchmark` says otherwise). SIGTERM
or SIGINT checkpoints the step in progress and exits 0; `--resume` continues from there.
The search itself lives in search.py.
"""

from runkit import engine, utils

import search
from genotypes import SPACE


def get_parser():
    return search.get_parser(progressive=False, description=__doc__)


@utils.exits_cleanly
def main(argv=None):
    args = engine.parse_args(get_parser(), SPACE, "train_search", argv)
    search.run_search(args, "train_search")


if __name__ == "__main__":
    main()
