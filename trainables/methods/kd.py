"""KD (Hinton et al.): alpha * CE + beta * KL of the temperature-softened logits."""
from trainables.methods.base import Method, logit_terms, register


@register
class LogitKD(Method):
    name = "kd"

    def losses(self, cfg, logits, y, t_logits, pairs):
        return logit_terms(cfg, logits, y, t_logits)
