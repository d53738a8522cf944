"""Teacher files: written by `tuner.teacher`, or RepDistiller-style `{'model': state_dict}` files."""
import io
import os
from pathlib import Path

import torch
import torch.nn as nn

from trainables.models import create_model

FORMAT = "sfkd-teacher-v1"


class TeacherError(ValueError):
    """A teacher file that is missing, unreadable, or for another architecture or class count."""


def save_teacher(path, model: nn.Module, arch: str, dataset: str, num_classes: int, test_acc: float,
                 **info) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "arch": arch, "dataset": dataset, "num_classes": int(num_classes),
            "test_acc": float(test_acc), "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            **info}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def read_teacher_file(path) -> dict:
    """The file (a path, or its bytes) as a dict with at least `state_dict`; arch/num_classes/test_acc
    when recorded."""
    if isinstance(path, bytes):
        source, path = io.BytesIO(path), "(sent by the search driver)"
    else:
        source = path = Path(path)
        if not path.is_file():
            raise TeacherError(f"teacher file {path} does not exist")
    try:
        blob = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise TeacherError(f"teacher file {path} cannot be read as a PyTorch checkpoint ({type(e).__name__})") from None
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        if not _is_state_dict(blob.get("state_dict")):  # the format's name is no proof of its content
            raise TeacherError(f"teacher file {path} says it is {FORMAT} but holds no state_dict of tensors")
        return blob
    state = blob.get("model", blob.get("state_dict", blob)) if isinstance(blob, dict) else None
    if not _is_state_dict(state):
        raise TeacherError(f"teacher file {path} holds no state_dict (expected {{'model': state_dict}} or a state_dict)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {"state_dict": state}


def _is_state_dict(state) -> bool:
    return (isinstance(state, dict) and bool(state) and all(isinstance(k, str) for k in state)
            and all(isinstance(v, torch.Tensor) for v in state.values()))


def check_never_saw_validation(info: dict, path, dataset: str, split_seed: int, val_fraction: float) -> str | None:
    """Raise TeacherError when a teacher file's recorded recipe shows it trained on this search's
    validation images; return a warning line when the file records no recipe to check."""
    trained_on = info.get("trained_on")
    if trained_on is None:
        return (f"warning: teacher file {path} records no training split; the tool cannot check that it never "
                f"saw the validation images (train one with python -m tuner.teacher to be sure)")
    same_split = (info.get("dataset") == dataset and info.get("split_seed") == split_seed
                  and info.get("val_fraction") == val_fraction)
    if trained_on != "train" or not same_split:
        raise TeacherError(
            f"teacher file {path} was trained on {trained_on} of {info.get('dataset')} (split_seed "
            f"{info.get('split_seed')}, val_fraction {info.get('val_fraction')}), so it has seen this search's "
            f"validation images ({dataset}, split_seed {split_seed}, val_fraction {val_fraction}); a search needs a "
            f"teacher trained on the training split only (python -m tuner.teacher --train-on train, or teacher: auto)")
    return None


def check_worth_distilling(info: dict, name: str, num_classes: int) -> None:
    """Raise TeacherError when a teacher's recorded test accuracy is under twice chance: every student
    distilled from it would learn noise (files that record no accuracy are not judged)."""
    acc = info.get("test_acc")
    chance = 100.0 / num_classes
    if acc is None or acc >= 2 * chance:
        return
    raise TeacherError(
        f"teacher {name} has test top-1 {acc:.2f}%, not clearly above chance ({chance:.2f}% for {num_classes} "
        f"classes); give it more teacher_epochs (--set teacher_epochs=N; --epochs caps an auto teacher) or a "
        f"trained teacher file (python -m tuner.teacher, then --set teacher=FILE)")


def check_image_size(info: dict, path, image_size: int | None) -> None:
    """A teacher trained on images of another size than the data's is refused: global pooling lets it run
    at any size, but its features there are not the ones it learned, and a student distilled from them
    learns the mismatch. (Files that record no image size, e.g. RepDistiller's, are not judged.)"""
    trained = info.get("image_size")
    if image_size is None or trained is None or int(trained) == int(image_size):
        return
    raise TeacherError(f"teacher file {path} was trained on {trained}x{trained} images; this data is {image_size}x"
                       f"{image_size}: train a teacher on it (python -m tuner.teacher ... --data-dir DIR), or give the "
                       f"data the teacher was trained on")


def load_teacher(path, arch: str, num_classes: int, device="cpu", image_size: int | None = None) -> tuple[nn.Module, dict]:
    """A frozen teacher in eval mode, checked against the expected architecture, class count and (when
    the file records it) the image size of the data it will see. `path` may also be the file's bytes."""
    blob = read_teacher_file(path)
    if isinstance(path, bytes):
        path = "(sent by the search driver)"
    if blob.get("arch", arch) != arch:
        raise TeacherError(f"teacher file {path} is a {blob['arch']}; the config expects teacher_arch {arch}")
    if blob.get("num_classes", num_classes) != num_classes:
        raise TeacherError(f"teacher file {path} has {blob['num_classes']} classes; the dataset has {num_classes}")
    check_image_size(blob, path, image_size)
    for name, t in blob["state_dict"].items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise TeacherError(f"teacher file {path} has weights that are not finite (nan or inf in {name}); "
                               f"a diverged training wrote it")
    model = create_model(arch, num_classes)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise TeacherError(f"teacher file {path} does not fit {arch} with {num_classes} classes: {first}") from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {k: v for k, v in blob.items() if k != "state_dict"}
