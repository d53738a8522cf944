"""SP (Tung & Mori): alpha * CE + beta * KD + sp_weight * similarity-preserving loss per stage."""
from trainables.losses import sp_loss
from trainables.methods.base import Method, logit_terms, register, summed


@register
class SimilarityPreserving(Method):
    name = "sp"
    weights = (1.0, 0.0)  # KD only when beta is given on purpose
    distils_stages = True

    def losses(self, cfg, logits, y, t_logits, pairs):
        total, parts = logit_terms(cfg, logits, y, t_logits)
        if pairs:
            parts["sp"] = summed(sp_loss(f_s, f_t) for f_s, f_t in pairs)
            total = total + cfg.sp_weight * parts["sp"]
        return total, parts
