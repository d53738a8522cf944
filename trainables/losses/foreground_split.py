"""Sparsity-friendly feature decoupling: the distilled map is split into a foreground and the
background, each matched to the teacher with its own MSE (He et al. 2025, Eqs. 3-6; docs/method.md, Losses).

The paper's foreground is the central square (`fg_source: center`). Its future work asks for a split the
data chooses; `teacher` and `teacher_soft` take it from the dense teacher's spatial attention on the same
batch (docs/method.md, "A foreground the teacher chooses"). No maintained library offers either split, so
both are written here.
"""
import torch

FG_SOURCES = ("center", "teacher", "teacher_soft")


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


def teacher_attention(f_t: torch.Tensor) -> torch.Tensor:
    """B x C x H x W -> B x H x W: the mean over channels of the squared map, the quantity the
    foreground-share probe measures (Zagoruyko & Komodakis 2017). Taken in one memory layout: the
    teacher's live maps can be channels-last and the cache's are not, and a channel mean summed in
    another order would differ in the last bit, so the cache would change the numbers."""
    return f_t.detach().float().contiguous().pow(2).mean(dim=1)


def teacher_foreground(att: torch.Tensor, cells: int) -> torch.Tensor:
    """B x H x W attention -> B x H x W mask, 1 on each image's `cells` cells of largest attention.

    Ties go to the lower row-major index: a stable ascending sort of -attention keeps equal cells in
    index order, which torch.topk does not promise."""
    b, h, w = att.shape
    order = torch.argsort(-att.reshape(b, h * w), dim=1, stable=True)[:, :cells]
    mask = att.new_zeros(b, h * w)
    mask.scatter_(1, order, 1.0)
    return mask.view(b, h, w)


def teacher_soft_foreground(att: torch.Tensor) -> torch.Tensor:
    """B x H x W attention -> its per-image fraction of the image's maximum, in [0, 1]. An image whose
    teacher map is zero everywhere has no foreground (all weight 0)."""
    peak = att.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, att / peak.clamp_min(torch.finfo(att.dtype).tiny), torch.zeros_like(att))


def foreground_weights(f_t: torch.Tensor, fg_size: int, source: str) -> torch.Tensor:
    """The per-image foreground weights (B x H x W) of the teacher-chosen sources; `fg_size`^2 cells
    for `teacher`, the square's area. Computed from the teacher's map, so no gradient flows through it."""
    att = teacher_attention(f_t)
    if source == "teacher":
        return teacher_foreground(att, fg_size * fg_size)
    if source == "teacher_soft":
        return teacher_soft_foreground(att)
    raise ValueError(f"fg_source {source!r}; expected one of {', '.join(FG_SOURCES)}")


def sfkd_parts(f_s: torch.Tensor, f_t: torch.Tensor, fg_size: int, norm: str = "map",
               source: str = "center") -> tuple[torch.Tensor, torch.Tensor]:
    """(L_fg, L_bg) of docs/method.md, Losses.

    norm="map" (the default, paper Eqs. 5-6 read literally): each part is the MSE of the full-size masked
    maps, a mean over all B * C * H * W elements, so L_fg + L_bg is the plain feature MSE (FitNet).
    norm="region": each part is averaged over its own region only (B * C * area; for `teacher_soft` the
    area is the sum of the weights).
    fg_size 0 is FitNet: the whole map is L_fg and L_bg is 0, whatever the source.
    source: where the foreground is, `center` (the paper's square), `teacher` or `teacher_soft`.
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
    if source != "center":
        return _parts_per_image(sq, foreground_weights(f_t, fg_size, source), norm)
    mask = foreground_mask(h, w, fg_size, device=sq.device)
    fg_area = float(fg_size * fg_size)
    bg_area = float(h * w) - fg_area
    per_pos = sq.sum(dim=(0, 1))  # H x W, summed over batch and channels
    fg_sum, bg_sum = (per_pos * mask).sum(), (per_pos * (1 - mask)).sum()
    if norm == "map":
        return fg_sum / (b * c * h * w), bg_sum / (b * c * h * w)
    return fg_sum / (b * c * fg_area), (bg_sum / (b * c * bg_area) if bg_area > 0 else zero)


def _parts_per_image(sq: torch.Tensor, fg: torch.Tensor, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_fg, L_bg) of the squared error `sq` (B x C x H x W) under per-image foreground weights `fg`
    (B x H x W in [0, 1]; the background's are 1 - fg). The central square keeps its own code path
    above, so runs without fg_source compute what they always did, to the last bit."""
    b, c, h, w = sq.shape
    per_pos = sq.sum(dim=1)  # B x H x W, summed over channels
    fg_sum, bg_sum = (per_pos * fg).sum(), (per_pos * (1 - fg)).sum()
    if norm == "map":
        return fg_sum / (b * c * h * w), bg_sum / (b * c * h * w)
    fg_area, bg_area = fg.sum(), (1 - fg).sum()
    zero = sq.new_zeros(())
    return (fg_sum / (c * fg_area) if fg_area > 0 else zero), (bg_sum / (c * bg_area) if bg_area > 0 else zero)


def sfkd_loss(f_s: torch.Tensor, f_t: torch.Tensor, fg_size: int, bg_weight: float, norm: str = "map",
              source: str = "center") -> torch.Tensor:
    """L_sf = L_fg + bg_weight * L_bg (docs/method.md, Losses)."""
    l_fg, l_bg = sfkd_parts(f_s, f_t, fg_size, norm, source)
    return l_fg + bg_weight * l_bg
