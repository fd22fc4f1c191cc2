"""The CUDA tier's host synchronisation check: no step waits for the device (CUDA's sync debug mode) inside a
201 or DARTS search step, a training step of either train.py, or the run engine's per-step bookkeeping.
Marked `cuda`: skips without a GPU, saying why. The tests run in-process while the script runs of
tests/test_cuda_scripts.py go on (this file sorts before that one).
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

from cuda_jobs import DEVICE, DT, T201, batches, darts_search_args

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("start_cuda_runs")]

# ---------------------------------------------------------------- no host synchronisation inside a step


def flag_id(flags):
    return "-".join(f.lstrip("-") for f in flags) or "default"


def synchronisations(step, times=3):
    """Warnings of CUDA's sync debug mode during `times` calls of `step()` (after the caller's warm-up)."""
    if torch.device(DEVICE).type != "cuda":  # nothing to watch off the GPU: the steps just run
        for _ in range(times):
            step()
        return []
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(times):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "synchroniz" in str(w.message).lower()]


@pytest.mark.parametrize(
    "flags", [[], ["--amp"], ["--unrolled"], ["--method", "gdas"], ["--reg_type", "kl"]], ids=flag_id
)
def test_201_search_step_never_waits_for_the_device(load_space, flags):
    model_search, search, architect_module, utils = load_space(
        "201-space", "model_search", "search", "architect", "utils"
    )
    args = search.get_parser().parse_args(flags)
    torch.manual_seed(0)
    model = model_search.Network(8, 1, 10, 1, args.method).to(DEVICE, memory_format=torch.channels_last).train()
    model.amp = args.amp
    architect = architect_module.Architect(model, args)
    optimizer, _ = search.make_weight_optimizer(model, args, args.epochs)
    weights = model.weights()
    train, valid = (utils.to_device(batch, torch.device(DEVICE)) for batch in batches(16, 16))

    def step():
        search.search_step(model, architect, optimizer, weights, train, valid, 0.025, args.grad_clip)

    step()  # warm-up: optimizer states, cuDNN plans, the cached index of the kept ops
    assert synchronisations(step) == []


@pytest.mark.parametrize("flags", [[], ["--amp"], ["--unrolled"], ["--lean_ops", "off"]], ids=flag_id)
def test_darts_search_step_never_waits_for_the_device(load_space, flags):
    model_search, search, architect_module, distributed = load_space(
        "DARTS-space", "model_search", "search", "architect", "distributed"
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

    def step():  # as search.Search.step: beta on a held-out batch, then the weights
        architect.step(x, y, xv, yv, 0.1, optimizer)
        search.weight_step(model, optimizer, weights, x, y, args.grad_clip, dist)

    step()
    assert synchronisations(step) == []


@pytest.mark.parametrize("flags", [[], ["--amp"]], ids=flag_id)
def test_darts_training_step_never_waits_for_the_device(load_space, flags):
    """train.py's step (training.Training.step: auxiliary head, drop path, clipping, the loss scaler) on
    batches already on the device."""
    train, training, genotypes, model_module, distributed, datasets = load_space(
        "DARTS-space", "train", "training", "genotypes", "model", "distributed", "datasets"
    )
    args = train.get_parser().parse_args([*DT, *flags])
    dist = distributed.Dist(rank=0, local_rank=0, world_size=1, device=torch.device(DEVICE))
    torch.manual_seed(0)
    model = model_module.NetworkCIFAR(8, 10, 5, True, genotypes.DrNAS_cifar10).to(DEVICE)
    train_set, test_set, _ = datasets.get_datasets("synthetic", "unused")
    task = training.Training(
        args,
        dist,
        model,
        train_set,
        test_set,
        torch.nn.CrossEntropyLoss(),
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs),
    )
    task.begin_epoch(1)  # drop path on
    assert model.drop_path_prob > 0
    x, y = (t.to(DEVICE) for t in batches(16, 32)[0])
    task.streams = {"train": iter(lambda: (x, y), None)}  # batches already on the device

    def step():
        task.step(1, 0)

    step()
    assert synchronisations(step) == []


@pytest.mark.parametrize("flags", [[], ["--amp"]], ids=flag_id)
def test_201_training_step_never_waits_for_the_device(load_space, flags):
    """201 train.py's step (train.Train.step: Nesterov SGD, --amp) on batches already on the device."""
    train, model_module, genotypes = load_space("201-space", "train", "model", "genotypes")
    args = train.get_parser().parse_args([*T201, *flags])
    torch.manual_seed(0)
    structure = genotypes.load_arch(args.arch)
    model = model_module.Network(4, 1, structure, 10)
    model = model.to(DEVICE, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    x, y = (t.to(DEVICE) for t in batches(32, 32)[0])
    stream = iter(lambda: (x, y), None)  # batches already on the device
    task = train.Train(model, optimizer, scheduler, stream, None, structure, amp=args.amp)
    task.begin_epoch(0)

    def step():
        task.step(0, 0)

    step()
    assert synchronisations(step) == []


def test_per_step_bookkeeping_never_waits_for_the_device(load_space):
    """What the run engine does after every step (`Meter.update` with the batch's logits, targets and loss;
    the watch for a non-finite loss) and a batch of the device data stream (mid-pass): no synchronisation
    either. (The engine reads values on the host only at progress lines and checkpoints.)"""
    progress, divergence, device_data, datasets = load_space(
        "201-space", "progress", "divergence", "device_data", "datasets"
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
    assert synchronisations(step) == []
    assert meter.result()["loss"] == pytest.approx(loss.item())
