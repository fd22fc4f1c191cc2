"""The CUDA tier's shared parts (tests/test_cuda_*.py)."""

import argparse
import json
import subprocess
import sys
import time

import torch

from conftest import INTERRUPTED_RUN, SPACES, TINY_201, script_env, write_tiny_imagenet

DEVICE = "cuda"  # where the tier runs; the CUDA-only checks (sync debug mode, NCCL) need "cuda"
RUN_TIMEOUT = 240  # seconds for all the background script runs together, from their common start
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]


def on_device(args):
    """`args` with the value of `--device` replaced by the tier's device."""
    args = list(args)
    args[args.index("--device") + 1] = DEVICE
    return args


# The smallest 201 search: C=4, one cell per stage, 4 steps per epoch (128 images for the weights, batch 32).
S201 = [*on_device(TINY_201), "--report_freq", "1", "--benchmark", "none"]
S201_STEPS = 4
# The smallest 201 training run: 8 steps per epoch (256 images, batch 32), 4 test batches.
T201 = [*on_device(TINY_201), "--arch", "DrNAS", "--epochs", "2", "--report_freq", "4"]
# A DARTS search through both stages: 3 cells of 8 channels, 1 + 1 epochs of 3 steps, k 4 -> 2, 7 -> 3 ops.
DS = "--dataset synthetic --layers 3 --init_channels 8 --batch_size 8 --stage_epochs 1 1 --stage_k 4 2 --stage_keep"
DS = [*DS.split(), *"7 3 --warmup_epochs 0 --max_steps_per_epoch 3 --report_freq 1 --workers 0".split()]
DS += ["--device", DEVICE]
DS_STEPS = 3
# The DARTS evaluation network of the CPU tests (5 cells of 8 channels, aux head, cutout): 2 epochs of 16 steps.
DT = "--dataset synthetic --cutout --auxiliary --layers 5 --init_channels 8 --batch_size 16 --learning_rate 0.05"
DT = [*DT.split(), *"--epochs 2 --seed 3 --report_freq 8 --workers 0".split(), "--device", DEVICE]

# train_imagenet.py on 3 classes of 32-pixel images (tests/conftest.py's tiny ImageNet): 2 epochs of 3 steps.
IMAGENET = "train_imagenet.py --image_size 32 --layers 5 --init_channels 8 --batch_size 6 --learning_rate 0.05"
IMAGENET = [*IMAGENET.split(), *"--epochs 2 --workers 0 --report_freq 1".split(), "--device", DEVICE]

# The collectives the run engine uses, in a torchrun group of one: NCCL on the GPU (argv[1] names the device).
COLLECTIVES = """
import sys, torch, torch.distributed as dist
device = torch.device(sys.argv[1])
if device.type == "cuda":
    torch.cuda.set_device(0)
dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
x = torch.arange(4.0, device=device)
dist.all_reduce(x, op=dist.ReduceOp.MAX)
dist.broadcast(x, src=0)
gathered = [None]
dist.all_gather_object(gathered, {"rank": dist.get_rank()})
dist.barrier()
assert x.tolist() == [0.0, 1.0, 2.0, 3.0] and gathered == [{"rank": 0}], (x, gathered)
print("collectives ok", dist.get_backend(), dist.get_world_size())
dist.destroy_process_group()
"""


