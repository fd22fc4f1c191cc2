"""The run engine around a script's own epoch loop (the README's "Code layout"): checked flags and run folder, exact
resume, checkpoints (every epoch, every --checkpoint_minutes, on SIGTERM/SIGINT), the divergence stop, the epoch log."""

import argparse
import json
import logging
import os
import shutil
import signal
import time
from collections import namedtuple
from importlib.metadata import version
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch.utils.tensorboard import SummaryWriter

from . import accel, run_flags, run_folder, utils
from .progress import Clock, Divergence, Meter
from .utils import UserError

logger = logging.getLogger(__name__)

# 3: "space" recorded; 4: beta's l2 a loss term, "epochs" recorded; 5: DARTS kept ops per edge; 6: 201 ops by index.
CHECKPOINT_VERSION = 6
SYNC_STEPS = 10  # under torchrun, ranks agree on stopping and timed checkpoints every this many steps
# The top-level keys of every checkpoint, in order (`Run._save`); what is particular to a script lies under "task".
CHECKPOINT_KEYS = tuple("version space epoch epochs step args rng streams meter best usage task".split())
Dist = namedtuple("Dist", "rank local_rank world_size device")
SCRIPTS = Path(__file__).resolve().parent.parent  # the scripts' folder


def parse_args(parser, space, script, argv=None):
    """The script's flags; with `--resume`, the checkpoint's for every flag not given (a finished run exits 0)."""
    args = parser.parse_args(argv)
    if args.resume is None:
        return args
    ckpt = read_resumed(args, space, script)
    # argparse fills in a default only where the namespace has no value: `unset` marks the flags not typed.
    unset = object()
    given = parser.parse_args(argv, argparse.Namespace(**{a.dest: unset for a in parser._actions}))
    typed = {name for name, value in vars(given).items() if value is not unset} | {"save", "resume"}
    for key, value in ckpt["args"].items():
        if hasattr(args, key) and key not in typed:
            setattr(args, key, value)
    run_flags.check_resume(ckpt["args"], args)
    if ckpt.get("epochs") is not None and ckpt["epoch"] >= ckpt["epochs"]:
        if os.environ.get("RANK", "0") == "0":
            print(f"{args.resume}: the run is finished ({ckpt['epochs']} of {ckpt['epochs']} epochs); nothing to do")
        raise SystemExit(0)
    return args


def read_resumed(args, space, script):
    """The checkpoint `--resume` names; refused unless this script of this space, in this layout, wrote it."""
    path = args.resume = str(run_folder.checkpoint_of(args.resume))
    ckpt = utils.load_checkpoint(path)
    if ckpt.get("version") != CHECKPOINT_VERSION:
        layout = "written by an earlier version of this code (another checkpoint layout)"
        raise UserError(f"--resume {path}: {layout}; start a new run")
    its_space, its_script = ckpt.get("space"), ckpt.get("args", {}).get("script")
    if (its_space, its_script) != (space, script):
        what = f"a checkpoint of {its_script}.py in the {its_space} space, not of this {script}.py ({space} space)"
        raise UserError(f"--resume {path}: {what}; resume it with {its_space}/{its_script}.py")
    return ckpt


