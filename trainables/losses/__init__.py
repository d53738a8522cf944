"""Distillation losses of docs/method.md: KD, SF-KD feature decoupling (FitNet as fg_size=0), AT and SP."""
from trainables.losses.connector import Connector, match_spatial
from trainables.losses.foreground_split import check_fg_size, foreground_mask, sfkd_loss, sfkd_parts
from trainables.losses.relational import at_loss, attention_map, sp_loss
from trainables.losses.softened_logits import kd_loss

__all__ = [
    "kd_loss", "sfkd_loss", "sfkd_parts", "foreground_mask", "check_fg_size",
    "at_loss", "attention_map", "sp_loss", "Connector", "match_spatial",
]
