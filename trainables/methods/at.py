"""AT (Zagoruyko & Komodakis): alpha * CE + beta * KD + at_weight * attention-map distance per stage."""
from trainables.losses import at_loss, match_spatial
from trainables.methods.base import Method, logit_terms, register, summed


@register
class AttentionTransfer(Method):
    name = "at"
    weights = (1.0, 0.0)  # KD only when beta is given on purpose
    distils_stages = True

    def losses(self, cfg, logits, y, t_logits, pairs):
        total, parts = logit_terms(cfg, logits, y, t_logits)
        if pairs:
            parts["at"] = summed(at_loss(*match_spatial(f_s, f_t)) for f_s, f_t in pairs)
            total = total + cfg.at_weight * parts["at"]
        return total, parts
