"""What a run measures as it goes: the epoch's metrics (`Meter`) and its speed and ETA (`Clock`).

`Meter` sums loss, top-1 and top-5 hits on the device and reads them once per report;
`Clock` counts steps and images for the progress line and its ETA. Not a script; the
same file in both folders.
"""

import time

import torch
import torch.distributed as torch_dist

from . import utils


class Meter:
    """Loss, top-1 and top-5 of an epoch: sums on the device, read (and reduced over ranks) once."""

    def __init__(self, device, sums=None):
        # loss * n, top-1 hits, top-5 hits, n
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)
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


class Clock:
    """Throughput and ETA over the training steps and the evaluations still to come."""

    def __init__(self, epochs, steps, start_epoch, start_step):
        self.epochs = epochs
        self.left = (epochs - start_epoch) * steps - start_step
        self.done = 0
        self.samples = 0
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
        per_step = elapsed / max(self.done, 1)
        eta = per_step * (self.left - self.done) + self.eval_seconds * self.evals_left
        return f"{self.samples / elapsed:.1f} img/s, ETA {utils.format_seconds(eta)}"
