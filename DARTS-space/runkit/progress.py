"""What a run watches on the device, no host read per step: metrics (`Meter`), ETA (`Clock`), `Divergence`."""

import time

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F

from . import utils


class Meter:
    """Loss, top-1 and top-5 of an epoch: sums (loss * n, top-1 hits, top-5 hits, n) on the device, read once."""

    def __init__(self, device, sums=None):
        self.sums = torch.tensor(sums or [0.0] * 4, dtype=torch.float64, device=device)

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
        loss, top1, top5, _ = (sums / sums[3].clamp_min(1.0)).tolist()
        return {"loss": loss, "acc": 100 * top1, "top5": 100 * top5}


@torch.no_grad()
def infer(model, loader, device):
    """The `Meter` of `model` in eval mode on `loader` (of a `(logits, auxiliary logits)` output the first counts)."""
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
        self.epochs, self.evals_left, self.done, self.samples = epochs, epochs - start_epoch, 0, 0
        self.left = (epochs - start_epoch) * steps - start_step  # training steps still to run
        self.start = self.last_line = time.time()
        self.eval_seconds = self.eval_total = 0.0

    def tick(self, samples):
        self.done, self.samples = self.done + 1, self.samples + samples

    def evaluated(self, seconds):
        self.eval_seconds, self.eval_total, self.evals_left = seconds, self.eval_total + seconds, self.evals_left - 1

    def line(self, scheduled):
        """Speed and ETA when a progress line is due (at the scheduled steps, and at least every 30 s), else None."""
        if not scheduled and time.time() - self.last_line < 30:
            return None
        self.last_line = time.time()
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
        """None, or (what is not finite, where) over all ranks in one host read: a loss, `watched`, else `state`."""
        flags = torch.stack([self.first_bad.double(), *(_not_finite(x, self.device) for x in (watched, state))])
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


def _not_finite(obj, device):
    """Whether a float tensor in `obj` (nested dicts, lists, tuples) is not finite: 1.0 or 0.0 on `device`, unread."""
    if torch.is_tensor(obj) and obj.is_floating_point():
        return (~torch.isfinite(obj.detach())).any().to(device).double()
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return sum((_not_finite(v, device) for v in values), torch.zeros((), dtype=torch.float64, device=device))
