"""A foreground the teacher chooses (`fg_source`, docs/method.md): hand-computed masks and losses, the
default that reproduces the code before the option to the last bit, and cache exactness."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables import DistillRun
from trainables.config import ConfigError, DistillConfig
from trainables.losses import foreground_mask, sfkd_loss, sfkd_parts
from trainables.losses.foreground_split import teacher_attention, teacher_foreground, teacher_soft_foreground
from trainables.probe import run_foreground, weighted_share

# The last commit before fg_source existed: "today's code" for the bit-for-bit check.
BEFORE_FG_SOURCE = "39d62e3"

# A 4x4 teacher map of one channel and a student of ones. Attention A = mean_c F_t^2 = F_t^2:
#   F_t = 0 1 0 0     A = 0 1 0 0     (F_s - F_t)^2 = 1 0 1 1
#         2 3 0 0         4 9 0 0                     1 4 1 1
#         0 0 0 1         0 0 0 1                     1 1 1 0
#         0 0 1 2         0 0 1 4                     1 1 0 1    (sum 16)
TEACHER = torch.tensor([[0., 1, 0, 0], [2, 3, 0, 0], [0, 0, 0, 1], [0, 0, 1, 2]]).view(1, 1, 4, 4)
STUDENT = torch.ones(1, 1, 4, 4)


def test_teacher_picks_the_k_most_attended_cells_and_breaks_ties_by_the_lower_row_major_index():
    att = teacher_attention(TEACHER)
    assert torch.equal(att[0], TEACHER[0, 0] ** 2)
    # fg_size 2 -> k = 4: 9 (index 5), 4 (4), 4 (15), then three cells tie at 1 (indices 1, 11, 14): 1 wins.
    mask = teacher_foreground(att, 4)
    assert mask.flatten().nonzero().flatten().tolist() == [1, 4, 5, 15]
    # k = 5 takes the next tied cell, 11; k = 6 then 14.
    assert teacher_foreground(att, 5).flatten().nonzero().flatten().tolist() == [1, 4, 5, 11, 15]
    assert teacher_foreground(att, 6).flatten().nonzero().flatten().tolist() == [1, 4, 5, 11, 14, 15]
    # An all-equal map: the first k cells in row-major order.
    assert teacher_foreground(torch.ones(1, 3, 3), 2).flatten().tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0]


def test_the_mask_is_chosen_per_image_and_averages_attention_over_channels():
    # Image 0 looks at the top-left cell, image 1 at the bottom-right; channel 1 of image 1 is what decides.
    f_t = torch.zeros(2, 2, 3, 3)
    f_t[0, 0, 0, 0] = 3.0
    f_t[1, 0, 0, 0] = 1.0
    f_t[1, 1, 2, 2] = 2.0  # A = (0 + 4) / 2 = 2 > (1 + 0) / 2 = 0.5
    mask = teacher_foreground(teacher_attention(f_t), 1)
    assert mask[0].flatten().nonzero().flatten().tolist() == [0]
    assert mask[1].flatten().nonzero().flatten().tolist() == [8]


def test_teacher_equals_center_when_the_teachers_attention_is_a_centred_blob():
    # A blob whose level sets are the centred squares: A = exp(-max(|i - 3.5|, |j - 3.5|)), the same in every
    # image and channel, so its k = side^2 largest cells are the central square of that side.
    rows = torch.arange(8.0)
    ring = torch.maximum((rows[:, None] - 3.5).abs(), (rows[None, :] - 3.5).abs())
    f_t = torch.exp(-ring).sqrt().expand(3, 5, 8, 8)
    for side in (2, 4, 6):
        assert torch.equal(teacher_foreground(teacher_attention(f_t), side * side)[0], foreground_mask(8, 8, side))
        f_s = torch.randn(3, 5, 8, 8, generator=torch.Generator().manual_seed(side))
        for norm in ("map", "region"):  # the same split; sums taken per image, so equal up to rounding
            assert torch.allclose(torch.stack(sfkd_parts(f_s, f_t, side, norm, "teacher")),
                                  torch.stack(sfkd_parts(f_s, f_t, side, norm, "center")), rtol=1e-6, atol=0)


def test_teacher_soft_weights_lie_in_0_1_with_1_at_each_images_maximum():
    f_t = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    m = teacher_soft_foreground(teacher_attention(f_t))
    assert m.min() >= 0 and m.max() <= 1
    assert torch.equal(m.flatten(1).max(dim=1).values, torch.ones(4))
    assert torch.equal(teacher_soft_foreground(teacher_attention(TEACHER))[0], TEACHER[0, 0] ** 2 / 9)
    assert torch.equal(teacher_soft_foreground(torch.zeros(1, 2, 2)), torch.zeros(1, 2, 2))  # no attention, no fg


# Hand-computed (L_fg, L_bg) of the map above at fg_size 2 (k = 4), squared errors summing to 16:
#  center: cells 5, 6, 9, 10 -> 4 + 1 + 1 + 1 = 7; background 9
#  teacher: cells 1, 4, 5, 15 -> 0 + 1 + 4 + 1 = 6; background 10
#  teacher_soft: weights A / 9 -> (1*0 + 4*1 + 9*4 + 1*0 + 1*0 + 4*1) / 9 = 44/9; background 16 - 44/9 = 100/9
# norm "map" divides each by B*C*H*W = 16; norm "region" by its area: 4 and 12 for the squares, the sum of
# the weights for teacher_soft (20/9 and 16 - 20/9 = 124/9).
@pytest.mark.parametrize("source,fg_map,bg_map,fg_region,bg_region", [
    ("center", 7 / 16, 9 / 16, 7 / 4, 9 / 12),
    ("teacher", 6 / 16, 10 / 16, 6 / 4, 10 / 12),
    ("teacher_soft", 44 / 9 / 16, 100 / 9 / 16, 44 / 20, 100 / 124),
])
def test_each_source_gives_the_hand_computed_parts_and_fg_plus_bg_is_the_plain_feature_mse(
        source, fg_map, bg_map, fg_region, bg_region):
    l_fg, l_bg = sfkd_parts(STUDENT, TEACHER, 2, "map", source)
    assert (l_fg.item(), l_bg.item()) == pytest.approx((fg_map, bg_map), rel=1e-6)
    assert (l_fg + l_bg).item() == pytest.approx(torch.nn.functional.mse_loss(STUDENT, TEACHER).item(), rel=1e-6)
    assert sfkd_loss(STUDENT, TEACHER, 2, 0.4, "map", source).item() == pytest.approx(fg_map + 0.4 * bg_map, rel=1e-6)
    assert sfkd_loss(STUDENT, TEACHER, 2, 1.0, "map", source).item() == pytest.approx(1.0, rel=1e-6)  # FitNet
    r_fg, r_bg = sfkd_parts(STUDENT, TEACHER, 2, "region", source)
    assert (r_fg.item(), r_bg.item()) == pytest.approx((fg_region, bg_region), rel=1e-6)


@pytest.mark.parametrize("source", ["center", "teacher", "teacher_soft"])
def test_on_random_batches_fg_plus_bg_is_the_plain_mse_and_no_gradient_flows_through_the_mask(source):
    g = torch.Generator().manual_seed(1)
    f_s = torch.randn(6, 4, 8, 8, generator=g, requires_grad=True)
    f_t = torch.randn(6, 4, 8, 8, generator=g, requires_grad=True)
    l_fg, l_bg = sfkd_parts(f_s, f_t, 3, "map", source)
    assert (l_fg + l_bg).item() == pytest.approx(torch.nn.functional.mse_loss(f_s, f_t).item(), rel=1e-5)
    # The mask depends on f_t but is a constant of the loss: d(L_fg + L_bg)/d f_t is the plain MSE's.
    (l_fg + l_bg).backward()
    assert torch.allclose(f_t.grad, 2 * (f_t - f_s).detach() / f_s.numel(), atol=1e-7)


def test_fg_source_is_a_checked_config_key_that_other_methods_ignore():
    assert DistillConfig().fg_source == "center"
    with pytest.raises(ConfigError, match=r"fg_source: unknown value 'teachr'.*teacher.*expected one of center, "
                                          r"teacher, teacher_soft"):
        DistillConfig(fg_source="teachr")


def test_the_probe_measures_the_share_inside_the_runs_own_foreground():
    att_t = teacher_attention(TEACHER)
    own = run_foreground(att_t, 2, "teacher", (4, 4))
    assert own[0].flatten().nonzero().flatten().tolist() == [1, 4, 5, 15]
    # The teacher's own share: (1 + 4 + 9 + 4) / 20 of its attention lies in its chosen cells.
    assert weighted_share(att_t, own).item() == pytest.approx(18 / 20)
    # A teacher map larger than the student's is pooled to it: 4x4 -> 2x2 block means 3.5, 0, 0, 1.5.
    assert run_foreground(att_t, 1, "teacher", (2, 2))[0].flatten().tolist() == [1, 0, 0, 0]
    assert run_foreground(att_t, 1, "teacher_soft", (2, 2))[0].flatten().tolist() == pytest.approx([1, 0, 0, 1.5 / 3.5])


BASE = dict(dataset="synthetic", synthetic_size=160, student="resnet8", teacher_arch="resnet8", epochs=2,
            batch_size=32, lr=0.05, density=0.3, sparse_init="ERK", seed=3, beta=0.5)
TIMING = ("img_per_s", "epoch_s")

RUN_EVERY_METHOD = """
import json, sys
import trainables
from trainables import DistillRun
assert trainables.__file__.startswith(sys.argv[1]), trainables.__file__
base, out = json.loads(sys.argv[2]), {}
for method in ("ft", "kd", "fitnet", "at", "sp", "sfkd"):
    for cache in (True, False):
        run = DistillRun({**base, "method": method, "teacher_cache": cache}, device="cpu")
        out[f"{method}/{cache}"] = [{k: v.hex() if isinstance(v, float) else v for k, v in run.step().items()
                                     if k not in ("img_per_s", "epoch_s")} for _ in range(2)]
