"""Weight files, read by one reader (docs/models.md, Weights): the project's teacher file (written by
`tuner.teacher`), a bare state_dict, a `{'model' | 'state_dict': ...}` checkpoint (RepDistiller's,
torchvision's references) or a `.safetensors` file. Nothing is unpickled beyond tensors: `torch.load`
runs with `weights_only=True`, and safetensors holds tensors only."""
import io
import os
import warnings
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


def _is_safetensors(data: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then that many bytes of JSON."""
    if len(data) < 10 or data[8:9] != b"{":
        return False
    return int.from_bytes(data[:8], "little") <= len(data) - 8


def read_teacher_file(path, what: str = "teacher file") -> dict:
    """The file (a path, or its bytes) as a dict with at least `state_dict`; arch/num_classes/test_acc
    when recorded."""
    if isinstance(path, bytes):
        data, path = path, "(sent by the search driver)"
    else:
        path = Path(path)
        if not path.is_file():
            raise TeacherError(f"{what} {path} does not exist")
        data = path.read_bytes()
    if _is_safetensors(data) or str(path).endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        try:
            state = load_safetensors(data)
        except (SafetensorError, ValueError, OSError) as e:
            raise TeacherError(f"{what} {path} cannot be read as safetensors ({str(e).splitlines()[0][:200]})") from None
        if not _is_state_dict(state):
            raise TeacherError(f"{what} {path} holds no tensors")
        return {"state_dict": {k.removeprefix("module."): v for k, v in state.items()}}
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol is not the user's concern
            warnings.simplefilter("ignore")
            blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        # weights_only refuses any object but tensors and containers: a pickle that would run code on load
        # ends here without running it.
        reason = ("it holds Python objects other than tensors, which are never unpickled"
                  if "Weights only load failed" in str(e) else type(e).__name__)
        raise TeacherError(f"{what} {path} cannot be read as a PyTorch checkpoint ({reason})") from None
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        if not _is_state_dict(blob.get("state_dict")):  # the format's name is no proof of its content
            raise TeacherError(f"{what} {path} says it is {FORMAT} but holds no state_dict of tensors")
        return blob
    state = blob.get("model", blob.get("state_dict", blob)) if isinstance(blob, dict) else None
    if not _is_state_dict(state):
        raise TeacherError(f"{what} {path} holds no state_dict (expected a state_dict, {{'model': state_dict}}, "
                           f"{{'state_dict': ...}} or a .safetensors file)")
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


def worth_distilling_bar(num_classes: int) -> float:
    """The top-1 (%) a teacher needs: twice chance, or half-way from chance to 100% where that is lower
    (two classes: 75%, not an impossible 100%; from three classes on, twice chance)."""
    chance = 100.0 / num_classes
    return min(2 * chance, chance + (100.0 - chance) / 2)


def check_worth_distilling(acc: float, name: str, num_classes: int, split: str = "validation") -> None:
    """Raise TeacherError when a teacher's top-1 on the search's validation split is under
    worth_distilling_bar: every student distilled from it would learn noise. (Never judged on test: that
    would be a decision taken on the test split.)"""
    chance = 100.0 / num_classes
    if acc >= worth_distilling_bar(num_classes):
        return
    raise TeacherError(
        f"teacher {name} has {split} top-1 {acc:.2f}%, not clearly above chance ({chance:.2f}% for {num_classes} "
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
    load_strict(model, blob["state_dict"], f"teacher file {path}", f"{arch} with {num_classes} classes")
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {k: v for k, v in blob.items() if k != "state_dict"}


def mismatch(model: nn.Module, state: dict, skip: tuple = ()) -> str | None:
    """The first key of `state` that does not fit `model` (missing, unexpected, or of another shape), said
    in a few words, or None when every key fits. Keys under `skip` (prefixes) are not judged."""
    own = model.state_dict()
    judged = [k for k in own if not k.startswith(skip)]
    for k in judged:
        if k not in state:
            return f"missing key {k!r}"
    for k, v in state.items():
        if k.startswith(skip):
            continue
        if k not in own:
            return f"unexpected key {k!r}"
        if tuple(v.shape) != tuple(own[k].shape):
            return f"{k!r} is {tuple(v.shape)}, the model's is {tuple(own[k].shape)}"
    return None


def load_strict(model: nn.Module, state: dict, what: str, fits: str) -> None:
    """load_state_dict, strict, with one line naming the first key that does not fit."""
    first = mismatch(model, state)
    if first is not None:
        raise TeacherError(f"{what} does not fit {fits}: {first}")
    model.load_state_dict(state)


def load_student_weights(model: nn.Module, path, classifier: str, num_classes: int) -> str | None:
    """Initialise a student from a weight file before its masks are drawn. A classifier of another class
    count is left at its fresh initialisation; returns the line that says so (else None). Any other key
    that does not fit is one line naming it."""
    blob = read_teacher_file(path, what="student_weights")
    state = blob["state_dict"]
    prefix = classifier.removesuffix("weight")  # 'fc.' or 'classifier.3.'
    own = model.state_dict()
    head = [k for k in own if k.startswith(prefix)]
    head_fits = all(k in state and tuple(state[k].shape) == tuple(own[k].shape) for k in head)
    first = mismatch(model, state, skip=() if head_fits else (prefix,))
    if first is not None:
        raise TeacherError(f"student_weights {path} does not fit {getattr(model, 'arch', 'the student')}: {first}")
    if head_fits:
        model.load_state_dict(state)
        return None
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(prefix)}, strict=False)
    shape = tuple(state[classifier].shape) if classifier in state else "absent"
    return (f"student_weights {path}: its classifier {prefix.rstrip('.')} is {shape}, not {num_classes} classes; "
            f"it starts freshly initialised, every other layer from the file")
