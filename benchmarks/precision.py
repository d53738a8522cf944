"""Precision and memory layout of a trial, measured side by side in one run:

    python benchmarks/precision.py [--json PATH] [--data PATH] [--seeds 3] [--epochs 5]

1. Throughput: a resnet56 -> resnet20 SF-KD trial (ERK 0.1, batch 64, teacher cache off) at each of
   fp32 / bf16 x contiguous / channels_last, one epoch of each in turn per round, medians over rounds.
2. Accuracy: a dense resnet20 trained from scratch (FT) on the shared CIFAR-10 at fp32 and at bf16, the
   same seeds and epochs, and the paired difference of the last epoch's validation accuracy with a 95%
   t interval over the seeds.
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

from benchmarks.run import find_data  # noqa: E402
from trainables.data import load_splits  # noqa: E402
from trainables.models import create_model  # noqa: E402
from trainables.precision import cpu_has_fast_bf16, resolve_precision  # noqa: E402
from trainables.run import DistillRun  # noqa: E402
from trainables.teacher_file import save_teacher  # noqa: E402
from tuner.study import t_interval  # noqa: E402  (the one t interval of the project)

COMBOS = [("fp32", "contiguous"), ("fp32", "channels_last"), ("bf16", "contiguous"), ("bf16", "channels_last")]


def throughput(data: str, out: Path, rounds: int) -> dict:
    splits = load_splits("cifar10", data, train_subset=1280, val_subset=500)
    torch.manual_seed(0)
    teacher = save_teacher(out / "resnet56.pt", create_model("resnet56", 10), "resnet56", "bench", 10, 0.0)
    cfg = dict(dataset="cifar10", teacher=str(teacher), teacher_arch="resnet56", student="resnet20", method="sfkd",
               density=0.1, sparse_init="ERK", batch_size=64, epochs=50, fg_size=4, teacher_cache=False)
    runs = {c: DistillRun({**cfg, "precision": c[0], "memory_format": c[1]}, data=splits) for c in COMBOS}
    for run in runs.values():
        run.train_epoch()  # warm-up
    seen = {c: [] for c in COMBOS}
    for _ in range(rounds):
        for c, run in runs.items():
            seen[c].append(run.train_epoch()["img_per_s"])
    return {f"trial_img_s_{p}_{m}": statistics.median(v) for (p, m), v in seen.items()}


def accuracy(data: str, seeds: list[int], epochs: int, train_images: int) -> dict:
    splits = load_splits("cifar10", data, train_subset=train_images, val_subset=2000)
    rows, diffs = [], []
    for seed in seeds:
        row = {"seed": seed}
        for precision in ("fp32", "bf16"):
            run = DistillRun(dict(dataset="cifar10", teacher="none", method="ft", student="resnet20", density=1.0,
                                  sparse_init="uniform", epochs=epochs, batch_size=64, lr=0.05, seed=seed,
                                  lr_schedule="cosine", precision=precision), data=splits)
            start = time.perf_counter()
            for _ in range(epochs):
                m = run.step()
            row[f"val_acc_{precision}"] = m["val_acc"]
            row[f"wall_s_{precision}"] = time.perf_counter() - start
        diffs.append(row["val_acc_bf16"] - row["val_acc_fp32"])
        rows.append(row)
        print(row, flush=True)
    mean, lo, hi = t_interval(diffs)
    return {"acc_runs": rows, "acc_epochs": epochs, "acc_train_images": train_images,
            "acc_diff_bf16_minus_fp32_pp": mean, "acc_diff_ci95": [lo, hi],
            "acc_wall_ratio_fp32_over_bf16": statistics.median(r["wall_s_fp32"] / r["wall_s_bf16"] for r in rows)}


def main():
    p = argparse.ArgumentParser(description="Trial img/s per precision and layout; fp32 vs bf16 accuracy.")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--data", help="CIFAR-10 JPEG tree or archive (default: ../shared/data)")
    p.add_argument("--parts", default="throughput,accuracy")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-images", type=int, default=10000)
    a = p.parse_args()
    data = find_data(a.data)
    if data is None:
        sys.exit("error: the shared CIFAR-10 JPEGs are needed (give --data)")
    t0 = time.monotonic()
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": torch.get_num_threads(),
           "cpu_has_fast_bf16": cpu_has_fast_bf16(), "auto_resolves_to": resolve_precision("auto", torch.device("cpu"))}
    parts = set(a.parts.split(","))
    if "throughput" in parts:
        res.update(throughput(data, Path(tempfile.mkdtemp(prefix="sfkd-precision-")), a.rounds))
        print(res, flush=True)
    if "accuracy" in parts:
        res.update(accuracy(data, list(range(a.seeds)), a.epochs, a.train_images))
    res["wall_s"] = time.monotonic() - t0
    for k, v in res.items():
        print(f"{k:<32} {v:.4g}" if isinstance(v, float) else f"{k:<32} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
