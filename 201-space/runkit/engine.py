"""The run engine: what a script's own epoch loop calls around its step (an example: the README's "Code layout").

`parse_args` and `Run` check the flags, the run folder and `--resume`, writing nothing; `open` makes the run folder;
`epochs`, `steps`, `update` and `end_epoch` walk the loop, resume it inside an epoch, checkpoint it (every epoch,
every `--checkpoint_minutes`, and on SIGTERM/SIGINT, then exit 0), stop a diverged run, and log the epochs.
"""

import argparse
import json
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
from .progress import Clock, Divergence, Meter
from .utils import UserError

logger = logging.getLogger(__name__)

# 3: "space" recorded, so that a checkpoint of the other folder is refused; 4: the l2 regulariser of beta is
# a loss term, no longer Adam's weight decay (a version-3 Adam state would apply it twice), and "epochs" recorded;
# 5: a DARTS search's kept ops are one list per edge, as in 201 (no longer a dict by cell type).
CHECKPOINT_VERSION = 5
SYNC_STEPS = 10  # under torchrun, ranks agree on stopping and timed checkpoints every this many steps
# The top-level keys of every checkpoint, in order (`Run._save`); what is particular to a script lies under "task".
CHECKPOINT_KEYS = (
    "version", "space", "epoch", "epochs", "step", "args", "rng", "streams", "meter", "best", "usage", "task"
)  # fmt: skip
Dist = namedtuple("Dist", "rank local_rank world_size device")


def parse_args(parser, space, script, argv=None):
    """The script's flags; with `--resume`, the checkpoint's for every flag not given (a finished run exits 0)."""
    args = parser.parse_args(argv)
    if args.resume is None:
        return args
    ckpt = read_resumed(args, space, script)
    # argparse fills in a default only where the namespace has no value: `unset` marks the flags not typed.
    unset = object()
    given = parser.parse_args(argv, argparse.Namespace(**{a.dest: unset for a in parser._actions}))
    saved, typed = ckpt["args"], {name for name, value in vars(given).items() if value is not unset}
    for key in vars(args):
        if key in saved and key not in typed and key not in ("save", "resume"):
            setattr(args, key, saved[key])
    run_flags.check_resume(saved, args)
    if ckpt.get("epochs") is not None and ckpt["epoch"] >= ckpt["epochs"]:
        if os.environ.get("RANK", "0") == "0":
            print(f"{args.resume}: the run is finished ({ckpt['epochs']} of {ckpt['epochs']} epochs); nothing to do")
        raise SystemExit(0)
    return args


def read_resumed(args, space, script):
    """The checkpoint `--resume` names; refused unless this script of this space, in this layout, wrote it."""
    path = args.resume = str(run_folder.checkpoint_of(args.resume))
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
        """Check the flags (`ranges`: the script's own, beside `run_flags.RANGES`), the run folder and --resume,
        then join the processes (`join(device, gpu)`). Writes nothing."""
        run_flags.check_ranges(args, ranges)
        self.args, self.space, self.script = args, space, script
        self.ckpt = None
        if args.resume:
            self.ckpt = read_resumed(args, space, script)
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
        """Make the run folder (rank 0; its lock held to the end), the log, and `files` ({name: write(path)})."""
        args, error = self.args, None
        if self.main:
            try:
                self.run_dir = run_folder.open_run_dir(self._run_dir, args.resume)
            except UserError as err:
                error = str(err)
        self.agree(error)
        if not self.main:
            logging.basicConfig(level=logging.WARNING)
            return None
        # A run resumed into a new folder takes its log, history, best.pt and TensorBoard along (the old one stays).
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
            folder = Path(__file__).resolve().parent.parent  # the code of the run next to its results: scripts/
            for source in [*folder.glob("*.py"), *folder.glob("runkit/*.py")]:
                target = self.run_dir / "scripts" / source.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
        for name, write in (files or {}).items():
            write(self.run_dir / name)
        import torchvision

        logger.info("args = %s", json.dumps(vars(args), sort_keys=True))
        versions = (torch.__version__, torchvision.__version__, torch.version.cuda, self.dist.device)
        logger.info("torch %s, torchvision %s, CUDA %s, device %s", *versions)
        if getattr(args, "deterministic", False):
            logger.info("--deterministic: deterministic kernels and no cuDNN autotuning (slower)")
        for line in accel.describe(args, self.dist.device):
            logger.info("%s", line)
        if moved:
            logger.info("continuing the run of %s in %s (the old folder is left as it was)", moved_from, self.run_dir)
        processes, threads = self.dist.world_size, torch.get_num_threads()
        logger.info("run directory %s, %d process(es), %d CPU thread(s)", self.run_dir, processes, threads)
        return self.run_dir

    def epochs(self, epochs, steps, state, streams=None, watched=(), best=None):
        """Yield the epochs still to run. `steps` per epoch; `state()`: the script's part of every checkpoint;
        `streams`: {name: stream}, their positions checkpointed; `watched`: tensors that must stay finite; `best`: the
        record key whose best epoch is copied to best.pt."""
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
        """Record the epoch (the script's `record` and the run's fields: log, history.jsonl, TensorBoard), checkpoint
        it once all is known to be finite, and end the run if a signal came during the evaluation."""
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
        record.update(self.usage(), device=self.dist.device.type)
        if self.main:
            # The log line: numbers and short strings (not the genotype), floats to 4 digits, stages from 1.
            shown = [
                f"stage {v + 1}" if k == "stage" else f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in record.items()
                if k != "epoch" and isinstance(v, (int, float, str)) and len(str(v)) < 40
            ]
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
                epoch + 1, self._clock.epochs, step + 1, steps, result["loss"], result["acc"], result["top5"],
                self._clock.line(),
            )  # fmt: skip
        # Under torchrun the ranks decide together every SYNC_STEPS steps, so that a stop costs no sync per step.
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
        command = f"{launcher} {self.script}.py --resume {self.run_dir}"
        logger.info("preempted: checkpoint written at epoch %d, step %d; continue with: %s", epoch + 1, step, command)
        raise SystemExit(0)

    def usage(self):
        """{"wall_s", "device_hours"} of the run's epoch loops so far, resumed sessions included (rounded here, so
        that history.jsonl and the checkpoint count alike); device-hours are wall hours times the processes."""
        done, since = self._usage
        seconds = time.time() - since
        return {
            "wall_s": round(done["wall_s"] + seconds, 2),
            "device_hours": round(done["device_hours"] + seconds * self.dist.world_size / 3600, 6),
        }

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
