"""The CUDA tier's numerics."""

import copy

import pytest
import torch
import torch.nn.functional as F

from cuda_jobs import DEVICE, assert_near, batches, darts_search_args

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("start_cuda_runs")]


@pytest.fixture
def fp32_exact():
    """Full fp32 on the GPU (no TF32 in matmuls and convolutions), as on the CPU; restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# Tolerances of GPU against CPU in fp32, relative to each tensor's largest entry: the loss and logits,
# the architecture gradient, the weights and BatchNorm statistics after the step.
LOSS_REL, GRAD_REL, STATE_REL = 1e-4, 1e-3, 1e-4


def _compare_states(results, skip=()):
    cpu, gpu = results["cpu"], results[DEVICE]
    for key in ("arch_loss", "loss", "logits"):
        assert_near(gpu[key], cpu[key], LOSS_REL, key)
    for i, (g, c) in enumerate(zip(gpu["arch_grads"], cpu["arch_grads"])):
        assert_near(g, c, GRAD_REL, f"architecture gradient {i}")
        assert c.abs().max() > 0
    for key, value in cpu["state"].items():
        if key not in skip and value.is_floating_point():
            assert_near(gpu["state"][key], value, STATE_REL, key)


@pytest.mark.parametrize("method", ["darts", "dirichlet"])
def test_201_first_search_step_matches_the_cpu(load_space, fp32_exact, method):
    """The architecture loss and beta's gradient as `Architect.step` forms them, then a whole search step."""
    model_search, search, architect_module, utils = load_space(
        "201-space", "model_search", "train_search", "architect", "runkit.utils"
    )
    args = search.get_parser().parse_args(["--method", method])
    torch.manual_seed(0)
    reference = model_search.Network(8, 1, 10, 1, method)
    mixing = reference.arch_weights().detach() if method == "dirichlet" else None
    train_batch, valid_batch = batches(16, 16)
    results = {}
    for device in ("cpu", DEVICE):
        model = copy.deepcopy(reference).to(device, memory_format=torch.channels_last).train()
        if mixing is not None:  # the same draw on both devices, in every forward of the step
            fixed = mixing.to(device)
            model.arch_weights = lambda m=model, w=fixed: w + (m.beta - m.beta.detach())
        architect = architect_module.Architect(model, args)
        optimizer = search.sgd(model, args, args.learning_rate)
        train, valid = utils.to_device(train_batch, device), utils.to_device(valid_batch, device)
        with architect_module.batch_stats_only(model):
            arch_loss = F.cross_entropy(model(valid[0]), valid[1])
            arch_grads = torch.autograd.grad(arch_loss, model.arch_parameters())
        logits, loss = search.search_step(model, architect, optimizer, model.weights(), train, valid, 0.025, 5.0)
        results[device] = dict(
            arch_loss=arch_loss, arch_grads=arch_grads, loss=loss, logits=logits, state=model.state_dict()
        )
    _compare_states(results, skip=("beta",))


def test_darts_first_search_step_matches_the_cpu(load_space, fp32_exact):
    """The DARTS supernet (lean ops, partial channels k=4, both reductions)."""
    model_search, search, architect_module, distributed = load_space(
        "DARTS-space", "model_search", "train_search", "architect", "runkit.distributed"
    )
    torch.manual_seed(0)
    reference = model_search.Network(8, 10, 3, k=4)
    args = darts_search_args(search)
    train_batch, valid_batch = batches(8, 16)
    results = {}
    for device in ("cpu", DEVICE):
        model = copy.deepcopy(reference).to(device).train()
        model.arch_weights = lambda model=model: _dirichlet_mean(model)
        architect = architect_module.Architect(model, args)
        weights = model.weights()
        optimizer = torch.optim.SGD(weights, 0.1, momentum=0.9, weight_decay=3e-4)
        dist = distributed.Dist(rank=0, local_rank=0, world_size=1, device=torch.device(device))
        (x, y), (xv, yv) = [tuple(t.to(device) for t in batch) for batch in (train_batch, valid_batch)]
        with architect_module.frozen(weights):
            arch_loss = F.cross_entropy(model(xv), yv)
            arch_grads = torch.autograd.grad(arch_loss, model.arch_parameters())
        architect.step(x, y, xv, yv, 0.1, optimizer)
        logits, loss = search.weight_step(model, optimizer, weights, x, y, 5.0, dist)
        results[device] = dict(
            arch_loss=arch_loss, arch_grads=arch_grads, loss=loss, logits=logits.detach(), state=model.state_dict()
        )
    _compare_states(results, skip=("beta_normal", "beta_reduce"))


def _dirichlet_mean(model):
    alpha = model.kept_concentrations()
    return alpha / alpha.sum(-1, keepdim=True)


def test_amp_runs_the_cells_in_bf16_and_keeps_fp32_outside(load_space):
    """With `amp`, convolutions run in bf16; logits, beta and its gradient stay fp32 and finite."""
    for space, build in (
        ("201-space", lambda m: m.Network(8, 1, 10, 1)),
        ("DARTS-space", lambda m: m.Network(8, 10, 3, k=4)),
    ):
        model_search = load_space(space, "model_search")
        torch.manual_seed(0)
        model = build(model_search).to(DEVICE).train()
        model.amp = True
        dtypes = set()
        hooks = [
            m.register_forward_hook(lambda mod, inp, out, seen=dtypes: seen.add(out.dtype))
            for m in model.modules()
            if isinstance(m, torch.nn.Conv2d)
        ]
        x, y = batches(8, 16)[0]
        logits = model(x.to(DEVICE))
        for hook in hooks:
            hook.remove()
        assert dtypes == {torch.bfloat16}, f"{space}: convolutions computed in {dtypes}"
        assert logits.dtype == torch.float32
        grads = torch.autograd.grad(F.cross_entropy(logits, y.to(DEVICE)), model.arch_parameters())
        for beta, grad in zip(model.arch_parameters(), grads):
            assert beta.dtype == grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().max() > 0
