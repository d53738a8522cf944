import torch
import torch.nn as nn
import torch.nn.functional as F


class Connector(nn.Module):
    """1x1 conv + BN that maps the student's channels to the teacher's; it trains with the student."""

    def __init__(self, c_student: int, c_teacher: int):
        super().__init__()
        self.conv = nn.Conv2d(c_student, c_teacher, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_teacher)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def match_spatial(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger map down to the smaller one's spatial size."""
    hs, ht = f_s.shape[-2:], f_t.shape[-2:]
    if hs == ht:
        return f_s, f_t
    size = (min(hs[0], ht[0]), min(hs[1], ht[1]))
    return F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size)
