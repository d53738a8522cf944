"""SP (Tung & Mori): alpha * CE + beta * KD + sp_weight * similarity-preserving loss per stage."""
from trainables.losses import sp_loss
from trainables.methods.base import StageTerm, register


@register
class SimilarityPreserving(StageTerm):
    name, part, weight_key = "sp", "sp", "sp_weight"

    def stage_loss(self, f_s, f_t):
        return sp_loss(f_s, f_t)
