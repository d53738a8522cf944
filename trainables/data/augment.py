"""Pad-4 random crop, horizontal flip and normalisation on a whole uint8 batch, on its own device."""
import torch
import torch.nn.functional as F


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


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = x_uint8.float().div_(255.0)
    return x.sub_(mean.to(x.device).view(1, -1, 1, 1)).div_(std.to(x.device).view(1, -1, 1, 1))


def augment_batch(x_uint8: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    dy, dx, flip = random_crop_flip_params(x_uint8.shape[0], pad, generator)
    return crop_flip(x_uint8, dy, dx, flip, pad)


VIEW_PAD = 4


def view_params(n: int, seed: int, view: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop offsets and flips of all n images in one view: a function of (seed, view) only."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(view))
    return random_crop_flip_params(n, VIEW_PAD, g)


def view_batch(images: torch.Tensor, idx: torch.Tensor, params) -> torch.Tensor:
    """uint8 images[idx] as augmented in the view whose parameters are `params`."""
    cpu_idx = idx.cpu()
    dy, dx, flip = (p[cpu_idx] for p in params)
    return crop_flip(images[idx], dy, dx, flip, VIEW_PAD)
