"""Seconds per search step and peak memory of the 201-space search at the paper's setting.

    cd 201-space && python bench.py --device cpu          # C=16, N=5, k=1, batch 64
    python bench.py --device cuda --steps 20
    python bench.py --device cuda --steps 20 --amp --compile

A step is what the search (`search.py`) does per batch: a first-order architecture step on a
validation batch, then a weight step (forward, backward, clip, SGD). The last line is
one JSON object with `s_per_step`, `images_per_s` (the two batches of a step), `peak_mem_mb`,
`params` and `projected_h`: the hours of the paper's search at this speed, 100 epochs of
391 steps (25,000 training images in batches of 64), evaluation not counted.
"""

import argparse
import json
import time

import torch

import accel
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
    accel.add_amp_argument(parser)  # the search's own flags
    accel.add_compile_argument(parser)
    return parser


PAPER_STEPS = 100 * 391  # the paper's 201 search: 100 epochs of 25,000 images in batches of 64


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = utils.resolve_device(args.device, args.gpu)
    search_args = search_parser().parse_args(["--k", str(args.k), "--method", args.method])
    accel.check_flags(args, device)
    torch.manual_seed(0)
    model = Network(args.init_channels, args.layers, 10, args.k, args.method)
    model = model.to(device, memory_format=torch.channels_last)
    model.amp = args.amp
    if args.compile:
        accel.compile_model(model, device)
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
    batches = [batch() for _ in range(4)]  # made before timing: the search's data arrive on the device

    def step(i):
        accel.begin_step(device, 1, args.compile)
        search_step(model, architect, w_optimizer, weights, batches[i % 4], batches[(i + 1) % 4], 0.025, 5.0)

    for i in range(2 if not args.compile else 4):  # warm-up: allocator, cuDNN autotuning, compilation
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    result = dict(
        config=f"C={args.init_channels},N={args.layers},k={args.k},batch={args.batch_size},{args.method}",
        device=utils.device_name(device),
        threads=torch.get_num_threads(),
        amp=args.amp,
        compile=args.compile,
        s_per_step=round(seconds, 4),
        images_per_s=round(2 * args.batch_size / seconds, 1),
        peak_mem_mb=round(utils.peak_memory_mb(device), 1),
        params=utils.count_parameters(weights),
        projected_h=round(PAPER_STEPS * seconds / 3600, 2),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
