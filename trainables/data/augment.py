"""Training augmentation on a whole uint8 batch, on its own device, chosen by the image size
(docs/method.md, "Image sizes"):

- below RESIZED_CROP_FROM px, the CIFAR recipe: a random crop of the image zero-padded by 4, and a
  horizontal flip (He et al. 2016);
- from RESIZED_CROP_FROM px up, the ImageNet recipe: a random-resized crop (scale 0.08-1, aspect ratio
  3/4-4/3, as torchvision's RandomResizedCrop) back to the image size, and a horizontal flip.

Every draw comes from a CPU generator as per-image parameters, so a run replays exactly and a cached
teacher view is a function of (seed, view, image) alone.
"""
import math

import torch
import torch.nn.functional as F

RESIZED_CROP_FROM = 96
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
VIEW_PAD = 4


def augment_identity(image_size: int) -> dict:
    """What decides the augmented pixels besides the draws: part of the teacher-output cache's key."""
    if image_size < RESIZED_CROP_FROM:
        return {"crop_pad": VIEW_PAD, "flip": True}
    return {"resized_crop": list(RRC_SCALE), "ratio": [round(r, 6) for r in RRC_RATIO], "flip": True,
            "size": int(image_size)}


def random_crop_flip_params(n: int, pad: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (row offset, col offset, flip) drawn on the CPU generator so runs replay exactly."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return dy, dx, flip


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop each image of x (B x C x H x W) from its zero-padded copy at (dy, dx), then mirror where flip."""
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = dy.to(dev)[:, None] + torch.arange(h, device=dev)[None, :]  # B x H
    cols = dx.to(dev)[:, None] + torch.arange(w, device=dev)[None, :]  # B x W
    # Reading columns right-to-left is the flip, folded into the same gather.
    cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # B x H x W x C
    return out.permute(0, 3, 1, 2)


def resized_crop_params(n: int, size: int, generator: torch.Generator, attempts: int = 10):
    """Per-image (top, left, height, width, flip) of a random-resized crop of a size x size image.

    torchvision's RandomResizedCrop.get_params draws from the global RNG one image at a time; this is
    the same rule (up to `attempts` tries of an area in RRC_SCALE and a log-uniform aspect ratio in
    RRC_RATIO, the first that fits wins, else the whole image) drawn for all n images at once from the
    run's own generator, which is what keeps the draws replayable and the teacher cache exact."""
    area = size * size
    scale = torch.empty(n, attempts).uniform_(*RRC_SCALE, generator=generator) * area
    log_ratio = torch.empty(n, attempts).uniform_(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]), generator=generator)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(scale * ratio).round().long()
    h = torch.sqrt(scale / ratio).round().long()
    fits = (w > 0) & (h > 0) & (w <= size) & (h <= size)
    first = torch.where(fits.any(1), fits.long().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    hh = torch.where(first >= 0, h[rows, first.clamp_min(0)], torch.full((n,), size))
    ww = torch.where(first >= 0, w[rows, first.clamp_min(0)], torch.full((n,), size))
    # Offsets uniform over the positions that keep the crop inside the image (randint's exclusive high).
    top = (torch.rand(n, generator=generator) * (size - hh + 1)).floor().long()
    left = (torch.rand(n, generator=generator) * (size - ww + 1)).floor().long()
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return top, left, hh, ww, flip


def resized_crop_flip(x: torch.Tensor, top, left, height, width, flip) -> torch.Tensor:
    """Each image's crop resized back to the batch's size, as float pixel values (0-255).

    torchvision.ops.roi_align does the batched crop-and-resize (bilinear samples averaged in each output
    cell, so a large crop is shrunk without aliasing); the flip mirrors the result."""
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    dev = x.device
    boxes = torch.stack([torch.arange(b, device=left.device), left, top, left + width, top + height], 1).to(
        dev, torch.float32)
    out = roi_align(x.float(), boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return torch.where(flip.to(dev)[:, None, None, None], out.flip(3), out)


def draw_params(n: int, image_size: int, generator: torch.Generator) -> tuple:
    if image_size < RESIZED_CROP_FROM:
        return random_crop_flip_params(n, VIEW_PAD, generator)
    return resized_crop_params(n, image_size, generator)


def apply_params(x_uint8: torch.Tensor, params: tuple) -> torch.Tensor:
    """The batch augmented by its per-image parameters (of draw_params for its size)."""
    if len(params) == 3:
        return crop_flip(x_uint8, *params, VIEW_PAD)
    return resized_crop_flip(x_uint8, *params)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (or float 0-255) pixels -> float, scaled to 0-1 and normalised per channel."""
    x = x.to(dtype=torch.float32, copy=True).div_(255.0)  # one new tensor, as on the hot path before
    return x.sub_(mean.to(x.device).view(1, -1, 1, 1)).div_(std.to(x.device).view(1, -1, 1, 1))


def augment_batch(x_uint8: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return apply_params(x_uint8, draw_params(x_uint8.shape[0], x_uint8.shape[-1], generator))


def view_params(n: int, seed: int, view: int, image_size: int = 32) -> tuple:
    """The augmentation parameters of all n images in one view: a function of (seed, view) only."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(view))
    return draw_params(n, image_size, g)


def view_batch(images: torch.Tensor, idx: torch.Tensor, params) -> torch.Tensor:
    """images[idx] as augmented in the view whose parameters are `params`."""
    return view_of_batch(images[idx], idx, params)


def view_of_batch(batch: torch.Tensor, idx: torch.Tensor, params) -> torch.Tensor:
    """A batch already gathered (the images at rows `idx`) as augmented in the view of `params`. The
    parameters are indexed by `idx` on their own device: params and rows on a GPU need no copy back to
    the host, which would make every batch wait for the device."""
    return apply_params(batch, tuple(p[idx.to(p.device)] for p in params))
