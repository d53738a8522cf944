"""Which arithmetic a run's models use: `precision: auto | fp32 | bf16` (bf16 is autocast; the weights,
the optimizer and every loss and metric reduction stay fp32)."""
import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def cpu_has_fast_bf16() -> bool:
    """PyTorch's own CPU feature checks for native bf16 arithmetic: AVX512-BF16 dot products or AMX
    tiles (`torch.cpu._is_avx512_bf16_supported`, `torch.cpu._is_amx_tile_supported`). Without them
    oneDNN emulates bf16 and it is slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a PyTorch build without these checks
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def resolve_memory_format(memory_format: str, device: torch.device, precision: str) -> bool:
    """Whether models and batches are channels_last. `auto`: on CUDA, and on the CPU with bf16, where it
    measured faster; CPU fp32 stays contiguous so that it reproduces the reference numbers exactly."""
    if memory_format != "auto":
        return memory_format == "channels_last"
    return device.type == "cuda" or precision == "bf16"


def autocast(device: torch.device, precision: str):
    """The autocast context of a run's forward passes (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def set_cuda_determinism(on: bool) -> None:
    """cuDNN's deterministic algorithms and no benchmark autotuning (which picks kernels by timing, so two
    runs can differ), and deterministic cuBLAS workspaces. They may be slower; on the CPU nothing changes."""
    import os

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts in this process
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on and torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(on, warn_only=True)  # an op without a deterministic form warns
