"""What an option costs per epoch: one config key's values side by side in one process, for example
SF-KD's foreground source or dynamic sparsity against static masks.

    python benchmarks/epoch_cost.py --vary fg_source=center,teacher,teacher_soft [--images N] [--rounds R]
    python benchmarks/epoch_cost.py --vary mask_update=none,set,rigl --set mask_update_interval=20

ResNet56 teacher -> ResNet20 student (ERK density 0.1), SF-KD (fg_size 4, bg_weight 0.4), batch 64, on N
real CIFAR-10 training images (the shared archive), fp32, the teacher-output cache on (the default, so the
teacher's forward is not what is timed; its maps come from the cache). One DistillRun per value; an epoch
is `step()`, what a trial pays: training, validation and the attention probe. Epoch 1 fills the cache
(one view for every epoch, `cache_views: 1`) and is not counted; then every round runs one epoch of each
value in turn, and each cell is the median over rounds, so a slow moment of the machine falls on every
value alike. The ratio is to the first value.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainables.latency import threads_note  # noqa: E402
from trainables.models import create_model  # noqa: E402
from trainables.run import DistillRun  # noqa: E402
from trainables.teacher_file import save_teacher  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vary", required=True, metavar="KEY=V1,V2,...", help="the config key and its values to compare")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another config value for every run")
    p.add_argument("--images", type=int, default=2000, help="CIFAR-10 training images (default 2000)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--json", help="also write the numbers here")
    a = p.parse_args()
    key, _, values = a.vary.partition("=")
    values = values.split(",")
    fixed = dict(s.split("=", 1) for s in a.set)
    fixed = {k: int(v) if v.isdigit() else v for k, v in fixed.items()}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        teacher = save_teacher(Path(tmp) / "resnet56.pt", create_model("resnet56", 10), "resnet56", "cifar10", 10,
                               test_acc=0.0)  # its weights do not change the cost
        base = dict(dataset="cifar10", data_dir=a.data, train_subset=a.images, val_subset=500, teacher=str(teacher),
                    teacher_arch="resnet56", student="resnet20", method="sfkd", alpha=0.5, beta=0.5, gamma=0.5,
                    bg_weight=0.4, fg_size=4, density=0.1, sparse_init="ERK", batch_size=64, epochs=a.rounds + 1,
                    precision="fp32", cache_dir=str(Path(tmp) / "cache"),
                    # One augmentation view for every epoch: filled by the warm-up, read by every timed epoch.
                    # With a fresh view per epoch, the value timed first in each round filled that round's
                    # view (the teacher's forward) and the others read it: measured 2x slower for being first.
                    cache_views=1, **fixed)
        runs = {v: DistillRun({**base, key: v}, device="cpu") for v in values}
        for run in runs.values():
            run.step()  # fills the teacher-output cache (the first value) and warms up
        times = {v: [] for v in values}
        for _ in range(a.rounds):
            for v, run in runs.items():
                start = time.perf_counter()
                run.step()
                times[v].append(time.perf_counter() - start)
    flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()[2:]
                    if f.startswith(("avx", "fma", "amx"))})
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    med = {v: statistics.median(t) for v, t in times.items()}
    print(f"{cpu}; {threads_note()}; flags {' '.join(flags)}; torch {torch.__version__}; {a.images} images, "
          f"median of {a.rounds} rounds{''.join(f'; {k} {v}' for k, v in fixed.items())}")
    print()
    print(f"| {key} | epoch (s), median | vs {values[0]} | per round |")
    print("|---|---|---|---|")
    for v in values:
        print(f"| `{v}` | {med[v]:.2f} | {med[v] / med[values[0]]:.3f}x | {', '.join(f'{t:.2f}' for t in times[v])} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu": cpu, "flags": flags, "images": a.images, "vary": key,
                                            "fixed": fixed, "epoch_s": times}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
