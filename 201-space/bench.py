"""Seconds per search step and peak memory of the 201-space search at the paper's setting.

    cd 201-space && python bench.py --device cpu          # C=16, N=5, k=1, batch 64
    python bench.py --device cuda --steps 20
    python bench.py --device cuda --steps 20 --amp --compile

A step is train_search.py's per batch: a first-order architecture step, then a weight step, timed apart. stdout gets
one JSON object: `s_per_step` (`s_per_arch_step` + `s_per_weight_step`), `images_per_s`, `peak_mem_mb`, `params`
and `projected_h` (hours of the paper's search, 100 epochs of 391 steps, evaluation not counted).
"""

import argparse
import json
import sys
import time

import torch
from runkit import accel, run_flags, utils
from train_search import get_parser as search_parser
from train_search import search_step, sgd

from architect import Architect
from model_search import SAMPLERS, Network


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=run_flags.HelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"), help="where to run")
    parser.add_argument("--gpu", type=int, default=None, help="CUDA device index (default 0)")
    parser.add_argument("--batch_size", type=int, default=64, help="batch size")
    parser.add_argument("--init_channels", type=int, default=16, help="channels C")
    parser.add_argument("--layers", type=int, default=5, help="cells N per stage")
    parser.add_argument("--k", type=int, default=1, help="partial channels")
    parser.add_argument("--method", type=str, default="dirichlet", choices=tuple(SAMPLERS), help="search method")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    accel.add_amp_argument(parser)  # the search's own flags
    accel.add_compile_argument(parser)
    return parser


def log(message):
    """One progress line on stderr: stdout carries the JSON line alone."""
    print(f"bench.py: {message}", file=sys.stderr, flush=True)


def time_steps(parts, warmup, steps, device):
    """Mean seconds of each part of a step ({name: fn(step index)}, run in order) over `steps` steps after `warmup`;
    the peak memory counts from the first timed step."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    seconds = dict.fromkeys(parts, 0.0)
    total = warmup + steps
    every = max(1, total // 5)  # about five progress lines, however many steps
    start = time.perf_counter()
    for i in range(total):
        if i == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for name, part in parts.items():
            sync()
            tic = time.perf_counter()
            part(i)
            sync()
            if i >= warmup:
                seconds[name] += time.perf_counter() - tic
        if (i + 1) % every == 0 or i + 1 == total:
            kind = "warm-up" if i < warmup else "timed"
            log(f"step {i + 1}/{total} ({kind}) done, {time.perf_counter() - start:.1f} s elapsed")
    return {name: s / steps for name, s in seconds.items()}


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = utils.resolve_device(args.device, args.gpu)
    search_args = search_parser().parse_args(["--k", str(args.k), "--method", args.method])
    accel.check_flags(args, device)
    config = f"C={args.init_channels},N={args.layers},k={args.k},batch={args.batch_size},{args.method}"
    warmup = 2 if not args.compile else 4  # the allocator, cuDNN autotuning, compilation
    log(f"{config} on {utils.device_name(device)}: {warmup} warm-up and {args.steps} timed search steps")
    torch.manual_seed(0)
    model = Network(args.init_channels, args.layers, 10, args.k, args.method)
    model = model.to(device, memory_format=torch.channels_last)
    model.amp = args.amp
    if args.compile:
        accel.compile_model(model, device)
    architect = Architect(model, search_args)
    w_optimizer = sgd(model, search_args, search_args.learning_rate)
    weights = model.weights()
    model.train()
    n = args.batch_size  # the batches are made before timing: the search's data arrive on the device
    batches = [utils.to_device((torch.randn(n, 3, 32, 32), torch.randint(10, (n,))), device) for _ in range(4)]

    def arch_step(i):  # search_step's two parts, on the same batches
        accel.begin_step(device, 1, args.compile)  # a new step (for CUDA graphs) starts with beta's
        architect.step(*batches[i % 4], *batches[(i + 1) % 4], 0.025, w_optimizer)

    def weight_step(i):  # search_step without a validation batch is its weight step alone
        search_step(model, architect, w_optimizer, weights, batches[i % 4], None, 0.025, 5.0)

    seconds = time_steps({"arch": arch_step, "weight": weight_step}, warmup, args.steps, device)
    step_s = seconds["arch"] + seconds["weight"]
    arch_s, weight_s = round(seconds["arch"], 4), round(seconds["weight"], 4)
    result = dict(config=config, device=utils.device_name(device), threads=torch.get_num_threads(), amp=args.amp)
    result.update(compile=args.compile, s_per_step=round(arch_s + weight_s, 4), s_per_arch_step=arch_s)
    result.update(s_per_weight_step=weight_s, images_per_s=round(2 * args.batch_size / step_s, 1))
    result.update(peak_mem_mb=round(utils.peak_memory_mb(device), 1), params=utils.count_parameters(weights))
    result.update(projected_h=round(100 * 391 * step_s / 3600, 2))  # the paper's search: 100 epochs of 391 steps
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
