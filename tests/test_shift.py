"""`shift` (docs/datasets.md, "Off-centre objects"): a fixed function of split_seed, each split's clutter
from its own images, and a centre that really is the wrong guess."""
import pytest
import torch
from PIL import Image

from trainables import DistillRun
from trainables.config import ConfigError, DistillConfig
from trainables.data import load_splits
from trainables.data.shift import centre_overlap, object_cells, shift_split


def _solid_tree(root, per_class=10, test_per_class=4):
    """An ImageFolder tree of solid 8x8 images, each in a colour of its own: (k, k, k) with k unique, so
    every pixel of a shifted canvas says which source image it came from."""
    k = 1
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (k, k, k)).save(root / split / c / f"{i}.png")
                k += 1
    return root


def _colours(x: torch.Tensor) -> set[int]:
    return set(x[:, 0].flatten().tolist())


def test_each_canvas_is_its_own_object_at_its_corner_over_another_image_of_the_same_split(tmp_path):
    s = load_splits("imagefolder", str(_solid_tree(tmp_path)), val_fraction=0.25, shift=24, shift_object=8)
    assert s.train_x.shape[1:] == (3, 24, 24) and s.object_side == 8
    assert {k: len(v) for k, v in s.object_corners.items()} == {"train": 16, "val": 4, "test": 8}  # 2 of 10 per class held out
    for split, x in (("train", s.train_x), ("val", s.val_x), ("test", s.test_x)):
        corners = s.object_corners[split]
        objects = {int(x[i, 0, top, left]) for i, (top, left) in enumerate(corners.tolist())}
        assert len(objects) == len(x)  # every image of the split is an object once
        for i, (top, left) in enumerate(corners.tolist()):
            canvas = x[i, 0]
            inside = canvas[top:top + 8, left:left + 8]
            assert inside.unique().numel() == 1  # the object, solid, where its corner says
            outside = canvas.clone()
            outside[top:top + 8, left:left + 8] = 0
            background = set(outside.unique().tolist()) - {0}
            assert len(background) <= 1 and background <= objects - {int(inside[0, 0])}  # another image, same split
    # Train, validation and test draw objects and clutter from disjoint sets of source images.
    assert _colours(s.train_x).isdisjoint(_colours(s.val_x))
    assert _colours(s.train_x).isdisjoint(_colours(s.test_x)) and _colours(s.val_x).isdisjoint(_colours(s.test_x))


def test_shift_is_a_fixed_function_of_split_seed_the_same_in_every_run_arm_and_seed(tmp_path):
    a = load_splits("synthetic", synthetic_size=200, shift=48)
    b = load_splits("synthetic", synthetic_size=200, shift=48)
    assert all(torch.equal(a.object_corners[k], b.object_corners[k]) for k in ("train", "val", "test"))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)
    other = load_splits("synthetic", synthetic_size=200, shift=48, split_seed=1)
    assert not torch.equal(other.object_corners["test"], a.object_corners["test"])
    # Two runs of different arms and seeds train, validate and test on the very same canvases.
    common = dict(dataset="synthetic", synthetic_size=200, student="resnet8", teacher="none", epochs=1, shift=48,
                  density=0.5, cache_dir=str(tmp_path / "cache"))
    ft = DistillRun({**common, "method": "ft", "seed": 0}, device="cpu")
    other_seed = DistillRun({**common, "method": "ft", "seed": 5, "lr": 0.01}, device="cpu")
    for split in ("train_x", "val_x", "test_x"):
        assert torch.equal(getattr(ft.data, split), getattr(other_seed.data, split))


def test_a_third_of_the_canvas_overlaps_the_central_square_by_a_quarter_on_average():
    # Uniform corners on [0, 32] of a 48 px canvas, a 16 px object, the square at 16..32: the overlap per axis
    # is u for u <= 16 and 32 - u above, a mean of 8 of 16 px; the two axes are independent, so 1/4 of the area.
    corners = torch.cartesian_prod(torch.arange(33), torch.arange(33))
    assert centre_overlap(corners, 16, 48).mean().item() == pytest.approx((136 + 120) ** 2 / 33 ** 2 / 256, rel=1e-6)
    assert centre_overlap(torch.tensor([[16, 16]]), 16, 48).item() == 1.0
    assert centre_overlap(torch.tensor([[0, 32]]), 16, 48).item() == 0.0
    drawn = load_splits("synthetic", synthetic_size=1000, shift=48).object_corners["test"]
    assert centre_overlap(drawn, 16, 48).mean().item() < 0.35  # well under half, as drawn


