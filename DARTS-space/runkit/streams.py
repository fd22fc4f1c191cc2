"""Resumable data streams: the order of each pass (`EpochSampler`) and cycling batch iterators (`Stream`)."""

import signal

import torch
from torch.utils.data import DataLoader, Sampler

# What a cluster, `timeout` or Ctrl-C send to every process of the job; the main process alone answers (engine.Run).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(_worker_id=None):
    """A DataLoader worker's `worker_init_fn`: it serves on until the main process, checkpointing, shuts it down."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class Loader(DataLoader):
    """A DataLoader whose workers ignore the stop signals, blocked while they start (a forked worker inherits that)."""

    def __init__(self, dataset, **kwargs):
        super().__init__(dataset, worker_init_fn=ignore_stop_signals, **kwargs)

    def __iter__(self):
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


class EpochSampler(Sampler):
    """A permutation per pass that depends only on (seed, pass), startable at any position, sharded by rank."""

    def __init__(self, num_samples, seed, shuffle=True, rank=0, world_size=1):
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.pass_index = self.offset = 0
        self.per_rank = -(-num_samples // world_size)

    def set_position(self, pass_index, offset=0):
        self.pass_index, self.offset = pass_index, offset

    def order(self):
        n, gen = self.num_samples, torch.Generator().manual_seed(self.seed + self.pass_index)
        order = torch.randperm(n, generator=gen).tolist() if self.shuffle else list(range(n))
        order += order[: self.per_rank * self.world_size - n]  # pad to equal shards
        return order[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self.order()[self.offset :])

    def __len__(self):
        return self.per_rank - self.offset


class Stream:
    """A persistent, cycling, resumable iterator of batches over a dataset, through a `Loader`."""

    def __init__(self, dataset, batch_size, seed, workers=0, shuffle=True, rank=0, world_size=1, pin_memory=False,
                 position=(0, 0)):  # fmt: skip
        self.sampler, self.batch_size = EpochSampler(len(dataset), seed, shuffle, rank, world_size), batch_size
        self.batches_per_pass = -(-self.sampler.per_rank // batch_size)
        self.pass_index, self.batch_index = position
        # A private generator keeps worker seeding off the global RNG: a new iterator does not shift the model's draws.
        self.loader_kwargs = dict(dataset=dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers)
        self.loader_kwargs.update(pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
        self._iter = None

    def __len__(self):
        return self.batches_per_pass

    def __iter__(self):
        return self

    def position(self):
        """(pass, batch within the pass) of the next batch."""
        return [self.pass_index, self.batch_index]

    def seek(self, position):
        """Continue from `position` (a saved `position()`); batches already prefetched are dropped."""
        self.pass_index, self.batch_index = position
        self._iter = None

    def __next__(self):
        if self._iter is None:
            self.sampler.set_position(self.pass_index, self.batch_index * self.batch_size)
            self._iter = iter(Loader(**self.loader_kwargs))
        batch = next(self._iter)
        if self._advance():  # a new pass: a new permutation, a new iterator
            self._iter = None
        return batch

    def _advance(self):
        """Count the batch just taken; True when it ended a pass."""
        self.batch_index += 1
        if self.batch_index >= self.batches_per_pass:
            self.pass_index, self.batch_index = self.pass_index + 1, 0
        return self.batch_index == 0
