"""init_masks: which weights of a student survive, for every method of docs/method.md, Sparse initialisation."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.sparsity.allocation import INIT_METHODS, allocate_layer_densities, exact_counts
from trainables.sparsity.layers import SparsityError, layer_roles, maskable_parameters


def _density_in_range(density: float) -> float:
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise SparsityError(f"density must be in (0, 1], got {density}")
    return density


def _random_masks(params: dict[str, torch.Tensor], counts: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(int(seed))
    masks = {}
    for name, p in params.items():
        flat = torch.zeros(p.numel(), dtype=torch.bool)
        flat[torch.randperm(p.numel(), generator=g)[:counts[name]]] = True
        masks[name] = flat.view(p.shape).to(p.device)
    return masks


def _top_global(scores: dict[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """Keep exactly `keep` positions with the highest scores across all layers."""
    flat = torch.cat([s.detach().flatten().float().cpu() for s in scores.values()])
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.topk(flat, keep, sorted=False).indices] = True
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = chosen[start:start + s.numel()].view(s.shape).to(s.device)
        start += s.numel()
    return masks


def _labelled_batches(kw: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = kw.get("batches")
    if not batches:
        raise SparsityError("SNIP and GraSP need labelled batches: init_masks(..., batches=[(x, y), ...])")
    return list(batches)


def _snip_scores(model: nn.Module, params: dict[str, nn.Parameter], batches) -> dict[str, torch.Tensor]:
    """|w * dL/dw| summed over the batches (Lee et al. 2019)."""
    grads = {k: torch.zeros_like(p) for k, p in params.items()}
    was_training = model.training
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        for k, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            grads[k] += g
    model.train(was_training)
    return {k: (params[k].detach() * grads[k]).abs() for k in params}


def _grasp_scores(model: nn.Module, params: dict[str, nn.Parameter], batches, temperature: float = 200.0):
    """w * (H g) (Wang et al. 2020). GraSP removes the weights with the largest -w * Hg, so keeping
    the top of w * Hg keeps exactly the weights GraSP keeps."""
    weights = list(params.values())
    was_training = model.training
    model.train()
    g_sum = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        loss = F.cross_entropy(model(x) / temperature, y)
        for acc, g in zip(g_sum, torch.autograd.grad(loss, weights)):
            acc += g
    hg_sum = [torch.zeros_like(w) for w in weights]
    try:
        with _twice_differentiable(model):
            for x, y in batches:
                loss = F.cross_entropy(model(x) / temperature, y)
                grads = torch.autograd.grad(loss, weights, create_graph=True)
                z = sum((g * g0.detach()).sum() for g, g0 in zip(grads, g_sum))
                for acc, hg in zip(hg_sum, torch.autograd.grad(z, weights)):
                    acc += hg
    except RuntimeError as e:
        if "not implemented" not in str(e):
            raise
        raise SparsityError(f"GraSP needs second derivatives, and {getattr(model, 'arch', 'this model')} runs an "
                            f"operation PyTorch cannot differentiate twice ({str(e).splitlines()[0]}); use SNIP or "
                            f"ERK for it") from None
    finally:
        model.train(was_training)
    return {k: params[k].detach() * hg for k, hg in zip(params, hg_sum)}


class _HardSigmoid2(nn.Module):
    """relu6(x + 3) / 6: nn.Hardsigmoid's values, written with ops that have a double backward."""

    def forward(self, x):
        return F.relu6(x + 3.0) / 6.0


class _HardSwish2(nn.Module):
    """x * relu6(x + 3) / 6: nn.Hardswish's values, written with ops that have a double backward."""

    def forward(self, x):
        return x * F.relu6(x + 3.0) / 6.0


class _twice_differentiable:
    """While GraSP scores, swap nn.Hardsigmoid / nn.Hardswish (MobileNetV3's; PyTorch has no double backward
    for them) for the same functions in relu6, whose second derivative autograd takes as 0 away from the
    kinks, as it does for ReLU. The model is put back as it was afterwards."""

    SWAPS = {nn.Hardsigmoid: _HardSigmoid2, nn.Hardswish: _HardSwish2}

    def __init__(self, model: nn.Module):
        self.model, self.swapped = model, []

    def __enter__(self):
        for parent in self.model.modules():
            for name, child in list(parent.named_children()):
                swap = self.SWAPS.get(type(child))
                if swap is not None:
                    self.swapped.append((parent, name, child))
                    setattr(parent, name, swap())
        return self

    def __exit__(self, *exc):
        for parent, name, child in self.swapped:
            setattr(parent, name, child)
        return False


def init_masks(model: nn.Module, density: float, method: str, **kw) -> dict[str, torch.Tensor]:
    """Boolean masks keyed by parameter name, keeping round(density * N) weights in all.

    kw: seed (int, default 0); batches ([(x, y), ...]) for SNIP/GraSP; scored_positions (bool,
    default True): False re-draws random positions at the scored per-layer ratios; image_size (default
    32) of the dummy forward that finds the input convolution and the classifier for uniform+.
    For `magnitude` the model must already hold the weights to prune (e.g. the teacher's).
    """
    density = _density_in_range(density)
    if method not in INIT_METHODS:
        raise SparsityError(f"unknown sparse_init {method!r}; expected one of {', '.join(INIT_METHODS)}")
    seed = int(kw.get("seed", 0))
    params = maskable_parameters(model)
    numel = {k: p.numel() for k, p in params.items()}
    keep = round(density * sum(numel.values()))
    if method in ("uniform", "uniform+", "ER", "ERK"):
        shapes = {k: p.shape for k, p in params.items()}
        roles = layer_roles(model, int(kw.get("image_size", 32))) if method == "uniform+" else None
        counts = exact_counts(numel, allocate_layer_densities(shapes, density, method, roles), density)
        return _random_masks(params, counts, seed)
    if method == "magnitude":
        scores = {k: p.detach().abs() for k, p in params.items()}
    elif method == "SNIP":
        scores = _snip_scores(model, params, _labelled_batches(kw))
    else:
        scores = _grasp_scores(model, params, _labelled_batches(kw))
    masks = _top_global(scores, keep)
    if method != "magnitude" and not kw.get("scored_positions", True):
        counts = {k: int(m.sum()) for k, m in masks.items()}
        masks = _random_masks(params, counts, seed)
    return masks


def prune_by_magnitude(model: nn.Module, masks: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """One pruning step: keep the globally largest |w| among the surviving weights."""
    density = _density_in_range(density)
    params = maskable_parameters(model)
    keep = round(density * sum(p.numel() for p in params.values()))
    scores = {}
    for k, p in params.items():
        s = p.detach().abs().float()
        # Pruned positions score -1 so they can never come back; survivors all score >= 0.
        scores[k] = torch.where(masks[k], s, torch.full_like(s, -1.0))
    return _top_global(scores, keep)

