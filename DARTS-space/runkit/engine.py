"""The run engine: the services a training script's own loop calls, and nothing of its step.

A script parses its flags, builds data, model and optimisers, and writes its epoch loop
itself, top to bottom; a `Run` offers what every loop needs around it: argument checks,
the run folder and logging, where a resumed run starts (also inside an epoch), atomic
checkpoints (every epoch, every `--checkpoint_minutes`, and on SIGTERM/SIGINT, after which
the run exits 0), the divergence check (a loss or a watched tensor that is not finite),
the metrics (top-1/top-5, summed on the device, reduced over ranks), progress lines with
an ETA, history.jsonl (with wall time and device-hours, counted across resumes) and
TensorBoard. Its parts live beside it: the run flags and their ranges in `run_flags.py`,
the run folder and its lock in `run_folder.py`, the metrics and the ETA in `progress.py`,
the non-finite checks in `divergence.py`, the resumable data streams in `streams.py`. The
same files serve both folders of the repository.

    args = parse_args(get_parser(), SPACE, "train", argv)  # resumed: the checkpoint's flags where none is given
    run = Run(args, SPACE, "train")                      # checks args, outputs and --resume; writes nothing
    state = run.task_state()                      # what a resumed run's `state()` returned, else None
    ...                                           # data, model, optimisers (loaded from `state`)
    run.open()                                    # the first write: run folder, log, args.json
    for epoch in run.epochs(epochs, steps, state=..., streams=..., watched=..., best=...):
        for step in run.steps():                  # a resumed run starts at its checkpoint's step
            logits, loss = ...                    # the script's step
            run.update(logits, targets, loss)
        run.end_epoch({"lr": lr, **run.train_metrics(), "test_acc": ...})

Not a script.
"""

import logging
import math
import os
import shutil
import signal
import time
from collections import namedtuple
from pathlib import Path

import torch
import torch.distributed as torch_dist

from . import accel, run_flags, run_folder, utils
from .divergence import Divergence
from .progress import Clock, Meter
from .utils import UserError

logger = logging.getLogger(__name__)

# 3: "space" recorded, so that a checkpoint of the other folder is refused; 4: the l2 regulariser of beta is
# a loss term, no longer Adam's weight decay (a version-3 Adam state would apply it twice), and "epochs" recorded.
CHECKPOINT_VERSION = 4
SYNC_STEPS = 10  # under torchrun, ranks agree on stopping and timed checkpoints every this many steps
# The top-level keys of every checkpoint, whichever script of either folder wrote it (`Run._save`);
# what is particular to a script lies under "task".
CHECKPOINT_KEYS = (
    "version", "space", "epoch", "epochs", "step", "args", "rng", "streams", "meter", "best", "usage", "task"
)  # fmt: skip
Dist = namedtuple("Dist", "rank local_rank world_size device")


def parse_args(parser, space, script, argv=None):
    """The script's flags; with `--resume`, every flag the command line leaves out is the checkpoint's.

    Flags given beside `--resume` must be ones a resume may change (`run_flags.MAY_CHANGE`)
    or equal the checkpoint's; one line names every other. `--resume` of a finished run
    says so in one line and exits 0, writing nothing.
    """
    args = parser.parse_args(argv)
    if args.resume is None:
        return args
    args.resume = str(run_folder.checkpoint_of(args.resume))
    ckpt = read_resumed(args.resume, space, script)
    saved, typed = ckpt["args"], run_flags.typed_flags(parser, argv)
    for key in vars(args):
        if key in saved and key not in typed and key not in ("save", "resume"):
            setattr(args, key, saved[key])
    run_flags.check_resume(saved, args)
    if ckpt.get("epochs") is not None and ckpt["epoch"] >= ckpt["epochs"]:
        if os.environ.get("RANK", "0") == "0":
            print(f"{args.resume}: the run is finished ({ckpt['epochs']} of {ckpt['epochs']} epochs); nothing to do")
        raise SystemExit(0)
    return args


