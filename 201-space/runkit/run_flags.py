"""The flags every run has, their valid ranges, what a resumed run may change, and a search's stage schedule."""

import argparse
import math
from collections import namedtuple

from .utils import UserError

# Valid (low, high, low inclusive, high inclusive) ranges of both folders' numeric flags; None: unbounded.
AT_LEAST_1, AT_LEAST_0, ABOVE_0 = (1, None, True, True), (0, None, True, True), (0, None, False, True)
RANGES = {
    **dict.fromkeys(("epochs", "batch_size", "init_channels", "layers", "report_freq", "image_size"), AT_LEAST_1),
    **dict.fromkeys(("stage_epochs", "stage_k", "stage_keep"), AT_LEAST_1),
    **dict.fromkeys(("workers", "threads", "max_steps_per_epoch", "gpu", "warmup_epochs"), AT_LEAST_0),
    **dict.fromkeys(("learning_rate_min", "weight_decay", "reg_scale"), AT_LEAST_0),
    **dict.fromkeys(("learning_rate", "arch_learning_rate", "grad_clip", "checkpoint_minutes"), ABOVE_0),
    **dict.fromkeys(("cost_target", "cost_scale"), ABOVE_0),
    "momentum": (0, 1, True, False),
    "train_portion": (0, 1, False, False),
}
# A search's stage: its epochs, partial-channel k, ops kept per edge, and weight-only warm-up epochs.
Stage = namedtuple("Stage", "epochs k keep warmup")
# The flags a resumed run may change: where and how it runs (the same computation) and what it logs; no other.
MAY_CHANGE = ("device", "gpu", "threads", "workers", "data", "data_on_device", "compile", "lean_ops", "deterministic",
              "save", "resume", "report_freq", "checkpoint_minutes", "benchmark")  # fmt: skip


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` with each flag's default shown once: not where the help says it already, nor a default of None."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_run_arguments(parser, seed, workers=2):
    """The flags every training script has for its run (what the engine reads); returns their group."""
    system = parser.add_argument_group("system")
    add = system.add_argument
    where = "where to run; under torchrun each process takes GPU LOCAL_RANK"
    add("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"), help=where)
    gpu = "CUDA device index for a single-process run (default 0; refused where the run is not on CUDA)"
    add("--gpu", type=int, default=None, help=gpu)
    threads = "CPU threads of PyTorch's operations (0: PyTorch's default, one per core)"
    add("--threads", type=int, default=0, help=threads)
    add("--workers", type=int, default=workers, help="data loading processes (0: exactly resumable)")
    add("--seed", type=int, default=seed, help="random seed")
    add("--save", help="run directory (default: the --resume checkpoint's folder, else experiments/<script>-<time>)")
    add("--resume", help="a run folder (or its checkpoint.pt) to continue, with its own flags unless given")
    add("--report_freq", type=int, default=50, help="log a progress line every N steps (and at least every 30 s)")
    minutes = "also checkpoint inside an epoch at most every M minutes (a preempted run loses less)"
    add("--checkpoint_minutes", type=float, default=20.0, help=minutes)
    cap = "cap on training steps per epoch, for smoke runs (0: whole epochs); a search's held-out pass takes as many"
    add("--max_steps_per_epoch", type=int, default=0, help=cap)
    same = "deterministic kernels where PyTorch has them and no cuDNN autotuning: slower, repeatable on one GPU"
    add("--deterministic", action="store_true", help=same)
    return system


def check_ranges(args, own=None):
    """Refuse, in one line naming it, a numeric flag out of its range (`RANGES`, the script's `own`) or not finite."""
    for name, (low, high, low_in, high_in) in {**RANGES, **(own or {})}.items():
        bounds = f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
        wanted = f"a number {'>=' if low_in else '>'} {low}" if high is None else f"a number in {bounds}"
        value = getattr(args, name, None)
        for v in value if isinstance(value, list) else [value]:
            if v is None or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"--{name} {v} is not a finite number; give {wanted}")
            too_low = low is not None and (v < low or (v == low and not low_in))
            too_high = high is not None and (v > high or (v == high and not high_in))
            if too_low or too_high:
                raise UserError(f"--{name} {v} is out of range: give {wanted}")


def check_resume(saved, args):
    """Refuse, in one line naming each, flags but `MAY_CHANGE` that differ from the checkpoint's (`saved`) ones."""
    changed = [k for k, v in vars(args).items() if k not in MAY_CHANGE and k in saved and saved[k] != v]
    if changed:
        differ = " ".join(f"--{k} {_shown(saved[k])}, not {_shown(getattr(args, k))};" for k in changed)
        hint = "drop these flags (--resume alone takes the run's own) or give the run's values"
        raise UserError(f"--resume: the checkpoint was made with {differ} {hint}")


def _shown(value):
    """A flag's value as it is typed: lists space-separated, booleans as on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def stage_at(stages, epoch):
    """(index of the stage `epoch` falls in, whether beta trains in it: False in the stage's warm-up)."""
    start = 0
    for index, stage in enumerate(stages):
        if epoch < start + stage.epochs or index == len(stages) - 1:
            return index, epoch - start >= stage.warmup
        start += stage.epochs


def check_warmup(stages):
    """Refuse, in one line, a warm-up that covers a whole stage: that stage would never train the architecture."""
    for index, stage in enumerate(stages):
        if stage.warmup >= stage.epochs:
            epochs, most = " ".join(str(s.epochs) for s in stages), min(s.epochs for s in stages) - 1
            why = f"covers all {stage.epochs} epochs of stage {index + 1} (--stage_epochs {epochs})"
            hint = f"pass --warmup_epochs {most} or less, or longer --stage_epochs"
            raise UserError(f"--warmup_epochs {stage.warmup} {why}, which would never train the architecture; {hint}")
