"""Seconds per search step and peak memory of the 201-space search at the paper's setting.

    cd 201-space && python bench.py --device cpu          # C=16, N=5, k=1, batch 64
    python bench.py --device cuda --steps 20

A step is what the search (`search.py`) does per batch: a first-order architecture step on a
validation batch, then a weight step (forward, backward, clip, SGD). The last line is
one JSON object with `s_per_step`, `peak_mem_mb` and `params`.
"""

import argparse
import json
import time

import torch

import utils
from architect import Architect
from model_search import METHODS, Network
from search import get_parser as search_parser
from search import make_weight_optimizer, search_step


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--device", type=str, default="auto", choices=("auto", "cuda", "mps", "cpu"), help="where to run"
    )
    parser.add_argument("--gpu", type=int, default=0, help="CUDA device index")
    parser.add_argument("--batch_size", type=int, default=64, help="batch size")
    parser.add_argument("--init_channels", type=int, default=16, help="channels C")
    parser.add_argument("--layers", type=int, default=5, help="cells N per stage")
    parser.add_argument("--k", type=int, default=1, help="partial channels")
    parser.add_argument("--method", type=str, default="dirichlet", choices=METHODS, help="search method")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    return parser


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = utils.resolve_device(args.device, args.gpu)
    search_args = search_parser().parse_args(["--k", str(args.k), "--method", args.method])
    torch.manual_seed(0)
    model = Network(args.init_channels, args.layers, 10, args.k, args.method)
    model = model.to(device, memory_format=torch.channels_last)
    architect = Architect(model, search_args)
    w_optimizer, _ = make_weight_optimizer(model, search_args, search_args.epochs)
    weights = model.weights()

    def batch():
        images, labels = torch.randn(args.batch_size, 3, 32, 32), torch.randint(10, (args.batch_size,))
        return utils.to_device((images, labels), device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.train()
    for _ in range(2):  # warm-up: allocator, cuDNN autotuning
        search_step(model, architect, w_optimizer, weights, batch(), batch(), 0.025, 5.0)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        search_step(model, architect, w_optimizer, weights, batch(), batch(), 0.025, 5.0)
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    result = dict(
        config=f"C={args.init_channels},N={args.layers},k={args.k},batch={args.batch_size},{args.method}",
        device=str(device),
        threads=torch.get_num_threads(),
        s_per_step=round(seconds, 4),
        peak_mem_mb=round(utils.peak_memory_mb(device), 1),
        params=utils.count_parameters(weights),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
