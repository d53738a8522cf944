"""Sparsity patterns (docs/sparsity.md, "Patterns"): which shapes a mask may take.

`unstructured` masks are any set of positions (the sparse inits of docs/method.md). `N:M` masks keep at
most N of every M consecutive weights along a layer's input channels, at each output channel and kernel
position: the pattern NVIDIA's sparse tensor cores run (Mishra et al. 2021, "Accelerating Sparse Deep
Neural Networks"). A layer whose input channels per group are not a multiple of M (the RGB stem, a
depthwise convolution) cannot hold the pattern and stays dense; it is listed, never silently skipped.

Written here rather than taken from a library: the rule is a reshape and a per-group top-k, and the
libraries that ship it (NVIDIA's ASP in apex, Model-Optimizer) need CUDA extensions this project does
not require.
"""
import re

import torch

from trainables.sparsity.layers import SparsityError

UNSTRUCTURED, CHANNEL = "unstructured", "channel"
PATTERN_CHOICES = (UNSTRUCTURED, CHANNEL, "N:M (e.g. 2:4)")
_NM = re.compile(r"^(\d+):(\d+)$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """(N, M) for an N:M pattern, None for `unstructured` and `channel` (trainables.sparsity.channels);
    SparsityError for anything else."""
    if pattern in (UNSTRUCTURED, CHANNEL):
        return None
    match = _NM.match(str(pattern).strip())
    if not match:
        raise SparsityError(f"sparsity_pattern: unknown value {pattern!r} (expected {', '.join(PATTERN_CHOICES)})")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise SparsityError(f"sparsity_pattern {pattern}: N:M needs 0 < N < M (N kept of every M), got N={n}, M={m}")
    return n, m


def _groups(t: torch.Tensor, m: int) -> torch.Tensor:
    """The tensor's M-groups as rows: [out, in, *kernel] -> [out * prod(kernel) * in / M, M], each row M
    consecutive input channels at one output channel and kernel position."""
    moved = t.movedim(1, -1) if t.dim() > 2 else t
    return moved.reshape(-1, m)


def _ungroup(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) > 2:
        moved_shape = (shape[0], *shape[2:], shape[1])
        return rows.reshape(moved_shape).movedim(-1, 1)
    return rows.reshape(shape)


def holds_pattern(shape: torch.Size, m: int) -> bool:
    """Whether a weight of this shape can carry an N:M mask: input channels (per group) a multiple of M."""
    return len(shape) >= 2 and shape[1] % m == 0


def nm_masks(weights: dict[str, torch.Tensor], n: int, m: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(masks, dense layers): in every M-group of each weight, the N of largest |w| (ties to the lower
    channel index, so the masks are the same on every machine); layers that cannot hold the pattern are
    all-True and listed."""
    masks, dense = {}, []
    for name, w in weights.items():
        if not holds_pattern(w.shape, m):
            masks[name] = torch.ones_like(w, dtype=torch.bool)
            dense.append(name)
            continue
        rows = _groups(w.detach().abs().float(), m)
        keep = torch.argsort(rows, dim=1, descending=True, stable=True)[:, :n]
        chosen = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, keep, True)
        masks[name] = _ungroup(chosen, w.shape)
    return masks, dense


def check_nm(masks: dict[str, torch.Tensor], n: int, m: int, weights: dict[str, torch.Tensor] | None = None) -> None:
    """Every M-group of every layer that can hold the pattern keeps at most N (in its mask and, given the
    weights, in its nonzero values); or SparsityError naming the first layer and group that does not."""
    for name, mask in masks.items():
        if not holds_pattern(mask.shape, m):
            continue
        tensors = [("mask", mask)]
        if weights is not None and name in weights:
            tensors.append(("nonzero weights", weights[name] != 0))
        for what, t in tensors:
            per_group = _groups(t.to(torch.int32), m).sum(dim=1)
            worst = int(per_group.argmax())
            if int(per_group[worst]) > n:
                raise SparsityError(f"layer {name}: M-group {worst} has {int(per_group[worst])} {what} kept of "
                                    f"{m}, the {n}:{m} pattern allows {n}")