print(json.dumps(out))
"""


def _every_method(code_root: Path, cfg: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", RUN_EVERY_METHOD, str(code_root), json.dumps(cfg)], cwd=code_root,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


@pytest.mark.slow
def test_left_out_fg_source_reproduces_the_code_before_it_bit_for_bit_for_every_method_cache_on_and_off(
        tiny_teacher_file, tmp_path):
    """Every method's per-epoch metrics (losses, accuracies, shares; not the timings) of the code before
    fg_source, checked out from git, and of this code with fg_source left out: equal as float bits."""
    repo = Path(__file__).resolve().parents[1]
    before = tmp_path / "before"
    before.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", BEFORE_FG_SOURCE, "trainables"],
                             capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"needs the project's git history ({archive.stderr.decode().strip()[:200]})")
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
    cfg = {**BASE, "teacher": str(tiny_teacher_file)}
    old = _every_method(before, {**cfg, "cache_dir": str(tmp_path / "cache-before")})
    new = _every_method(repo, {**cfg, "cache_dir": str(tmp_path / "cache-now")})
    assert old.keys() == new.keys() and len(old) == 12
    for key in old:
        assert old[key] == new[key], key
    assert {float.fromhex(e["loss_fg"]) > 0 for e in new["sfkd/True"]} == {True}  # the split really ran


@pytest.mark.parametrize("source", ["teacher", "teacher_soft"])
def test_a_teacher_chosen_foreground_gives_the_same_losses_with_the_teacher_cache_on_and_off(
        tiny_teacher_file, tmp_path, source):
    cfg = {**BASE, "teacher": str(tiny_teacher_file), "method": "sfkd", "fg_source": source,
           "cache_dir": str(tmp_path / "cache")}
    on = DistillRun({**cfg, "teacher_cache": True}, device="cpu")
    off = DistillRun({**cfg, "teacher_cache": False}, device="cpu")
    m_on, m_off = [on.step() for _ in range(2)], [off.step() for _ in range(2)]
    assert on.cache is not None and off.cache is None and m_on[-1]["teacher_cache_hit"] == 1.0
    for a, b in zip(m_on, m_off):
        for k in ("loss", "loss_ce", "loss_kd", "loss_fg", "loss_bg", "train_acc", "val_acc",
                  "student_own_fg_share", "teacher_own_fg_share"):
            assert a[k] == b[k], k
    # The split differs from the square's, and the own-foreground share is recorded beside the square's.
    center = DistillRun({**cfg, "fg_source": "center", "teacher_cache": True}, device="cpu").step()
    assert center["loss_fg"] != m_on[0]["loss_fg"]
    assert "student_own_fg_share" not in center and 0 <= m_on[0]["student_own_fg_share"] <= 1


def test_the_heatmaps_outline_the_cells_a_teacher_chosen_run_used_and_the_square_otherwise(tiny_teacher_file,
                                                                                              tmp_path):
    import matplotlib.pyplot as plt

    from tuner.figures import _overlay, draw_run_figures, load_probe

    run = DistillRun({**BASE, "teacher": str(tiny_teacher_file), "method": "sfkd", "fg_source": "teacher",
                      "epochs": 1, "cache_dir": str(tmp_path / "cache")}, device="cpu")
    run.step()
    torch.save(run.last_probe, tmp_path / "probe.pt")
    probe = load_probe(tmp_path / "probe.pt")  # weights_only=True: the mask saves as a plain tensor
    assert probe["fg_source"] == "teacher" and probe["fg_mask"].shape == (8, 8, 8)
    assert probe["fg_mask"].sum(dim=(1, 2)).tolist() == [16.0] * 8  # fg_size 4: 16 cells per image
    fig, (with_mask, square) = plt.subplots(1, 2)
    _overlay(with_mask, probe["images"][0], probe["student"][0], 4, probe["fg_mask"][0])
    _overlay(square, probe["images"][0], probe["student"][0], 4)
    assert len(with_mask.patches) == 0 and len(with_mask.collections) == 1  # the cells' outline
    assert len(square.patches) == 1 and len(square.collections) == 0  # the central square
    plt.close(fig)
    heat = next(f for f in draw_run_figures(tmp_path / "probe.pt", tmp_path / "figs") if f.suffix == ".png")
    assert heat.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
