"""The losses of METHOD.md against values worked out by hand."""
import math

import pytest
import torch

from trainables.losses import at_loss, foreground_mask, kd_loss, sfkd_loss, sfkd_parts, sp_loss


def ramp_map(batch=1, channels=1):
    """Teacher map 0..15 on a 4x4 grid (same in every sample and channel); student all zeros."""
    f_t = torch.arange(16.0).view(1, 1, 4, 4).expand(batch, channels, 4, 4).contiguous()
    return torch.zeros_like(f_t), f_t


# Squares of 0..15 sum to 1240. Worked per case:
#  fg 2: centre {5,6,9,10} -> 242/4 = 60.5; background 998/12
#  fg 3: offset (4-3)//2 = 0 -> {0,1,2,4,5,6,8,9,10} -> 327/9; background 913/7
#  fg 1: offset 1 -> {5} -> 25; background 1215/15 = 81
#  fg 4: the whole map -> 1240/16 = 77.5, no background
@pytest.mark.parametrize("fg_size,bg_weight,expected", [
    (2, 0.4, 60.5 + 0.4 * 998 / 12),
    (2, 0.0, 60.5),
    (3, 0.5, 327 / 9 + 0.5 * 913 / 7),
    (1, 1.0, 25 + 81),
    (4, 0.4, 77.5),
    (4, 1.0, 77.5),
])
def test_sfkd_loss_matches_hand_computed_values(fg_size, bg_weight, expected):
    f_s, f_t = ramp_map()
    assert sfkd_loss(f_s, f_t, fg_size, bg_weight).item() == pytest.approx(expected, rel=1e-6)


def test_sfkd_loss_normalises_each_region_by_batch_channels_and_its_own_area():
    f_s, f_t = ramp_map(batch=3, channels=5)
    assert sfkd_loss(f_s, f_t, 2, 0.4).item() == pytest.approx(60.5 + 0.4 * 998 / 12, rel=1e-6)


def test_fg_size_equal_to_map_side_has_no_background():
    f_s, f_t = ramp_map()
    l_fg, l_bg = sfkd_parts(f_s, f_t, 4)
    assert l_bg.item() == 0.0 and l_fg.item() == pytest.approx(77.5)


def test_fg_size_zero_is_fitnet_plain_mse_over_the_whole_map():
    f_s, f_t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    assert sfkd_loss(f_s, f_t, 0, 0.3).item() == pytest.approx(torch.mean((f_s - f_t) ** 2).item(), rel=1e-6)


def test_foreground_mask_is_the_central_square():
    m = foreground_mask(8, 8, 4)
    assert m.sum() == 16 and m[2:6, 2:6].all() and m[:2].sum() == 0 and m[:, 6:].sum() == 0
    m = foreground_mask(8, 8, 3)  # offset (8-3)//2 = 2
    assert m[2:5, 2:5].all() and m.sum() == 9


@pytest.mark.parametrize("fg_size", [-1, 5, 9])
def test_fg_size_that_does_not_fit_is_an_error(fg_size):
    f_s, f_t = ramp_map()
    with pytest.raises(ValueError, match="does not fit"):
        sfkd_loss(f_s, f_t, fg_size, 0.4)


def test_kd_loss_matches_hand_computed_kl():
    # T=1: p_t = (3/4, 1/4), p_s = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    z_s, z_t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    assert kd_loss(z_s, z_t, 1.0).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-5)
    # T=2: p_t = (sqrt3, 1) / (sqrt3 + 1); the loss is scaled by T^2 = 4
    a = math.sqrt(3) / (math.sqrt(3) + 1)
    kl = a * math.log(2 * a) + (1 - a) * math.log(2 * (1 - a))
    assert kd_loss(z_s, z_t, 2.0).item() == pytest.approx(4 * kl, rel=1e-5)


def test_kd_loss_averages_over_the_batch():
    z_s = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    z_t = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])  # the second row matches exactly
    one = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_loss(z_s, z_t, 1.0).item() == pytest.approx(one / 2, rel=1e-5)


def test_at_and_sp_vanish_for_identical_maps_and_are_positive_otherwise():
    f = torch.randn(4, 8, 8, 8)
    assert at_loss(f, f).item() == pytest.approx(0.0, abs=1e-9)
    assert sp_loss(f, f).item() == pytest.approx(0.0, abs=1e-9)
    g = torch.randn(4, 8, 8, 8)
    assert at_loss(f, g).item() > 0 and sp_loss(f, g).item() > 0


def test_at_loss_hand_computed():
    # One channel, 1x2 maps: a(F) = normalize(F^2). Student (1, 0) -> (1, 0); teacher (1, 1) -> (1, 1)/sqrt2.
    f_s = torch.tensor([[[[1.0, 0.0]]]])
    f_t = torch.tensor([[[[1.0, 1.0]]]])
    r = 1 / math.sqrt(2)
    assert at_loss(f_s, f_t).item() == pytest.approx(((1 - r) ** 2 + r ** 2) / 2, rel=1e-6)
