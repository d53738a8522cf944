"""What a foreground the teacher chooses costs per epoch: SF-KD with fg_source center, teacher and
teacher_soft, side by side in one process.

    python benchmarks/fg_source.py [--images N] [--rounds R] [--json PATH]

ResNet56 teacher -> ResNet20 student (ERK density 0.1), SF-KD (fg_size 4, bg_weight 0.4), batch 64, on N
real CIFAR-10 training images (the shared archive), fp32, the teacher-output cache on (the default, so the
teacher's forward is not what is timed; its maps come from the cache). One DistillRun per source; an epoch
is `step()`, what a trial pays: training, validation and the attention probe (which, for the teacher's
sources, also measures the share inside the run's own foreground). Epoch 1 fills the cache and is not
counted; then every round runs one epoch of each source in turn, and each cell is the median over rounds,
so a slow moment of the machine falls on every source alike. The ratio is to `center`.
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

SOURCES = ("center", "teacher", "teacher_soft")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="CIFAR-10 training images (default 2000)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--json", help="also write the numbers here")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        teacher = save_teacher(Path(tmp) / "resnet56.pt", create_model("resnet56", 10), "resnet56", "cifar10", 10,
                               test_acc=0.0)  # its weights do not change the cost
        base = dict(dataset="cifar10", data_dir=a.data, train_subset=a.images, val_subset=500, teacher=str(teacher),
                    teacher_arch="resnet56", student="resnet20", method="sfkd", alpha=0.5, beta=0.5, gamma=0.5,
                    bg_weight=0.4, fg_size=4, density=0.1, sparse_init="ERK", batch_size=64, epochs=a.rounds + 1,
                    precision="fp32", cache_dir=str(Path(tmp) / "cache"))
        runs = {s: DistillRun({**base, "fg_source": s}, device="cpu") for s in SOURCES}
        for run in runs.values():
            run.step()  # fills the teacher-output cache (the first source) and warms up
        times = {s: [] for s in SOURCES}
        for _ in range(a.rounds):
            for s, run in runs.items():
                start = time.perf_counter()
                run.step()
                times[s].append(time.perf_counter() - start)
    flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()[2:]
                    if f.startswith(("avx", "fma", "amx"))})
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    med = {s: statistics.median(v) for s, v in times.items()}
    print(f"{cpu}; {threads_note()}; flags {' '.join(flags)}; torch {torch.__version__}; {a.images} images, "
          f"median of {a.rounds} rounds")
    print()
    print("| fg_source | epoch (s), median | vs center | per round |")
    print("|---|---|---|---|")
    for s in SOURCES:
        print(f"| `{s}` | {med[s]:.2f} | {med[s] / med['center']:.3f}x | {', '.join(f'{t:.2f}' for t in times[s])} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu": cpu, "flags": flags, "images": a.images, "epoch_s": times}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
