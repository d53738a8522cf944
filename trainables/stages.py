"""The maps a run distils (resolved taps and their shapes, probed with one dummy forward) and the check
that a config's taps fit them (docs/method.md, Losses): used by the space validator and by every run,
without the training loop."""
from trainables.config import ConfigError, DistillConfig
from trainables.methods import get_method
from trainables.models.sources import ModelSourceError
from trainables.models.taps import TapError, tap_shapes


def distilled_maps(cfg: DistillConfig, num_classes: int, image_size: int,
                   with_teacher: bool = True) -> tuple[tuple, tuple, tuple, tuple]:
    """(student taps, their C x H x W, teacher taps, theirs): -1 resolved to a module name on a model
    outside the zoo. A tap that names no module is a ConfigError (one line, the closest names)."""
    s_taps, s_shapes = _taps_of("student", cfg.student, cfg.feature_stages, "feature_stages", num_classes, image_size)
    t_taps, t_shapes = ((), ())
    if with_teacher:
        key = "teacher_feature_stages" if cfg.teacher_feature_stages else "feature_stages"
        t_taps, t_shapes = _taps_of("teacher_arch", cfg.teacher_arch, cfg.teacher_taps, key, num_classes, image_size)
        if len(s_taps) != len(t_taps):  # "groups" of two architectures can differ in number
            raise ConfigError(f"feature_stages {list(cfg.feature_stages)} gives {cfg.student} {len(s_taps)} taps and "
                              f"{cfg.teacher_arch} {len(t_taps)}; each student tap needs one teacher tap: name them "
                              f"(feature_stages, teacher_feature_stages)")
    return s_taps, s_shapes, t_taps, t_shapes


def check_feature_config(cfg: DistillConfig, num_classes: int, image_size: int) -> None:
    """The taps (and what the method needs of them) must fit the distilled maps; checked before anything
    trains."""
    method = get_method(cfg.method)
    if not cfg.uses_teacher or not method.distils_stages:
        return
    s_taps, s_shapes, t_taps, t_shapes = distilled_maps(cfg, num_classes, image_size)
    for s_tap, s, t in zip(s_taps, s_shapes, t_shapes):
        try:
            method.check_stage(cfg, min(s[1], t[1]), min(s[2], t[2]), f"student {cfg.student}, tap {s_tap}")
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _taps_of(model_key: str, arch: str, stages: list, key: str, num_classes: int,
             image_size: int) -> tuple[tuple, tuple]:
    try:
        return tap_shapes(arch, tuple(stages), num_classes, image_size)
    except ModelSourceError as e:  # the model itself cannot be built (a user factory that returns no module)
        raise ConfigError(f"{model_key}: {e}") from None
    except TapError as e:
        raise ConfigError(f"{key}: {e}") from None
    except IndexError:
        raise ConfigError(f"{key}: a stage of {list(stages)} does not exist in {arch}") from None
