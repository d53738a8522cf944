import torch.nn as nn


class SparsityError(ValueError):
    """A density or mask that does not match what was configured."""


def maskable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of every Conv2d and Linear, in module order, keyed by parameter name."""
    out = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            out[f"{mod_name}.weight" if mod_name else "weight"] = mod.weight
    return out
