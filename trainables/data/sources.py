"""Where images come from: torchvision CIFAR, ImageFolder trees (with a decoded cache), synthetic."""
import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch


class DataError(ValueError):
    """Missing, empty or malformed data; the CLI reports it in one line."""


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CACHE_VERSION = 1


def _cache_home() -> Path:
    return Path(os.environ.get("SFKD_CACHE", Path.home() / ".cache" / "sfkd-data"))


def unpack_archive(archive: Path) -> Path:
    """Unpack a .tar.gz of an ImageFolder tree once into the cache and return the tree's root.
    Each process unpacks into its own temporary folder and renames it into place, so trials that
    start at once on a cold node never see (or write into) a half-unpacked tree."""
    dest = _cache_home()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        tar = tarfile.open(archive)
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:  # not gzip, truncated, unreadable
        raise DataError(f"archive {archive} cannot be read as a .tar.gz ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    with tar:
        top = {m.name.split("/")[0] for m in members if m.name and not m.name.startswith(".")}
        if len(top) != 1:
            raise DataError(f"{archive}: expected one top folder in the archive, found {sorted(top)[:5]}")
        name = top.pop()
        root = dest / name
        if (root / ".unpacked").exists():
            return root
        staging = Path(tempfile.mkdtemp(prefix=f".unpack-{name}-", dir=dest))
        try:
            try:
                tar.extractall(staging, filter="data")
            except (tarfile.TarError, EOFError, OSError) as e:  # a member that leaves its folder, a cut-off file
                raise DataError(f"archive {archive} cannot be unpacked ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else 'truncated'})") from None
            (staging / name / ".unpacked").touch()
            try:
                os.rename(staging / name, root)
            except OSError:  # another process finished first (or left an unmarked tree behind)
                if not (root / ".unpacked").exists():
                    shutil.rmtree(root, ignore_errors=True)
                    os.rename(staging / name, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


def _cache_file(split_dir: Path, size: int | None = None) -> Path:
    tail = f"v{CACHE_VERSION}" + (f"-{size}px" if size else "")
    beside = split_dir.parent / f".sfkd-{split_dir.name}-{tail}.pt"
    if os.access(split_dir.parent, os.W_OK):
        return beside
    key = hashlib.sha1(str(split_dir.resolve()).encode()).hexdigest()[:16]
    return _cache_home() / "decoded" / f"{key}-{split_dir.name}-{tail}.pt"


def fit_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """A C x H x W uint8 image as size x size: its shorter side resized to `size` (antialiased), then the
    central square cropped, with torchvision's own functional transforms (the evaluation recipe of
    docs/method.md, "Image sizes")."""
    if image.shape[-2:] == (size, size):
        return image
    from torchvision.transforms.v2 import functional as TF

    return TF.center_crop(TF.resize(image, size, antialias=True), [size, size])


def read_image_folder(split_dir: Path, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode split_dir/<class>/* once into uint8 N x C x H x W; later calls read the cached tensor.
    With `size`, every image is fitted to size x size (fit_square), so images of mixed sizes load."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"data folder {split_dir} does not exist; expected <data-dir>/{split_dir.name}/<class>/*.jpg")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"data folder {split_dir} has no class folders; expected {split_dir}/<class>/*.jpg")
    cache = _cache_file(split_dir, size)
    if cache.exists():
        try:
            blob = torch.load(cache, weights_only=True)
            if isinstance(blob, dict) and blob.get("classes") == classes:
                return blob["images"], blob["labels"], classes
        except Exception:  # noqa: BLE001 - a cache that cannot be read is decoded again, never trusted
            pass
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (split_dir / name).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files:
            image = _decode(f, Image)
            images.append(image if size is None else fit_square(torch.from_numpy(image.copy()).permute(2, 0, 1), size)
                          .permute(1, 2, 0).numpy())
            labels.append(label)
    if not images:
        raise DataError(f"data folder {split_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        files = list(_image_files(split_dir, classes))
        odd = next(i for i, im in enumerate(images) if im.shape != images[0].shape)
        (h0, w0), (h, w) = images[0].shape[:2], images[odd].shape[:2]
        raise DataError(f"images in {split_dir} differ in size ({len(shapes)} sizes): {files[odd]} is {w}x{h}, "
                        f"{files[0]} is {w0}x{h0}; set image_size: N to resize every image to N x N")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(labels, dtype=torch.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name of this process's own: two trials decoding a cold tree at once each write a
    # whole file, and the last rename wins with a complete one.
    fd, tmp = tempfile.mkstemp(prefix=cache.name + ".", suffix=".tmp", dir=cache.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"images": x, "labels": y, "classes": classes}, f)
        os.replace(tmp, cache)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return x, y, classes


def memory_limit_bytes() -> int:
    """How much decoded image data a run may hold in memory: SFKD_DATA_MAX_GB, else half this machine's
    physical memory (the rest is for the models, the teacher cache's pages and Ray)."""
    given = os.environ.get("SFKD_DATA_MAX_GB")
    if given:
        try:
            return int(float(given) * 1e9)
        except ValueError:
            raise DataError(f"SFKD_DATA_MAX_GB={given!r} is not a number of gigabytes") from None
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def first_image_size(split_dir: Path) -> tuple[int, int]:
    """(width, height) of the first image of split_dir, read from its header only."""
    from PIL import Image

    for f in _image_files(split_dir, sorted(d.name for d in split_dir.iterdir() if d.is_dir())):
        try:
            with Image.open(f) as im:
                return im.size
        except Exception:  # noqa: BLE001 - a bad file is named when the folder is decoded
            continue
    return (0, 0)


def _image_files(split_dir: Path, classes: list[str]):
    for name in classes:
        yield from sorted(f for f in (split_dir / name).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)


def _decode(path: Path, image_module) -> np.ndarray:
    """One image as H x W x 3 uint8, or one line naming the file: a zero-byte, truncated or corrupt
    file, or one whose name says image and whose bytes do not."""
    try:
        with image_module.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - PIL raises several kinds for a bad file; all mean the same here
        what = "is empty" if path.stat().st_size == 0 else f"cannot be decoded as an image ({type(e).__name__})"
        raise DataError(f"image {path} {what}; remove or replace it") from None


def read_torchvision_cifar(name: str, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        ds = cls(str(root), train=train, download=download)
    except RuntimeError as e:
        raise DataError(f"{name} not found under {root} ({e}); pass --data-dir to a folder with the "
                        f"torchvision archive or an ImageFolder tree, or set download") from None
    x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)


def make_synthetic(n: int, num_classes: int, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded images whose class is decided only by an object in the centre, over random clutter.

    Each class owns a coloured binary glyph of about a third of the image side. It is pasted in the
    centre over a background of random rectangles in random colours, which carry no class
    information: the setting SF-KD's foreground/background split assumes.
    """
    g = torch.Generator().manual_seed(int(seed))
    templates = torch.Generator().manual_seed(12345)  # class glyphs are the same for every split
    obj = max(4, image_size // 2)
    glyphs = (torch.rand(num_classes, 3, 3, generator=templates) > 0.5).float()
    glyphs[:, 1, 1] = 1.0  # never an empty glyph
    glyphs = torch.nn.functional.interpolate(glyphs[:, None], size=(obj, obj), mode="nearest")[:, 0]
    hues = torch.arange(num_classes).float() / num_classes
    colors = torch.stack([(hues + s) % 1.0 for s in (0.0, 1 / 3, 2 / 3)], dim=1)
    colors = 0.25 + 0.75 * (0.5 + 0.5 * torch.cos(2 * torch.pi * colors))  # evenly spaced, distinct hues

    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    img = torch.rand(n, 3, 1, 1, generator=g) * 0.5 + torch.rand(n, 3, image_size, image_size, generator=g) * 0.15
    for _ in range(6):  # background clutter
        size = torch.randint(3, image_size // 2, (n, 2), generator=g)
        pos = torch.randint(0, image_size, (n, 2), generator=g)
        col = torch.rand(n, 3, generator=g)
        ys = torch.arange(image_size)[None, :]
        in_y = (ys >= pos[:, :1]) & (ys < pos[:, :1] + size[:, :1])
        in_x = (ys >= pos[:, 1:]) & (ys < pos[:, 1:] + size[:, 1:])
        m = (in_y[:, :, None] & in_x[:, None, :])[:, None].float()
        img = img * (1 - m) + col[:, :, None, None] * m
    top = (image_size - obj) // 2
    objects = glyphs[labels][:, None] * colors[labels][:, :, None, None] + 0.05  # n x 3 x obj x obj
    img[:, :, top:top + obj, top:top + obj] = objects
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels
