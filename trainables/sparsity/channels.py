"""Channel sparsity (docs/sparsity.md, "Patterns"): whole output channels removed, so the student is a
smaller dense network that runs faster on any hardware.

Which layers must lose channels together (the convolutions joined by a residual addition, a depthwise
convolution and the layer that feeds it, the BatchNorm after each) is Torch-Pruning's DepGraph (Fang et
al. 2023), not bookkeeping written here. Channels are ranked by the L2 norm of their group's weights in
the model as given (the teacher's copy: the magnitude-pruned original of Chen et al. 2021), every group at
one ratio; the ratio is found by bisection so that the kept fraction of maskable weights, `density`'s one
meaning, is within `TOLERANCE` of the target.
"""
import copy

import torch
import torch.nn as nn

from trainables.sparsity.layers import SparsityError, layer_roles, maskable_parameters

TOLERANCE = 0.02  # the most the measured density may differ from the target (docs/method.md)


def maskable_weight_count(model: nn.Module) -> int:
    return sum(p.numel() for p in maskable_parameters(model).values())


def _example(model: nn.Module, image_size: int) -> torch.Tensor:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros(1, 3, image_size, image_size, device=device)


def _pruned_copy(model: nn.Module, ratio: float, image_size: int, keep: str, multiple: int) -> nn.Module:
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()  # eval: tracing must not move BatchNorm's running statistics
    modules = dict(pruned.named_modules())
    with torch.random.fork_rng(devices=[]):  # DepGraph traces with autograd: no no_grad here
        pruner = tp.pruner.BasePruner(pruned, _example(pruned, image_size),
                                      importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=[modules[keep]], global_pruning=False,
                                      round_to=multiple if multiple > 1 else None)
        pruner.step()
    return pruned.train(model.training)


def prune_channels(model: nn.Module, density: float, image_size: int = 32,
                   multiple: int = 1) -> tuple[nn.Module, float]:
    """(a copy of `model` with whole channels removed, its measured density): the fraction of the
    original's maskable weights it keeps, within TOLERANCE of `density`. The classifier keeps one output
    per class; its inputs follow the channels before it. `multiple` > 1: every pruned layer keeps a
    multiple of that many channels (Torch-Pruning's round_to), so fewer densities are reachable; one that
    is not is a SparsityError naming the nearest reached."""
    if not 0.0 < float(density) <= 1.0:
        raise SparsityError(f"density must be in (0, 1], got {density}")
    if int(multiple) < 1:
        raise SparsityError(f"channel_multiple must be a whole number >= 1, got {multiple}")
    total = maskable_weight_count(model)
    if density == 1.0:
        return copy.deepcopy(model), 1.0
    classifier = layer_roles(model, image_size)["classifier"].removesuffix(".weight")
    lo, hi, best = 0.0, 1.0, None
    # The kept fraction falls with the ratio (about as (1 - ratio)^2). With a multiple it falls in steps, and
    # jumps back to 1 where a group would round to no channels (Torch-Pruning then leaves it whole), so the
    # closest fraction seen is kept rather than the last.
    for _ in range(14):
        ratio = (lo + hi) / 2
        candidate = _pruned_copy(model, ratio, image_size, classifier, int(multiple))
        kept = maskable_weight_count(candidate) / total
        if best is None or abs(kept - density) < abs(best[1] - density):
            best = (candidate, kept)
        if abs(kept - density) <= TOLERANCE / 4:
            break
        lo, hi = (ratio, hi) if kept > density else (lo, ratio)
    if abs(best[1] - density) > TOLERANCE:
        if multiple > 1:
            raise SparsityError(f"channel pruning in multiples of {multiple} channels reaches density {best[1]:.4f} "
                                f"at best, not within {TOLERANCE} of {density}: give another density, or a smaller "
                                f"channel_multiple")
        raise SparsityError(f"channel pruning reaches density {best[1]:.4f} at best, not within {TOLERANCE} of "
                            f"{density}: the network has too few channels per group for that target")
    return best


def shape_like(model: nn.Module, shapes: dict[str, torch.Size], image_size: int = 32) -> nn.Module:
    """Remove trailing channels from `model` (in place) until every Conv2d / Linear weight has the shape in
    `shapes` (a channel-pruned checkpoint's), so its state_dict loads; each removal takes its dependent
    layers with it, as in prune_channels. SparsityError if the shapes cannot be reached."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):  # DepGraph traces with autograd: no no_grad here
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=_example(model, image_size))
        modules = dict(model.named_modules())
        for key in list(maskable_parameters(model)):
            module = modules[key.removesuffix(".weight")]
            if key not in shapes:
                continue
            want, have = int(shapes[key][0]), int(module.weight.shape[0])  # read now: a removal may have changed it
            if want < have:
                prune_out = graph.get_pruner_of_module(module).prune_out_channels
                graph.get_pruning_group(module, prune_out, idxs=list(range(want, have))).prune()
    model.train(was_training)
    wrong = [k for k, w in maskable_parameters(model).items() if k in shapes and tuple(w.shape) != tuple(shapes[k])]
    if wrong:
        got = tuple(maskable_parameters(model)[wrong[0]].shape)
        raise SparsityError(f"layer {wrong[0]}: the checkpoint's shape {tuple(shapes[wrong[0]])} cannot be reached by "
                            f"removing channels from {got}")
    return model


def fit_to_checkpoint(model: nn.Module, state: dict, config: dict, image_size: int) -> nn.Module:
    """A freshly built student made ready for a checkpoint's state_dict: re-shaped to it when the
    checkpoint's config says its channels were pruned, as it is otherwise."""
    if config.get("sparsity_pattern") != "channel":
        return model
    shapes = {k: state[k].shape for k in maskable_parameters(model) if k in state}
    return shape_like(model, shapes, image_size)
