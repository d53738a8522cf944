"""The distillation methods, one small unit each, by name (as timm maps names to models).

A unit declares what it needs (a teacher, the stage maps, connectors), fixes the weights its loss does
not use, and returns its named loss parts; DistillRun's loop calls it without knowing which it is.
Adding a method is one module here (found by `pkgutil`) plus its test.
"""
import importlib
import pkgutil

from trainables.methods.base import Method, registered

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

METHODS = tuple(registered)
# Every loss part some method declares, each logged per epoch as loss_<part> (0 where a method has none):
# a new method's new part needs no change to the training loop.
LOSS_PARTS = tuple(dict.fromkeys(part for method in registered.values() for part in method.parts))


def get_method(name: str) -> Method:
    return registered[name]


__all__ = ["LOSS_PARTS", "METHODS", "Method", "get_method"]
