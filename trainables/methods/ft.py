"""FT: the sparse student fine-tuned on the labels alone (cross-entropy at weight 1, no teacher)."""
import torch.nn.functional as F

from trainables.methods.base import Method, register


@register
class FineTune(Method):
    name = "ft"
    weights = (1.0, 0.0)
    needs_teacher = False
    parts = ("ce",)

    def resolve(self, cfg) -> None:
        cfg.alpha, cfg.beta, cfg.gamma = 1.0, 0.0, 0.0

    def losses(self, cfg, logits, y, t_logits, pairs):
        ce = F.cross_entropy(logits.float(), y)
        return ce, {"ce": ce}