def script_runs(tmp):
    """name -> (space, arguments of `python`) of every background run (a --save is added to each)."""
    on = ["--data_on_device", "on"]
    progressive = ["train_search_progressive.py", *S201, *"--stage_epochs 1 1 --warmup_epochs 0".split()]
    collectives = tmp / "collectives.py"
    collectives.write_text(COLLECTIVES)
    imagenet = write_tiny_imagenet(tmp / "imagenet")
    return {
        # 201 searches: every method, second order, bf16, data on and off the device.
        "s201": ("201-space", ["train_search.py", *S201, "--epochs", "2", "--data_on_device", "on"]),
        "s201_darts": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--method", "darts"]),
        "s201_snas": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--method", "snas"]),
        "s201_gdas": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--method", "gdas"]),
        "s201_unrolled": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--unrolled", "--reg_type", "kl"]),
        "s201_amp": ("201-space", ["train_search.py", *S201, "--epochs", "2", "--amp"]),
        "s201_off": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--data_on_device", "off"]),
        "s201_compile": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--compile", "--amp"]),
        # Second order compiled: retained backward passes through the compiled cells, under CUDA graphs.
        "s201_unrolled_compile": ("201-space", ["train_search.py", *S201, "--epochs", "1", "--unrolled", "--compile"]),
        "s201_resumed": ("201-space", [INTERRUPTED_RUN, "train_search", "1", "--", *S201, "--epochs", "2", *on]),
        "p201": ("201-space", progressive),
        "p201_amp": ("201-space", [*progressive, "--amp"]),
        # 201 training from scratch.
        "t201": ("201-space", ["train.py", *T201, "--data_on_device", "on"]),
        "t201_amp": ("201-space", ["train.py", *T201, "--amp", "--data_on_device", "off"]),
        "t201_compile": ("201-space", ["train.py", *T201, "--compile"]),
        # DARTS searches through both stages.
        "ds": ("DARTS-space", ["train_search.py", *DS, "--data_on_device", "on"]),
        "ds_unrolled": ("DARTS-space", ["train_search.py", *DS, "--unrolled"]),
        "ds_amp": ("DARTS-space", ["train_search.py", *DS, "--amp", "--data_on_device", "off"]),
        "ds_plain_ops": ("DARTS-space", ["train_search.py", *DS, "--lean_ops", "off", "--amp"]),
        # DARTS training from scratch, in one process and under torchrun.
        "dt": ("DARTS-space", ["train.py", *DT, "--data_on_device", "on"]),
        "dt_amp": ("DARTS-space", ["train.py", *DT, "--amp", "--data_on_device", "off"]),
        "dt_compile": ("DARTS-space", ["train.py", *DT, "--compile"]),
        "dt_amp_compile": ("DARTS-space", ["train.py", *DT, "--amp", "--compile"]),
        # Deterministic kernels: adaptive pooling's backward has none on CUDA and must warn, not stop the run.
        "dt_deterministic": ("DARTS-space", ["train.py", *DT, "--deterministic"]),
        "dt_resumed": ("DARTS-space", [INTERRUPTED_RUN, "train", "1", "--", *DT, "--data_on_device", "on"]),
        "dt_torchrun": ("DARTS-space", [*TORCHRUN, "train.py", *DT, "--epochs", "1", "--max_steps_per_epoch", "3"]),
        "collectives": ("DARTS-space", [*TORCHRUN, collectives, DEVICE]),
        # train_imagenet.py on an image folder, in fp32 and with --amp --compile.
        "imagenet_fp32": ("DARTS-space", [*IMAGENET, "--data", imagenet]),
        "imagenet_amp_compile": ("DARTS-space", [*IMAGENET, "--data", imagenet, "--amp", "--compile"]),
    }


class Run:
    """A script in a subprocess (cwd = its folder), output in files; `--save` is its own folder under `root`."""

    def __init__(self, root, name, space, args, deadline):
        self.name, self.dir, self.deadline = name, root / name, deadline
        self.out, self.err = root / f"{name}.stdout", root / f"{name}.stderr"
        args = list(args)
        if name != "collectives":
            args += ["--save", self.dir]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            argv = [sys.executable, *map(str, args)]
            self.proc = subprocess.Popen(argv, cwd=SPACES[space], stdout=out, stderr=err, text=True, env=script_env())

    def ok(self):
        """Wait for the run; assert it ended well; return self."""
        try:
            self.proc.wait(timeout=max(self.deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} ran past {RUN_TIMEOUT} s\n{self.tail()}") from None
        assert self.proc.returncode == 0, f"{self.name} exited {self.proc.returncode}\n{self.tail()}"
        assert "Traceback" not in self.err.read_text(), self.tail()
        return self

    def tail(self):
        return f"stdout: ...{self.out.read_text()[-2000:]}\nstderr: ...{self.err.read_text()[-4000:]}"

    def log(self):
        return (self.dir / "log.txt").read_text()

    def history(self):
        return [json.loads(line) for line in (self.dir / "history.jsonl").read_text().splitlines() if line.strip()]

    def checkpoint(self, name="checkpoint.pt"):
        """The checkpoint as saved: tensors load onto the device they were saved from."""
        return torch.load(self.dir / name, weights_only=True)


def start(root):
    """Start every run of `script_runs` under `root`, with one deadline: name -> `Run`."""
    deadline = time.monotonic() + RUN_TIMEOUT
    return {name: Run(root, name, space, args, deadline) for name, (space, args) in script_runs(root).items()}


def stop(started):
    """Kill the runs that are still going (a failed or interrupted session)."""
    for run in started.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def batches(n, size, seed=1):
    """Two batches of n random images (size x size) and labels, the same on every call."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, size, size, generator=gen), torch.randint(10, (n,), generator=gen)) for _ in range(2)]


def assert_near(actual, expected, rel, what):
    """max |actual - expected| <= rel * max |expected| (+ 1e-7): a tolerance on the tensor's own scale."""
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert actual.shape == expected.shape, what
    error, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert error <= rel * scale + 1e-7, f"{what}: max error {error:.3g} on a scale of {scale:.3g} (rel {rel})"


def darts_search_args(search, *argv):
    """The DARTS searches' flags, parsed (defaults: first order, l2, Adam lr 6e-4, momentum 0.9, ...)."""
    parser = argparse.ArgumentParser()
    search.add_arguments(parser)
    return parser.parse_args(list(argv))
