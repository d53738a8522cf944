"""`shift` (docs/datasets.md, "Off-centre objects"): a fixed function of split_seed, each split's clutter
from its own images, and a centre that really is the wrong guess."""
import pytest
import torch
from PIL import Image

from trainables import DistillRun
from trainables.config import ConfigError, DistillConfig
from trainables.data import load_splits
from trainables.data.shift import centre_overlap, fade, object_cells, shift_split, shuffle_tiles


def _solid_tree(root, per_class=10, test_per_class=4):
    """An ImageFolder tree of solid 8x8 images, each in a colour of its own: (k, k, k) with k a unique
    multiple of 4, so every pixel of a shifted canvas says which source image it came from, faded or not
    (a quarter of k plus 96 is again unique)."""
    k = 4
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (k, k, k)).save(root / split / c / f"{i}.png")
                k += 4
    return root


def _faded(k: int) -> int:
    return k // 4 + 96  # a quarter of the contrast around 128: 0.25 k + 0.75 x 128, exact for multiples of 4


def test_the_clutter_is_another_image_cut_into_shuffled_tiles_at_a_quarter_of_its_contrast():
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)  # four 2x2 tiles: 0 1 4 5 | 2 3 6 7 | ...
    reversed_tiles = shuffle_tiles(image, torch.tensor([[3, 2, 1, 0]]), 2)
    assert reversed_tiles[0, 0].tolist() == [[10, 11, 8, 9], [14, 15, 12, 13], [2, 3, 0, 1], [6, 7, 4, 5]]
    assert torch.equal(shuffle_tiles(image, torch.tensor([[0, 1, 2, 3]]), 2), image)
    # 0.25 x value + 96, rounded half to even: 0 -> 96, 2 -> 96.5 -> 96, 6 -> 97.5 -> 98, 255 -> 159.75 -> 160.
    assert fade(torch.tensor([0, 2, 6, 128, 255], dtype=torch.uint8)).tolist() == [96, 96, 98, 128, 160]
    # On a canvas: images already of the canvas's size (12 px, so the resize changes nothing), tiles of 2 px.
    x = torch.zeros(2, 3, 12, 12, dtype=torch.uint8)
    for q, (r, c) in enumerate(((0, 0), (0, 6), (6, 0), (6, 6))):
        x[0, :, r:r + 6, c:c + 6] = 40 * (q + 1)  # image 0: four quadrants of 3 x 3 tiles each
    x[1] = 200  # image 1 is solid: the whole background of image 0
    out, corners = shift_split(x, 12, 4, 0, "train")
    top, left = corners[0].tolist()
    background = out[0, 0].clone()
    background[top:top + 4, left:left + 4] = 0
    assert set(background.unique().tolist()) == {0, 146}  # 200 faded: 50 + 96
    # Image 1's background is image 0: its 36 tiles, each whole and of one quadrant's faded colour (106,
    # 116, 126, 136), nine of each, in another order than the quadrants'.
    tiles = out[1, 0].view(6, 2, 6, 2).permute(0, 2, 1, 3).reshape(36, 4).clone().long()
    top, left = corners[1].tolist()
    hidden = {(top // 2 + i) * 6 + left // 2 + j for i in range(3) for j in range(3)}  # under the object, at most
    seen = [int(t[0]) for n, t in enumerate(tiles) if n not in hidden and len(set(t.tolist())) == 1]
    assert set(seen) <= {106, 116, 126, 136} and len(seen) >= 36 - 9
    layout = fade(x[:1, :1])[0, 0].view(6, 2, 6, 2).permute(0, 2, 1, 3).reshape(36, 4)[:, 0].tolist()
    assert any(int(tiles[n][0]) != layout[n] for n in range(36) if n not in hidden)  # shuffled, not in place


def test_each_canvas_is_its_own_object_at_its_corner_over_another_image_of_the_same_split(tmp_path):
    s = load_splits("imagefolder", str(_solid_tree(tmp_path)), val_fraction=0.25, shift=24, shift_object=8)
    assert s.train_x.shape[1:] == (3, 24, 24) and s.object_side == 8
    assert {k: len(v) for k, v in s.object_corners.items()} == {"train": 16, "val": 4, "test": 8}  # 2 of 10 per class held out
    sources = {}  # the source images (their colours k) each split's objects and clutter come from
    for split, x in (("train", s.train_x), ("val", s.val_x), ("test", s.test_x)):
        corners = s.object_corners[split]
        objects = {int(x[i, 0, top, left]) for i, (top, left) in enumerate(corners.tolist())}
        sources[split] = set(objects)
        assert len(objects) == len(x)  # every image of the split is an object once
        for i, (top, left) in enumerate(corners.tolist()):
            canvas = x[i, 0]
            inside = canvas[top:top + 8, left:left + 8]
            assert inside.unique().numel() == 1  # the object, solid, where its corner says
            outside = canvas.clone()
            outside[top:top + 8, left:left + 8] = 0
            background = set(outside.unique().tolist()) - {0}
            others = {_faded(k) for k in objects - {int(inside[0, 0])}}
            assert len(background) <= 1 and background <= others  # another image of the same split, faded
            sources[split] |= {4 * (v - 96) for v in background}
    # Train, validation and test draw objects and clutter from disjoint sets of source images.
    assert sources["train"].isdisjoint(sources["val"]) and sources["train"].isdisjoint(sources["test"])
    assert sources["val"].isdisjoint(sources["test"])


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
    x = (4 * torch.arange(1, 51, dtype=torch.uint8)).view(50, 1, 1, 1).expand(50, 3, 4, 4).contiguous()
    out, corners = shift_split(x, 12, 4, 0, "train")
    for i, (top, left) in enumerate(corners.tolist()):
        canvas = out[i, 0].clone()
        assert int(canvas[top, left]) == 4 * (i + 1)
        canvas[top:top + 4, left:left + 4] = 0
        background = set(canvas.unique().tolist()) - {0}
        assert len(background) == 1 and background != {_faded(4 * (i + 1))}  # one other image, never itself


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


def test_a_cached_auto_teacher_of_shifted_data_is_keyed_by_the_canvases_definition(monkeypatch):
    import hashlib
    import json

    from tuner import driver
    from tuner.teacher_training import teacher_config

    def old_key(cfg):  # the key every auto teacher had before the canvases' definition joined it
        return hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]

    plain = teacher_config("resnet56", "cifar10", 20, train_subset=10000, lr_schedule="cosine")
    assert driver.auto_teacher_file(plain) == f"teachers/resnet56-cifar10-e20-train-{old_key(plain)}.pt"  # unchanged
    shifted = teacher_config("resnet56", "cifar10", 20, train_subset=10000, lr_schedule="cosine", shift=48)
    now = driver.auto_teacher_file(shifted)
    assert now != f"teachers/resnet56-cifar10-e20-train-{old_key(shifted)}.pt"  # no file of the old canvases
    monkeypatch.setattr(driver, "SHIFT_BACKGROUND", "another definition")
    assert driver.auto_teacher_file(shifted) != now and driver.auto_teacher_file(plain).endswith(f"{old_key(plain)}.pt")
