"""Progressive DrNAS search on the NAS-Bench-201 space (paper Sec. 3.3): train_search.py with two stages.

    cd 201-space && python train_search_progressive.py      # CIFAR-10: k 4 -> 2, all -> 3 ops, 50 + 50 epochs
    python train_search_progressive.py --dataset synthetic --device cpu --stage_epochs 2 2 --warmup_epochs 1  # tiny run
    python train_search_progressive.py --dataset imagefolder --data DIR   # your images (see train_search.py)

Stage 1 searches `N1` ops per edge (all by default; fewer: those with the largest initial beta, set by --seed) on
1/k1 of the channels. Between the stages every edge keeps its `N2` ops with the largest beta and every op is widened
to C/k2 channels (net2wider, SGD momentum carried along). Each stage starts with `--warmup_epochs` weight-only epochs.
Run directory, outputs, checkpoints and `--resume`: as train_search.py's (experiments/train_search_progressive-<time>).
"""

import train_search


def get_parser():
    return train_search.get_parser(progressive=True, description=__doc__)


def main(argv=None):
    train_search.main(argv, get_parser(), "train_search_progressive")


if __name__ == "__main__":
    main()
