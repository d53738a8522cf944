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


def resolve_precision(precision: str, device: torch.device, cuda_bf16: bool | None = None) -> str:
    """`auto` is bf16 on a CUDA device that supports it (Ampere and later; `cuda_bf16`, default
    `torch.cuda.is_bf16_supported()`) and on CPUs with native bf16, fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def set_cuda_fp32_math(precision: str) -> None:
    """What `precision: fp32` means on CUDA: IEEE fp32. PyTorch lets cuDNN convolutions run in TF32 by
    default (10-bit mantissa on Ampere and later), so an "fp32" run would not be fp32; we turn TF32 off
    for convolutions and matmuls. A bf16 run keeps PyTorch's defaults for the few ops autocast leaves
    in fp32. The flags are per process; a reused trial process sets them again for its next trial."""
    exact = precision == "fp32"
    torch.backends.cudnn.allow_tf32 = not exact
    torch.backends.cuda.matmul.allow_tf32 = False if exact else torch.backends.cuda.matmul.allow_tf32


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
