"""SF-KD: the stage map split into a foreground (the central square, or where the teacher looks:
`fg_source`) and the background, each matched to the teacher with its own MSE:
alpha * CE + beta * KD + gamma * (L_fg + bg_weight * L_bg)."""
from trainables.losses import check_fg_size, match_spatial, sfkd_parts
from trainables.methods.base import Method, logit_terms, register, summed


@register
class SparsityFriendlyKD(Method):
    name = "sfkd"
    distils_stages = True
    connectors = True
    parts = ("ce", "kd", "fg", "bg")

    def fg_size(self, cfg, height: int, width: int) -> int:
        return cfg.fg_cells(height, width)

    def resolve(self, cfg) -> None:
        pass  # gamma and bg_weight are this method's own

    def check_stage(self, cfg, height, width, where):
        try:
            check_fg_size(self.fg_size(cfg, height, width), height, width)
        except ValueError as e:
            raise ValueError(f"fg_size: {e} ({where})") from None

    def losses(self, cfg, logits, y, t_logits, pairs):
        total, parts = logit_terms(cfg, logits, y, t_logits)
        fg_bg = [sfkd_parts(s, t, self.fg_size(cfg, *s.shape[-2:]), cfg.sfkd_norm, cfg.fg_source)
                 for s, t in (match_spatial(f_s, f_t) for f_s, f_t in pairs)]
        if fg_bg:
            parts["fg"], parts["bg"] = summed(fg for fg, _ in fg_bg), summed(bg for _, bg in fg_bg)
            total = total + cfg.gamma * (parts["fg"] + cfg.bg_weight * parts["bg"])
        return total, parts
