"""Measured inference time on this machine's CPU (docs/sparsity.md, "Latency"): eager PyTorch and ONNX
Runtime, each at batch 1 and 64, after warm-up calls, as the median over repeated timed blocks.

The timing is torch.utils.benchmark's (blocked_autorange: blocks of calls until a minimum time has
passed, the per-call mean of each block, their median and interquartile range), for both engines, so
the two columns are measured the same way; ONNX Runtime gets the same thread count as PyTorch.
"""
import copy
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

# torch.utils.benchmark imports cpp_extension, which logs a warning on every machine without a CUDA
# toolkit; timing on the CPU needs none, so that one logger is quiet while the import runs.
_cpp_log = logging.getLogger("torch.utils.cpp_extension")
_level = _cpp_log.level
_cpp_log.setLevel(logging.ERROR)
try:
    from torch.utils.benchmark import Timer
finally:
    _cpp_log.setLevel(_level)

BATCHES = (1, 64)


@dataclass(frozen=True)
class Timing:
    engine: str  # torch (eager PyTorch) or onnx (ONNX Runtime, CPU provider)
    batch: int
    median_ms: float  # per call, i.e. per batch
    iqr_ms: float
    blocks: int  # timed blocks the median is over

    @property
    def per_image_ms(self) -> float:
        return self.median_ms / self.batch


def cpu_name() -> str:
    """The CPU's model name (Linux), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown CPU"


def _timed(fn, warmup: int, min_time: float, threads: int) -> tuple[float, float, int]:
    for _ in range(warmup):  # first calls pay for allocation, ORT's arena and oneDNN's primitive cache
        fn()
    m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_time)
    return m.median * 1e3, m.iqr * 1e3, len(m.times)


def measure_latency(model: nn.Module, image_size: int, onnx_path=None, batches=BATCHES, warmup: int = 3,
                    min_time: float = 1.0, threads: int | None = None) -> list[Timing]:
    """Median time per batch of `model` (a CPU copy in eval mode, fp32) in eager PyTorch and, when
    `onnx_path` is given, of that file in ONNX Runtime, at each batch size, on seeded normal inputs.
    The caller's model is not moved or switched out of its mode."""
    import onnxruntime as ort

    from trainables.onnx_export import INPUT, OUTPUT

    threads = int(threads or torch.get_num_threads())
    reference = copy.deepcopy(model).float().cpu().eval()
    session = None
    if onnx_path is not None:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    out = []
    for batch in batches:
        x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            out.append(Timing("torch", batch, *_timed(lambda: reference(x), warmup, min_time, threads)))
        if session is not None:
            feed = {INPUT: x.numpy()}
            out.append(Timing("onnx", batch, *_timed(lambda: session.run([OUTPUT], feed), warmup, min_time, threads)))
    return out


def measure_with_onnx(model: nn.Module, image_size: int, **kw) -> list[Timing]:
    """measure_latency with a fresh ONNX export of `model` (a temporary file, removed afterwards)."""
    from trainables.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", image_size)
        return measure_latency(model, image_size, path, **kw)


def as_metrics(timings: list[Timing], prefix: str = "") -> dict[str, float]:
    """{'<prefix>latency_ms_b<batch>_<engine>': median ms per batch}, the names a final run logs."""
    return {f"{prefix}latency_ms_b{t.batch}_{t.engine}": t.median_ms for t in timings}


def threads_note() -> str:
    """'2 threads of <CPU>' for the line or table header that reports timings."""
    return f"{torch.get_num_threads()} threads of {cpu_name()} (os.cpu_count() = {os.cpu_count()})"
