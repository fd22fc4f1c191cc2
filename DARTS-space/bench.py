"""Seconds per search step and peak memory of the DrNAS supernet, one JSON line per config.

A search step is train_search.py's after the warm-up (a first-order architecture step, then a weight step; both timed,
`s_per_step` is their sum). Configurations: the paper's search network (C=36, 20 cells, batch 64) in stage 1 (k=6, 7
ops) and stage 2 (k=4, 4 ops), a small one (C=16, 8 cells, k=4), and `eval`, one train.py step of DrNAS_cifar10;
random 32x32 inputs, each configuration in a child process (its own peak memory).

    python bench.py --device cpu --threads 2       # all configurations, 2 CPU threads
    python bench.py --device cuda --steps 20 --warmup 5
    python bench.py --device cuda --amp            # bf16, as the scripts' --amp
    python bench.py --device cuda --config eval --amp --compile   # train.py --amp --compile
    python bench.py --device cuda --lean_ops off   # the search without the memory-saving ops
    python bench.py --device cpu --config small    # one configuration

`images_per_s` counts both batches of a search step; `projected_h` is the hours of the paper's run at this speed,
evaluation not counted (a search stage, or train.py's 600 epochs).
"""

import argparse
import functools
import json
import subprocess
import sys
import time

import torch
import torch.nn as nn
import train_search as search
from runkit import accel, run_flags, utils
from train import train_step

from architect import Architect
from genotypes import PRIMITIVES, DrNAS_cifar10
from model import NetworkCIFAR, param_count
from model_search import Network

COSTLIEST = sorted(PRIMITIVES.index(n) for n in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"))
CONFIGS = {
    "paper_stage1": dict(C=36, layers=20, k=6, keep=None, batch=64, stage=1),
    "paper_stage2": dict(C=36, layers=20, k=4, keep=COSTLIEST, batch=64, stage=2),
    "small": dict(C=16, layers=8, k=4, keep=None, batch=64, stage=1),
}


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=run_flags.HelpFormatter)
    parser.add_argument("--device", type=str, default="auto", choices=("auto", "cuda", "mps", "cpu"), help="device")
    parser.add_argument("--gpu", type=int, default=None, help="CUDA device index (default 0)")
    text = "measure only this configuration (default: all, each in a child process)"
    parser.add_argument("--config", type=str, default=None, choices=sorted(CONFIGS) + ["eval"], help=text)
    parser.add_argument("--steps", type=int, default=2, help="timed search steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed search steps first")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast, as the scripts' --amp")
    parser.add_argument("--compile", action="store_true", help="torch.compile the eval configuration (train.py's)")
    search.add_lean_ops_argument(parser)  # the searches' own flag
    return parser


# The paper's runs: a search stage is 25 epochs of 391 steps (10 of them weight-only); evaluation 600 x 782.
STAGE_EPOCHS, WARMUP_EPOCHS, SEARCH_STEPS = 25, 10, 391
EVAL_STEPS = 600 * 782


def bench_search(name, args, device):
    """Time `args.steps` search steps of configuration `name`; return its JSON record."""
    cfg = CONFIGS[name]
    kept = None if cfg["keep"] is None else [cfg["keep"]] * 28
    model = Network(cfg["C"], 10, cfg["layers"], k=cfg["k"], kept=kept).to(device)
    model.amp = args.amp
    model.use_lean_ops(args.lean_ops == "on")
    weights, search_args = model.weights(), search.get_parser().parse_args([])  # the search's defaults
    optimizer = search.sgd(model, search_args, search_args.learning_rate)
    architect = Architect(model, search_args)
    x = torch.randn(2, cfg["batch"], 3, 32, 32, device=device)
    y = torch.randint(10, (2, cfg["batch"]), device=device)

    # The search's step in its two parts: beta on one batch, then the weights on another (a warm-up epoch's step).
    def arch_step():
        accel.begin_step(device, 1, args.compile)
        architect.step(x[0], y[0], x[1], y[1], 0.1, optimizer)

    weight_step = functools.partial(search.weight_step, model, optimizer, weights, x[0], y[0], 5.0)
    parts = time_steps(name, {"arch": arch_step, "weight": weight_step}, device, args)
    seconds, weight_seconds = parts["arch"] + parts["weight"], parts["weight"]
    arch_s, weight_s = round(parts["arch"], 4), round(weight_seconds, 4)
    stage_s = SEARCH_STEPS * (WARMUP_EPOCHS * weight_seconds + (STAGE_EPOCHS - WARMUP_EPOCHS) * seconds)
    record = dict(config=name, stage=cfg["stage"], C=cfg["C"], layers=cfg["layers"], k=cfg["k"])
    record.update(ops_per_edge=len(cfg["keep"] or PRIMITIVES), batch=cfg["batch"], **speed_flags(device, args))
    # s_per_step: the sum of the printed parts, never below either
    record.update(s_per_step=round(arch_s + weight_s, 4), s_per_arch_step=arch_s, s_per_weight_step=weight_s)
    record.update(images_per_s=round(2 * cfg["batch"] / seconds, 1), peak_mem_mb=round(utils.peak_memory_mb(device), 1))
    return dict(record, params=utils.count_parameters(weights), projected_h=round(stage_s / 3600, 2))


