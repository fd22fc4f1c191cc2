"""`LoopRun`: engine.Run's loop services in memory (epochs, steps, records, updates, saved state, guard)."""

import contextlib
import copy
from types import SimpleNamespace

import torch


class LoopRun:
    """engine.Run's loop services without files: the epochs in `only` (all by default), `steps` steps each."""

    def __init__(self, only=None, steps=None, state=None, device="cpu", guard=None):
        self.only, self.steps_per_epoch, self.resumed, self.guard = only, steps, state, guard
        self.dist = SimpleNamespace(rank=0, local_rank=0, world_size=1, device=torch.device(device))
        self.main, self.run_dir, self.best = False, None, {"value": None, "epoch": -1}
        self.records, self.updates, self.saved, self.state = [], [], [], None

    def task_state(self):
        return self.resumed

    def epochs(self, epochs, steps, state, streams=None, watched=(), best=None):
        self.steps_per_epoch = steps if self.steps_per_epoch is None else self.steps_per_epoch
        self.state, self.streams, self.watched = state, streams, watched
        for epoch in range(epochs) if self.only is None else self.only:
            self.epoch = epoch
            yield epoch

    def steps(self):
        with contextlib.ExitStack() as guarded:
            for step in range(self.steps_per_epoch):
                if step == 1 and self.guard is not None:  # the first step starts the data streams' loaders
                    guarded.enter_context(self.guard())
                yield step

    def update(self, logits, targets, loss):
        self.updates.append((self.epoch, logits.detach(), targets, loss.detach()))

    def train_metrics(self):
        return {}

    def end_epoch(self, record):
        self.records.append({"epoch": self.epoch, **record})
        self.saved.append(copy.deepcopy(self.state()))  # what the epoch's checkpoint would hold of the script
        return self.records[-1]
