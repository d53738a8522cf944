"""Taps: the feature maps a distillation method reads, from any module (docs/models.md, Taps).

A tap is a module name (`layer3`, `features.8`), read with a forward hook on that module, so any model
works, traced or not (the approach of torchdistill's forward-hook registry). The zoo's own networks
also take integer stage indices into their `forward(x, return_features=True)` maps, as they always
did. `-1` on any model means the last spatial map before global pooling: for a zoo network its last
stage, for any other the output of the last module (in the order a forward pass finishes them) that
gives an N x C x H x W map with H * W > 1, which this module finds with one dummy forward.
"""
import difflib
import functools

import torch
import torch.nn as nn

from trainables.models.sources import is_zoo

LAST_MAP = -1
# Every stage group's output (Zagoruyko and Komodakis 2017 apply attention transfer at each): zoo indices
# 1..n-1 (index 0 is the stem); a model outside the zoo has no known groups and gives its last map.
STAGE_GROUPS = "groups"


class TapError(ValueError):
    """A tap that names no module, or a module whose output is no feature map."""


def _is_zoo_model(model: nn.Module) -> bool:
    """Built by the zoo (create_model records the name): its forward takes return_features."""
    arch = getattr(model, "arch", None)
    return isinstance(arch, str) and is_zoo(arch)


def _map_modules(model: nn.Module, image_size: int) -> list[tuple[str, tuple]]:
    """(name, C x H x W) of every named module whose output is a 4-D map, in the order a forward finishes
    them (a container finishes after its children)."""
    found, handles = [], []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                found.append((name, tuple(out.shape[1:])))
        handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(torch.zeros(1, 3, image_size, image_size, device=_device_of(model)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return found


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def resolve_taps(model: nn.Module, stages, image_size: int, who: str | None = None) -> list:
    """The taps of `stages` for this model: zoo indices stay indices; -1 of another model becomes the name
    of its last spatial map; "groups" becomes every stage group's output (STAGE_GROUPS); a name must be
    one of the model's modules (one line with the closest real names otherwise)."""
    zoo = _is_zoo_model(model)
    who = who or str(getattr(model, "arch", "the model"))
    modules = dict(model.named_modules())
    out = []
    for s in stages:
        if s == STAGE_GROUPS and s not in modules:
            if zoo:  # the output of every stage group: each zoo map after its stem (index 0)
                with torch.no_grad(), torch.random.fork_rng(devices=[]):
                    was = model.training
                    _, maps = model.eval()(torch.zeros(1, 3, image_size, image_size, device=_device_of(model)),
                                           return_features=True)
                    model.train(was)
                out.extend(range(1, len(maps)))
                continue
            s = LAST_MAP  # a model outside the zoo has no known stage groups: its last map
        if isinstance(s, bool) or not isinstance(s, (int, str)):
            raise TapError(f"{who}: tap {s!r} is neither a module name nor a stage index")
        if isinstance(s, int):
            if zoo:
                out.append(s)
                continue
            if s != LAST_MAP:
                raise TapError(f"{who} has no numbered stages: name its modules "
                               f"(for example {_example_names(model, image_size)}), or give -1 for its last map")
            maps = [(n, shape) for n, shape in _map_modules(model, image_size) if shape[1] * shape[2] > 1]
            if not maps:
                raise TapError(f"{who} has no module that gives a spatial map at "
                               f"{image_size}x{image_size} px")
            out.append(maps[-1][0])
            continue
        if s not in modules or not s:
            close = difflib.get_close_matches(s, [n for n in modules if n], n=3)
            hint = f"; the closest are {', '.join(close)}" if close else ""
            raise TapError(f"{who} has no module {s!r}{hint}")
        out.append(s)
    return out


def _example_names(model: nn.Module, image_size: int) -> str:
    names = [n for n, shape in _map_modules(model, image_size) if "." not in n and shape[1] * shape[2] > 1]
    return ", ".join(names[-3:]) or "layer3"


def forward_taps(model: nn.Module, x: torch.Tensor, taps: list, call=None) -> tuple[torch.Tensor, list]:
    """(logits, [the map at each tap]) of one forward of `model` (through `call`, e.g. its compiled
    version, which shares its modules). Hooks are added for this call and removed after it."""
    call = model if call is None else call
    named = [t for t in taps if isinstance(t, str)]
    got: dict[str, torch.Tensor] = {}
    handles = []
    modules = dict(model.named_modules()) if named else {}
    for name in named:
        def hook(_m, _i, out, name=name):
            got[name] = out
        handles.append(modules[name].register_forward_hook(hook))
    try:
        if len(named) < len(taps):  # a zoo index: the network's own stage maps
            logits, stage_maps = call(x, return_features=True)
        else:
            logits, stage_maps = call(x), None
    finally:
        for h in handles:
            h.remove()
    maps = []
    for t in taps:
        m = stage_maps[t] if isinstance(t, int) else got[t]
        if not isinstance(m, torch.Tensor) or m.dim() != 4:
            shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise TapError(f"tap {t!r} gives {shape}, not an N x C x H x W feature map")
        maps.append(m)
    return logits, maps


@functools.lru_cache(maxsize=64)
def tap_shapes(arch: str, stages: tuple, num_classes: int, image_size: int) -> tuple[tuple, tuple]:
    """(resolved taps, C x H x W at each) of `arch` for square inputs of `image_size`, probed once."""
    from trainables.models.registry import create_model

    # Building a model draws its initial weights; the global RNG must not notice (a run's seed would
    # otherwise give a different student depending on whether this cache was warm).
    with torch.random.fork_rng(devices=[]):
        model = create_model(arch, num_classes).eval()
    taps = resolve_taps(model, list(stages), image_size, who=arch)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        _, maps = forward_taps(model, torch.zeros(1, 3, image_size, image_size), taps)
    return tuple(taps), tuple(tuple(m.shape[1:]) for m in maps)
