"""Divergence: a training loss, an architecture parameter or a state to be saved that is not finite.

`Divergence.watch` remembers, on the device, the first step whose loss is not finite (no
host read per step); `Divergence.find` reads that, and whether the watched tensors or a
checkpoint's state hold a NaN or an infinity, in one host read (reduced over ranks). The
run engine calls it at progress lines and before every checkpoint, and stops the run
with one line. Not a script; the same file in both folders.
"""

import torch
import torch.distributed as torch_dist


class Divergence:
    """The first non-finite training loss of a run, kept on the device, and the one-read check."""

    def __init__(self, device, steps):
        self.device, self.steps = device, steps  # steps per epoch, to name the bad step
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # global step, -1 for none

    def watch(self, loss, global_step):
        """Remember `global_step` if its loss is the first that is not finite (device-side, never read)."""
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad & (self.first_bad < 0), global_step, self.first_bad)

    def find(self, watched, state, epoch, world_size=1):
        """None, or (what is not finite, where) over every rank: one host read.

        `watched` are tensors that must stay finite (beta); `state` is what a checkpoint is about
        to hold. A step's loss comes from the weights before its update, so a checkpoint could
        hold non-finite weights with every loss finite: hence `state`.
        """
        flags = torch.stack(
            [
                self.first_bad.double(),
                _any_not_finite(watched, self.device),
                _any_not_finite(_float_tensors(state), self.device),
            ]
        )
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
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _float_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _float_tensors(value)


def _any_not_finite(tensors, device):
    """1.0 if any of `tensors` holds a NaN or an infinity, else 0.0: a float64 scalar on `device`, not read."""
    bad = torch.zeros((), dtype=torch.bool, device=device)
    for t in tensors:
        bad = bad | (~torch.isfinite(t.detach())).any().to(device)
    return bad.double()
