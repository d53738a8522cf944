"""CIFAR model families behind one name -> constructor registry.

`create_model(name, num_classes)` returns an `nn.Module` whose `forward(x, return_features=True)`
gives `(logits, stage_maps)`, ordered from input to output; the last map is the one before global
pooling, which is the stage SF-KD distils by default.
"""
from trainables.models import resnet, vgg, wrn  # noqa: F401  (registers the families)
from trainables.models.registry import create_model, model_names, register_model

__all__ = ["create_model", "model_names", "register_model"]
