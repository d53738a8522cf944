"""The two speed levers, each measured against the same run without it, side by side:

    python benchmarks/levers.py [--json PATH] [--data PATH] [--parts cache,compile]

1. The shared teacher-output cache (`teacher_cache: true`, the default): on the shared CIFAR-10, a run
   with the cache off, the first trial with it on (which fills each epoch's view) and a second trial
   that finds the views warm, over the same epochs; resnet56 -> resnet20 SF-KD at ERK 0.1, batch 64.
   The per-epoch losses of the three must agree to float tolerance (the cache changes no number), and
   the warm trial's img/s over the cache-off run's, epoch by epoch, is the cache's speedup.
2. `compile: true` (inductor): img/s after compilation vs eager, A/B pairs, and the compile time.
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
from trainables.run import DistillRun  # noqa: E402

PRECISION = "fp32"  # the levers are measured on the reference arithmetic (benchmarks/precision.py has bf16)


def ab_pairs(run_a: DistillRun, run_b: DistillRun, pairs: int) -> tuple[list[float], list[float]]:
    a, b = [], []
    for _ in range(pairs):
        a.append(run_a.train_epoch()["img_per_s"])
        b.append(run_b.train_epoch()["img_per_s"])
    return a, b


def cache_on_off(data: str, splits, out: Path, epochs: int, teacher_epochs: int) -> dict:
    from tuner.teacher_training import teacher_config, train_teacher

    # A teacher trained on the same images for a few epochs, so the losses compared are ordinary ones.
    tcfg = teacher_config("resnet56", "cifar10", teacher_epochs, data_dir=data, train_subset=len(splits.train_x),
                          val_subset=len(splits.val_x), precision=PRECISION)
    teacher, teacher_acc = train_teacher(tcfg, out / "resnet56.pt", progress=False)
    cfg = dict(dataset="cifar10", teacher=str(teacher), teacher_arch="resnet56", student="resnet20", method="sfkd",
               density=0.1, sparse_init="ERK", batch_size=64, epochs=epochs, fg_size=4, seed=0,
               cache_dir=str(out / "cache"), teacher_cache=False, precision=PRECISION)
    off = DistillRun(cfg, data=splits)
    cold = DistillRun({**cfg, "teacher_cache": True}, data=splits)
    warm = DistillRun({**cfg, "teacher_cache": True}, data=splits)
    rows = []
    for epoch in range(epochs):
        m_cold = cold.train_epoch()  # the first trial: computes and publishes this epoch's view
        m_off = off.train_epoch()
        m_warm = warm.train_epoch()  # a later trial: reads it
        rows.append({"epoch": epoch + 1, "loss_off": m_off["loss"], "loss_cold": m_cold["loss"],
                     "loss_warm": m_warm["loss"], "img_s_off": m_off["img_per_s"], "img_s_cold": m_cold["img_per_s"],
                     "img_s_warm": m_warm["img_per_s"], "warm_hit": m_warm["teacher_cache_hit"]})
    rel = max(abs(r[k] - r["loss_off"]) / abs(r["loss_off"]) for r in rows for k in ("loss_cold", "loss_warm"))
    return {"cache_epochs": rows, "cache_loss_max_rel_diff": rel,
            "teacher_cache_speedup": statistics.median(r["img_s_warm"] / r["img_s_off"] for r in rows),
            "cache_view_mb": cold.cache.view_bytes / 1e6, "cache_train_images": len(splits.train_x),
            "cache_teacher_epochs": teacher_epochs, "cache_teacher_test_acc": teacher_acc, "cache_precision": off.precision}


def compile_rows(splits, out: Path, pairs: int) -> dict:
    teacher = out / "resnet56.pt"
    cfg = dict(dataset="cifar10", teacher=str(teacher), teacher_arch="resnet56", student="resnet20", method="sfkd",
               density=0.1, sparse_init="ERK", batch_size=64, epochs=50, fg_size=4, teacher_cache=False,
               precision=PRECISION)
    eager = DistillRun(cfg, data=splits)
    compiled = DistillRun({**cfg, "compile": True}, data=splits)
    start = time.perf_counter()
    compiled.train_epoch()  # compiles on the first batches
    first_epoch_s = time.perf_counter() - start
    eager.train_epoch()
    off, on = ab_pairs(eager, compiled, pairs)
    return {"eager_img_s": statistics.median(off), "compiled_img_s": statistics.median(on),
            "compile_speedup": statistics.median(b / a for a, b in zip(off, on)),
            "compile_first_epoch_s": first_epoch_s}


def main():
    p = argparse.ArgumentParser(description="Teacher-output cache and torch.compile, each on vs off.")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--data", help="CIFAR-10 JPEG tree or archive (default: ../shared/data)")
    p.add_argument("--parts", default="cache,compile", help="comma-separated subset of cache, compile (default both)")
    p.add_argument("--train-images", type=int, default=5000, help="training images of the cache runs (default 5000)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the cache runs (default 3)")
    p.add_argument("--teacher-epochs", type=int, default=3, help="epochs of the resnet56 teacher (default 3)")
    a = p.parse_args()
    data = find_data(a.data)
    if data is None:
        sys.exit("error: the shared CIFAR-10 JPEGs are needed (give --data)")
    out = Path(tempfile.mkdtemp(prefix="sfkd-levers-"))
    splits = load_splits("cifar10", data, train_subset=a.train_images, val_subset=500)
    t0 = time.monotonic()
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": torch.get_num_threads()}
    parts = set(a.parts.split(","))
    res.update(cache_on_off(data, splits, out, a.epochs, a.teacher_epochs))  # also writes the teacher file the compile part uses
    print(res, flush=True)
    if "compile" in parts:
        res.update(compile_rows(splits, out, pairs=3))
        print(res, flush=True)
    res["wall_s"] = time.monotonic() - t0
    for k, v in res.items():
        print(f"{k:<26} {v:.6g}" if isinstance(v, float) else f"{k:<26} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
