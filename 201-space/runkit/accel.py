"""Speed flags shared by the scripts of this folder: bf16 mixed precision and `torch.compile`.

`--amp` (the searches; the training scripts have their own): the supernet runs its cells
under bf16 autocast, while beta, the Dirichlet draw, the KL term, the loss and every
optimiser state stay fp32 (`amp_dtype`: fp16 for the DARTS training on GPUs without bf16).
`check_flags` refuses either flag, in one line, where it cannot run or would only slow the
run down (`--amp` on a CPU without bf16 units, `cpu_has_bf16`); `describe` says, in the log,
what they do.
`--compile`: `compile_model` compiles the network in place (`nn.Module.compile`, so its
state_dict and checkpoints keep their keys) with static shapes; on one CUDA GPU it runs as
CUDA graphs (`mode="reduce-overhead"`), whose steps are marked with `begin_step`. Not a
script; the same file in both folders.
"""

import platform
import shutil

import torch

from .utils import UserError


def add_amp_argument(group):
    """The searches' `--amp` flag."""
    group.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast in the supernet for the weight and architecture steps "
        "(beta, the Dirichlet draw, the KL term, the loss and the optimiser states stay fp32)",
    )


def amp_dtype(device):
    """The autocast dtype of `--amp` on `device`: bf16 where it is supported (CPUs, most GPUs), else fp16.

    The scripts without an fp16 path refuse `--amp` on such a GPU, and every script refuses it on a CPU
    without bf16 units (`check_flags`).
    """
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def describe(args, device):
    """Log lines of the speed flags in use: the dtype `--amp` runs in, and that `--compile` starts slowly."""
    lines = []
    if getattr(args, "amp", False):
        dtype = amp_dtype(device)
        scaled = ", with a loss scaler" if dtype == torch.float16 else ""
        lines.append(f"--amp: {str(dtype).removeprefix('torch.')} autocast{scaled} (optimiser states stay fp32)")
    if getattr(args, "compile", False):
        lines.append("--compile: compiling the network; the first steps take about a minute (longer on a CPU)")
    return lines


def cpu_has_bf16():
    """Whether this machine's CPU has bf16 units: AVX512-BF16 or AMX on x86, the BF16 extension on Arm.

    Without them autocast emulates bf16 and runs slower than fp32: on a 2-core AMD EPYC with AVX2
    alone (torch 2.14), a forward and backward pass of the 201 supernet (C=16, N=5, batch 64)
    took 65 s under bf16 autocast against 1.9 s in fp32.
    """
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return True
    # oneDNN's own check answers for Arm's BF16 extension; on x86 it also counts AVX-512 without
    # bf16 instructions, which only emulates them, so it is asked on Arm alone.
    return (
        platform.machine().lower() in ("aarch64", "arm64")
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def check_flags(args, device, amp_needs_bf16=True):
    """Refuse `--amp` or `--compile` with one line where they cannot run, before the run writes anything.

    `--amp` is refused on a CPU without bf16 units (`cpu_has_bf16`) whatever the script: it would
    run slower than fp32, and CPU fp16 autocast is no faster. `amp_needs_bf16`: the searches and
    the 201 training have no fp16 fallback on a GPU without bf16 (the DARTS training scripts have
    one, with a loss scaler). Scripts without one of the flags pass.
    """
    amp, compiled = getattr(args, "amp", False), getattr(args, "compile", False)
    if amp and device.type not in ("cuda", "cpu"):
        raise UserError(f"--amp runs on CUDA GPUs and CPUs, not on {device.type}; run without --amp")
    if amp and device.type == "cpu" and not cpu_has_bf16():
        raise UserError(
            "--amp on a CPU without bf16 units (AVX512-BF16, AMX or Arm BF16): autocast would emulate bf16 and "
            "run slower than fp32; run without --amp, which is faster on this CPU"
        )
    if amp and amp_needs_bf16 and amp_dtype(device) != torch.bfloat16:
        raise UserError(f"--amp needs bf16, which {torch.cuda.get_device_name(device)} lacks; run without --amp")
    if compiled and device.type == "cpu":
        if shutil.which("g++") is None and shutil.which("c++") is None:
            raise UserError("--compile on a CPU needs a C++ compiler (g++) for inductor's kernels; install one")
        if amp:  # measured with torch 2.14: NaN or wrong weight gradients of dilated depthwise convolutions
            raise UserError(
                "--compile with --amp on a CPU: inductor's bf16 CPU kernels get the weight gradients of dilated "
                "depthwise convolutions wrong; use one of the two flags on CPUs"
            )


def add_compile_argument(group):
    """The `--compile` flag."""
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (static shapes; CUDA graphs on one GPU); the first steps compile",
    )


def uses_cuda_graphs(device, world_size):
    """Whether `compile_model` captures CUDA graphs: on one CUDA GPU (DDP's all-reduces stay outside graphs)."""
    return device.type == "cuda" and world_size == 1


def compile_model(model, device, world_size=1):
    """Compile `model` in place, static shapes: CUDA graphs on one GPU, the default inductor mode elsewhere."""
    model.compile(mode="reduce-overhead" if uses_cuda_graphs(device, world_size) else None, dynamic=False)


def begin_step(device, world_size, compiled):
    """Mark a new training step for CUDA graphs, so the previous step's outputs may be overwritten."""
    if compiled and uses_cuda_graphs(device, world_size):
        torch.compiler.cudagraph_mark_step_begin()
