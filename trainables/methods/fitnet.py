"""FitNet hints: SF-KD with no decoupling (fg_size 0): the whole map's MSE is L_fg, L_bg is 0."""
from trainables.methods.base import register
from trainables.methods.sfkd import SparsityFriendlyKD


@register
class FitNet(SparsityFriendlyKD):
    name = "fitnet"

    def fg_size(self, cfg, height: int, width: int) -> int:
        return 0

    def check_stage(self, cfg, height, width, where):
        pass  # no foreground square to fit
