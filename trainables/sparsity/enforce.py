"""Keeping pruned weights at exactly zero through training.

Each masked module holds its mask as a non-persistent buffer (`weight_sfkd_mask`): it follows the
module through `.to(device)` and `copy.deepcopy`, and stays out of `state_dict`, so plain
`torch.save(model.state_dict())` / `load_state_dict` keep working. A hook on each masked weight
multiplies its gradient by the mask as soon as it is accumulated, so momentum and weight decay
never see a pruned position; `mask_weights_` re-applies the masks after an optimizer step.
"""
import torch
import torch.nn as nn

from trainables.sparsity.layers import SparsityError, maskable_parameters

_BUFFER = "weight_sfkd_mask"
_HOOK_FLAG = "_sfkd_grad_hook"


def _masked_modules(model: nn.Module):
    for name, mod in model.named_modules():
        if isinstance(getattr(mod, _BUFFER, None), torch.Tensor):
            yield (f"{name}.weight" if name else "weight"), mod


_CAPTURE = "_sfkd_dense_grad"  # set to True on a module: its next gradient is kept before masking


def _mask_grad(param: torch.Tensor, module: nn.Module) -> None:
    if param.grad is not None:
        if getattr(module, _CAPTURE, None) is True:
            setattr(module, _CAPTURE, param.grad.detach().clone())
        param.grad.mul_(getattr(module, _BUFFER))


def capture_dense_grads(model: nn.Module, on: bool) -> dict[str, torch.Tensor]:
    """on=True: the next backward keeps each masked weight's dense gradient (its value before the mask
    zeroes the pruned positions; RigL grows where it is largest). on=False: returns what was kept, by
    weight name, and stops keeping."""
    out = {}
    for name, mod in _masked_modules(model):
        kept = getattr(mod, _CAPTURE, None)
        if isinstance(kept, torch.Tensor):
            out[name] = kept
        setattr(mod, _CAPTURE, True if on else None)
    return out


def _install_grad_hooks(model: nn.Module, *_args) -> None:
    # Parameter hooks do not survive deepcopy; this forward pre-hook (which does) re-installs them.
    for _, mod in _masked_modules(model):
        w = mod.weight
        if not getattr(w, _HOOK_FLAG, False):
            w.register_post_accumulate_grad_hook(lambda p, m=mod: _mask_grad(p, m))
            setattr(w, _HOOK_FLAG, True)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Zero the pruned weights and keep them zero: gradients are masked on accumulation, and with
    an optimizer the weights are re-masked after each of its steps."""
    params = maskable_parameters(model)
    modules = dict(model.named_modules())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise SparsityError(f"mask for {unknown[0]} matches no Conv2d/Linear weight of the model")
    with torch.no_grad():
        for name, mask in masks.items():
            w = params[name]
            if tuple(mask.shape) != tuple(w.shape):
                raise SparsityError(f"mask for {name} has shape {tuple(mask.shape)}, weight has {tuple(w.shape)}")
            mod = modules[name.rsplit(".", 1)[0]] if "." in name else model
            m = mask.to(device=w.device, dtype=w.dtype)
            if isinstance(getattr(mod, _BUFFER, None), torch.Tensor):
                getattr(mod, _BUFFER).copy_(m)
            else:
                mod.register_buffer(_BUFFER, m, persistent=False)
            w.mul_(m)
    if not getattr(model, "_sfkd_hook_installed", False):
        model.register_forward_pre_hook(_install_grad_hooks)
        model._sfkd_hook_installed = True
    _install_grad_hooks(model)
    if optimizer is not None:
        optimizer.register_step_post_hook(lambda *_: mask_weights_(model))


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: getattr(mod, _BUFFER).bool() for name, mod in _masked_modules(model)}


@torch.no_grad()
def mask_weights_(model: nn.Module) -> None:
    pairs = [(mod.weight, getattr(mod, _BUFFER)) for _, mod in _masked_modules(model)]
    if pairs:
        weights, masks = zip(*pairs)
        torch._foreach_mul_(list(weights), list(masks))


def check_density(model_or_state, masks: dict[str, torch.Tensor], density: float, total: int | None = None) -> float:
    """Assert that the weights outside each mask are zero and that the masks keep
    round(density * N) weights within one per layer, N the masks' size or, for a channel-pruned network,
    `total`: the maskable weights of the network it was pruned from. Returns the measured density."""
    if isinstance(model_or_state, nn.Module):
        weights = {k: p.detach() for k, p in maskable_parameters(model_or_state).items()}
    else:
        weights = model_or_state
    for name, mask in masks.items():
        if name not in weights:
            raise SparsityError(f"layer {name}: has a mask but no weight")
        outside = int((weights[name].to(mask.device)[~mask] != 0).sum())
        if outside:
            raise SparsityError(f"layer {name}: {outside} pruned weights are nonzero")
    total = int(total) if total else sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    want = round(float(density) * total)
    if abs(kept - want) > len(masks):
        worst = max(masks, key=lambda k: abs(int(masks[k].sum()) - float(density) * masks[k].numel()))
        raise SparsityError(
            f"measured density {kept / total:.4f} != configured {float(density):.4f} "
            f"({kept} kept, expected {want} +/- {len(masks)}); furthest layer {worst} "
            f"at {int(masks[worst].sum()) / masks[worst].numel():.4f}"
        )
    return kept / total
