"""AT (Zagoruyko & Komodakis): alpha * CE + beta * KD + at_weight * attention-map distance per stage."""
from trainables.losses import at_loss, match_spatial
from trainables.methods.base import StageTerm, register


@register
class AttentionTransfer(StageTerm):
    name, part, weight_key = "at", "at", "at_weight"
    # Zagoruyko and Komodakis 2017 (and every KD zoo) sum AT over the end of each stage group; at_weight
    # 1000 assumes that sum.
    default_stages = ("groups",)

    def stage_loss(self, f_s, f_t):
        return at_loss(*match_spatial(f_s, f_t))
