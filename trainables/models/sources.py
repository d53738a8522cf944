"""Model sources: one resolver from a model spec to an `nn.Module` (docs/models.md, Your own model).

A spec is one of
- a bare name of the built-in CIFAR zoo (`resnet20`): the registry in trainables/models/registry.py;
- `torchvision:NAME`: `torchvision.models.get_model(NAME, weights=None, num_classes=...)`;
- `timm:NAME`: `timm.create_model(NAME, pretrained=False, num_classes=...)` (timm is an optional extra);
- `module:path/to/file.py:factory` or `module:package.module:factory`: a callable of the user's own,
  called with `num_classes=`, that returns an `nn.Module`.
Nothing else in the project knows where models come from. No source downloads weights: weights come
from a file the user gives (trainables/teacher_file.py), never from a hub at run time.
"""
import difflib
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

import torch.nn as nn

from trainables.models.registry import _REGISTRY, model_names

PREFIXES = ("torchvision", "timm", "module")


class ModelSourceError(ValueError):
    """A model spec that names no model this machine can build."""


def _hint(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def split_spec(spec: str) -> tuple[str, str]:
    """('zoo' | 'torchvision' | 'timm' | 'module', the rest)."""
    if not isinstance(spec, str) or not spec:
        raise ModelSourceError(f"model {spec!r}: expected a zoo name or torchvision:NAME, timm:NAME, module:FILE:FACTORY")
    head, sep, rest = spec.partition(":")
    if sep and head in PREFIXES:
        return head, rest
    if sep:
        raise ModelSourceError(f"model {spec!r}: unknown source {head!r}{_hint(head, PREFIXES)} "
                               f"(expected one of {', '.join(PREFIXES)}, or a zoo name)")
    return "zoo", spec


def is_zoo(spec: str) -> bool:
    return split_spec(spec)[0] == "zoo"


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))  # classification models only


def _timm():
    try:
        import timm
    except ImportError:
        raise ModelSourceError("timm is not installed: pip install 'sfkd-tune[timm]' (or pip install timm)") from None
    return timm


def _user_factory(rest: str):
    """The user's callable of `path/to/file.py:factory` or `package.module:factory`."""
    target, sep, factory = rest.rpartition(":")
    if not sep or not target or not factory:
        raise ModelSourceError(f"model module:{rest}: expected module:path/to/file.py:factory or "
                               f"module:package.module:factory")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            # A worker of a cluster has no copy of the driver's file: the driver ships its folder with
            # Ray's runtime_env (py_modules), where it imports by the file's own name.
            try:
                module = importlib.import_module(path.stem)
            except ImportError:
                raise ModelSourceError(f"model module:{rest}: {path} does not exist") from None
        else:
            path = path.resolve()
            name = f"sfkd_user_model_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except Exception as e:  # noqa: BLE001 - the user's code: say which file failed and how
                    del sys.modules[name]
                    raise ModelSourceError(f"model module:{rest}: importing {path} failed: "
                                           f"{type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ModelSourceError(f"model module:{rest}: cannot import {target} ({e})") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        public = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ModelSourceError(f"model module:{rest}: {target} has no callable {factory!r}{_hint(factory, public)}")
    return fn


def check_spec(spec: str) -> None:
    """Refuse a spec that names nothing, without building a model (the space validator's check)."""
    kind, rest = split_spec(spec)
    if kind == "zoo":
        if rest not in _REGISTRY:
            raise ModelSourceError(f"unknown model {rest!r}{_hint(rest, model_names())} (expected one of "
                                   f"{', '.join(model_names())}, or torchvision:NAME, timm:NAME, module:FILE:FACTORY)")
    elif kind == "torchvision":
        names = torchvision_names()
        if rest not in names:
            raise ModelSourceError(f"model torchvision:{rest}: torchvision has no classification model {rest!r}"
                                   f"{_hint(rest, names)}")
    elif kind == "timm":
        timm = _timm()
        if not timm.is_model(rest):
            raise ModelSourceError(f"model timm:{rest}: timm has no model {rest!r}{_hint(rest, timm.list_models())}")
    else:
        _user_factory(rest)


def build_model(spec: str, num_classes: int) -> nn.Module:
    """The module `spec` names, with a classifier for `num_classes` and freshly initialised weights."""
    check_spec(spec)
    kind, rest = split_spec(spec)
    if kind == "zoo":
        return _REGISTRY[rest](num_classes=num_classes)
    if kind == "torchvision":
        import torchvision

        return torchvision.models.get_model(rest, weights=None, num_classes=num_classes)
    if kind == "timm":
        return _timm().create_model(rest, pretrained=False, num_classes=num_classes)
    try:
        model = _user_factory(rest)(num_classes=num_classes)
    except Exception as e:  # noqa: BLE001 - the user's code
        raise ModelSourceError(f"model module:{rest}: the factory raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"model module:{rest}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def user_code_file(spec: str) -> Path | None:
    """The .py file of a `module:FILE.py:factory` spec (what a cluster and a registered model ship)."""
    kind, rest = split_spec(spec)
    target = rest.rpartition(":")[0]
    if kind == "module" and target.endswith(".py"):
        return Path(target).expanduser()
    return None


def file_slug(spec: str) -> str:
    """A spec as one file-name component: torchvision:resnet18 -> torchvision-resnet18,
    module:/a/b/nets.py:build -> module-nets-build."""
    import re

    kind, rest = split_spec(spec)
    if kind == "zoo":
        return rest
    if kind == "module":
        target, _, factory = rest.rpartition(":")
        rest = f"{Path(target).stem if target.endswith('.py') else target}-{factory}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{kind}-{rest}")
