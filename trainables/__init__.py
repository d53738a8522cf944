"""The worker side: everything a trial runs. Only `SFKDTrainable` needs Ray."""
from trainables.config import ConfigError, DistillConfig

__all__ = ["ConfigError", "DistillConfig", "DistillRun", "SFKDTrainable"]


def __getattr__(name):
    # Imported lazily: the pure-PyTorch core works where Ray is not installed, and a module that needs
    # only the schema (the space validator) does not load the training loop.
    if name == "DistillRun":
        from trainables.run import DistillRun
        return DistillRun
    if name == "SFKDTrainable":
        from trainables.ray_trainable import SFKDTrainable
        return SFKDTrainable
    raise AttributeError(name)
