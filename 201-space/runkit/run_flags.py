"""The flags every run has, and the valid ranges of the numeric flags of every script.

`add_run_arguments` adds the system flags the run engine reads (device, threads, workers,
seed, run folder, resume, progress lines, timed checkpoints, the smoke-run step cap);
`check_ranges` refuses, in one line, any numeric flag of a script outside its range
(`RANGES`, and the script's own); `check_resume` refuses a resumed run whose flags differ
from its checkpoint's, except those in `MAY_CHANGE`, naming every such flag at once;
`typed_flags` tells which flags the command line gave (the others a resume takes from its
checkpoint). `HelpFormatter` shows each default once in `--help`. Not a script; the same
file in both folders.
"""

import argparse
import math

from .utils import UserError

# Valid ranges of the numeric flags of both folders, checked for every flag a script has:
# (low, high, low inclusive, high inclusive); None is unbounded. A flag of one folder alone has
# its range next to its definition there (`FLAG_RANGES`), handed to `check_ranges`.
RANGES = {
    "epochs": (1, None, True, True),
    "batch_size": (1, None, True, True),
    "init_channels": (1, None, True, True),
    "layers": (1, None, True, True),
    "report_freq": (1, None, True, True),
    "image_size": (1, None, True, True),
    "workers": (0, None, True, True),
    "threads": (0, None, True, True),
    "max_steps_per_epoch": (0, None, True, True),
    "gpu": (0, None, True, True),
    "warmup_epochs": (0, None, True, True),
    "learning_rate": (0, None, False, True),
    "arch_learning_rate": (0, None, False, True),
    "learning_rate_min": (0, None, True, True),
    "grad_clip": (0, None, False, True),
    "weight_decay": (0, None, True, True),
    "reg_scale": (0, None, True, True),
    "momentum": (0, 1, True, False),
    "train_portion": (0, 1, False, False),
    "checkpoint_minutes": (0, None, False, True),
    "stage_epochs": (1, None, True, True),
    "stage_k": (1, None, True, True),
    "stage_keep": (1, None, True, True),
}


# The flags a resumed run may change, in every script: where and how it runs (the same
# computation, other kernels or data paths), and what it logs. Every other flag must stay.
MAY_CHANGE = (
    "device",
    "gpu",
    "threads",
    "workers",
    "data",
    "data_on_device",
    "compile",
    "lean_ops",
    "deterministic",
    "save",
    "resume",
    "report_freq",
    "checkpoint_minutes",
    "benchmark",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` with each flag's default shown once: not where the help says it already, nor a default of None."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_run_arguments(parser, seed, workers=2):
    """The flags every training script has for its run (what this engine reads); returns their group."""
    system = parser.add_argument_group("system")
    devices = ("auto", "cuda", "mps", "cpu")
    device = "where to run; under torchrun each process takes GPU LOCAL_RANK"
    system.add_argument("--device", type=str, default="auto", choices=devices, help=device)
    gpu = "CUDA device index for a single-process run (default 0; refused where the run is not on CUDA)"
    system.add_argument("--gpu", type=int, default=None, help=gpu)
    threads = "CPU threads of PyTorch's operations (0: PyTorch's default, one per core)"
    system.add_argument("--threads", type=int, default=0, help=threads)
    loaders = "data loading processes (0 for an exactly resumable run)"
    system.add_argument("--workers", type=int, default=workers, help=loaders)
    system.add_argument("--seed", type=int, default=seed, help="random seed")
    save = "run directory (default: the --resume checkpoint's folder, else experiments/<script>-<time>)"
    system.add_argument("--save", type=str, default=None, help=save)
    resume = "a run folder (or its checkpoint.pt) to continue, with its own flags unless given"
    system.add_argument("--resume", type=str, default=None, help=resume)
    report = "log a progress line every N steps (and at least every 30 s)"
    system.add_argument("--report_freq", type=int, default=50, help=report)
    minutes = "also checkpoint inside an epoch at most every M minutes (a preempted run loses less)"
    system.add_argument("--checkpoint_minutes", type=float, default=20.0, help=minutes)
    cap = "cap on training steps per epoch, for smoke runs (0: whole epochs); a search's held-out pass takes as many"
    system.add_argument("--max_steps_per_epoch", type=int, default=0, help=cap)
    determinism = (
        "deterministic kernels where PyTorch has them (the few without one warn once) and no cuDNN autotuning: "
        "slower; repeatable on the same GPU and software"
    )
    system.add_argument("--deterministic", action="store_true", help=determinism)
    return system


def typed_flags(parser, argv):
    """The destinations of the flags the command line `argv` gives (whatever their values), as a set.

    argparse fills in a default only where the namespace has no value yet, so a namespace
    pre-filled with a marker keeps the marker for every flag the command line leaves out.
    """
    unset = object()
    names = {action.dest: unset for action in parser._actions if action.dest != argparse.SUPPRESS}
    given = parser.parse_args(argv, argparse.Namespace(**names))
    return {name for name, value in vars(given).items() if value is not unset}


def check_ranges(args, own=None):
    """Refuse a numeric flag outside its valid range, or not finite, with one line naming it.

    The ranges are `RANGES` and the script's `own` ({flag: (low, high, low inclusive, high inclusive)}).
    """
    for name, bounds in {**RANGES, **(own or {})}.items():
        low, high, low_in, high_in = bounds
        value = getattr(args, name, None)
        for v in value if isinstance(value, list) else [value]:
            if v is None or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"--{name} {v} is not a finite number; give {_range_text(bounds)}")
            too_low = low is not None and (v < low or (v == low and not low_in))
            too_high = high is not None and (v > high or (v == high and not high_in))
            if too_low or too_high:
                raise UserError(f"--{name} {v} is out of range: give {_range_text(bounds)}")


def _range_text(bounds):
    """A range in words: "a number > 0", "a number in [0, 1)"."""
    low, high, low_in, high_in = bounds
    if high is None:
        return f"a number {'>=' if low_in else '>'} {low}"
    return f"a number in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def check_resume(saved, args):
    """Refuse to resume with flags that differ from the checkpoint's `saved` ones, unless in `MAY_CHANGE`.

    One rule for every script, one line naming every differing flag; a flag the checkpoint
    does not know (added since) is not compared.
    """
    differ = [
        f"--{key} {_shown(saved[key])}, not {_shown(value)};"
        for key, value in vars(args).items()
        if key not in MAY_CHANGE and key in saved and saved[key] != value
    ]
    if differ:
        raise UserError(
            f"--resume: the checkpoint was made with {' '.join(differ)} drop these flags (--resume alone "
            "takes the run's own) or give the run's values"
        )


def _shown(value):
    """A flag's value as it is typed: lists space-separated, booleans as on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)