class Run:
    """One run of a script: checked arguments, run folder, checkpoints, epoch loop, signals, divergence."""

    def __init__(self, args, space, script, join=None, ranges=None):
        """Check the flags (`ranges`: the script's own), the run folder and --resume, then join the processes."""
        run_flags.check_ranges(args, ranges)
        self.args, self.space, self.script = args, space, script
        self.ckpt = read_resumed(args, space, script) if args.resume else None  # parse_args checked its flags
        if getattr(args, "threads", 0):
            torch.set_num_threads(args.threads)
        new = SCRIPTS / "experiments" / f"{script}-{time.strftime('%Y%m%d-%H%M%S')}"
        self._run_dir = Path(args.save or (Path(args.resume).parent if args.resume else new))
        run_folder.check_run_dir(self._run_dir, args.resume)
        if getattr(args, "deterministic", False):
            utils.set_deterministic()  # before any process group or CUDA work
        gpu = getattr(args, "gpu", None)
        self.dist = join(args.device, gpu) if join else Dist(0, 0, 1, utils.resolve_device(args.device, gpu))
        self.run_dir = self.writer = None
        self.main, self.best = self.dist.rank == 0, {"value": None, "epoch": -1}  # of `epochs`' `best` record key
        if args.batch_size % self.dist.world_size:
            raise UserError(f"--batch_size {args.batch_size} does not split over {self.dist.world_size} processes")

    def _on_ranks(self, load, here):
        """`load()` where `here`; a failure on any rank then raises its error on every rank (none waits forever)."""
        result, error = None, None
        if here:
            try:
                result = load()
            except UserError as err:
                error = str(err)
        if self.dist.world_size > 1:
            errors = [None] * self.dist.world_size
            torch_dist.all_gather_object(errors, error)
            error = next((e for e in errors if e), None)
        if error:
            raise UserError(error)
        return result

    def first_on_rank0(self, load):
        """`load()` on rank 0, then on the other ranks (a download happens once); any failure stops all."""
        first, then = self._on_ranks(load, self.main), self._on_ranks(load, not self.main)
        return first if self.main else then

    def task_state(self):
        """The script's part of the checkpoint being resumed (what its `state()` returned), or None for a new run."""
        return self.ckpt and self.ckpt["task"]

    def open(self, files=None):
        """Make the run folder (rank 0; its lock held to the end), the log, and `files` ({name: write(path)})."""
        args = self.args
        self.run_dir = self._on_ranks(lambda: run_folder.open_run_dir(self._run_dir, args.resume), self.main)
        if not self.main:
            logging.basicConfig(level=logging.WARNING)
            return None
        # A run resumed into a new folder takes its log, history, best.pt and TensorBoard along (the old one stays).
        moved_from = Path(args.resume).parent if args.resume else self.run_dir
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
            for source in [*SCRIPTS.glob("*.py"), *SCRIPTS.glob("runkit/*.py")]:  # the run's code beside its results
                target = self.run_dir / "scripts" / source.relative_to(SCRIPTS)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
        for name, write in (files or {}).items():
            write(self.run_dir / name)
        logger.info("args = %s", json.dumps(vars(args), sort_keys=True))
        versions = (torch.__version__, version("torchvision"), torch.version.cuda, self.dist.device)
        logger.info("torch %s, torchvision %s, CUDA %s, device %s", *versions)
        if getattr(args, "deterministic", False):
            logger.info("--deterministic: deterministic kernels and no cuDNN autotuning (slower)")
        for line in accel.describe(args, self.dist.device):
            logger.info("%s", line)
        if moved:
            logger.info("continuing the run of %s in %s (the old folder is left as it was)", moved_from, self.run_dir)
        where = (self.run_dir, self.dist.world_size, torch.get_num_threads())
        logger.info("run directory %s, %d process(es), %d CPU thread(s)", *where)
        return self.run_dir

    def epochs(self, epochs, steps, state, streams=None, watched=(), best=None):
        """Yield the epochs still to run. `steps` per epoch; `state()`: the script's part of every checkpoint;
        `streams`: {name: stream} checkpointed; `watched`: tensors that must stay finite; `best`: a record key."""
        args, dist = self.args, self.dist
        steps = min(steps, getattr(args, "max_steps_per_epoch", 0) or steps)  # the smoke-run cap
        self._state, self._streams, self._watched, self._best_key = state, streams or {}, watched, best
        start_epoch, start_step, meter_sums = 0, 0, None
        if self.ckpt is not None:
            start_epoch, start_step, meter_sums, self.best = (self.ckpt[k] for k in ("epoch", "step", "meter", "best"))
            for name, stream in self._streams.items():
                stream.seek(self.ckpt["streams"][name])
            rng = self.ckpt["rng"]
            if len(rng) == dist.world_size:
                utils.set_rng_state(rng[dist.rank])
            else:
                logger.info("resuming on %d processes, not %d: random draws will differ", dist.world_size, len(rng))
            logger.info("resumed from %s at epoch %d, step %d", args.resume, start_epoch + 1, start_step)
        if self.main:  # purge_step: a resumed run replaces what TensorBoard holds past its checkpoint
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_epoch)
            self.history = utils.History(self.run_dir, start_epoch)
        self._steps, self._stop, self._last_save = steps, False, time.time()
        self._divergence, self._clock = Divergence(dist.device, steps), Clock(epochs, steps, start_epoch, start_step)
        self._usage = ((self.ckpt or {}).get("usage") or {"wall_s": 0.0, "device_hours": 0.0}, time.time())
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for epoch in range(start_epoch, epochs):
                first = epoch == start_epoch
                self.epoch, self._epoch_start, self._first_step = epoch, time.time(), start_step if first else 0
                self._meter = Meter(dist.device, meter_sums if first else None)
                yield epoch
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.writer is not None:
                self.writer.close()

    def steps(self):
        """Yield the epoch's training steps; between two: progress lines, timed and preemption checkpoints."""
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
        return {f"train_{name}": value for name, value in self._trained.items()}

    def end_epoch(self, record):
        """Log the epoch's record, checkpoint it once known finite, and end the run if a signal came meanwhile."""
        epoch, state, key = self.epoch, self._state(), self._best_key
        self._clock.evaluated(time.time() - self._evaluation_start)
        record = {"epoch": epoch, **record}
        self._check(epoch, state)
        if key is not None:
            if self.best["value"] is None or record[key] > self.best["value"]:
                self.best = {"value": record[key], "epoch": epoch}
            record["best_acc"] = self.best["value"]
        record["time_s"] = round(time.time() - self._epoch_start, 2)
        record.update(self.usage(), device=self.dist.device.type)
        if self.main:
            # The log line: numbers and short strings (not the genotype), floats to 4 digits, stages from 1.
            shown = [
                f"stage {v + 1}" if k == "stage" else f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in record.items()
                if k != "epoch" and isinstance(v, (int, float, str)) and len(str(v)) < 40
            ]
            logger.info("epoch %d/%d %s", epoch + 1, self._clock.epochs, " ".join(shown))
            # History and TensorBoard before the checkpoint: a run killed in between redoes the epoch; History drops it.
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
        ckpt = self.run_dir and self.run_dir / "checkpoint.pt"
        kept = f"the last good checkpoint {ckpt} is kept" if ckpt and ckpt.exists() else "nothing was checkpointed"
        hint = f"try a smaller --learning_rate (now {self.args.learning_rate}) or --grad_clip"
        raise UserError(f"{found[0]} is not finite at {found[1]}: the run diverged and stops ({kept}); {hint}")

    def _after_step(self, epoch, step, steps):
        scheduled = step + 1 == steps or (step + 1) % self.args.report_freq == 0
        speed = self._clock.line(scheduled)
        if speed:  # this rank's running averages, no collective
            m, at = self._meter.result(), f"epoch {epoch + 1}/{self._clock.epochs} step {step + 1}/{steps}"
            logger.info("%s loss %.4f top1 %.2f%% top5 %.2f%% | %s", at, m["loss"], m["acc"], m["top5"], speed)
        # Under torchrun the ranks decide together every SYNC_STEPS steps, so that a stop costs no sync per step.
        if self.dist.world_size > 1 and not (scheduled or (step + 1) % SYNC_STEPS == 0):
            return
        if scheduled:
            self._check(epoch)
        minutes = getattr(self.args, "checkpoint_minutes", 0) or float("inf")
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
        launcher = f"torchrun --nproc_per_node {self.dist.world_size}" if self.dist.world_size > 1 else "python"
        command = f"{launcher} {self.script}.py --resume {self.run_dir}"
        logger.info("preempted: checkpoint written at epoch %d, step %d; continue with: %s", epoch + 1, step, command)
        raise SystemExit(0)

    def usage(self):
        """{"wall_s", "device_hours"} of the run's epoch loops so far, earlier sessions included; rounded here."""
        done, seconds = self._usage[0], time.time() - self._usage[1]
        hours = done["device_hours"] + seconds * self.dist.world_size / 3600
        return {"wall_s": round(done["wall_s"] + seconds, 2), "device_hours": round(hours, 6)}

    def _save(self, epoch, step, meter, state=None):
        """Write checkpoint.pt atomically (rank 0), where a resumed run starts; a `state` not given is checked here."""
        if state is None:
            state = self._state()
            self._check(epoch, state)
        rng = [utils.rng_state()]
        if self.dist.world_size > 1:
            rng = [None] * self.dist.world_size
            torch_dist.all_gather_object(rng, utils.rng_state())
        if not self.main:
            return
        args, streams = {**vars(self.args), "script": self.script}, {n: s.position() for n, s in self._streams.items()}
        sums = None if meter is None else meter.sums.tolist()
        values = (CHECKPOINT_VERSION, self.space, epoch, self._clock.epochs, step, args, rng, streams, sums, self.best)
        ckpt = dict(zip(CHECKPOINT_KEYS, (*values, self.usage(), state)))
        utils.save_checkpoint(ckpt, self.run_dir / "checkpoint.pt")
        self._last_save = time.time()
