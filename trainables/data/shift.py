"""`shift`: data on which the central square is the wrong guess (docs/datasets.md, "Off-centre objects").

Each image is scaled down to `object_side` and pasted on a larger `canvas` at a position drawn once per
image; the rest of the canvas shows another image of the same split, scaled up to the canvas, so the
background is natural clutter that carries no label for this image. It is a fixed function of the
split's images and `split_seed`: every run, arm and seed sees the same canvas for the same image, and
the validation and test images are shifted the same way every time. No library offers this (it is a
data option, not a random augmentation), so it is written here with torchvision's resize.
"""
import torch

SPLIT_STREAMS = {"train": 1, "val": 2, "test": 3}  # one generator stream per split


def default_object_side(canvas: int) -> int:
    """A third of the canvas: on 48 px, a 16 px object whose cells overlap a central square of the same
    area by a quarter on average (docs/datasets.md works it out)."""
    return max(1, canvas // 3)


def shift_split(images: torch.Tensor, canvas: int, object_side: int, split_seed: int, split: str,
                chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x C x H x W -> (uint8 N x C x canvas x canvas, N x 2 int64 (top, left) of each object).

    The positions are uniform over the canvas, drawn first; then each image's background, another image
    of the same split (never itself when the split has two or more)."""
    from torchvision.transforms.v2 import functional as TF

    n = len(images)
    g = torch.Generator().manual_seed(10_007 * int(split_seed) + SPLIT_STREAMS[split])
    corners = torch.randint(0, canvas - object_side + 1, (n, 2), generator=g)
    others = (torch.arange(n) + 1 + torch.randint(0, max(n - 1, 1), (n,), generator=g)) % max(n, 1)
    out = torch.empty(n, images.shape[1], canvas, canvas, dtype=torch.uint8)
    for start in range(0, n, chunk):  # a bounded float buffer per chunk, whatever the split's size
        rows = slice(start, start + chunk)
        out[rows] = TF.resize(images[others[rows]], [canvas, canvas], antialias=True)
        small = TF.resize(images[rows], [object_side, object_side], antialias=True)
        for i, (top, left) in enumerate(corners[rows].tolist()):
            out[start + i, :, top:top + object_side, left:left + object_side] = small[i]
    return out, corners


def object_cells(corners: torch.Tensor, object_side: int, canvas: int, map_side: int) -> torch.Tensor:
    """N x map_side x map_side float mask of the map cells the object covers, as the fraction of each
    cell's area inside the object's box (a cell spans canvas / map_side pixels)."""
    cell = canvas / map_side
    edges = torch.arange(map_side + 1, dtype=torch.float64) * cell
    lo, hi = edges[:-1], edges[1:]

    def cover(start: torch.Tensor) -> torch.Tensor:  # N x map_side: overlap of [start, start + side) with each cell
        s = start.double()[:, None]
        return ((torch.minimum(hi, s + object_side) - torch.maximum(lo, s)).clamp_min(0) / cell)

    rows, cols = cover(corners[:, 0]), cover(corners[:, 1])
    return (rows[:, :, None] * cols[:, None, :]).float()


def centre_overlap(corners: torch.Tensor, object_side: int, canvas: int) -> torch.Tensor:
    """Per image, the share of the object's box that a central square of the same side covers (1.0: the
    object sits in the centre, 0.0: they are disjoint)."""
    c = (canvas - object_side) // 2
    span = (torch.minimum(corners + object_side, torch.tensor(c + object_side)) - torch.maximum(corners, torch.tensor(c)))
    span = span.clamp_min(0).double()
    return (span[:, 0] * span[:, 1] / float(object_side * object_side)).float()
