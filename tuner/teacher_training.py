"""Dense teachers trained with the same loop as every trial: on this machine, or as a Ray task."""
import sys
from pathlib import Path

from trainables.config import DistillConfig
from trainables.probe import object_attention_shares
from trainables.run import DistillRun
from trainables.teacher_file import save_teacher
from tuner.progress import epoch_postfix, training_bar


def teacher_config(arch: str, dataset: str, epochs: int, **overrides) -> DistillConfig:
    """A dense, teacher-less (FT) run of `arch`: the training recipe of docs/method.md with CE only."""
    values = dict(student=arch, teacher_arch=arch, teacher="none", method="ft", alpha=1.0, beta=0.0, gamma=0.0,
                  density=1.0, sparse_init="uniform", dataset=dataset, epochs=epochs)
    values.update(overrides)
    return DistillConfig.from_dict(values)


TRAIN_ON = ("train", "train+val")


def train_teacher(cfg: DistillConfig, out: Path, progress: bool = True, train_on: str = "train", data=None,
                  on_epoch=None, origin: str = "tuner.teacher") -> tuple[Path, float]:
    """Train on the training split (`train`: usable by a search, it never sees the validation images) or
    on train+val (a final run's teacher) for cfg.epochs, measure test top-1, save a teacher file that
    records that recipe; returns (path, acc). `data`: those splits, already loaded; `on_epoch(line)`
    hears one line per finished epoch; `origin`: "auto" for a search's own teacher (its budget capped by
    the search's --epochs), recorded so that a final run can say so."""
    run = DistillRun(cfg, data=data, full_train=train_on == "train+val")
    bar = training_bar(cfg.epochs, len(run.train_loader), f"teacher {cfg.student}", enabled=progress)
    shown = {}  # the last finished epoch's numbers, shown while the next one runs
    for epoch in range(1, cfg.epochs + 1):
        epoch_postfix(bar, epoch, cfg.epochs, **shown)
        m = run.train_epoch(on_batch=bar.update)
        shown = dict(loss=f"{m['loss']:.3f}", acc=f"{m['train_acc']:.1f}", img_s=f"{m['img_per_s']:.0f}")
        if on_epoch is not None:
            on_epoch(f"teacher {cfg.student}: epoch {epoch}/{cfg.epochs} " + " ".join(f"{k} {v}" for k, v in shown.items()))
    test = run.evaluate("test")
    # The validation split, held out from a `train` teacher, is what a search judges it by (the test split
    # decides nothing); a train+val teacher has none left.
    val = {"val_acc": run.evaluate("val")["acc"]} if train_on == "train" and len(run.data.val_x) else {}
    epoch_postfix(bar, cfg.epochs, cfg.epochs, **shown, test_acc=f"{test['acc']:.2f}")
    bar.close()
    if cfg.shift is not None:  # off-centre objects: where the teacher looks, on the test images (it decides nothing)
        val["object_attention"] = object_attention_shares(run.student, run.data.test_x, run.data.object_corners["test"],
                                                          run.data.object_side, run.data.mean, run.data.std, run.device)
    save_teacher(out, run.student, cfg.student, cfg.dataset, run.data.num_classes, test["acc"], **val,
                 **({"shift": cfg.shift, "shift_object": run.data.object_side} if cfg.shift is not None else {}),
                 test_acc5=test["acc5"], epochs=cfg.epochs, lr_schedule=cfg.lr_schedule, seed=cfg.seed, trained_on=train_on,
                 split_seed=cfg.split_seed, val_fraction=cfg.val_fraction, train_subset=cfg.train_subset,
                 precision=run.precision, image_size=run.data.image_size, origin=origin)
    return Path(out), test["acc"]


def _teacher_task(cfg: dict, train_on: str, data, progress) -> tuple[bytes, float]:
    """The body of the Ray task that trains a search's `auto` teacher on whichever node has room."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path, acc = train_teacher(DistillConfig.from_dict(cfg), Path(folder) / "teacher.pt", progress=False,
                                  train_on=train_on, data=data, on_epoch=progress.put, origin="auto")
        return path.read_bytes(), acc


def train_teacher_on_ray(cfg: DistillConfig, out: Path, train_on: str, cpus: float, gpus: float,
                         data=None) -> tuple[Path, float]:
    """`train_teacher` as a Ray task with its own resources (a whole GPU when the trials ask for a
    share), so the driver can be a small machine. Its epochs are printed here as they finish, and
    the file is written at `out` on the driver's machine."""
    import ray
    from ray.util.queue import Empty, Queue

    progress = Queue()
    task = ray.remote(_teacher_task).options(num_cpus=cpus, num_gpus=1 if gpus > 0 else 0, max_retries=0)
    ref = task.remote(cfg.to_dict(), train_on, data, progress)
    done = False
    while not done:
        done = bool(ray.wait([ref], timeout=0.5)[0])
        while True:
            try:
                print(progress.get_nowait(), file=sys.stderr, flush=True)
            except Empty:
                break
    try:
        blob, acc = ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise e.cause if isinstance(e.cause, ValueError) else e from None  # a config/data error reads as one line
    finally:
        ray.kill(progress.actor)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(out)
    return out, acc
