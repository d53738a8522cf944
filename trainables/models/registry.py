from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int) -> nn.Module:
    """The model `name` names: a zoo name, or a source of trainables/models/sources.py
    (`torchvision:NAME`, `timm:NAME`, `module:FILE_OR_MODULE:FACTORY`)."""
    from trainables.models.sources import build_model

    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    model = build_model(name, int(num_classes))
    model.arch = name
    model.num_classes = int(num_classes)
    return model
