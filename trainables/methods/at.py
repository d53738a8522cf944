"""AT (Zagoruyko & Komodakis): alpha * CE + beta * KD + at_weight * attention-map distance per stage."""
from trainables.losses import at_loss, match_spatial
from trainables.methods.base import StageTerm, register


@register
class AttentionTransfer(StageTerm):
    name, part, weight_key = "at", "at", "at_weight"

    def stage_loss(self, f_s, f_t):
        return at_loss(*match_spatial(f_s, f_t))
