"""python -m tuner.teacher: train a dense teacher with the same loop as every trial, and save it."""
import sys
from pathlib import Path

from trainables.models.sources import file_slug
from trainables.teacher_file import read_teacher_file
from tuner.cli import OneLineParser, output_path, parse_sets, run_cli
from tuner.teacher_training import TRAIN_ON, teacher_config, train_teacher


def main(argv=None) -> int:
    p = OneLineParser(prog="python -m tuner.teacher", description=(
        "Train a dense teacher with the project's training loop (CE only) and save it with its architecture, "
        "dataset, class count, training split and measured test accuracy."))
    p.add_argument("--arch", required=True, help="model: a zoo name (resnet56, wrn_40_2, vgg13), torchvision:NAME, "
                                                 "timm:NAME or module:FILE.py:FACTORY")
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
    out = output_path("--out", a.out or f"teachers/{file_slug(a.arch)}-{a.dataset}.pt")
    path, acc = train_teacher(cfg, out, train_on=a.train_on)
    print(f"teacher {a.arch} on {a.dataset} ({a.train_on}): test top-1 {acc:.2f}% -> {path}")
    if cfg.shift is not None:
        print(object_attention_line(read_teacher_file(path)["object_attention"]))
    return 0


def object_attention_line(shares: dict) -> str:
    """What the teacher's attention says about shifted data: the central square is the wrong guess only
    where the share inside the objects clearly exceeds the share inside the square."""
    return (f"off-centre objects (test images): the teacher's attention inside the objects' cells "
            f"{shares['object_share']:.3f}, inside a central {shares['square_cells']}x{shares['square_cells']} square of "
            f"the same area {shares['centre_share']:.3f} (of a {shares['map_side']}x{shares['map_side']} map); "
            f"objects and that square overlap by {shares['centre_overlap']:.3f} of an object's area on average")


if __name__ == "__main__":
    sys.exit(run_cli(main))
