from pathlib import Path

import pytest
import torch

from trainables.data import DeviceLoader, load_splits
from trainables.data.augment import crop_flip, random_crop_flip_params
from trainables.data.sources import DataError, make_synthetic, read_image_folder
from trainables.data.splits import stratified_split


def test_validation_split_is_seeded_stratified_and_ten_percent_by_default():
    labels = torch.arange(1000) % 10
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert len(held) == 100 and torch.bincount(labels[held]).tolist() == [10] * 10
    assert set(keep.tolist()).isdisjoint(held.tolist()) and len(keep) + len(held) == 1000
    assert torch.equal(held, stratified_split(labels, 0.1, seed=3)[1])
    assert not torch.equal(held, stratified_split(labels, 0.1, seed=4)[1])


def test_synthetic_data_is_seeded_and_its_class_lives_in_the_centre():
    x1, y1 = make_synthetic(200, 10, 32, seed=1)
    x2, y2 = make_synthetic(200, 10, 32, seed=1)
    assert x1.dtype == torch.uint8 and x1.shape == (200, 3, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # Within a class the centre is (nearly) constant while the border clutter varies widely.
    cls = x1[y1 == 0].float()
    centre_var = cls[:, :, 13:19, 13:19].var(dim=0).mean()
    border_var = cls[:, :, :6, :].var(dim=0).mean()
    assert centre_var < 0.2 * border_var


def test_final_run_splits_train_on_train_plus_val():
    s = load_splits("synthetic", synthetic_size=500, full_train=True)
    assert len(s.val_x) == 0 and len(s.train_x) == 500
    s = load_splits("synthetic", synthetic_size=500)
    assert len(s.val_x) == 50 and len(s.train_x) == 450


def test_device_crop_flip_equals_the_per_image_reference():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    dy, dx, flip = random_crop_flip_params(16, 4, g)
    out = crop_flip(x, dy, dx, flip, 4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        ref = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_augmentation_draws_every_offset_and_flip_uniformly():
    g = torch.Generator().manual_seed(1)
    dy, dx, flip = random_crop_flip_params(90000, 4, g)
    for d in (dy, dx):
        counts = torch.bincount(d, minlength=9).float() / 90000
        assert torch.allclose(counts, torch.full((9,), 1 / 9), atol=0.006)
    assert abs(flip.float().mean().item() - 0.5) < 0.01


def test_loader_covers_every_training_image_once_per_epoch():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 4, 4).contiguous()
    y = torch.arange(100)
    loader = DeviceLoader(x, y, 10, (0, 0, 0), (1, 1, 1), torch.device("cpu"), train=True,
                          generator=torch.Generator().manual_seed(0))
    seen = torch.cat([yb for _, yb in loader])
    assert sorted(seen.tolist()) == list(range(100))


def test_image_folder_is_decoded_once_into_a_cache_beside_it(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), colour).save(tmp_path / split / c / f"{i}.png")
    x, y, classes = read_image_folder(tmp_path / "train")
    assert x.shape == (6, 3, 8, 8) and classes == ["cat", "dog"] and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert (tmp_path / ".sfkd-train-v1.pt").exists()
    x2, _, _ = read_image_folder(tmp_path / "train")
    assert torch.equal(x, x2)
    s = load_splits("imagefolder", str(tmp_path), val_fraction=0.34)
    assert s.num_classes == 2 and s.image_size == 8 and len(s.test_x) == 6


