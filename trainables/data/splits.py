"""One place that turns a dataset name into train / val / test uint8 tensors."""
import dataclasses
import difflib
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from trainables.data.shift import default_object_side, shift_split
from trainables.data.sources import (
    IMAGE_EXTENSIONS,
    DataError,
    first_image_size,
    fit_square,
    make_synthetic,
    memory_limit_bytes,
    read_image_folder,
    read_torchvision_cifar,
    unpack_archive,
)

DATASETS = ("cifar10", "cifar100", "imagefolder", "synthetic")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class DataSplits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple
    classes: tuple = ()  # class names in label order: what a user of the trained model reads outputs by
    # With `shift`: each split's object corners (N x 2, top and left in pixels) and the objects' side
    object_corners: dict = dataclasses.field(default_factory=dict)
    object_side: int = 0

    def normalised_as(self, mean=None, std=None) -> "DataSplits":
        """These splits with the per-channel mean/std a config gives (a model trained with normalisation
        of its own, such as ImageNet's); None keeps the statistics of the training images."""
        if mean is None and std is None:
            return self
        return dataclasses.replace(self, mean=tuple(float(v) for v in (mean if mean is not None else self.mean)),
                                   std=tuple(float(v) for v in (std if std is not None else self.std)))

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    @functools.cached_property
    def train_digest(self) -> str:
        """A hash of the exact training images, labels and their order: two runs that would train on
        different images (a search's train split and a final run's train+val) never share a digest."""
        h = hashlib.blake2b(digest_size=16)
        h.update(str(tuple(self.train_x.shape)).encode())
        h.update(self.train_x.contiguous().numpy().tobytes())
        h.update(self.train_y.numpy().astype("int64").tobytes())
        return h.hexdigest()


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, held_out) index tensors; each class gives round(fraction * its count) to held_out."""
    g = torch.Generator().manual_seed(int(seed))
    keep, held = [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(fraction * len(idx)))
        held.append(idx[:k])
        keep.append(idx[k:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def _stratified_subset(labels: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    if n is None or n >= len(labels):
        return torch.arange(len(labels))
    _, chosen = stratified_split(labels, n / len(labels), seed + 1)
    return chosen


def _read_tree(root: Path, size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    check_fits_in_memory(root, size)
    tx, ty, classes = read_image_folder(root / "train", size)
    vx, vy, test_classes = read_image_folder(root / "test", size)
    if test_classes != classes:
        raise DataError(f"{root}: train/ and test/ have different class folders")
    check_classes(root / "train", ty, classes)
    return tx, ty, vx, vy, classes


def check_fits_in_memory(root: Path, size: int | None) -> None:
    """Refuse, before decoding anything, a tree whose decoded images would not fit the memory limit
    (data is held in memory as uint8; docs/real-data.md)."""
    count = sum(1 for split in ("train", "test") for d in (root / split).iterdir() if d.is_dir()
                for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
    w, h = (size, size) if size else first_image_size(root / "train")
    need, limit = count * 3 * w * h, memory_limit_bytes()
    if need > limit:
        raise DataError(f"{root}: its {count:,} images decoded at {w}x{h} take {_size(need)} in memory, over the "
                        f"limit of {_size(limit)} (half this machine's memory unless SFKD_DATA_MAX_GB sets it); give "
                        f"a smaller image_size or fewer images")


def _size(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.2f} MB"


def resize_all(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Decoded N x C x H x W images fitted to size x size (fit_square), in chunks to bound the memory."""
    if size is None or x.shape[-2:] == (size, size):
        return x
    return torch.cat([fit_square(x[i:i + 1000], size) for i in range(0, len(x), 1000)])


def check_classes(where, labels: torch.Tensor, classes: list[str]) -> None:
    """A classifier needs at least two classes, and every class some training images."""
    if len(classes) < 2:
        raise DataError(f"{where} has {len(classes)} class folder ({', '.join(classes)}); a classifier needs at least 2")
    counts = torch.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts.tolist()) if n == 0]
    if empty:
        raise DataError(f"{where}/{empty[0]} holds no images; every class needs training images"
                        f"{f' ({len(empty)} classes are empty)' if len(empty) > 1 else ''}")


def _resolve_tree(data_dir: Path) -> Path | None:
    """An ImageFolder root under data_dir (itself, one level down, or a .tar.gz of one), or None."""
    if data_dir.is_file() and data_dir.name.endswith((".tar.gz", ".tgz")):
        return unpack_archive(data_dir)
    if (data_dir / "train").is_dir():
        return data_dir
    subs = [d for d in data_dir.iterdir() if (d / "train").is_dir()] if data_dir.is_dir() else []
    return subs[0] if len(subs) == 1 else None


TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def locate_data(dataset: str, data_dir: str | None, download: bool = False) -> tuple[str, Path | None]:
    """Where a dataset's files are, checked without decoding them: ("synthetic", None),
    ("tree", ImageFolder root) or ("torchvision", root). Raises DataError with what is missing."""
    if dataset not in DATASETS:
        close = difflib.get_close_matches(dataset, DATASETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown dataset {dataset!r}{hint} (expected one of {', '.join(DATASETS)})")
    if dataset == "synthetic":
        return "synthetic", None
    if not data_dir:
        raise DataError(f"dataset {dataset} needs --data-dir (a folder with train/ and test/, or the torchvision files)")
    root = Path(data_dir).expanduser().resolve()
    if not root.exists():
        raise DataError(f"data dir {root} does not exist")
    tree = _resolve_tree(root)
    if tree is not None:
        for split in ("train", "test"):
            folder = tree / split
            classes = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")] if folder.is_dir() else []
            if not classes:
                raise DataError(f"data folder {folder} has no class folders; expected {folder}/<class>/*.jpg")
            if dataset in NUM_CLASSES and len(classes) != NUM_CLASSES[dataset]:
                raise DataError(f"{folder} has {len(classes)} class folders; {dataset} expects {NUM_CLASSES[dataset]}")
            if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in classes[0].iterdir()):
                raise DataError(f"data folder {classes[0]} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            if split == "train":  # counted from the names, before anything is decoded or cached
                names = sorted(d.name for d in classes)
                counts = [sum(f.suffix.lower() in IMAGE_EXTENSIONS for f in (folder / n).iterdir()) for n in names]
                check_classes(folder, torch.repeat_interleave(torch.arange(len(names)), torch.tensor(counts)), names)
        return "tree", tree
    if dataset in NUM_CLASSES:
        if not (root / TORCHVISION_FOLDERS[dataset]).is_dir() and not download:
            raise DataError(f"{dataset} not found under {root}: expected {TORCHVISION_FOLDERS[dataset]}/ (torchvision), "
                            f"train/ and test/ class folders, or a .tar.gz of them (or set download: true)")
        return "torchvision", root
    raise DataError(f"{root} is not an ImageFolder tree; expected {root}/train/<class>/ and {root}/test/<class>/")


def load_splits(dataset: str, data_dir: str | None = None, val_fraction: float = 0.1, split_seed: int = 0,
                train_subset: int | None = None, val_subset: int | None = None, download: bool = False,
                synthetic_size: int = 2000, synthetic_classes: int = 10, image_size: int | None = None,
                full_train: bool = False, shift: int | None = None, shift_object: int | None = None) -> DataSplits:
    """Load a dataset and carve the stratified validation split from its training set.

    The split and the subsets depend on `split_seed` alone, so seed replicates share validation images.
    full_train=True (the final run) trains on train+val and keeps val empty. `image_size`: the side every
    image is fitted to (None: the images' own, 32 for synthetic data). `shift`: each split's images are
    then pasted off-centre on a canvas of that side over clutter from the same split (trainables.data.shift),
    as objects of side `shift_object` (default a third of the canvas).
    """
    kind, root = locate_data(dataset, data_dir, download)
    if kind == "synthetic":
        size = image_size or 32
        tx, ty = make_synthetic(synthetic_size, synthetic_classes, size, seed=1000)
        sx, sy = make_synthetic(max(200, synthetic_size // 5), synthetic_classes, size, seed=2000)
        classes = [f"class{i}" for i in range(synthetic_classes)]
    elif kind == "tree":
        tx, ty, sx, sy, classes = _read_tree(root, image_size)
    else:
        tx, ty, classes = read_torchvision_cifar(dataset, root, True, download)
        sx, sy, _ = read_torchvision_cifar(dataset, root, False, download)
        tx, sx = resize_all(tx, image_size), resize_all(sx, image_size)

    if full_train:
        vx, vy = tx[:0], ty[:0]
    else:
        keep, held = stratified_split(ty, val_fraction, split_seed)
        vx, vy, tx, ty = tx[held], ty[held], tx[keep], ty[keep]
        pick = _stratified_subset(vy, val_subset, split_seed)
        vx, vy = vx[pick], vy[pick]
    pick = _stratified_subset(ty, train_subset, split_seed)
    tx, ty = tx[pick], ty[pick]
    corners, side = {}, 0
    if shift is not None:
        side = shift_object or default_object_side(shift)
        (tx, corners["train"]), (vx, corners["val"]), (sx, corners["test"]) = (
            shift_split(x, shift, side, split_seed, name) for x, name in ((tx, "train"), (vx, "val"), (sx, "test")))
    if dataset in MEAN_STD:
        mean, std = MEAN_STD[dataset]
    else:
        f = tx.float() / 255
        mean = tuple(f.mean(dim=(0, 2, 3)).tolist())
        std = tuple(f.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return DataSplits(tx, ty, vx, vy, sx, sy, len(classes), mean, std, tuple(classes), corners, side)
