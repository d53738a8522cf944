"""The stage maps of a model (their shapes, probed with one dummy forward) and the check that a config's
distilled stages fit them (docs/method.md, Losses): used by the space validator and by every run,
without the training loop."""
import functools

import torch

from trainables.config import ConfigError, DistillConfig
from trainables.methods import get_method
from trainables.models import create_model


@functools.lru_cache(maxsize=64)
def stage_shapes(arch: str, num_classes: int, image_size: int) -> list[tuple[int, int, int]]:
    """C x H x W of every stage map of `arch` for square inputs of `image_size`."""
    # Building a model draws its initial weights; the global RNG must not notice (a run's seed would
    # otherwise give a different student depending on whether this cache was warm).
    with torch.random.fork_rng(devices=[]):
        model = create_model(arch, num_classes).eval()
    with torch.no_grad():
        _, feats = model(torch.zeros(1, 3, image_size, image_size), return_features=True)
    return [tuple(f.shape[1:]) for f in feats]


def check_feature_config(cfg: DistillConfig, num_classes: int, image_size: int) -> None:
    """feature_stages (and what the method needs of them) must fit the distilled maps; checked before
    anything trains."""
    method = get_method(cfg.method)
    if not cfg.uses_teacher or not method.distils_stages:
        return
    s_shapes = stage_shapes(cfg.student, num_classes, image_size)
    t_shapes = stage_shapes(cfg.teacher_arch, num_classes, image_size)
    for idx in cfg.feature_stages:
        if not (-len(s_shapes) <= idx < len(s_shapes) and -len(t_shapes) <= idx < len(t_shapes)):
            raise ConfigError(f"feature_stages: stage {idx} does not exist; {cfg.student} has {len(s_shapes)} stages")
        try:
            method.check_stage(cfg, min(s_shapes[idx][1], t_shapes[idx][1]), min(s_shapes[idx][2], t_shapes[idx][2]),
                               f"student {cfg.student}, stage {idx}")
        except ValueError as e:
            raise ConfigError(str(e)) from None
