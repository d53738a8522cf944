"""A trial's img/s on a user's own models against a plain PyTorch KD loop over the same two models.

    python benchmarks/own_models.py [--images N] [--pairs P] [--json PATH]

torchvision resnet18 (teacher) -> torchvision mobilenet_v3_small (student) at 64 px: real CIFAR-10
JPEGs of the shared archive upscaled to 64 px and written as an ImageFolder tree (what a user's own
data is). The trial is DistillRun: SF-KD on named taps (student `features`, teacher `layer4`, a 1x1
connector), ERK density 0.1, batch 64, precision auto. The plain loop is what a user writes with
torchvision alone: ImageFolder + transforms + DataLoader (2 workers), teacher forward, KD + feature MSE
through the same connector, masks re-applied after each step, fp32. They run alternately (A B A B) and
the ratio is the median over the pairs.
"""
import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainables.data import load_splits  # noqa: E402
from trainables.models import create_model  # noqa: E402
from trainables.run import DistillRun  # noqa: E402
from trainables.sparsity import init_masks  # noqa: E402

SIZE = 64


def write_tree(cifar: Path, out: Path, per_class: int) -> Path:
    from PIL import Image

    for split, count in (("train", per_class), ("test", max(10, per_class // 10))):
        for c in sorted(d.name for d in (cifar / split).iterdir() if d.is_dir()):
            (out / split / c).mkdir(parents=True, exist_ok=True)
            for src in sorted((cifar / split / c).iterdir())[:count]:
                Image.open(src).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR).save(out / split / c / f"{src.stem}.png")
    return out


def plain_epoch(teacher, student, connector, masks, loader, opt) -> float:
    student.train()
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        got = {}
        with torch.no_grad():
            h = teacher.layer4.register_forward_hook(lambda m, i, o: got.__setitem__("t", o))
            t_logits = teacher(x)
            h.remove()
        h = student.features.register_forward_hook(lambda m, i, o: got.__setitem__("s", o))
        logits = student(x)
        h.remove()
        kd = F.kl_div(F.log_softmax(logits / 4, 1), F.softmax(t_logits / 4, 1), reduction="batchmean") * 16
        loss = F.cross_entropy(logits, y) + kd + F.mse_loss(connector(got["s"]), got["t"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for name, p in student.named_parameters():
                if name in masks:
                    p.mul_(masks[name])
        seen += len(y)
    return seen / (time.perf_counter() - start)


def main() -> None:
    import torchvision
    from torchvision import transforms as T

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100, help="training images per class (10 classes)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--json")
    a = p.parse_args()
    from trainables.data.splits import _resolve_tree

    work = Path(tempfile.mkdtemp(prefix="sfkd-bench-own-"))
    tree = write_tree(_resolve_tree(Path(a.data).resolve()), work / "cifar64", a.images)
    splits = load_splits("imagefolder", str(tree), val_fraction=0.1)
    torch.manual_seed(0)
    teacher = create_model("torchvision:resnet18", splits.num_classes).eval()
    teacher_file = work / "resnet18.pth"
    torch.save(teacher.state_dict(), teacher_file)  # a plain state_dict, as a user has it
    cfg = dict(dataset="imagefolder", data_dir=str(tree), teacher=str(teacher_file), teacher_arch="torchvision:resnet18",
               student="torchvision:mobilenet_v3_small", feature_stages=["features"], teacher_feature_stages=["layer4"],
               method="sfkd", fg_size=1, density=0.1, sparse_init="ERK", batch_size=64, epochs=10, teacher_cache=False)
    run = DistillRun(cfg, data=splits)

    student = create_model("torchvision:mobilenet_v3_small", splits.num_classes)
    masks = {k: v.float() for k, v in init_masks(student, 0.1, "ERK").items()}
    with torch.no_grad():
        for name, p_ in student.named_parameters():
            if name in masks:
                p_.mul_(masks[name])
    connector = nn.Conv2d(576, 512, 1, bias=False)
    opt = torch.optim.SGD(list(student.parameters()) + list(connector.parameters()), lr=0.05, momentum=0.9,
                          weight_decay=5e-4)
    tf = T.Compose([T.RandomCrop(SIZE, padding=8), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(splits.mean, splits.std)])
    loader = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(tree / "train", tf), batch_size=64,
                                         shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)
    plain_epoch(teacher, student, connector, masks, loader, opt)  # warm-up (workers start)
    run.train_epoch()
    plain, trial, ratios = [], [], []
    for _ in range(a.pairs):
        x = plain_epoch(teacher, student, connector, masks, loader, opt)
        t = run.train_epoch()["img_per_s"]
        plain.append(x)
        trial.append(t)
        ratios.append(t / x)
    taps = run.record
    flags = ""
    try:
        flags = " ".join(sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags")
                                 for f in line.split(":")[1].split() if f.startswith(("avx512", "amx", "avx2"))}))
        name = next(line.split(":")[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor()
    out = {"cpu": name, "cpu_flags": flags, "torch": torch.__version__, "torchvision": torchvision.__version__,
           "train_images": len(splits.train_x), "image_size": splits.image_size, "trial_precision": run.precision,
           "taps": f"student {taps['student_taps']}, teacher {taps['teacher_taps']}",
           "plain_loop_img_s": statistics.median(plain), "trial_img_s": statistics.median(trial),
           "speedup_vs_plain_loop": statistics.median(ratios), "pairs": ratios,
           "ms_per_image_plain": 1000 / statistics.median(plain), "ms_per_image_trial": 1000 / statistics.median(trial)}
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text)


if __name__ == "__main__":
    main()
