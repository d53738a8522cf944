"""The two opt-in speed levers, each measured against the same run without it, side by side:

    python benchmarks/levers.py [--json PATH] [--data PATH] [--parts cache,compile,accuracy]

1. The shared teacher-output cache (`teacher_cache: true`): trial img/s with a warm cache vs without,
   resnet56 -> resnet20 SF-KD at ERK 0.1, batch 64 (the throughput setting of run.py), A/B pairs; and
   the validation accuracy at equal epochs with and without it on a small real-data problem (a trained
   resnet14 teacher -> resnet8, two seeds), since fixed views are fewer augmentations than fresh draws.
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
from trainables.models import create_model  # noqa: E402
from trainables.run import DistillRun  # noqa: E402
from trainables.teacher import save_teacher  # noqa: E402


def ab_pairs(run_a: DistillRun, run_b: DistillRun, pairs: int) -> tuple[list[float], list[float]]:
    a, b = [], []
    for _ in range(pairs):
        a.append(run_a.train_epoch()["img_per_s"])
        b.append(run_b.train_epoch()["img_per_s"])
    return a, b


def cache_throughput(splits, out: Path, pairs: int) -> dict:
    torch.manual_seed(0)
    teacher = save_teacher(out / "resnet56.pt", create_model("resnet56", splits.num_classes), "resnet56", "bench",
                           splits.num_classes, 0.0)
    cfg = dict(dataset="cifar10", teacher=str(teacher), teacher_arch="resnet56", student="resnet20", method="sfkd",
               density=0.1, sparse_init="ERK", batch_size=64, epochs=50, fg_size=4, cache_dir=str(out / "cache"),
               cache_views=1, teacher_cache=False)
    plain = DistillRun(cfg, data=splits)
    cached = DistillRun({**cfg, "teacher_cache": True}, data=splits)
    start = time.perf_counter()
    cached.train_epoch()  # fills the one view: this is the first trial's cost
    fill_epoch_s = time.perf_counter() - start
    plain.train_epoch()
    off, on = ab_pairs(plain, cached, pairs)
    return {"cache_off_img_s": statistics.median(off), "cache_on_img_s": statistics.median(on),
            "teacher_cache_speedup": statistics.median(b / a for a, b in zip(off, on)),
            "cache_fill_epoch_s": fill_epoch_s, "cache_view_mb": cached.cache.view_bytes / 1e6}


def cache_accuracy(data, out: Path, epochs: int, seeds: list[int], views: int) -> dict:
    """Val accuracy at equal epochs, cache on vs off. With epochs > views each view is reused, which is
    where fixed views could cost accuracy (with epochs <= views they are as varied as fresh draws)."""
    from tuner.teacher import teacher_config, train_teacher

    common = dict(data_dir=data, train_subset=5000, val_subset=1000)
    tfile, tacc = train_teacher(teacher_config("resnet14", "cifar10", 4, **common, lr=0.05), out / "resnet14.pt",
                                progress=False)
    common["dataset"] = "cifar10"
    diffs, rows = [], []
    for seed in seeds:
        cfg = dict(**common, teacher=str(tfile), teacher_arch="resnet14", student="resnet8", method="sfkd",
                   density=0.2, sparse_init="ERK", epochs=epochs, lr=0.05, beta=0.5, seed=seed,
                   cache_dir=str(out / "cache"), cache_views=views, teacher_cache=False)
        accs = {}
        for on in (False, True):
            run = DistillRun({**cfg, "teacher_cache": on})
            for _ in range(epochs):
                m = run.step()
            accs[on] = m["val_acc"]
        diffs.append(accs[True] - accs[False])
        rows.append({"seed": seed, "val_acc_cache_off": accs[False], "val_acc_cache_on": accs[True]})
    return {"cache_teacher_test_acc": tacc, "cache_acc_epochs": epochs, "cache_acc_views": views, "cache_acc_runs": rows,
            "cache_val_acc_diff_pp": statistics.mean(diffs)}


def compile_rows(splits, out: Path, pairs: int) -> dict:
    teacher = out / "resnet56.pt"
    cfg = dict(dataset="cifar10", teacher=str(teacher), teacher_arch="resnet56", student="resnet20", method="sfkd",
               density=0.1, sparse_init="ERK", batch_size=64, epochs=50, fg_size=4, teacher_cache=False)
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
    p.add_argument("--parts", default="cache,compile,accuracy",
                   help="comma-separated subset of cache (throughput), compile, accuracy (default all)")
    p.add_argument("--acc-epochs", type=int, default=6)
    p.add_argument("--acc-views", type=int, default=2, help="cache_views of the accuracy runs (default 2: each view 3x)")
    a = p.parse_args()
    data = find_data(a.data)
    if data is None:
        sys.exit("error: the shared CIFAR-10 JPEGs are needed (give --data)")
    out = Path(tempfile.mkdtemp(prefix="sfkd-levers-"))
    splits = load_splits("cifar10", data, train_subset=1280, val_subset=500)
    t0 = time.monotonic()
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": torch.get_num_threads()}
    parts = set(a.parts.split(","))
    if parts & {"cache", "compile"}:
        res.update(cache_throughput(splits, out, pairs=3))
        print(res, flush=True)
    if "compile" in parts:
        res.update(compile_rows(splits, out, pairs=3))
        print(res, flush=True)
    if "accuracy" in parts:
        res.update(cache_accuracy(data, out, a.acc_epochs, seeds=[0, 1], views=a.acc_views))
    res["wall_s"] = time.monotonic() - t0
    for k, v in res.items():
        print(f"{k:<26} {v:.3f}" if isinstance(v, float) else f"{k:<26} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
