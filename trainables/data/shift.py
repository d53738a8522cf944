"""`shift`: data on which the central square is the wrong guess (docs/datasets.md, "Off-centre objects").

Each image is scaled down to `object_side` and pasted on a larger `canvas` at a position drawn once per
image; the rest of the canvas shows another image of the same split, scaled up to the canvas, cut into
tiles of half the object's side that are shuffled, and faded to a quarter of its contrast around mid-grey:
natural clutter (that image's colours and textures) with no object in it, carrying no label for this
image, behind a sharp object. It is a fixed function of the
split's images and `split_seed`: every run, arm and seed sees the same canvas for the same image, and
the validation and test images are shifted the same way every time. No library offers this (it is a
data option, not a random augmentation), so it is written here with torchvision's resize.
"""
import torch

SPLIT_STREAMS = {"train": 1, "val": 2, "test": 3}  # one generator stream per split
CLUTTER_CONTRAST = 0.25  # the background's share of its own contrast; the rest is mid-grey (128)
# Names this definition of the canvases in the keys of cached auto teachers: change it with the canvases.
SHIFT_BACKGROUND = f"other image, tiles of half the object shuffled, contrast {CLUTTER_CONTRAST}"


def default_object_side(canvas: int) -> int:
    """A third of the canvas: on 48 px, a 16 px object whose cells overlap a central square of the same
    area by a quarter on average (docs/datasets.md works it out)."""
    return max(1, canvas // 3)


def shift_split(images: torch.Tensor, canvas: int, object_side: int, split_seed: int, split: str,
                chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x C x H x W -> (uint8 N x C x canvas x canvas, N x 2 int64 (top, left) of each object).

    The positions are uniform over the canvas, drawn first; then each image's background, another image
    of the same split (never itself when the split has two or more); then the order of that background's
    tiles. Shuffling and fading matter (docs/datasets.md measures it): behind a whole other image at full
    contrast, three times the size of the labelled one, a ResNet56 trained on 10,000 such CIFAR-10
    canvases stayed at chance (10-11% for 8 epochs), and a ResNet20 on 5,000 stayed there for 3 epochs
    with the tiles shuffled but not faded."""
    from torchvision.transforms.v2 import functional as TF

    n = len(images)
    g = torch.Generator().manual_seed(10_007 * int(split_seed) + SPLIT_STREAMS[split])
    corners = torch.randint(0, canvas - object_side + 1, (n, 2), generator=g)
    others = (torch.arange(n) + 1 + torch.randint(0, max(n - 1, 1), (n,), generator=g)) % max(n, 1)
    tile = max(1, object_side // 2)
    grid = -(-canvas // tile)  # tiles per side; the last row and column are cut at the canvas's edge
    order = torch.rand(n, grid * grid, generator=g).argsort(dim=1)
    out = torch.empty(n, images.shape[1], canvas, canvas, dtype=torch.uint8)
    for start in range(0, n, chunk):  # a bounded float buffer per chunk, whatever the split's size
        rows = slice(start, start + chunk)
        clutter = shuffle_tiles(TF.resize(images[others[rows]], [grid * tile] * 2, antialias=True), order[rows], tile)
        out[rows] = fade(clutter[..., :canvas, :canvas])
        small = TF.resize(images[rows], [object_side, object_side], antialias=True)
        for i, (top, left) in enumerate(corners[rows].tolist()):
            out[start + i, :, top:top + object_side, left:left + object_side] = small[i]
    return out, corners


def shuffle_tiles(images: torch.Tensor, order: torch.Tensor, tile: int) -> torch.Tensor:
    """N x C x (G t) x (G t) -> the same images with their G x G tiles of side t rearranged: tile j of
    the output (row-major) is tile order[i, j] of image i."""
    n, c, side, _ = images.shape
    g = side // tile
    tiles = images.view(n, c, g, tile, g, tile).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, c, tile, tile)
    tiles = tiles[torch.arange(n)[:, None], order]
    return tiles.view(n, g, g, c, tile, tile).permute(0, 3, 1, 4, 2, 5).reshape(n, c, side, side)


def fade(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> uint8: CLUTTER_CONTRAST of each pixel's value, the rest mid-grey, rounded half to even."""
    return (images.float() * CLUTTER_CONTRAST + 128 * (1 - CLUTTER_CONTRAST)).round().to(torch.uint8)


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
