"""Where a network looks: attention maps of the distilled stage and their share inside the foreground.

The attention map of a stage is mean_c(F^2) (Zagoruyko & Komodakis). The foreground share is the
fraction of that mass inside the central fg_size x fg_size square; SF-KD's claim is that sparse
students drift towards the background and that decoupled distillation pulls them back. The enrichment
is the share over the square's area fraction (1.0: no preference), which compares squares of different
sizes (docs/method.md, "Foreground share").
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.data.augment import normalize
from trainables.data.shift import centre_overlap, object_cells
from trainables.losses.foreground_split import foreground_mask, teacher_foreground, teacher_soft_foreground
from trainables.models.taps import forward_taps

DRAWN_IMAGES = 8  # shown in the heatmap grid
SHARE_IMAGES = 256  # averaged into the foreground-share metrics
PROBE_SEED = 0  # the same validation images for every run of a search, whatever its seed
PROBE_FILE = "probe.pt"  # saved beside each checkpoint; the driver draws the figures from it


def mean_square_map(feature: torch.Tensor) -> torch.Tensor:
    """B x C x H x W -> B x H x W, mean over channels of the squared activations."""
    return feature.float().pow(2).mean(dim=1)


def probe_square(fg_size: int, height: int, width: int) -> int:
    """The square the share is measured on: the configured one, clamped to the map; for FitNet
    (fg_size 0) half the map side, so runs without decoupling are still measured."""
    side = min(height, width)
    return min(fg_size, side) if fg_size > 0 else max(1, side // 2)


def foreground_share(att: torch.Tensor, fg_size: int) -> torch.Tensor:
    """Per image, the fraction of attention mass inside the central square (B x H x W -> B)."""
    return weighted_share(att, foreground_mask(att.shape[1], att.shape[2], fg_size, device=att.device))


def weighted_share(att: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per image, the fraction of attention mass under foreground weights (H x W, or B x H x W per image)."""
    total = att.sum(dim=(1, 2)).clamp_min(1e-12)
    return (att * weights).sum(dim=(1, 2)) / total


def run_foreground(teacher_att: torch.Tensor, cells: int, fg_source: str, size: tuple[int, int]) -> torch.Tensor:
    """The foreground a `teacher` or `teacher_soft` run used on each probe image (B x H x W at the
    student's map size), from the teacher's attention. Training takes it from the teacher's map after
    spatial matching; where the sizes differ the probe pools the attention instead, a close stand-in."""
    if tuple(teacher_att.shape[1:]) != tuple(size):
        teacher_att = F.adaptive_avg_pool2d(teacher_att[:, None], size)[:, 0]
    if fg_source == "teacher":
        return teacher_foreground(teacher_att, cells * cells)
    return teacher_soft_foreground(teacher_att)


@torch.inference_mode()
def stage_attention(model: nn.Module, x: torch.Tensor, tap, batch: int = 128) -> torch.Tensor:
    """The attention map at one tap (a zoo stage index or a module name), per image."""
    was_training = model.training
    model.eval()
    maps = [mean_square_map(forward_taps(model, x[i:i + batch], [tap])[1][0]) for i in range(0, len(x), batch)]
    model.train(was_training)
    return torch.cat(maps).cpu()


def probe_images(val_x: torch.Tensor, count: int = SHARE_IMAGES) -> torch.Tensor:
    """Indices of a fixed, seeded set of validation images."""
    g = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randperm(len(val_x), generator=g)[:count]


