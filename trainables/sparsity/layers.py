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


def layer_roles(model: nn.Module, image_size: int = 32) -> dict[str, str]:
    """The parameter names of the layers the dense-keeping rules speak of (docs/method.md, Sparse
    initialisation), found by role, not by where a model's code happens to define them: `input`, the
    first Conv2d a forward pass runs (it sees the image), and `classifier`, the last Conv2d or Linear it
    runs (it gives the logits). One dummy forward in eval mode, outside the caller's random stream."""
    import torch

    order, handles = [], []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            name = f"{mod_name}.weight" if mod_name else "weight"
            handles.append(mod.register_forward_hook(lambda m, i, o, name=name: order.append((name, m))))
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    convs = [n for n, m in order if isinstance(m, nn.Conv2d)]
    if not order:
        raise SparsityError("the model runs no Conv2d or Linear layer, so there is nothing to sparsify")
    return {"input": convs[0] if convs else order[0][0], "classifier": order[-1][0]}
