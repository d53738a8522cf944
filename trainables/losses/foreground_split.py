"""Sparsity-friendly feature decoupling: the distilled map is split into a central foreground
square and the background, each matched to the teacher with its own MSE (He et al. 2025, Eqs. 3-6; docs/method.md, Losses)."""
import torch


def check_fg_size(fg_size: int, height: int, width: int) -> None:
    """fg_size 0 means FitNet (no decoupling); otherwise the square must fit inside the map."""
    side = min(height, width)
    if fg_size != 0 and not 1 <= fg_size <= side:
        raise ValueError(
            f"fg_size={fg_size} does not fit the distilled {height}x{width} map; expected 0 (FitNet) or 1..{side}"
        )


def foreground_mask(height: int, width: int, fg_size: int, device=None) -> torch.Tensor:
    """H x W float mask, 1 on the central fg_size x fg_size square starting at ((H-fg)//2, (W-fg)//2)."""
    check_fg_size(fg_size, height, width)
    mask = torch.zeros(height, width, device=device)
    if fg_size == 0:
        return mask
    top, left = (height - fg_size) // 2, (width - fg_size) // 2
    mask[top:top + fg_size, left:left + fg_size] = 1.0
    return mask


def sfkd_parts(f_s: torch.Tensor, f_t: torch.Tensor, fg_size: int, norm: str = "map") -> tuple[torch.Tensor, torch.Tensor]:
    """(L_fg, L_bg) of docs/method.md, Losses.

    norm="map" (the default, paper Eqs. 5-6 read literally): each part is the MSE of the full-size masked
    maps, a mean over all B * C * H * W elements, so L_fg + L_bg is the plain feature MSE (FitNet).
    norm="region": each part is averaged over its own region only (B * C * area).
    fg_size 0 is FitNet: the whole map is L_fg and L_bg is 0.
    """
    if f_s.shape != f_t.shape:
        raise ValueError(f"student map {tuple(f_s.shape)} and teacher map {tuple(f_t.shape)} differ")
    if norm not in ("map", "region"):
        raise ValueError(f"sfkd norm {norm!r}; expected map or region")
    b, c, h, w = f_s.shape
    sq = (f_s.float() - f_t.float()).pow(2)
    zero = sq.new_zeros(())
    if fg_size == 0:
        return sq.mean(), zero
    mask = foreground_mask(h, w, fg_size, device=sq.device)
    fg_area = float(fg_size * fg_size)
    bg_area = float(h * w) - fg_area
    per_pos = sq.sum(dim=(0, 1))  # H x W, summed over batch and channels
    fg_sum, bg_sum = (per_pos * mask).sum(), (per_pos * (1 - mask)).sum()
    if norm == "map":
        return fg_sum / (b * c * h * w), bg_sum / (b * c * h * w)
    return fg_sum / (b * c * fg_area), (bg_sum / (b * c * bg_area) if bg_area > 0 else zero)


def sfkd_loss(f_s: torch.Tensor, f_t: torch.Tensor, fg_size: int, bg_weight: float, norm: str = "map") -> torch.Tensor:
    """L_sf = L_fg + bg_weight * L_bg (docs/method.md, Losses)."""
    l_fg, l_bg = sfkd_parts(f_s, f_t, fg_size, norm)
    return l_fg + bg_weight * l_bg
