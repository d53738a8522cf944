from pathlib import Path

import torch

from trainables.data import DeviceLoader, load_splits
from trainables.data.augment import crop_flip, random_crop_flip_params
from trainables.data.sources import make_synthetic, read_image_folder
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
