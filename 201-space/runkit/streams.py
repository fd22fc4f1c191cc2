"""Resumable data streams: the order of every pass, and cycling batch iterators that resume exactly.

`EpochSampler` visits pass `p` in a permutation seeded with `seed + p` (sharded by rank
under torchrun); `Stream` cycles over a dataset through a DataLoader for as many passes
as asked, and `position()` / `seek()` continue it at any batch. The searches draw their
architecture batches from a `Stream`, never from `next(iter(loader))`. `BatchCursor` is
the position bookkeeping `Stream` shares with `device_data.DeviceStream`. Every loader
here is a `Loader`, whose worker processes leave SIGTERM and SIGINT to the main process.
Not a script; the same file in both folders.
"""

import signal

import torch
from torch.utils.data import DataLoader, Sampler

# What a cluster (SLURM's scancel, a time limit), `timeout` or Ctrl-C send to every process
# of the job; the main process alone answers them, with a checkpoint (engine.Run).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(_worker_id=None):
    """A DataLoader worker's `worker_init_fn`: ignore the stop signals, which are the main process's.

    PyTorch's workers die of a SIGTERM not sent by their parent, and the main process then
    fails with "DataLoader worker ... is killed by signal"; an ignoring worker serves on
    until the main process has checkpointed and shuts it down.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class Loader(DataLoader):
    """A DataLoader whose workers never take the stop signals (see `ignore_stop_signals`).

    The signals are also held back while the workers start: a forked worker inherits the
    block, so one signalled before its `worker_init_fn` runs keeps it pending, never
    delivered. The main process gets what arrived meanwhile as soon as they are started.
    """

    def __init__(self, dataset, **kwargs):
        super().__init__(dataset, worker_init_fn=ignore_stop_signals, **kwargs)

    def __iter__(self):
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


class EpochSampler(Sampler):
    """A seeded permutation per pass, startable at any position, optionally sharded by rank.

    Pass `p` visits `randperm(n)` drawn from a generator seeded with `seed + p`, so the
    order depends only on (seed, pass) and a resumed run sees the same batches.
    """

    def __init__(self, num_samples, seed, shuffle=True, rank=0, world_size=1):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.pass_index = 0
        self.offset = 0
        self.per_rank = -(-num_samples // world_size)

    def set_position(self, pass_index, offset=0):
        """Start the next iteration at sample `offset` of pass `pass_index`."""
        self.pass_index = pass_index
        self.offset = offset

    def order(self):
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.pass_index)
            order = torch.randperm(self.num_samples, generator=gen).tolist()
        else:
            order = list(range(self.num_samples))
        order += order[: self.per_rank * self.world_size - self.num_samples]  # pad to equal shards
        return order[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self.order()[self.offset :])

    def __len__(self):
        return self.per_rank - self.offset


class BatchCursor:
    """Where a cycling stream of batches stands: (pass, batch within the pass), with its iterator protocol.

    Subclasses set `pass_index`, `batch_index` and `batches_per_pass`, and call `_advance()`
    after each batch they return from `__next__`.
    """

    def __len__(self):
        return self.batches_per_pass

    def position(self):
        """(pass, batch within the pass) of the next batch."""
        return [self.pass_index, self.batch_index]

    def seek(self, position):
        """Continue from `position` (a saved `position()`)."""
        self.pass_index, self.batch_index = position

    def __iter__(self):
        return self

    def _advance(self):
        """Count the batch just taken; True when it ended a pass."""
        self.batch_index += 1
        if self.batch_index < self.batches_per_pass:
            return False
        self.pass_index, self.batch_index = self.pass_index + 1, 0
        return True


class Stream(BatchCursor):
    """A persistent, cycling, resumable iterator of batches over a dataset.

    The search draws its architecture batches from one of these (never
    `next(iter(loader))`), and its training epochs too. `position()` goes into the
    checkpoint; `Stream(..., position=...)` continues from it exactly.
    """

    def __init__(
        self,
        dataset,
        batch_size,
        seed,
        workers=0,
        shuffle=True,
        rank=0,
        world_size=1,
        pin_memory=False,
        position=(0, 0),
    ):
        self.sampler = EpochSampler(len(dataset), seed, shuffle, rank, world_size)
        self.batch_size = batch_size
        self.loader_kwargs = dict(
            dataset=dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=pin_memory,
            # A private generator keeps worker seeding off the global RNG, so creating
            # an iterator mid-run does not shift the model's random draws.
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=False,
        )
        self.batches_per_pass = -(-self.sampler.per_rank // batch_size)
        self.pass_index, self.batch_index = position
        self._iter = None

    def seek(self, position):
        """Continue from `position` (a saved `position()`); batches already prefetched are dropped."""
        super().seek(position)
        self._iter = None

    def __next__(self):
        if self._iter is None:
            self.sampler.set_position(self.pass_index, self.batch_index * self.batch_size)
            self._iter = iter(Loader(**self.loader_kwargs))
        batch = next(self._iter)
        if self._advance():  # a new pass: a new permutation, a new iterator
            self._iter = None
        return batch