def read_resumed(path, space, script):
    """The checkpoint at `path`, refused in one line unless this script of this space, in this layout, wrote it."""
    ckpt = utils.load_checkpoint(path)
    written_by = (ckpt.get("space"), ckpt.get("args", {}).get("script"))
    if ckpt.get("version") == CHECKPOINT_VERSION and written_by != (space, script):
        raise UserError(
            f"--resume {path}: a checkpoint of {written_by[1]}.py in the {written_by[0]} space, "
            f"not of this {script}.py ({space} space); resume it with {written_by[0]}/{written_by[1]}.py"
        )
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise UserError(
            f"--resume {path}: written by an earlier version of this code (another checkpoint layout); start a new run"
        )
    return ckpt


class Run:
    """One run of a script: checked arguments, run folder, checkpoints, epoch loop, signals, divergence."""

    def __init__(self, args, space, script, join=None, ranges=None):
        """Check the flags, the run folder and the --resume checkpoint, then join the processes (`join(device, gpu)`).

        `ranges`: the valid ranges of the script's own numeric flags, beside the shared `run_flags.RANGES`.

        Nothing is written here, and every check comes before a process group forms.
        """
        run_flags.check_ranges(args, ranges)
        self.args, self.space, self.script = args, space, script
        self.ckpt = None
        if args.resume:
            args.resume = str(run_folder.checkpoint_of(args.resume))
            self.ckpt = read_resumed(args.resume, space, script)
            run_flags.check_resume(self.ckpt["args"], args)
        if getattr(args, "threads", 0):
            torch.set_num_threads(args.threads)
        # A resumed run continues in the checkpoint's folder unless --save says otherwise.
        resumed_in = Path(args.resume).parent if args.resume else None
        self._run_dir = Path(args.save or resumed_in or run_folder.default_run_dir(script))
        run_folder.check_run_dir(self._run_dir, args.resume)
        if getattr(args, "deterministic", False):
            utils.set_deterministic()  # before any process group or CUDA work
        gpu = getattr(args, "gpu", None)
        self.dist = join(args.device, gpu) if join else Dist(0, 0, 1, utils.resolve_device(args.device, gpu))
        self.run_dir = self.writer = self.history = None
        self.main = self.dist.rank == 0
        self.best = {"value": None, "epoch": -1}  # of the record key given to `epochs` as `best`
        if args.batch_size % self.dist.world_size:
            raise UserError(f"--batch_size {args.batch_size} does not split over {self.dist.world_size} processes")

    def first_on_rank0(self, load):
        """`load()` on rank 0, then on the other ranks (a download happens once); any failure stops all."""
        result, error = None, None
        for turn in (True, False):
            if self.main == turn:
                try:
                    result = load()
                except UserError as err:
                    error = str(err)
            if self.dist.world_size > 1:
                torch_dist.barrier()
        self.agree(error)
        return result

    # ------------------------------------------------------------ start

    def task_state(self):
        """The script's part of the checkpoint being resumed (what its `state()` returned), or None for a new run."""
        return None if self.ckpt is None else self.ckpt["task"]

    def agree(self, error):
        """Every rank learns whether any rank failed; all raise the first error, so none waits forever."""
        if self.dist.world_size > 1:
            errors = [None] * self.dist.world_size
            torch_dist.all_gather_object(errors, error)
            error = next((e for e in errors if e), None)
        if error:
            raise UserError(error)

    def open(self, files=None):
        """Make the run folder (rank 0) and logging: the first thing a run writes.

        `files` maps file names to callables writing them (e.g. genotype.json), called once.
        """
        args, error = self.args, None
        if self.main:
            try:  # the folder's lock is held from here to the end of the process
                self.run_dir = run_folder.open_run_dir(self._run_dir, args.resume)
            except UserError as err:
                error = str(err)
        self.agree(error)
        if not self.main:
            logging.basicConfig(level=logging.WARNING)
            return None
        # A run resumed into a new folder takes its log, history, best.pt and TensorBoard scalars along (the old
        # folder stays as it was).
        moved_from = Path(args.resume).parent if self.ckpt is not None else self.run_dir
        moved = moved_from.resolve() != self.run_dir.resolve()
        if moved:
            try:
                for name in ("log.txt", "history.jsonl", "best.pt"):
                    if (moved_from / name).is_file():
                        shutil.copy(moved_from / name, self.run_dir / name)
                if (moved_from / "tb").is_dir():
                    shutil.copytree(moved_from / "tb", self.run_dir / "tb", dirs_exist_ok=True)
            except OSError as err:
                raise UserError(f"--save {self.run_dir}: cannot copy the run there ({err.strerror or err})") from None
        utils.setup_logging(self.run_dir)
        if self.ckpt is None or moved:
            utils.write_json(self.run_dir / "args.json", {**vars(args), "script": self.script})
            # The code of the run next to its results (DARTS' scripts/ folder).
            scripts = self.run_dir / "scripts"
            scripts.mkdir(exist_ok=True)
            for source in Path(__file__).resolve().parent.glob("*.py"):
                shutil.copy(source, scripts / source.name)
        for name, write in (files or {}).items():
            write(self.run_dir / name)
        utils.log_environment(args, self.dist.device)
        if getattr(args, "deterministic", False):
            logger.info("--deterministic: deterministic kernels and no cuDNN autotuning (slower)")
        for line in accel.describe(args, self.dist.device):
            logger.info("%s", line)
        if moved:
            logger.info("continuing the run of %s in %s (the old folder is left as it was)", moved_from, self.run_dir)
        logger.info(
            "run directory %s, %d process(es), %d CPU thread(s)",
            self.run_dir,
            self.dist.world_size,
            torch.get_num_threads(),
        )
        return self.run_dir

    # ------------------------------------------------------------ the loop's services

    def epochs(self, epochs, steps, state, streams=None, watched=(), best=None):
        """Yield the epochs still to run: all of them, or from a resumed checkpoint's epoch on.

        The script's loop calls `steps()`, `update()` and `end_epoch()` inside; around it this
        holds TensorBoard, history.jsonl and the SIGTERM/SIGINT handlers. `steps`: training
        steps per epoch; `state()`: the script's part of every checkpoint (plain types);
        `streams`: {name: stream} whose positions checkpoints keep; `watched`: tensors that must
        stay finite (beta); `best`: the record key whose best epoch is copied to best.pt.
        """
        args, dist = self.args, self.dist
        steps = min(steps, getattr(args, "max_steps_per_epoch", 0) or steps)  # the smoke-run cap
        self._state, self._streams, self._watched, self._best_key = state, streams or {}, watched, best
        start_epoch, start_step, meter_sums = 0, 0, None
        if self.ckpt is not None:
            start_epoch, start_step, self.best = self.ckpt["epoch"], self.ckpt["step"], self.ckpt["best"]
            meter_sums = self.ckpt["meter"] if start_step else None
            for name, stream in self._streams.items():
                stream.seek(self.ckpt["streams"][name])
            rng = self.ckpt["rng"]
            if len(rng) == dist.world_size:
                utils.set_rng_state(rng[dist.rank])
            else:
                logger.info("resuming on %d processes, not %d: random draws will differ", dist.world_size, len(rng))
            logger.info("resumed from %s at epoch %d, step %d", args.resume, start_epoch + 1, start_step)
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run replaces what TensorBoard holds past its checkpoint.
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_epoch)
            self.history = utils.History(self.run_dir, start_epoch)
        self._divergence = Divergence(dist.device, steps)
        self._stop = False
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self._steps = steps
        self._clock = Clock(epochs, steps, start_epoch, start_step)
        self._last_save = time.time()
        # Wall seconds and device-hours of the earlier sessions of this run, and when this session's loop began.
        self._usage = ((self.ckpt or {}).get("usage") or {"wall_s": 0.0, "device_hours": 0.0}, time.time())
        try:
            for epoch in range(start_epoch, epochs):
                self.epoch = epoch
                self._first_step = start_step if epoch == start_epoch else 0
                self._meter = Meter(dist.device, meter_sums if epoch == start_epoch else None)
                self._epoch_start = time.time()
                yield epoch
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.writer is not None:
                self.writer.close()

    def steps(self):
        """Yield the training steps of the epoch (a resumed run's first epoch from its checkpoint's step on).

        Between two steps: the progress line, the timed checkpoint, and after SIGTERM/SIGINT the
        preemption checkpoint and exit 0. After the last: the divergence check, before any evaluation.
        """
        epoch, steps = self.epoch, self._steps
        for step in range(self._first_step, steps):
            self._step = step
            yield step
            self._after_step(epoch, step, steps)
        self._trained = self._meter.result(self.dist)
        self._check(epoch)  # a diverged run stops before it evaluates
        self._evaluation_start = time.time()

    def update(self, logits, targets, loss):
        """Count one training step's batch in the epoch's metrics (on the device: no host read)."""
        self._meter.update(logits, targets, loss)
        self._divergence.watch(loss, self.epoch * self._steps + self._step)
        self._clock.tick(targets.size(0) * self.dist.world_size)

    def train_metrics(self):
        """The epoch's training loss, top-1 and top-5 (all ranks), once `steps()` has run out."""
        return {
            "train_loss": self._trained["loss"],
            "train_acc": self._trained["acc"],
            "train_top5": self._trained["top5"],
        }

    def end_epoch(self, record):
        """Record the epoch (log, history.jsonl, TensorBoard) and checkpoint it, once all is known to be finite.

        `record`: the script's fields of the epoch (lr, metrics, genotype, ...); the run adds the
        epoch, the best value so far, the time and the cost. A signal that came during the
        evaluation ends the run here, after the checkpoint. Returns the record as written.
        """
        epoch = self.epoch
        self._clock.evaluated(time.time() - self._evaluation_start)
        record = {"epoch": epoch, **record}
        state = self._state()
        self._check(epoch, state)
        key = self._best_key
        if key is not None and (self.best["value"] is None or record[key] > self.best["value"]):
            self.best = {"value": record[key], "epoch": epoch}
        if key is not None:
            record["best_acc"] = self.best["value"]
        record["time_s"] = round(time.time() - self._epoch_start, 2)
        record.update(self.usage())
        record["device"] = self.dist.device.type
        if self.main:
            shown = (_shown(k, v) for k, v in record.items() if k != "epoch" and _loggable(v))
            logger.info("epoch %d/%d %s", epoch + 1, self._clock.epochs, " ".join(shown))
            # History and TensorBoard first, the checkpoint last: a run killed in between
            # repeats this epoch on resume, and History drops the repeated line.
            self.history.append(record)
            for name, value in record.items():
                if isinstance(value, (int, float)) and name != "epoch":
                    self.writer.add_scalar(name.replace("_", "/", 1), value, epoch)
            self.writer.flush()
        self._save(epoch + 1, 0, None, state)
        if self.main and key is not None and self.best["epoch"] == epoch:
            utils.write_atomic(self.run_dir / "best.pt", (self.run_dir / "checkpoint.pt").read_bytes())
        if self._agreed(self._stop)[0] and epoch + 1 < self._clock.epochs:  # a signal during the evaluation
            self._preempted(epoch + 1, 0)
        return record

    # ------------------------------------------------------------ between steps

    def _on_signal(self, signum, _frame):
        if self._stop and signum == signal.SIGINT:  # a second Ctrl-C: the user wants out now
            logger.info("second SIGINT: stopping at once (the last checkpoint is kept)")
            raise SystemExit(130)
        self._stop = True
        logger.info("%s received: stopping after this step", signal.Signals(signum).name)

    def _check(self, epoch, state=None):
        """Stop with one line if a loss, a watched tensor or the `state` about to be saved is not finite."""
        found = self._divergence.find(list(self._watched), state, epoch, self.dist.world_size)
        if found is None:
            return
        what, where = found
        kept = "nothing was checkpointed"
        if self.run_dir is not None and (self.run_dir / "checkpoint.pt").exists():
            kept = f"the last good checkpoint {self.run_dir / 'checkpoint.pt'} is kept"
        raise UserError(
            f"{what} is not finite at {where}: the run diverged and stops ({kept}); try a smaller "
            f"--learning_rate (now {self.args.learning_rate}) or --grad_clip"
        )

    def _after_step(self, epoch, step, steps):
        """Progress lines, time-based checkpoints and preemption, between two steps."""
        scheduled = step + 1 == steps or (step + 1) % self.args.report_freq == 0
        if self._clock.due(scheduled):  # also every 30 s: this rank's running averages, no collective
            result = self._meter.result()
            logger.info(
                "epoch %d/%d step %d/%d loss %.4f top1 %.2f%% top5 %.2f%% | %s",
                epoch + 1,
                self._clock.epochs,
                step + 1,
                steps,
                result["loss"],
                result["acc"],
                result["top5"],
                self._clock.line(),
            )
        # Under torchrun the ranks decide together, at steps they all agree on: every
        # SYNC_STEPS steps, so that a stop costs no device sync per step.
        if self.dist.world_size > 1 and not (scheduled or (step + 1) % SYNC_STEPS == 0):
            return
        if scheduled:
            self._check(epoch)
        minutes = getattr(self.args, "checkpoint_minutes", 0) or math.inf
        timed = time.time() - self._last_save > 60 * minutes and step + 1 < steps
        stop, timed = self._agreed(self._stop, timed)
        if stop or timed:
            self._save(epoch, step + 1, self._meter)
            if stop:
                self._preempted(epoch, step + 1)

    def _agreed(self, *flags):
        """Under torchrun, each flag true on any rank is true on all: every rank stops (or checkpoints) alike."""
        if self.dist.world_size == 1:
            return flags
        values = torch.tensor([float(f) for f in flags], device=self.dist.device)
        torch_dist.all_reduce(values, op=torch_dist.ReduceOp.MAX)
        return tuple(bool(v) for v in values.tolist())

    def _preempted(self, epoch, step):
        """End the run after its preemption checkpoint (written at `epoch`, `step`), exit status 0."""
        world = self.dist.world_size
        launcher = f"torchrun --nproc_per_node {world}" if world > 1 else "python"
        logger.info(
            "preempted: checkpoint written at epoch %d, step %d; continue with: %s %s.py --resume %s",
            epoch + 1,
            step,
            launcher,
            self.script,
            self.run_dir,
        )
        raise SystemExit(0)

    def usage(self):
        """{"wall_s", "device_hours"} of the run so far, resumed sessions included: what a report's cost is.

        Counted from the start of each session's epoch loop (set-up and downloads are not);
        device-hours are wall hours times the number of processes.
        """
        done, since = self._usage
        seconds = time.time() - since
        # Rounded here, so that history.jsonl and the checkpoint count alike (rounding keeps the order).
        return {
            "wall_s": round(done["wall_s"] + seconds, 2),
            "device_hours": round(done["device_hours"] + seconds * self.dist.world_size / 3600, 6),
        }

    def _save(self, epoch, step, meter, state=None):
        """Write checkpoint.pt atomically (rank 0); `epoch`/`step` is where a resumed run starts.

        Only finite checkpoints are written: a `state` not given is taken and checked here.
        """
        if state is None:
            state = self._state()
            self._check(epoch, state)
        rng = [utils.rng_state()]
        if self.dist.world_size > 1:
            rng = [None] * self.dist.world_size
            torch_dist.all_gather_object(rng, utils.rng_state())
        if not self.main:
            return
        utils.save_checkpoint(
            {
                "version": CHECKPOINT_VERSION,
                "space": self.space,
                "epoch": epoch,
                "epochs": self._clock.epochs,
                "step": step,
                "args": {**vars(self.args), "script": self.script},
                "rng": rng,
                "streams": {name: s.position() for name, s in self._streams.items()},
                "meter": None if meter is None else meter.sums.tolist(),
                "best": self.best,
                "usage": self.usage(),
                "task": state,
            },
            self.run_dir / "checkpoint.pt",
        )
        self._last_save = time.time()


def _shown(key, value):
    """A record field as the epoch's log line shows it: floats to 4 digits, the stage counted from 1.

    history.jsonl counts epochs and stages from 0; the log counts both from 1, as the paper does.
    """
    if key == "stage":
        return f"stage {value + 1}"
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"


def _loggable(value):
    """Whether a record field fits the epoch's log line (numbers and short strings; not the genotype)."""
    return isinstance(value, (int, float, str)) and len(str(value)) < 40