def _load_from_archive(archive, cache_home, barrier, out):
    import hashlib
    import os

    os.environ["SFKD_CACHE"] = str(cache_home)
    from trainables.data.sources import read_image_folder, unpack_archive

    barrier.wait()  # both processes start on the cold archive together
    root = unpack_archive(archive)
    x, y, classes = read_image_folder(root / "train")
    out.put((str(root), hashlib.sha1(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest(), classes))


def test_two_processes_unpacking_and_decoding_a_cold_archive_at_once_end_with_the_same_complete_cache(tmp_path):
    import hashlib
    import multiprocessing
    import tarfile

    from PIL import Image

    tree = tmp_path / "src" / "shapes"
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 150), ("test", 10)):
        for c in ("cat", "dog", "eel"):
            (tree / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(pixels).save(tree / split / c / f"{i}.png")
    archive = tmp_path / "shapes.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="shapes")
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_load_from_archive, args=(archive, tmp_path / "cache", barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0, 0]
    got = [out.get(timeout=10) for _ in procs]
    assert got[0] == got[1]
    root = Path(got[0][0])
    assert sorted(d.name for d in (root / "train").iterdir()) == ["cat", "dog", "eel"]
    assert sum(1 for _ in (root / "train").rglob("*.png")) == 450
    # The cache left behind is whole: it loads, and holds exactly what both processes decoded.
    blob = torch.load(root / ".sfkd-train-v1.pt", weights_only=True)
    digest = hashlib.sha1(blob["images"].numpy().tobytes() + blob["labels"].numpy().tobytes()).hexdigest()
    assert digest == got[0][1] and blob["images"].shape == (450, 3, 16, 16)
    assert not list(root.parent.glob("*.tmp")) and not list((tmp_path / "cache").glob(".unpack-*"))


def test_shipped_splits_go_to_runs_that_ask_for_exactly_them_and_to_a_teacher_when_only_val_subset_differs():
    from trainables.config import DistillConfig
    from trainables.inputs import TrialInputs, load_run_splits, split_args

    base = DistillConfig.from_dict({"dataset": "synthetic", "synthetic_size": 300, "val_subset": 10})
    inputs = TrialInputs(data=load_run_splits(base), data_args=split_args(base))
    teacher = DistillConfig.from_dict({"dataset": "synthetic", "synthetic_size": 300})  # no val_subset
    other = DistillConfig.from_dict({"dataset": "synthetic", "synthetic_size": 300, "val_subset": 10, "split_seed": 1})
    assert inputs.data_for(base) is inputs.data
    assert inputs.data_for(teacher) is None  # a trial would validate on other images
    assert inputs.data_for(teacher, train_only=True) is inputs.data  # same training and test images
    assert inputs.data_for(other) is None and inputs.data_for(other, train_only=True) is None
    assert torch.equal(load_run_splits(teacher).train_x, inputs.data.train_x)


# Image sizes (docs/method.md, "Image sizes"): any size, mixed sizes fitted to image_size, augmentation
# chosen by the size, a tree too large for memory refused before anything is decoded.

def _banded_tree(root, sizes):
    """train/ and test/ with classes a and b; image k of each class has size sizes[k] and three vertical
    bands, red | green | blue, of equal width."""
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for k, (w, h) in enumerate(sizes):
                im = Image.new("RGB", (w, h), (255, 0, 0))
                im.paste((0, 255, 0), (w // 3, 0, 2 * w // 3, h))
                im.paste((0, 0, 255), (2 * w // 3, 0, w, h))
                im.save(root / split / c / f"{k}.png")
    return root


def test_images_of_mixed_sizes_are_refused_without_an_image_size_and_fitted_with_one(tmp_path):
    root = _banded_tree(tmp_path, [(30, 10), (10, 10), (60, 20)])
    with pytest.raises(DataError, match=r"differ in size .* set image_size: N to resize every image to N x N"):
        load_splits("imagefolder", str(root))
    s = load_splits("imagefolder", str(root), image_size=10, val_fraction=0.5)
    assert s.image_size == 10 and s.train_x.shape[1:] == (3, 10, 10)
    # A 30x10 image: the shorter side is already 10, so the centre 10x10 square is kept: the green band.
    wide = s.test_x[0]
    assert wide[1].min() == 255 and wide[0].max() == 0 and wide[2].max() == 0
    # A 60x20 image is halved to 30x10 first, then cropped the same way (antialiasing blurs the band edges).
    assert s.test_x[2][1, :, 2:8].float().mean() > 250 and s.test_x[2][0, :, 2:8].float().mean() < 5
    assert (tmp_path / ".sfkd-train-v1-10px.pt").exists()  # a cache of its own per size


def test_a_tree_too_large_for_memory_is_refused_with_its_decoded_size_and_the_limit(tmp_path, monkeypatch):
    root = _banded_tree(tmp_path, [(30, 10), (30, 10)])  # 8 images
    monkeypatch.setenv("SFKD_DATA_MAX_GB", "0.00001")  # 10 kB
    # 8 images x 3 x 20 x 20 bytes = 9,600 bytes: fits; at 30 px, 21,600 bytes do not.
    load_splits("imagefolder", str(root), image_size=20, val_fraction=0.5)
    with pytest.raises(DataError, match=r"its 8 images decoded at 30x30 take 0.02 MB in memory, over the limit of "
                                        r"0.01 MB .*SFKD_DATA_MAX_GB"):
        load_splits("imagefolder", str(root), image_size=30)
    assert not (tmp_path / ".sfkd-train-v1-30px.pt").exists()  # refused before anything was decoded


def test_small_images_are_padded_and_cropped_and_large_ones_random_resized_cropped():
    from trainables.data.augment import augment_batch

    g = torch.Generator().manual_seed(0)
    small = augment_batch(torch.full((64, 3, 64, 64), 200, dtype=torch.uint8), g)
    large = augment_batch(torch.full((64, 3, 96, 96), 200, dtype=torch.uint8), g)
    assert small.dtype == torch.uint8 and (small == 0).any()  # zero-padded borders shifted in
    assert large.shape == (64, 3, 96, 96) and torch.allclose(large, torch.full_like(large, 200.0))  # no border


def test_a_random_resized_crop_resamples_its_box_to_the_full_size_and_flips():
    from trainables.data.augment import resized_crop_flip

    # Pixel value = column index. Bilinear sampling reproduces a linear ramp exactly, so output column k
    # of a box from column 10, 50 wide, resized to 100 reads the box at k's centre: 9.5 + (k + 0.5) * 0.5.
    x = torch.arange(100, dtype=torch.float32).expand(1, 3, 100, 100).contiguous()
    box = [torch.tensor([v]) for v in (20, 10, 40, 50)]  # top, left, height, width
    out = resized_crop_flip(x, *box, torch.tensor([False]))
    want = 9.5 + (torch.arange(100) + 0.5) * 0.5
    assert torch.allclose(out[0, 0, 0], want, atol=1e-4) and torch.allclose(out[0, 2, 77], want, atol=1e-4)
    flipped = resized_crop_flip(x, *box, torch.tensor([True]))
    assert torch.allclose(flipped[0, 0, 0], want.flip(0), atol=1e-4)


def test_random_resized_crop_draws_fit_the_image_follow_the_recipe_and_replay():
    from trainables.data.augment import RRC_SCALE, view_params

    top, left, h, w, flip = view_params(5000, seed=3, view=1, image_size=128)
    assert ((top >= 0) & (left >= 0) & (top + h <= 128) & (left + w <= 128) & (h > 0) & (w > 0)).all()
    area = (h * w).float() / 128 ** 2
    assert area.min() >= RRC_SCALE[0] * 0.9 and area.max() <= 1.0  # rounding moves an area by a pixel or so
    assert 0.4 < flip.float().mean() < 0.6
    again = view_params(5000, seed=3, view=1, image_size=128)
    assert all(torch.equal(a, b) for a, b in zip((top, left, h, w, flip), again))  # a function of (seed, view)
    assert not torch.equal(view_params(5000, seed=3, view=2, image_size=128)[0], top)
