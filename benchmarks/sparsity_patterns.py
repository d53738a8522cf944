"""What a sparse student costs to run, by sparsity pattern: MACs and measured CPU latency, side by side.

    python benchmarks/sparsity_patterns.py [--min-time S] [--rounds R] [--json PATH]

ResNet20 and torchvision ResNet18 students at 32 px (10 classes): dense; unstructured (ERK) at density 0.5
and 0.25; channel-pruned (Torch-Pruning, the student's own initial weights ranked by L2 norm) to the same
densities, i.e. the same count of weights kept, and again in multiples of 16 (else 8) channels where that
gives other widths (channel_multiple); and the ResNet56 teacher. Each is timed at batch 1 and 64,
in eager PyTorch and in ONNX Runtime on its own export (trainables.latency: warm-up, then
torch.utils.benchmark's blocked_autorange, median per batch). The rows are measured in rounds (every row
once per round, in order) and each cell is the median over the rounds, so a slow moment of the machine
falls on all rows alike. Accuracy of the same students: the study_patterns study (RESULTS.md).
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainables.cost import count_macs, effective_macs  # noqa: E402
from trainables.latency import measure_with_onnx, threads_note  # noqa: E402
from trainables.models import create_model  # noqa: E402
from trainables.sparsity import SparsityError, apply_masks, init_masks, maskable_parameters  # noqa: E402
from trainables.sparsity.channels import maskable_weight_count, prune_channels  # noqa: E402

SIZE, CLASSES = 32, 10
MULTIPLES = (16, 8)


def variants() -> list[tuple[str, torch.nn.Module, float]]:
    """(label, model, density) for every row, built with seed 0."""
    rows = []
    for spec in ("resnet20", "torchvision:resnet18"):
        torch.manual_seed(0)
        dense = create_model(spec, CLASSES)
        rows.append((f"{spec} dense", dense, 1.0))
        for density in (0.5, 0.25):
            torch.manual_seed(0)
            masked = create_model(spec, CLASSES)
            apply_masks(masked, init_masks(masked, density, "ERK", seed=0))
            rows.append((f"{spec} unstructured {density}", masked, density))
        for density in (0.5, 0.25):
            pruned, kept = prune_channels(dense, density, SIZE)
            rows.append((f"{spec} channel {density}", pruned, kept))
            aligned = in_multiples(dense, density, f"{spec} channel {density}", widths(pruned))
            if aligned:
                rows.append(aligned)
    torch.manual_seed(0)
    rows.append(("resnet56 teacher (dense)", create_model("resnet56", CLASSES), 1.0))
    return rows


def widths(model) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def in_multiples(dense, density, label: str, unaligned_widths: list[int]):
    """(label, model, density) of the same student pruned in multiples of 16 channels (AVX-512's fp32
    lanes), else of 8 (AVX2's), the first that reaches the density (channel_multiple, docs/sparsity.md);
    None when neither does, or when the widths are those of the unaligned student already."""
    for multiple in MULTIPLES:
        try:
            pruned, kept = prune_channels(dense, density, SIZE, multiple=multiple)
        except SparsityError:
            continue
        return None if widths(pruned) == unaligned_widths else (f"{label} x{multiple}", pruned, kept)
    return None


def macs_of(model) -> tuple[int, int]:
    total, layers = count_macs(model, SIZE)
    masks = {k: (p.detach() != 0) for k, p in maskable_parameters(model).items()}
    return effective_macs(total, layers, masks), total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per cell and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="also write the numbers here")
    a = p.parse_args()
    rows = variants()
    cells: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(a.rounds):
        for label, model, _density in rows:
            for t in measure_with_onnx(model, SIZE, min_time=a.min_time):
                cells.setdefault((label, t.engine, t.batch), []).append(t.median_ms)
    flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()[2:]
                    if f.startswith(("avx", "amx", "fma"))})
    print(f"{threads_note()}; flags {' '.join(flags)}; torch {torch.__version__}; median of {a.rounds} rounds, "
          f">= {a.min_time:g} s of timed calls per cell and round; ms per batch at {SIZE} px")
    print()
    print("| student | density (weights kept) | M MACs / image (effective / dense) | PyTorch b1 | ONNX RT b1 | "
          "PyTorch b64 | ONNX RT b64 | b64 PyTorch vs dense | b64 ONNX RT vs dense |")
    print("|---|---|---|---|---|---|---|---|---|")
    out = []
    dense_b64 = {}
    for label, model, density in rows:
        eff, dense = macs_of(model)
        med = {(e, b): statistics.median(cells[(label, e, b)]) for e in ("torch", "onnx") for b in (1, 64)}
        spec = label.split()[0]
        if label.endswith("dense"):
            dense_b64[spec] = {e: med[(e, 64)] for e in ("torch", "onnx")}
        ratio = [f"{med[(e, 64)] / dense_b64[spec][e]:.2f}x" if spec in dense_b64 else "-" for e in ("torch", "onnx")]
        print(f"| {label} | {density:.4f} | {eff / 1e6:,.1f} / {dense / 1e6:,.1f} | {med[('torch', 1)]:.2f} | "
              f"{med[('onnx', 1)]:.2f} | {med[('torch', 64)]:.1f} | {med[('onnx', 64)]:.1f} | {' | '.join(ratio)} |")
        out.append({"row": label, "density": density, "weights": maskable_weight_count(model),
                    "macs_effective": eff, "macs_dense": dense,
                    **{f"{e}_b{b}_ms": v for (e, b), v in med.items()}})
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
