"""What the driver sends every trial through Ray's object store, so that no path has to exist on a
worker: the decoded data splits and the teacher file's bytes. A trial uses each only when its own
config asks for exactly that data and that teacher; otherwise it loads them itself, by path."""
import hashlib
import json
from dataclasses import dataclass, field

from trainables.data import DataSplits, load_splits

SPLIT_KEYS = ("dataset", "data_dir", "val_fraction", "split_seed", "train_subset", "val_subset", "download",
              "synthetic_size", "synthetic_classes", "image_size", "shift", "shift_object")
# Which images train and test a run does not depend on these (val_subset picks among the held-out ones).
NOT_TRAIN_KEYS = ("val_subset", "download")


def split_args(cfg) -> dict:
    """The config keys that decide which images a run trains, validates and tests on."""
    return {k: getattr(cfg, k) for k in SPLIT_KEYS}


def load_run_splits(cfg, full_train: bool = False) -> DataSplits:
    return load_splits(**split_args(cfg), full_train=full_train)


def splits_bytes(data: DataSplits) -> int:
    return sum(t.numel() * t.element_size() for t in (data.train_x, data.train_y, data.val_x, data.val_y,
                                                      data.test_x, data.test_y))


@dataclass
class TrialInputs:
    data: DataSplits | None = None
    data_args: dict | None = None  # the split_args the data was loaded with
    teachers: dict = field(default_factory=dict)  # the driver's path (the name trials' configs use) -> the file's bytes

    def data_for(self, cfg, train_only: bool = False) -> DataSplits | None:
        """The shipped splits if `cfg` asks for exactly them; `train_only`: a run that reads only the
        training and test images (a teacher) also takes them when just the validation subset differs."""
        if self.data is None:
            return None
        want, have = split_args(cfg), dict(self.data_args)
        if train_only:
            for k in NOT_TRAIN_KEYS:
                want.pop(k), have.pop(k)
        return self.data if json.dumps(want, sort_keys=True) == json.dumps(have, sort_keys=True) else None

    def teacher_for(self, cfg) -> bytes | None:
        return self.teachers.get(cfg.teacher)


def digest_bytes(blob: bytes) -> str:
    """The same digest `teacher_cache.file_digest` gives the file these bytes were read from."""
    return hashlib.sha1(blob).hexdigest()
