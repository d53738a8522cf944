"""Attention transfer (Zagoruyko & Komodakis 2017) and similarity preserving (Tung & Mori 2019)."""
import torch
import torch.nn.functional as F


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """mean over channels of F^2, flattened and L2-normalised per sample: B x (H*W)."""
    return F.normalize(f.float().pow(2).mean(dim=1).flatten(1), dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    return (attention_map(f_s) - attention_map(f_t)).pow(2).mean()


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """||G_s - G_t||_F^2 / B^2 with G the row-normalised batch Gram matrix of the flattened maps."""
    b = f_s.shape[0]
    g_s = F.normalize(f_s.float().flatten(1) @ f_s.float().flatten(1).t(), dim=1)
    g_t = F.normalize(f_t.float().flatten(1) @ f_t.float().flatten(1).t(), dim=1)
    return (g_s - g_t).pow(2).sum() / (b * b)
