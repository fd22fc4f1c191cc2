"""Helpers of every script: the one-line error for bad input, logging, atomic writes, seeds, devices, checkpoints."""

import functools
import io
import json
import logging
import math
import os
import random
import resource
import sys
import warnings
from pathlib import Path

import numpy as np
import torch


class UserError(Exception):
    """Bad input from the user: reported as one line, no traceback, exit code 2."""


def exits_cleanly(main):
    """Decorate a script's `main` so that a `UserError` ends it with one clear line."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:  # Ctrl-C before the training loop (which handles it itself)
            print("interrupted (outside the training loop, so no checkpoint was written now)", file=sys.stderr)
            raise SystemExit(130) from None
        except UserError as err:
            if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: rank 0 alone says why
                print(f"error: {err}", file=sys.stderr)
                for handler in logging.getLogger().handlers:  # log.txt keeps the reason too
                    if isinstance(handler, logging.FileHandler):
                        handler.emit(logging.makeLogRecord({"msg": f"error: {err}", "levelno": logging.ERROR}))
            raise SystemExit(2) from None

    return wrapper


def setup_logging(run_dir):
    """Log INFO to stdout and to `run_dir/log.txt` (appending, so a resumed run keeps its log)."""
    handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(Path(run_dir) / "log.txt")]
    fmt = dict(format="%(asctime)s %(message)s", datefmt="%m/%d %H:%M:%S")
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True, **fmt)


def write_atomic(path, data):
    """Write `data` (bytes) to `path` atomically, through a temporary file; a failure ends the run in one line."""
    tmp = Path(f"{path}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        fix = "free some space or fix the permissions, then resume the run (its last good checkpoint is kept)"
        raise UserError(f"cannot write {path}: {err.strerror or err}; {fix}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, obj):
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


class History:
    """`history.jsonl`: one JSON object per finished epoch; a resumed run drops the epochs it is about to redo."""

    def __init__(self, run_dir, start_epoch=0):
        self.path = Path(run_dir) / "history.jsonl"
        if self.path.exists():
            lines = [line for line in self.path.read_text().splitlines() if line.strip()]
            kept = "".join(line + "\n" for line in lines if json.loads(line)["epoch"] < start_epoch)
            write_atomic(self.path, kept.encode())

    def append(self, record):
        """Add one epoch's record; a value that is not finite (a diverged held-out loss) is written as null."""
        strict = json.loads(json.dumps(record), parse_constant=lambda _: None)
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(strict) + "\n")
        except OSError as err:
            raise UserError(f"cannot write {self.path}: {err.strerror or err}; free some space, then resume") from None


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    """All global random states, as plain types that load with `weights_only=True`."""
    name, keys, *rest = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), *rest], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    version, *rest = state["python"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(name, gpu=None):
    """`--device auto|cuda|mps|cpu` and `--gpu` (the CUDA index, 0 when not given; refused off CUDA) as a device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
        gpu = gpu or 0
        if gpu >= torch.cuda.device_count():
            raise UserError(f"--gpu {gpu} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()  # it picks kernels by timing
        return torch.device("cuda", gpu)
    if gpu is not None:
        seen = "" if torch.cuda.is_available() else " (PyTorch sees no CUDA GPU)"
        raise UserError(f"--gpu {gpu} picks a CUDA GPU, but this run is on {name}{seen}; drop --gpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but MPS is not available; use --device cpu")
    return torch.device(name)


def set_deterministic():
    """`--deterministic`, before CUDA starts (cuBLAS reads its workspace setting then); other kernels warn once."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def to_device(batch, device):
    """Move an (images, labels) batch to `device`, images channels-last (faster convolutions, as the models)."""
    x, y = batch
    return x.to(device, non_blocking=True, memory_format=torch.channels_last), y.to(device, non_blocking=True)


def peak_memory_mb(device):
    """Peak memory of this process: the allocator's peak on CUDA, max RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name(device):
    """What a measurement ran on: the GPU's name, or the CPU's model name (Linux), else the device type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0]} ({device.type})" if names else device.type


def save_checkpoint(state, path):
    """Write a checkpoint atomically, serialised in memory first (a full disk is then one `OSError`)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getbuffer())


def read_checkpoint(path):
    """The object saved in `path` (tensors on the CPU), or None, without torch's warnings, for a damaged file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # torch raises many types for a damaged file
            return None


def load_checkpoint(path):
    """Load a checkpoint on the CPU, turning a missing or broken file into a `UserError`."""
    if not Path(path).is_file():
        raise UserError(f"--resume {path}: no such file; give the checkpoint.pt of the run to continue")
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "epoch" not in ckpt:
        what = "not a readable checkpoint of this project (damaged or another kind of file)"
        raise UserError(f"--resume {path}: {what}; start afresh or pick another file")
    return ckpt


def load_model_state(model, state, path):
    """`model.load_state_dict(state)`, a mismatch turned into a `UserError` naming `path`."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or differently shaped tensors
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        mismatch = f"the checkpoint's network does not match this one ({first[:160]})"
        why = "it was written by an earlier version of the code or for another network: start a new run"
        raise UserError(f"--resume {path}: {mismatch}; {why}") from None


def cosine_lr(epoch, epochs, lr, lr_min=0.0):
    """The learning rate of `epoch` (from 0) on a cosine from `lr` to `lr_min` over `epochs`: set by the epoch alone."""
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def format_seconds(seconds):
    """`3725` -> `1:02:05`."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def count_parameters(params):
    return sum(p.numel() for p in params)
