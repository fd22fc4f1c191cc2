"""What a run watches as it goes, on the device without a host read per step: the epoch's metrics (`Meter`), its
speed and ETA (`Clock`), and the first value that is not finite (`Divergence`)."""

import time

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F

from . import utils


class Meter:
    """Loss, top-1 and top-5 of an epoch: sums on the device, read (and reduced over ranks) once."""

    def __init__(self, device, sums=None):
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss * n, top-1 hits, top-5 hits, n
        if sums is not None:
            self.sums.copy_(torch.as_tensor(sums, dtype=torch.float64))

    def update(self, logits, targets, loss):
        """Add a batch: `loss` is its mean over the batch (a 0-d tensor, never read here)."""
        logits = logits.detach()
        hits = logits.topk(min(5, logits.size(1)), dim=1).indices.eq(targets[:, None])  # (B, min(5, classes))
        # Filled on the device: `new_tensor` would copy from the host and wait for the GPU every step.
        n = torch.full((), targets.size(0), dtype=torch.float64, device=targets.device)
        self.sums += torch.stack([loss.detach().double() * n, hits[:, 0].sum().double(), hits.any(1).sum().double(), n])

    def result(self, dist=None):
        """{"loss", "acc", "top5"} over every rank's batches (accuracies in %)."""
        sums = self.sums.clone()
        if dist is not None and dist.world_size > 1:
            torch_dist.all_reduce(sums)
        loss, top1, top5, n = sums.tolist()
        n = max(n, 1.0)
        return {"loss": loss / n, "acc": 100 * top1 / n, "top5": 100 * top5 / n}


@torch.no_grad()
def infer(model, loader, device):
    """The `Meter` (top-1, top-5, cross-entropy) of `model` in eval mode on `loader`, the same in every script of
    both folders; of a `(logits, auxiliary logits)` output the first counts. `.result(dist)` reads it."""
    model.eval()
    meter = Meter(device)
    for x, y in loader:
        logits = model(x.to(device, non_blocking=True))
        logits = (logits[0] if isinstance(logits, tuple) else logits).float()
        y = y.to(device, non_blocking=True)
        meter.update(logits, y, F.cross_entropy(logits, y))
    return meter


class Clock:
    """Throughput and ETA over the training steps and the evaluations still to come."""

    def __init__(self, epochs, steps, start_epoch, start_step):
        self.epochs, self.done, self.samples = epochs, 0, 0
        self.left = (epochs - start_epoch) * steps - start_step  # training steps still to run
        self.start = self.last_line = time.time()
        self.eval_seconds = self.eval_total = 0.0
        self.evals_left = epochs - start_epoch

    def tick(self, samples):
        self.done += 1
        self.samples += samples

    def evaluated(self, seconds):
        self.eval_seconds = seconds
        self.eval_total += seconds
        self.evals_left -= 1

    def due(self, scheduled):
        """A progress line is due: at the scheduled steps, and at least every 30 s."""
        if scheduled or time.time() - self.last_line >= 30:
            self.last_line = time.time()
            return True
        return False

    def line(self):
        elapsed = max(time.time() - self.start - self.eval_total, 1e-9)  # training time only
        eta = elapsed / max(self.done, 1) * (self.left - self.done) + self.eval_seconds * self.evals_left
        return f"{self.samples / elapsed:.1f} img/s, ETA {utils.format_seconds(eta)}"


class Divergence:
    """The first non-finite training loss of a run, kept on the device, and the check that reads it."""

    def __init__(self, device, steps):
        self.device, self.steps = device, steps  # steps per epoch, to name the bad step
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # global step, -1 for none

    def watch(self, loss, global_step):
        """Remember `global_step` if its loss is the first that is not finite (device-side, never read)."""
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad & (self.first_bad < 0), global_step, self.first_bad)

    def find(self, watched, state, epoch, world_size=1):
        """None, or (what is not finite, where) over every rank, in one host read: the first bad loss, else the
        `watched` tensors (beta), else the `state` a checkpoint is about to hold (a step's loss comes from the
        weights before its update, so the weights can go bad with every loss finite)."""
        bad_state = _any_not_finite(_float_tensors(state), self.device)
        flags = torch.stack([self.first_bad.double(), _any_not_finite(watched, self.device), bad_state])
        if world_size > 1:
            torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX)
        bad_step, bad_watched, bad_state = flags.tolist()
        if bad_step >= 0:
            epoch_of, step_of = divmod(int(bad_step), self.steps)
            return "the training loss", f"epoch {epoch_of + 1}, step {step_of + 1}"
        if bad_watched:
            return "the architecture parameters", f"epoch {epoch + 1}"
        if bad_state:
            return "the weights or optimiser state", f"epoch {epoch + 1}"
        return None


def _float_tensors(obj):
    """Every floating-point tensor inside nested dicts, lists and tuples (a task's state)."""
    if torch.is_tensor(obj):
        if obj.is_floating_point():
            yield obj.detach()
    elif isinstance(obj, (dict, list, tuple)):
        for value in obj.values() if isinstance(obj, dict) else obj:
            yield from _float_tensors(value)


def _any_not_finite(tensors, device):
    """1.0 if any of `tensors` holds a NaN or an infinity, else 0.0: a float64 scalar on `device`, not read."""
    bad = torch.zeros((), dtype=torch.bool, device=device)
    for t in tensors:
        bad = bad | (~torch.isfinite(t.detach())).any().to(device)
    return bad.double()
