"""Several processes through `torchrun`: one group (gloo on CPUs, NCCL on CUDA), one GPU per LOCAL_RANK; collectives."""

import os

import torch
import torch.distributed as torch_dist

from .engine import Dist
from .utils import UserError, resolve_device


def setup(device_name, gpu=None):
    """Join the torchrun process group when WORLD_SIZE > 1; return this process's `Dist`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(rank=0, local_rank=0, world_size=1, device=resolve_device(device_name, gpu))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name == "mps":
        raise UserError("several processes on MPS are not supported; use --device cpu or cuda with torchrun")
    device = torch.device("cpu")
    if device_name == "cuda":  # one GPU per process: LOCAL_RANK picks it, --gpu is ignored under torchrun
        device = resolve_device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return Dist(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def average_gradients(params, dist):
    """All-reduce the mean of every parameter's `.grad` (None grads skipped) in one flat buffer (one collective)."""
    grads = [p.grad for p in params if p.grad is not None]
    if dist is None or dist.world_size <= 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
    for g, part in zip(grads, flat.div_(dist.world_size).split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def broadcast_parameters(module, dist):
    """Copy rank 0's parameters and buffers to every rank (same start everywhere)."""
    if dist.world_size <= 1:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            torch_dist.broadcast(tensor, src=0)


def max_parameter_difference(module, dist):
    """Largest |parameter - rank 0's| over all ranks (0.0 in one process): that the replicas stayed identical."""
    if dist.world_size <= 1:
        return 0.0
    worst = torch.zeros((), device=dist.device)
    for p in module.parameters():
        reference = p.detach().clone()
        torch_dist.broadcast(reference, src=0)
        worst = torch.maximum(worst, (p.detach() - reference).abs().max().float())
    torch_dist.all_reduce(worst, op=torch_dist.ReduceOp.MAX)
    return float(worst)


def cleanup():
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
