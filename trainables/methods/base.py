"""What every distillation method is: a loss over the student's logits (and stage maps), with the
teacher's outputs when it has one. `logit_terms` is the alpha * CE + beta * KD they share."""
import torch
import torch.nn.functional as F

from trainables.losses import kd_loss

registered: dict[str, "Method"] = {}


def register(cls):
    registered[cls.name] = cls()
    return cls


class Method:
    name = ""
    weights = (0.5, 0.5)  # (alpha, beta) when a config leaves them out: the method's literature recipe
    needs_teacher = True
    distils_stages = False  # matches the student's `feature_stages` maps to the teacher's
    connectors = False  # a 1x1 conv connector per stage where the channel counts differ
    parts = ("ce", "kd")  # the names of the loss parts `losses` may return; the loop logs each as loss_<part>
    default_stages = (-1,)  # the taps a config without feature_stages distils: the last map

    def resolve(self, cfg) -> None:
        """Fix, in place, the weights of loss terms this method does not have."""
        cfg.gamma = 0.0

    def check_stage(self, cfg, height: int, width: int, where: str) -> None:
        """Raise ValueError if the config cannot distil a height x width stage map."""

    def losses(self, cfg, logits, y, t_logits, pairs) -> tuple[torch.Tensor, dict]:
        """The weighted total and its named parts. `pairs`: (student map, teacher map) per distilled
        stage, after the connectors."""
        raise NotImplementedError


class StageTerm(Method):
    """alpha * CE + beta * KD + weight * (one per-stage loss, summed over the distilled stages)."""
    weights = (1.0, 0.0)  # KD only when beta is given on purpose
    distils_stages = True
    part = ""  # the loss part's name
    weight_key = ""  # the config key of its weight

    @property
    def parts(self):
        return ("ce", "kd", self.part)

    def stage_loss(self, f_s, f_t) -> torch.Tensor:
        raise NotImplementedError

    def losses(self, cfg, logits, y, t_logits, pairs):
        total, parts = logit_terms(cfg, logits, y, t_logits)
        if pairs:
            parts[self.part] = summed(self.stage_loss(f_s, f_t) for f_s, f_t in pairs)
            total = total + getattr(cfg, self.weight_key) * parts[self.part]
        return total, parts


def logit_terms(cfg, logits, y, t_logits) -> tuple[torch.Tensor, dict]:
    """alpha * CE, plus beta * KD when there is a teacher and beta > 0."""
    parts = {"ce": F.cross_entropy(logits.float(), y)}
    total = cfg.alpha * parts["ce"]
    if t_logits is not None and cfg.beta > 0:
        parts["kd"] = kd_loss(logits, t_logits, cfg.temperature)
        total = total + cfg.beta * parts["kd"]
    return total, parts


def summed(values) -> torch.Tensor | int:
    """The sum over stages, added left to right from 0 (the order the numbers were always taken in)."""
    out = 0
    for v in values:
        out = out + v
    return out
