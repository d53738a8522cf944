"""Per-layer densities for the data-free methods (docs/method.md, Sparse initialisation)."""
import torch

from trainables.sparsity.layers import SparsityError

INIT_METHODS = ("uniform", "uniform+", "ER", "ERK", "SNIP", "GraSP", "magnitude")


def _erk_raw(shape: torch.Size, with_kernel: bool) -> float:
    n_out, n_in = shape[0], shape[1]
    if len(shape) == 4 and with_kernel:
        kh, kw = shape[2], shape[3]
        return (n_out + n_in + kh + kw) / (n_out * n_in * kh * kw)
    return (n_out + n_in) / (n_out * n_in)


def _rigl(shapes: dict[str, torch.Size], density: float, with_kernel: bool) -> dict[str, float]:
    """Solve eps so that sum(eps * raw_l * n_l) + sum(dense n_l) = density * N; a layer whose
    density would exceed 1 becomes dense and eps is solved again (Evci et al. 2020)."""
    numel = {k: s.numel() for k, s in shapes.items()}
    raw = {k: _erk_raw(s, with_kernel) for k, s in shapes.items()}
    target = density * sum(numel.values())
    dense: set[str] = set()
    while True:
        budget = target - sum(numel[k] for k in dense)
        weight = sum(raw[k] * numel[k] for k in shapes if k not in dense)
        eps = budget / weight
        over = [k for k in shapes if k not in dense and eps * raw[k] > 1]
        if not over:
            break
        dense.add(max(over, key=lambda k: raw[k]))
    return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}


def _uniform_plus(shapes: dict[str, torch.Size], density: float, roles: dict | None = None) -> dict[str, float]:
    """First layer dense, classifier at least 0.2, the rest uniform so the global count holds. `roles`
    names the two (sparsity.layers.layer_roles); without it they are the first and last layers given."""
    names = list(shapes)
    first, last = (roles["input"], roles["classifier"]) if roles else (names[0], names[-1])
    numel = {k: s.numel() for k, s in shapes.items()}
    target = density * sum(numel.values())
    rest = [k for k in names if k != first]
    d = (target - numel[first]) / sum(numel[k] for k in rest)
    out = {k: d for k in rest}
    out[first] = 1.0
    if d < 0.2:
        inner = [k for k in rest if k != last]
        if not inner:
            raise SparsityError("uniform+ needs at least three masked layers")
        out[last] = 0.2
        d = (target - numel[first] - 0.2 * numel[last]) / sum(numel[k] for k in inner)
        for k in inner:
            out[k] = d
    if min(out.values()) < 0:
        raise SparsityError(f"density {density} is too low for uniform+ (dense first layer, classifier >= 0.2)")
    return out


def allocate_layer_densities(shapes: dict[str, torch.Size], density: float, method: str,
                             roles: dict | None = None) -> dict[str, float]:
    if method == "uniform":
        return {k: density for k in shapes}
    if method == "uniform+":
        return _uniform_plus(shapes, density, roles)
    if method in ("ER", "ERK"):
        return _rigl(shapes, density, with_kernel=(method == "ERK"))
    raise SparsityError(f"{method} has no data-free layer allocation")


def exact_counts(numel: dict[str, int], densities: dict[str, float], density: float) -> dict[str, int]:
    """Per-layer kept counts round(d_l * n_l), nudged by largest remainder so that the total is
    exactly round(density * N) whenever the per-layer caps allow it."""
    total = round(density * sum(numel.values()))
    want = {k: min(max(densities[k], 0.0), 1.0) * numel[k] for k in numel}
    counts = {k: int(want[k]) for k in numel}
    short = total - sum(counts.values())
    by_remainder = sorted(numel, key=lambda k: want[k] - counts[k], reverse=True)
    for k in by_remainder:
        if short <= 0:
            break
        if counts[k] < numel[k] and want[k] - counts[k] > 0:
            counts[k] += 1
            short -= 1
    return counts