def test_the_object_cells_are_the_map_cells_its_box_covers():
    # A 16 px object at (8, 20) on a 48 px canvas, a 12x12 map of 4 px cells: rows 2..5, columns 5..8 exactly.
    cells = object_cells(torch.tensor([[8, 20]]), 16, 48, 12)[0]
    assert cells.sum().item() == 16 and cells[2:6, 5:9].min().item() == 1.0
    # Off the cell grid by 2 px: the edge cells are half covered; the area is still 16 cells.
    half = object_cells(torch.tensor([[10, 20]]), 16, 48, 12)[0]
    assert half.sum().item() == pytest.approx(16) and half[2, 5].item() == 0.5 and half[6, 5].item() == 0.5


def test_shift_split_never_uses_an_image_as_its_own_background():
    x = torch.arange(1, 51, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 3, 4, 4).contiguous()
    out, corners = shift_split(x, 12, 4, 0, "train")
    for i, (top, left) in enumerate(corners.tolist()):
        canvas = out[i, 0].clone()
        assert int(canvas[top, left]) == i + 1
        canvas[top:top + 4, left:left + 4] = 0
        assert set(canvas.unique().tolist()) - {0} and i + 1 not in canvas.unique().tolist()


@pytest.mark.parametrize("values,message", [
    ({"shift_object": 16}, "shift_object is the object's side on a shift canvas; give shift"),
    ({"shift": 48, "shift_object": 64}, r"shift_object: 64 is out of range; expected a value in \[4, 48\]"),
    ({"shift": 4}, r"shift: 4 is out of range"),
])
def test_bad_shift_settings_are_config_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**values)


class UnreadableSplit(torch.Tensor):
    """A split that fails any run that touches it: shape, length, indexing, anything."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"the test split was read ({getattr(func, '__name__', func)})")


def test_a_search_trial_on_shifted_data_never_reads_the_test_images(tmp_path):
    import dataclasses

    cfg = dict(dataset="synthetic", synthetic_size=200, student="resnet8", teacher="none", method="ft", epochs=2,
               shift=48, density=0.5, cache_dir=str(tmp_path / "cache"))
    for test_at_end in (False, True):
        run = DistillRun({**cfg, "test_at_end": test_at_end}, device="cpu")
        run.data = dataclasses.replace(run.data, test_x=run.data.test_x.as_subclass(UnreadableSplit))
        assert "test_acc" not in run.step()  # epoch 1 of 2
        if not test_at_end:  # a search's trial: every epoch validates, none reads test
            last = run.step()
            assert "test_acc" not in last and "val_acc" in last
        else:  # a study's finished run reads it once, after the last epoch: the check does catch a read
            with pytest.raises(AssertionError, match="the test split was read"):
                run.step()


def test_a_teacher_trained_on_shifted_data_records_and_prints_where_it_looks(tmp_path, capsys):
    from trainables.data.shift import centre_overlap as overlap
    from trainables.teacher_file import read_teacher_file
    from tuner import teacher

    out = tmp_path / "t.pt"
    assert teacher.main(["--arch", "resnet8", "--dataset", "synthetic", "--epochs", "1", "--set", "shift=48",
                         "--set", "synthetic_size=300", "--out", str(out)]) == 0
    info = read_teacher_file(out)
    assert (info["shift"], info["shift_object"], info["image_size"]) == (48, 16, 48)
    shares = info["object_attention"]
    assert 0 < shares["object_share"] < 1 and 0 < shares["centre_share"] < 1
    assert (shares["square_cells"], shares["map_side"]) == (4, 12)  # 16 of 48 px on a 12x12 map: 4 cells
    test_corners = load_splits("synthetic", synthetic_size=300, shift=48).object_corners["test"]
    assert shares["centre_overlap"] == pytest.approx(overlap(test_corners, 16, 48).mean().item())
    assert f"inside the objects' cells {shares['object_share']:.3f}" in capsys.readouterr().out
