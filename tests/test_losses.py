"""The losses of docs/method.md against values worked out by hand."""
import math

import pytest
import torch

from trainables.losses import at_loss, foreground_mask, kd_loss, sfkd_loss, sfkd_parts, sp_loss


def ramp_map(batch=1, channels=1):
    """Teacher map 0..15 on a 4x4 grid (same in every sample and channel); student all zeros."""
    f_t = torch.arange(16.0).view(1, 1, 4, 4).expand(batch, channels, 4, 4).contiguous()
    return torch.zeros_like(f_t), f_t


# Squares of 0..15 sum to 1240. Worked per case (region sums; the map has 16 positions):
#  fg 2: centre {5,6,9,10} -> 242; background 998 (12 positions)
#  fg 3: offset (4-3)//2 = 0 -> {0,1,2,4,5,6,8,9,10} -> 327; background 913 (7 positions)
#  fg 1: offset 1 -> {5} -> 25; background 1215 (15 positions)
#  fg 4: the whole map -> 1240, no background
# norm "map" (the default, Eqs. 5-6 literally) divides both sums by B*C*H*W = 16;
# norm "region" divides each by its own area.
@pytest.mark.parametrize("fg_size,bg_weight,expected_map,expected_region", [
    (2, 0.4, 242 / 16 + 0.4 * 998 / 16, 60.5 + 0.4 * 998 / 12),
    (2, 0.0, 242 / 16, 60.5),
    (3, 0.5, 327 / 16 + 0.5 * 913 / 16, 327 / 9 + 0.5 * 913 / 7),
    (1, 1.0, 1240 / 16, 25 + 81),
    (4, 0.4, 77.5, 77.5),
    (4, 1.0, 77.5, 77.5),
])
def test_sfkd_loss_matches_hand_computed_values_under_each_normalisation(fg_size, bg_weight, expected_map,
                                                                           expected_region):
    f_s, f_t = ramp_map()
    assert sfkd_loss(f_s, f_t, fg_size, bg_weight).item() == pytest.approx(expected_map, rel=1e-6)
    assert sfkd_loss(f_s, f_t, fg_size, bg_weight, norm="map").item() == pytest.approx(expected_map, rel=1e-6)
    assert sfkd_loss(f_s, f_t, fg_size, bg_weight, norm="region").item() == pytest.approx(expected_region, rel=1e-6)


def test_sfkd_loss_normalises_by_batch_and_channels_too():
    f_s, f_t = ramp_map(batch=3, channels=5)
    assert sfkd_loss(f_s, f_t, 2, 0.4).item() == pytest.approx((242 + 0.4 * 998) / 16, rel=1e-6)
    assert sfkd_loss(f_s, f_t, 2, 0.4, norm="region").item() == pytest.approx(60.5 + 0.4 * 998 / 12, rel=1e-6)


@pytest.mark.parametrize("fg_size", [1, 3, 4, 6, 8])
def test_bg_weight_1_under_the_default_normalisation_is_exactly_fitnet(fg_size):
    torch.manual_seed(fg_size)
    f_s, f_t = torch.randn(4, 16, 8, 8), torch.randn(4, 16, 8, 8)
    fitnet = torch.mean((f_s - f_t) ** 2).item()
    assert sfkd_loss(f_s, f_t, fg_size, 1.0).item() == pytest.approx(fitnet, abs=1e-6)
    assert sfkd_loss(f_s, f_t, 0, 0.3).item() == pytest.approx(fitnet, abs=1e-6)
    # The region form is not FitNet at bg_weight 1 unless the foreground is the whole map.
    if fg_size < 8:
        assert abs(sfkd_loss(f_s, f_t, fg_size, 1.0, norm="region").item() - fitnet) > 1e-3


def test_fg_size_equal_to_map_side_has_no_background():
    f_s, f_t = ramp_map()
    for norm in ("map", "region"):
        l_fg, l_bg = sfkd_parts(f_s, f_t, 4, norm)
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


def test_at_loss_squares_the_activations_before_normalising():
    # Student (2, 1): a = (4, 1)/sqrt(17). Teacher (1, 1): a = (1, 1)/sqrt(2). With |F| instead of F^2 the
    # student's map would be (2, 1)/sqrt(5) and the loss about 0.0257 instead of this one.
    f_s = torch.tensor([[[[2.0, 1.0]]]])
    f_t = torch.tensor([[[[1.0, 1.0]]]])
    a, b, r = 4 / math.sqrt(17), 1 / math.sqrt(17), 1 / math.sqrt(2)
    assert at_loss(f_s, f_t).item() == pytest.approx(((a - r) ** 2 + (b - r) ** 2) / 2, rel=1e-6)


def test_at_loss_averages_the_squared_activation_over_channels():
    # Two channels (1, 0) and (1, 2) at two positions: mean_c F^2 = (1, 2), normalised (1, 2)/sqrt5.
    f_s = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])
    f_t = torch.tensor([[[[1.0, 1.0]], [[1.0, 1.0]]]])
    a, b, r = 1 / math.sqrt(5), 2 / math.sqrt(5), 1 / math.sqrt(2)
    assert at_loss(f_s, f_t).item() == pytest.approx(((a - r) ** 2 + (b - r) ** 2) / 2, rel=1e-6)


def test_sp_loss_hand_computed_with_row_normalised_gram_matrices():
    # Batch of 2, maps flattened to 2 values. Student rows (1, 0) and (0, 1): G_s = I, rows already unit.
    # Teacher rows (1, 0) and (1, 0): G_t = [[1, 1], [1, 1]], each row normalised to (1, 1)/sqrt2.
    # ||G_s - G_t||^2 = 2 * ((1 - r)^2 + r^2), divided by B^2 = 4. Without row normalisation it would be 0.5.
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2)
    f_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 1, 1, 2)
    r = 1 / math.sqrt(2)
    assert sp_loss(f_s, f_t).item() == pytest.approx(2 * ((1 - r) ** 2 + r ** 2) / 4, rel=1e-6)
