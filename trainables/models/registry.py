import difflib
from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int) -> nn.Module:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), model_names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (expected one of {', '.join(model_names())})")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    model = _REGISTRY[name](num_classes=int(num_classes))
    model.arch = name
    model.num_classes = int(num_classes)
    return model
