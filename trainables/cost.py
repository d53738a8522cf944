"""What a student costs to run: multiply-accumulates (MACs) per image at the run's image size.

Dense MACs are counted by torch.utils.flop_counter.FlopCounterMode on one forward pass (its FLOPs are
2 x MACs for the convolutions and matrix products it counts), per module, not by a counter written
here. Effective MACs are what a sparse kernel would have to do: each masked layer's count times the
fraction of its weights the mask keeps, plus every unmasked op at its dense count. Conventions in
docs/sparsity.md, "Cost".
"""
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, image_size: int) -> tuple[int, dict[str, int]]:
    """(MACs per image of the whole forward, MACs of each Conv2d / Linear by module name) for one
    3 x image_size x image_size input, counted in eval mode without touching the RNG or train mode."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    with torch.no_grad(), torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    per_module = counter.get_flop_counts()  # keyed "<ClassName>.<module name>", each module's ops inside it
    prefix = type(model).__name__
    layers = {}
    for name, module in model.named_modules():
        if name and isinstance(module, (nn.Conv2d, nn.Linear)):
            layers[name] = sum(per_module.get(f"{prefix}.{name}", {}).values()) // 2
    return counter.get_total_flops() // 2, layers


def effective_macs(total: int, layers: dict[str, int], masks: dict[str, torch.Tensor]) -> int:
    """`total` with each masked layer's MACs scaled by its mask's kept fraction (masks keyed by the
    weight's parameter name, `<module>.weight`)."""
    saved = 0.0
    for key, mask in masks.items():
        name = key.removesuffix(".weight")
        if name in layers:
            saved += layers[name] * (1.0 - float(mask.sum()) / mask.numel())
    return int(round(total - saved))


def format_macs(effective, dense) -> str:
    """'4.1 / 40.8': millions of MACs per image, effective and dense; '-' where a run recorded none."""
    if effective is None or dense is None:
        return "-"
    return f"{effective / 1e6:,.1f} / {dense / 1e6:,.1f}"