def speed_flags(device, args):
    """What a record was measured on and with."""
    flags = dict(amp=args.amp, compile=args.compile, lean_ops=args.lean_ops)
    return dict(device=utils.device_name(device), threads=torch.get_num_threads(), **flags)


def log(message):
    """One progress line on stderr: stdout carries the JSON lines alone."""
    print(f"bench.py: {message}", file=sys.stderr, flush=True)


def time_steps(name, parts, device, args):
    """Mean seconds of each part of a step ({part: fn}, run in order, each timed between device syncs) over
    `args.steps` steps after `args.warmup` untimed ones; about five progress lines."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    seconds = dict.fromkeys(parts, 0.0)
    total = args.warmup + args.steps
    every = max(1, total // 5)
    start = time.perf_counter()
    for i in range(total):
        for part, run in parts.items():
            sync()
            tic = time.perf_counter()
            run()
            sync()
            if i >= args.warmup:
                seconds[part] += time.perf_counter() - tic
        if (i + 1) % every == 0 or i + 1 == total:
            kind = "warm-up" if i < args.warmup else "timed"
            log(f"{name}: step {i + 1}/{total} ({kind}) done, {time.perf_counter() - start:.1f} s elapsed")
    return {part: s / args.steps for part, s in seconds.items()}


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.config is None:
        utils.resolve_device(args.device, args.gpu)  # a bad --device or --gpu stops here, before any child
        # One child per configuration, with this run's flags: a process's peak memory only grows. It writes to this
        # process's stdout and stderr itself, so its progress shows as it runs and its JSON line as soon as it ends.
        names = [*CONFIGS, "eval"] if not args.compile else ["eval"]
        flags = sys.argv[1:] if argv is None else list(argv)
        for i, name in enumerate(names, 1):
            log(f"configuration {i}/{len(names)}: {name}, in a process of its own")
            if subprocess.run([sys.executable, __file__, *flags, "--config", name]).returncode != 0:
                raise utils.UserError(f"the measurement of {name} failed (see above)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    utils.set_seed(args.seed)
    device = utils.resolve_device(args.device, args.gpu)
    accel.check_flags(args, device)
    if args.compile and args.config != "eval":
        only = f"--compile measures the eval configuration only (train.py's --compile), not {args.config}"
        why = "tracing its 20 cells x 14 edges of custom autograd ops takes longer than it saves"
        raise utils.UserError(f"{only}: the search is not compiled ({why})")
    log(f"{args.config} on {utils.device_name(device)}: {args.warmup} warm-up and {args.steps} timed steps")
    record = bench_eval(device, args) if args.config == "eval" else bench_search(args.config, args, device)
    print(json.dumps(record), flush=True)  # the output is the JSON line


def bench_eval(device, args):
    """Time one train.py step (forward, backward, clip, SGD) of DrNAS_cifar10; return its record."""
    model = NetworkCIFAR(36, 10, 20, True, DrNAS_cifar10).to(device)
    model.drop_path_prob = 0.2  # drop path on, as in the second half of a run
    model.train()
    if args.compile:
        accel.compile_model(model, device)
    optimizer = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    batch = (torch.randn(64, 3, 32, 32, device=device), torch.randint(10, (64,), device=device))
    scaler, criterion = torch.amp.GradScaler(device.type, enabled=False), nn.CrossEntropyLoss()  # no fp16: no scaling
    step_args = argparse.Namespace(amp=args.amp, auxiliary_weight=0.4, grad_clip=5.0)

    def step():  # train.py's step (bf16 autocast with --amp, as its --amp on a bf16 device)
        accel.begin_step(device, 1, args.compile)
        train_step(model, optimizer, scaler, criterion, batch, torch.bfloat16, step_args)

    seconds = time_steps("eval", {"step": step}, device, args)["step"]
    record = dict(config="eval", C=36, layers=20, batch=64, auxiliary=True, drop_path_prob=0.2)
    record.update(speed_flags(device, args), s_per_step=round(seconds, 4), images_per_s=round(64 / seconds, 1))
    record.update(peak_mem_mb=round(utils.peak_memory_mb(device), 1), params=param_count(model))  # no auxiliary head
    return dict(record, projected_h=round(EVAL_STEPS * seconds / 3600, 2))


if __name__ == "__main__":
    main()
