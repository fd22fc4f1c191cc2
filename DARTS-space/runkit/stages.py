"""The stage schedule of a search (DrNAS Sec. 3.3, progressive learning).

A search runs in stages: each has its epochs, its partial-channel `k` (1/k of the channels
go through each edge), the number of ops it keeps per edge, and its weight-only warm-up
epochs at its start. Between two stages the supernet is pruned and widened
(`enter_stage` in search.py). A plain search is one stage. `stage_at` says where an epoch
falls; `check_warmup` refuses a warm-up that would leave a stage without architecture
steps. Not a script; the same file in both folders.
"""

from collections import namedtuple

from .utils import UserError

# One stage: its epochs, partial-channel k, ops kept per edge, weight-only warm-up epochs.
Stage = namedtuple("Stage", "epochs k keep warmup")


def stage_at(stages, epoch):
    """(index of the stage `epoch` falls in, whether beta trains in it: False in the stage's warm-up)."""
    start = 0
    for index, stage in enumerate(stages):
        if epoch < start + stage.epochs or index == len(stages) - 1:
            return index, epoch - start >= stage.warmup
        start += stage.epochs
    raise ValueError("no stages")


def check_warmup(stages):
    """Refuse, in one line, a warm-up that covers a whole stage: that stage would never train the architecture."""
    for index, stage in enumerate(stages):
        if stage.warmup >= stage.epochs:
            epochs = " ".join(str(s.epochs) for s in stages)
            raise UserError(
                f"--warmup_epochs {stage.warmup} covers all {stage.epochs} epochs of stage {index + 1} (--stage_epochs "
                f"{epochs}), which would never train the architecture; pass --warmup_epochs "
                f"{min(s.epochs for s in stages) - 1} or less, or longer --stage_epochs"
            )
