"""Teacher outputs computed once and shared by every trial of a search (`teacher_cache: true`).

A speed lever, never a change of data. Epoch e of every run trains on view e: image i cropped and
flipped with parameters drawn from (seed, e) alone, the same with the cache on or off and for every
method (`cache_views: V` opts into reusing V views, epoch e seeing view e mod V). So the frozen
teacher's logits and distilled maps for (view, image) are the same for every trial that shares the
teacher, the training images and the seed. The first trial that needs a view computes it for all images
and publishes it with an atomic rename; every other trial memory-maps the files. Views beyond
`cache_max_gb` are not stored: those epochs run the teacher on the fly on the same draw.

Files, under `<cache_dir>/<key>/`: `view<v>.logits` (N x K) and `view<v>.stage<s>` (N x C x H x W),
raw fp16 (the training loop rounds on-the-fly teacher outputs through fp16 too). Size per view:
N * (K + sum of C*H*W over the distilled stages) * 2 bytes.
"""
import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from trainables.data.augment import augment_identity, normalize, view_batch, view_params

STALE_LOCK_S = 3600  # a lock older than this belonged to a trial that died while filling


def file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class TeacherCache:
    """The fp16 teacher outputs of every view of one (teacher, training set, seed, stages)."""

    def __init__(self, root: Path, identity: dict, seed: int, num_images: int, logit_dim: int,
                 stage_shapes: list[tuple[int, int, int]], views: int, max_bytes: float):
        self.seed = seed
        key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / key
        self.n = num_images
        self.shapes = {"logits": (logit_dim,), **{f"stage{i}": tuple(s) for i, s in enumerate(stage_shapes)}}
        self.views = views
        self.view_bytes = 2 * num_images * sum(torch.Size(s).numel() for s in self.shapes.values())
        self.cached_views = min(views, int(max_bytes // max(self.view_bytes, 1)))  # views 0..cached_views-1
        self._open: dict[int, dict[str, torch.Tensor]] = {}
        self.filled = 0  # views this process computed (the others came from another trial)

    def _file(self, view: int, part: str) -> Path:
        return self.dir / f"view{view}.{part}"

    def load(self, view: int) -> dict[str, torch.Tensor] | None:
        """The memory-mapped outputs of a complete view, or None."""
        if view in self._open:
            return self._open[view]
        if view >= self.cached_views or not all(self._file(view, p).exists() for p in self.shapes):
            return None
        self._open.clear()  # one view at a time: the previous epoch's maps are not needed again
        out = {}
        for part, shape in self.shapes.items():
            flat = torch.from_file(str(self._file(view, part)), shared=False, size=self.n * torch.Size(shape).numel(),
                                   dtype=torch.float16)
            out[part] = flat.view(self.n, *shape)
        self._open[view] = out
        return out

    def _lock(self, view: int) -> Path | None:
        lock = self.dir / f"view{view}.lock"
        try:
            if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
                lock.unlink(missing_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return None
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        return lock

    @torch.inference_mode()
    def fill(self, view: int, teacher_maps, images: torch.Tensor, mean, std,
             batch: int = 500, autocast=contextlib.nullcontext, channels_last: bool = False,
             device: torch.device | None = None) -> dict[str, torch.Tensor] | None:
        """Compute and publish a view unless it exists or another trial is computing it right now
        (then None: the caller runs the teacher on the fly for this epoch). `teacher_maps(x)` gives the
        teacher's (logits, [map at each distilled tap]) on `device` (default: where `images` are; images too
        large for a GPU stay on the host and each batch is copied)."""
        if view >= self.cached_views:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = self._lock(view)
        if lock is None:
            return self.load(view)
        try:
            done = self.load(view)
            if done is not None:
                return done
            params = view_params(self.n, self.seed, view, images.shape[-1])
            parts = {p: torch.empty((self.n, *s), dtype=torch.float16) for p, s in self.shapes.items()}
            dev = images.device
            for start in range(0, self.n, batch):
                idx = torch.arange(start, min(start + batch, self.n), device=dev)
                x = normalize(view_batch(images, idx, params), torch.as_tensor(mean), torch.as_tensor(std))
                if device is not None:
                    x = x.to(device)
                if channels_last:  # the layout the training loop feeds the teacher, so the same numbers
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    logits, feats = teacher_maps(x)
                parts["logits"][start:start + len(idx)] = logits.float().cpu().half()
                for i, f in enumerate(feats):
                    parts[f"stage{i}"][start:start + len(idx)] = f.float().cpu().half()
            for part, t in parts.items():
                tmp = self._file(view, part).with_suffix(f".{part}.tmp{os.getpid()}")
                t.numpy().tofile(tmp)
                os.replace(tmp, self._file(view, part))
            self.filled += 1
            return self.load(view)
        finally:
            lock.unlink(missing_ok=True)


def default_cache_root() -> Path:
    """Node-local: every machine fills its own, and the trials on one machine share it."""
    base = os.environ.get("SFKD_CACHE") or Path.home() / ".cache" / "sfkd-data"
    return Path(base) / "teacher-outputs"


def open_teacher_cache(cfg, teacher_digest: str, data, taps: list, stage_shapes: list, logit_dim: int,
                       precision: str = "fp32", channels_last: bool = False) -> TeacherCache:
    """The cache of this run's teacher (the sha1 of its file), exact training images (set and order),
    seed, distilled taps (the teacher's, resolved: zoo indices or module names), and the numerics the
    teacher ran in (resolved precision, memory format): a bf16 teacher's outputs are not an fp32 run's."""
    identity = {"teacher": teacher_digest, "train_images": data.train_digest, "seed": cfg.seed,
                "augment": augment_identity(data.image_size), "stages": list(taps), "format": 2,
                "precision": precision, "channels_last": bool(channels_last)}
    if cfg.mean is not None or cfg.std is not None:  # other inputs, other teacher outputs
        identity["normalise"] = [list(data.mean), list(data.std)]
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_root()
    views = cfg.epochs if cfg.cache_views is None else min(cfg.cache_views, cfg.epochs)
    return TeacherCache(root, identity, cfg.seed, len(data.train_x), logit_dim, stage_shapes, views,
                        cfg.cache_max_gb * 1e9)
