"""The CUDA tier's host synchronisation check."""

import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F

from cuda_jobs import DEVICE, DT, T201, batches, darts_search_args
from loop_run import LoopRun

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("start_cuda_runs")]


def flag_id(flags):
    return "-".join(f.lstrip("-") for f in flags) or "default"


@contextlib.contextmanager
def watching_synchronisations(found):
    """CUDA's sync debug mode inside the block; what it warns of goes into the list `found`."""
    if torch.device(DEVICE).type != "cuda":  # nothing to watch off the GPU: the block just runs
        yield
        return
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    found += [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "synchroniz" in str(w.message).lower()]


def synchronisations(step, times=3):
    """Warnings of CUDA's sync debug mode during `times` calls of `step()` (after the caller's warm-up)."""
    found = []
    with watching_synchronisations(found):
        for _ in range(times):
            step()
    return found


@pytest.mark.parametrize(
    "flags", [[], ["--amp"], ["--unrolled"], ["--method", "gdas"], ["--reg_type", "kl"]], ids=flag_id
)
def test_201_search_step_never_waits_for_the_device(load_space, flags):
    model_search, search, architect_module, utils = load_space(
        "201-space", "model_search", "train_search", "architect", "runkit.utils"
    )
    args = search.get_parser().parse_args(flags)
    torch.manual_seed(0)
    model = model_search.Network(8, 1, 10, 1, args.method).to(DEVICE, memory_format=torch.channels_last).train()
    model.amp = args.amp
    architect = architect_module.Architect(model, args)
    optimizer = search.sgd(model, args, args.learning_rate)
    weights = model.weights()
    train, valid = (utils.to_device(batch, torch.device(DEVICE)) for batch in batches(16, 16))

    def step():
        search.search_step(model, architect, optimizer, weights, train, valid, 0.025, args.grad_clip)

    step()  # warm-up: optimizer states, cuDNN plans, the cached index of the kept ops
    assert synchronisations(step) == []


@pytest.mark.parametrize("flags", [[], ["--amp"], ["--unrolled"], ["--lean_ops", "off"]], ids=flag_id)
def test_darts_search_step_never_waits_for_the_device(load_space, flags):
    model_search, search, architect_module, distributed = load_space(
        "DARTS-space", "model_search", "train_search", "architect", "runkit.distributed"
    )
    args = darts_search_args(search, *flags)
    torch.manual_seed(0)
    model = model_search.Network(8, 10, 3, k=4).to(DEVICE).train()
    model.amp = args.amp
    model.use_lean_ops(args.lean_ops == "on")
    architect = architect_module.Architect(model, args)
    weights = model.weights()
    optimizer = torch.optim.SGD(weights, 0.1, momentum=args.momentum, weight_decay=args.weight_decay)
    dist = distributed.Dist(rank=0, local_rank=0, world_size=1, device=torch.device(DEVICE))
    (x, y), (xv, yv) = [tuple(t.to(DEVICE) for t in batch) for batch in batches(8, 16)]

    def step():  # beta on a held-out batch, then the weights
        search.search_step(model, architect, optimizer, weights, (x, y), (xv, yv), 0.1, args.grad_clip, dist)

    step()
    assert synchronisations(step) == []


@pytest.mark.parametrize("flags", [[], ["--amp"]], ids=flag_id)
def test_darts_training_step_never_waits_for_the_device(load_space, flags):
    """train.py's step (aux head, drop path, clipping, loss scaler) on device batches: no host sync."""
    train, training, genotypes, model_module, accel = load_space(
        "DARTS-space", "train", "train", "genotypes", "model", "runkit.accel"
    )
    args = train.get_parser().parse_args([*DT, *flags])
    torch.manual_seed(0)
    model = model_module.NetworkCIFAR(8, 10, 5, True, genotypes.DrNAS_cifar10).to(DEVICE).train()
    model.drop_path_prob = args.drop_path_prob * 1 / args.epochs  # the second epoch's: drop path on
    assert model.drop_path_prob > 0
    optimizer = torch.optim.SGD(
        model.parameters(), args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay
    )
    amp_dtype = accel.amp_dtype(torch.device(DEVICE))
    scaler = torch.amp.GradScaler(torch.device(DEVICE).type, enabled=args.amp and amp_dtype == torch.float16)
    batch = tuple(t.to(DEVICE) for t in batches(16, 32)[0])

    def step():
        training.train_step(model, optimizer, scaler, torch.nn.CrossEntropyLoss(), batch, amp_dtype, args)

    step()
    assert synchronisations(step) == []


class _Repeat:
    """A stream of one batch, `length` batches a pass (train.train reads its length)."""

    def __init__(self, batch, length):
        self.batch, self.length = batch, length

    def __len__(self):
        return self.length

    def __next__(self):
        return self.batch


@pytest.mark.parametrize("flags", [[], ["--amp"]], ids=flag_id)
def test_201_training_step_never_waits_for_the_device(load_space, flags):
    """201 train.py's loop (Nesterov SGD, --amp) on device batches: steps after the first never sync."""
    train, model_module, genotypes = load_space("201-space", "train", "model", "genotypes")
    args = train.get_parser().parse_args([*T201, *flags])
    torch.manual_seed(0)
    structure = genotypes.load_arch(args.arch)
    model = model_module.Network(4, 1, structure, 10).to(DEVICE, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    stream = _Repeat(tuple(t.to(DEVICE) for t in batches(32, 32)[0]), 4)
    found = []
    run = LoopRun(only=[0], steps=4, device=DEVICE, guard=lambda: watching_synchronisations(found))
    train.train(run, model, optimizer, stream, [], structure, args)
    assert len(run.updates) == 4 and found == []


def test_per_step_bookkeeping_never_waits_for_the_device(load_space):
    """Meter.update, the non-finite watch and a device data stream batch: no host synchronisation."""
    progress, divergence, device_data, datasets = load_space(
        "201-space", "runkit.progress", "runkit.progress", "runkit.device_data", "datasets"
    )
    device = torch.device(DEVICE)
    meter = progress.Meter(device)
    watch = divergence.Divergence(device, 16)
    logits = torch.randn(32, 10, device=device)
    targets = torch.randint(10, (32,), device=device)
    loss = F.cross_entropy(logits, targets)
    train_set, _, _ = datasets.get_datasets("synthetic", "unused")
    stream = device_data.stream(train_set, 16, 0, device, True)  # 16 batches per pass

    def step():
        next(stream)
        meter.update(logits, targets, loss)
        watch.watch(loss, 7)

    step()
    assert synchronisations(step) == [] and meter.result()["loss"] == pytest.approx(loss.item())
