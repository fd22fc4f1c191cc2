"""Progressive DrNAS search on the NAS-Bench-201 space (paper Sec. 3.3).

    cd 201-space && python train_search_progressive.py      # CIFAR-10: k 4 -> 2, 5 -> 3 ops, 50 + 50 epochs
    python train_search_progressive.py --dataset synthetic --device cpu \\
        --stage_epochs 2 2 --warmup_epochs 1                 # a CPU smoke run of both stages

Stage 1 searches all 5 ops on 1/k1 of the channels. Between the stages every edge keeps
its `N2` ops with the largest beta, and every op is widened from C/k1 to C/k2 channels
(net2wider, SGD momentum carried along, Adam state of beta and the cosine schedule
kept). Each stage starts with `--warmup_epochs` epochs that train the weights only.
The loop, checkpoints and outputs are those of `train_search.py`.
"""

import utils
from genotypes import PRIMITIVES
from train_search import Stage, get_parser, run_search


@utils.exits_cleanly
def main(argv=None):
    parser = get_parser(progressive=True)
    args = parser.parse_args(argv)
    stages = [Stage(e, k, keep, args.warmup_epochs) for e, k, keep in zip(args.stage_epochs, args.stage_k, args.stage_keep)]
    if not stages[0].k > stages[1].k >= 1 or stages[0].k % stages[1].k:
        parser.error(f"--stage_k {args.stage_k[0]} {args.stage_k[1]}: stage 2 widens, so K2 must divide K1 and be smaller")
    if not len(PRIMITIVES) >= stages[0].keep >= stages[1].keep >= 1:
        parser.error(f"--stage_keep must shrink within {len(PRIMITIVES)}..1, got {args.stage_keep}")
    if min(args.stage_epochs) < 1 or args.warmup_epochs < 0:
        parser.error("--stage_epochs must be positive and --warmup_epochs not negative")
    run_search(args, stages, "train_search_progressive")


if __name__ == "__main__":
    main()
