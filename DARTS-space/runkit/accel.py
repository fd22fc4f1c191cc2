"""The speed flags `--amp` (bf16 autocast) and `--compile`, refused in one line where they cannot help."""

import platform
import shutil

import torch

from .utils import UserError


def add_amp_argument(group):
    fp32 = "beta, the Dirichlet draw, the KL term, the loss and optimiser states stay fp32"
    group.add_argument("--amp", action="store_true", help=f"bf16 autocast in the supernet ({fp32})")


def add_compile_argument(group):
    compiled = "torch.compile the network (static shapes; CUDA graphs on one GPU); the first steps compile"
    group.add_argument("--compile", action="store_true", help=compiled)


def amp_dtype(device):
    """The autocast dtype of `--amp` on `device`: bf16 where it is supported (CPUs, most GPUs), else fp16."""
    return torch.float16 if device.type == "cuda" and not torch.cuda.is_bf16_supported() else torch.bfloat16


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
    """Whether this machine's CPU has bf16 units (AVX512-BF16 or AMX on x86, BF16 on Arm); without them autocast
    emulates bf16, far slower than fp32 (a 201 supernet step on an AVX2 CPU: 65 s against 1.9 s)."""
    x86 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    # oneDNN's check also counts x86 AVX-512 without bf16 instructions (which only emulates them): asked on Arm alone.
    arm = platform.machine().lower() in ("aarch64", "arm64") and torch.backends.mkldnn.is_available()
    return x86 or (arm and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_flags(args, device, amp_needs_bf16=True):
    """Refuse `--amp` or `--compile` in one line where they cannot run (`amp_needs_bf16`: no fp16 fallback)."""
    amp, compiled = getattr(args, "amp", False), getattr(args, "compile", False)
    if amp and device.type not in ("cuda", "cpu"):
        raise UserError(f"--amp runs on CUDA GPUs and CPUs, not on {device.type}; run without --amp")
    if amp and device.type == "cpu" and not cpu_has_bf16():
        slower = "autocast would emulate bf16 and run slower than fp32; run without --amp, which is faster on this CPU"
        raise UserError(f"--amp on a CPU without bf16 units (AVX512-BF16, AMX or Arm BF16): {slower}")
    if amp and amp_needs_bf16 and amp_dtype(device) != torch.bfloat16:
        raise UserError(f"--amp needs bf16, which {torch.cuda.get_device_name(device)} lacks; run without --amp")
    if compiled and device.type == "cpu":
        if shutil.which("g++") is None and shutil.which("c++") is None:
            raise UserError("--compile on a CPU needs a C++ compiler (g++) for inductor's kernels; install one")
        if amp:  # measured with torch 2.14: NaN or wrong weight gradients of dilated depthwise convolutions
            wrong = "inductor's bf16 CPU kernels get the weight gradients of dilated depthwise convolutions wrong"
            raise UserError(f"--compile with --amp on a CPU: {wrong}; use one of the two flags on CPUs")


def compile_model(model, device, world_size=1):
    """Compile `model` in place, static shapes: CUDA graphs on one GPU (DDP's all-reduces stay outside graphs)."""
    model.compile(mode="reduce-overhead" if device.type == "cuda" and world_size == 1 else None, dynamic=False)


def begin_step(device, world_size, compiled):
    """Mark a new training step for CUDA graphs, so the previous step's outputs may be overwritten."""
    if compiled and device.type == "cuda" and world_size == 1:
        torch.compiler.cudagraph_mark_step_begin()
