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


def get_method(name: str) -> Method:
    return registered[name]


__all__ = ["METHODS", "Method", "get_method"]
