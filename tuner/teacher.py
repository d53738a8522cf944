"""python -m tuner.teacher: train a dense teacher with the same loop as every trial, and save it."""
import sys
from pathlib import Path

from trainables.config import DistillConfig
from trainables.run import DistillRun
from trainables.teacher import save_teacher
from tuner.cli import OneLineParser, parse_sets, run_cli
from tuner.progress import epoch_postfix, training_bar


def teacher_config(arch: str, dataset: str, epochs: int, **overrides) -> DistillConfig:
    """A dense, teacher-less (FT) run of `arch`: the recipe of METHOD.md with CE only."""
    values = dict(student=arch, teacher_arch=arch, teacher="none", method="ft", alpha=1.0, beta=0.0, gamma=0.0,
                  density=1.0, sparse_init="uniform", dataset=dataset, epochs=epochs)
    values.update(overrides)
    return DistillConfig.from_dict(values)


TRAIN_ON = ("train", "train+val")


def train_teacher(cfg: DistillConfig, out: Path, progress: bool = True, train_on: str = "train", data=None,
                  on_epoch=None) -> tuple[Path, float]:
    """Train on the training split (`train`: usable by a search, it never sees the validation images) or
    on train+val (a final run's teacher) for cfg.epochs, measure test top-1, save a teacher file that
    records that recipe; returns (path, acc). `data`: those splits, already loaded; `on_epoch(line)`
    hears one line per finished epoch."""
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
    epoch_postfix(bar, cfg.epochs, cfg.epochs, **shown, test_acc=f"{test['acc']:.2f}")
    bar.close()
    save_teacher(out, run.student, cfg.student, cfg.dataset, run.data.num_classes, test["acc"],
                 test_acc5=test["acc5"], epochs=cfg.epochs, seed=cfg.seed, trained_on=train_on,
                 split_seed=cfg.split_seed, val_fraction=cfg.val_fraction, train_subset=cfg.train_subset,
                 precision=run.precision)
    return Path(out), test["acc"]


def _teacher_task(cfg: dict, train_on: str, data, progress) -> tuple[bytes, float]:
    """The body of the Ray task that trains a search's `auto` teacher on whichever node has room."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path, acc = train_teacher(DistillConfig.from_dict(cfg), Path(folder) / "teacher.pt", progress=False,
                                  train_on=train_on, data=data, on_epoch=progress.put)
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


def main(argv=None) -> int:
    p = OneLineParser(prog="python -m tuner.teacher", description=(
        "Train a dense teacher with the project's training loop (CE only) and save it with its architecture, "
        "dataset, class count, training split and measured test accuracy."))
    p.add_argument("--arch", required=True, help="model name, e.g. resnet56, wrn_40_2, vgg13")
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, imagefolder or synthetic")
    p.add_argument("--data-dir", help="folder with the data (ImageFolder tree, torchvision files or a .tar.gz)")
    p.add_argument("--epochs", type=int, default=240, help="training epochs (default 240)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-on", choices=TRAIN_ON, default="train", help=(
        "train (default): the training split only, so a search may use it (it never sees the validation "
        "images of split_seed/val_fraction); train+val: all training images, for a final run only"))
    p.add_argument("--out", help="output file (default teachers/<arch>-<dataset>.pt)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other config key, e.g. lr=0.1")
    a = p.parse_args(argv)
    overrides = parse_sets(a.set)
    if a.data_dir:
        overrides["data_dir"] = str(Path(a.data_dir).resolve())
    cfg = teacher_config(a.arch, a.dataset, a.epochs, seed=a.seed, **overrides)
    out = Path(a.out or f"teachers/{a.arch}-{a.dataset}.pt").resolve()
    path, acc = train_teacher(cfg, out, train_on=a.train_on)
    print(f"teacher {a.arch} on {a.dataset} ({a.train_on}): test top-1 {acc:.2f}% -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