def attention_probe(student: nn.Module, teacher: nn.Module | None, val_x: torch.Tensor, mean, std, fg_size,
                    taps: tuple, device: torch.device, teacher_maps: torch.Tensor | None = None,
                    fg_source: str = "center"):
    """Attention maps of the drawn images and foreground shares over SHARE_IMAGES validation images, at
    the last distilled tap of the student and of the teacher (`taps`: the two, resolved).

    The foreground share is always the central square's, comparable with the SF-KD paper's Fig. 3. A run
    whose foreground the teacher chose (`fg_source` teacher or teacher_soft) also gets the share inside
    its own foreground (`student_own_fg_share`, and the teacher's) and that foreground's drawn cells.

    Returns (probe, teacher maps); pass the maps back in next time, since a frozen teacher's never change.
    Everything returned is a tensor, number or string, so it saves and loads with weights_only=True.
    """
    idx = probe_images(val_x)
    x = normalize(val_x[idx].to(device), torch.tensor(mean), torch.tensor(std))
    s_tap, t_tap = taps
    fg_of = fg_size if callable(fg_size) else (lambda h, w: fg_size)  # fg_fraction: cells depend on the map
    s_att = stage_attention(student, x, s_tap)
    if teacher_maps is None and teacher is not None:
        teacher_maps = stage_attention(teacher, x, t_tap)
    square = probe_square(fg_of(s_att.shape[1], s_att.shape[2]), s_att.shape[1], s_att.shape[2])
    area = square * square / float(s_att.shape[1] * s_att.shape[2])
    share = foreground_share(s_att, square).mean().item()
    # The share over the square's area: 1.0 is a uniform map, so squares of different sizes compare.
    out = {"images": val_x[idx[:DRAWN_IMAGES]].cpu(), "student": s_att[:DRAWN_IMAGES], "fg_size": square,
           "student_fg_share": share, "student_fg_enrichment": share / area, "area_share": area, "stage": s_tap}
    if teacher_maps is not None:
        t_square = probe_square(fg_of(teacher_maps.shape[1], teacher_maps.shape[2]), teacher_maps.shape[1],
                                teacher_maps.shape[2])
        t_share = foreground_share(teacher_maps, t_square).mean().item()
        t_area = t_square * t_square / float(teacher_maps.shape[1] * teacher_maps.shape[2])
        out.update(teacher=teacher_maps[:DRAWN_IMAGES], teacher_fg_size=t_square, teacher_fg_share=t_share,
                   teacher_fg_enrichment=t_share / t_area)
        if fg_source != "center":
            own = run_foreground(teacher_maps, square, fg_source, tuple(s_att.shape[1:]))
            t_att = teacher_maps if teacher_maps.shape[1:] == own.shape[1:] else F.adaptive_avg_pool2d(
                teacher_maps[:, None], tuple(own.shape[1:]))[:, 0]
            out.update(fg_source=fg_source, fg_mask=own[:DRAWN_IMAGES],
                       student_own_fg_share=weighted_share(s_att, own).mean().item(),
                       teacher_own_fg_share=weighted_share(t_att, own).mean().item())
    return out, teacher_maps


def object_attention_shares(model: nn.Module, x: torch.Tensor, corners: torch.Tensor, object_side: int, mean,
                            std, device: torch.device, tap=-1) -> dict:
    """On shifted data (`shift`), where a network looks: the mean share of its attention at `tap` inside
    the object's true cells and inside a central square of the same area, over images x, and how much
    the objects and that square overlap. SF-KD's central square is the right guess only where the first
    share does not clearly exceed the second (docs/datasets.md, "Off-centre objects")."""
    att = stage_attention(model, normalize(x.to(device), torch.tensor(mean), torch.tensor(std)), tap)
    canvas, side = x.shape[-1], att.shape[-1]
    square = max(1, round(object_side * side / canvas))  # the object's side in cells
    return {"object_share": weighted_share(att, object_cells(corners, object_side, canvas, side)).mean().item(),
            "centre_share": foreground_share(att, square).mean().item(),
            "centre_overlap": centre_overlap(corners, object_side, canvas).mean().item(),
            "square_cells": square, "map_side": side}


def measured_layer_densities(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Kept fraction of each masked layer, in model order."""
    return {name: m.float().mean().item() for name, m in masks.items()}
