"""The worker side: everything a trial runs. Only `SFKDTrainable` needs Ray."""
from trainables.config import ConfigError, DistillConfig
from trainables.run import DistillRun

__all__ = ["ConfigError", "DistillConfig", "DistillRun", "SFKDTrainable"]


def __getattr__(name):
    # Imported lazily so the pure-PyTorch core works where Ray is not installed.
    if name == "SFKDTrainable":
        from trainables.ray_trainable import SFKDTrainable
        return SFKDTrainable
    raise AttributeError(name)
